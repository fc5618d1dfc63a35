import PGWire

/// Where a connection's tenant came from.
enum TenantSource: String, Equatable, Sendable {
    case options = "startup options"
    case startupParameter = "startup parameter"
    case userName = "user name"
    case database = "database name"
    /// Claim of a JWT given as the password (authentication issue).
    case jwt = "token"
    /// TLS server name `tenant.<domain>` (authentication issue).
    case sni = "TLS server name"
}

/// What a connection is bound to once resolved: the user, its mode, its tenant, and what the
/// upstream connection must look like.
struct SessionBinding: Equatable, Sendable {
    var user: String
    var mode: TenantUser.Mode
    var tenant: Tenant?
    var userID: String?
    var upstreamDatabase: String
    /// Startup parameters to send upstream: the client's, minus what the proxy decides itself.
    var upstreamParameters: [String: String]
}

/// Decides which tenant a connection belongs to, from every source the design names, and refuses
/// with the errors of the design notes. Pure: the map and the settings come in, a decision goes out.
struct TenantResolver {
    enum Decision: Equatable {
        case bound(SessionBinding)
        /// The tenant is a UUID the map does not know: look it up upstream, then `finishLookup`.
        case lookup(uuid: String, SessionBinding)
        case refused(ProxyError)
    }

    let map: TenantMap
    let settings: ProxyConfig.Tenancy
    let upstreamDatabase: String

    /// The user a startup user name names: `alice` as is, or `alice.acme` split at the last
    /// separator when `alice.acme` is not itself a user.
    func splitUserName(_ name: String) -> (user: String, tenant: String?) {
        if map[user: name] != nil { return (name, nil) }
        // Split whether or not the part before the separator is a known user: deciding by the map
        // would let a prober tell known users from unknown ones.
        guard let separator = settings.userSeparator.first,
              let index = name.lastIndex(of: separator) else { return (name, nil) }
        let user = String(name[..<index])
        let tenant = String(name[name.index(after: index)...])
        guard !user.isEmpty, !tenant.isEmpty else { return (name, nil) }
        return (user, tenant)
    }

    func resolve(
        startup: StartupMessage,
        user userName: String,
        userNameTenant: String?,
        extraSources: [(TenantSource, String)] = []
    ) -> Decision {
        guard let user = map[user: userName] else {
            return .refused(.authenticationFailed(user: userName))
        }
        var parameters = startup.parameters
        parameters.removeValue(forKey: "user")
        parameters.removeValue(forKey: "database")
        var identifiers: [(TenantSource, String)] = extraSources
        if let userNameTenant { identifiers.append((.userName, userNameTenant)) }

        // Startup parameters that are settings: the tenant ones are sources, role changes are refused.
        for (key, value) in startup.parameters {
            let name = key.lowercased()
            if name == settings.tenantSetting {
                identifiers.append((.startupParameter, value))
                parameters.removeValue(forKey: key)
            } else if name == settings.userSetting {
                parameters.removeValue(forKey: key)
            } else if (name == "role" || name == "session_authorization"), user.mode != .global {
                return .refused(.contextEscape("setting \(name) at connect"))
            }
        }
        if let options = startup.options {
            guard let parsed = StartupOptions(parsing: options) else {
                return .refused(ProxyError(severity: .fatal, sqlState: "08P01", message: "invalid startup options",
                                           hint: "Check the backslash escapes in options."))
            }
            var kept: [StartupOptions.Setting] = []
            for setting in parsed.settings {
                let name = setting.name.lowercased()
                if name == settings.tenantSetting {
                    identifiers.append((.options, setting.value))
                } else if name == settings.userSetting {
                    continue
                } else if (name == "role" || name == "session_authorization"), user.mode != .global {
                    return .refused(.contextEscape("setting \(name) in startup options"))
                } else {
                    kept.append(setting)
                }
            }
            let rebuilt = StartupOptions(settings: kept, others: parsed.others).encoded
            if rebuilt.isEmpty { parameters.removeValue(forKey: "options") } else { parameters["options"] = rebuilt }
        }
        let clientDatabase = startup.database ?? startup.user ?? ""
        if let tenant = map.tenant(forDatabase: clientDatabase) {
            identifiers.append((.database, tenant.id))
        }

        var binding = SessionBinding(
            user: user.name, mode: user.mode, tenant: nil, userID: user.userID,
            upstreamDatabase: upstreamDatabase.isEmpty ? clientDatabase : upstreamDatabase,
            upstreamParameters: parameters)

        if user.mode == .global {
            guard identifiers.isEmpty else {
                return .refused(ProxyError(
                    severity: .fatal, sqlState: "28000", message: "user \"\(user.name)\" is global and takes no tenant",
                    hint: "Connect without a tenant, or use a pinned or switch user for tenant traffic.").reason("tenant"))
            }
            binding.userID = nil
            return .bound(binding)
        }

        // Every source must name the same tenant.
        var chosen: Tenant?
        // The identifier as the client gave it: errors echo it, never the map's name for it.
        var chosenIdentifier = ""
        var unknownUUID: String?
        for (_, identifier) in identifiers {
            if let tenant = map.tenant(named: identifier) {
                if let previous = chosen, previous.id != tenant.id { return .refused(.tenantSourcesDisagree) }
                if let unknownUUID, unknownUUID != tenant.id.lowercased() { return .refused(.tenantSourcesDisagree) }
                chosen = tenant
                chosenIdentifier = identifier
            } else if settings.lookupUpstream, TenantIdentifier.isUUID(identifier) {
                let uuid = identifier.lowercased()
                if let previous = unknownUUID, previous != uuid { return .refused(.tenantSourcesDisagree) }
                if let chosen, chosen.id.lowercased() != uuid { return .refused(.tenantSourcesDisagree) }
                unknownUUID = uuid
            } else {
                return .refused(.tenantNotFound(identifier))
            }
        }
        if let tenant = chosen {
            guard map.user(user, mayUse: tenant) else { return .refused(.tenantNotFound(chosenIdentifier)) }
            guard tenant.status == .active else { return .refused(.tenantNotActive(chosenIdentifier)) }
            binding.tenant = tenant
            if tenant.isolation == .database { binding.upstreamDatabase = tenant.database }
            return .bound(binding)
        }
        if let uuid = unknownUUID {
            guard user.mayUseAnyTenant || user.tenants.contains(where: { $0.lowercased() == uuid }) else {
                return .refused(.tenantNotFound(uuid))
            }
            return .lookup(uuid: uuid, binding)
        }
        if user.mode == .pinned, user.tenants.count == 1, let only = map.tenant(named: user.tenants[0]) {
            // Pinned to exactly one tenant in the map: that is the tenant, no identifier needed.
            // A user pinned to several (or to "*") must name one.
            guard only.status == .active else { return .refused(.tenantNotActive(user.tenants[0])) }
            binding.tenant = only
            if only.isolation == .database { binding.upstreamDatabase = only.database }
            return .bound(binding)
        }
        if user.mode == .pinned {
            return .refused(.tenantMissing(user: user.name, setting: settings.tenantSetting, separator: settings.userSeparator))
        }
        return .bound(binding)
    }

    /// Completes a `.lookup` with what the upstream's tenants table said.
    static func finishLookup(_ binding: SessionBinding, uuid: String, found: UpstreamTenantRecord?) -> Decision {
        guard let found, found.deleted == false else { return .refused(.tenantNotFound(uuid)) }
        guard found.status == .active else { return .refused(.tenantNotActive(uuid)) }
        var bound = binding
        bound.tenant = Tenant(name: found.name ?? uuid, id: uuid)
        return .bound(bound)
    }
}

/// A tenant row read from the upstream's `tenants` table.
struct UpstreamTenantRecord: Equatable, Sendable {
    var status: Tenant.Status
    var deleted: Bool
    var name: String?
}

/// The `options` startup parameter, split the way PostgreSQL splits it (whitespace separates,
/// backslash escapes the next character), with `-c name=value` and `--name=value` understood.
struct StartupOptions: Equatable {
    struct Setting: Equatable {
        var name: String
        var value: String
    }

    var settings: [Setting] = []
    /// Other switches, kept as given.
    var others: [String] = []

    init(settings: [Setting], others: [String]) {
        self.settings = settings
        self.others = others
    }

    init?(parsing text: String) {
        var words: [String] = []
        var current = ""
        var inWord = false
        var escaped = false
        for character in text {
            if escaped {
                current.append(character)
                escaped = false
                inWord = true
            } else if character == "\\" {
                escaped = true
                inWord = true
            } else if character == " " || character == "\t" || character == "\n" || character == "\r" {
                if inWord { words.append(current) }
                current = ""
                inWord = false
            } else {
                current.append(character)
                inWord = true
            }
        }
        if escaped { return nil }
        if inWord { words.append(current) }

        var index = 0
        while index < words.count {
            let word = words[index]
            var assignment: String?
            if word == "-c" {
                guard index + 1 < words.count else { return nil }
                assignment = words[index + 1]
                index += 1
            } else if word.hasPrefix("-c") {
                assignment = String(word.dropFirst(2))
            } else if word.hasPrefix("--") {
                assignment = String(word.dropFirst(2))
            } else {
                others.append(word)
            }
            if let assignment {
                guard let equals = assignment.firstIndex(of: "=") else { return nil }
                let name = String(assignment[..<equals]).replacingOccurrences(of: "-", with: "_")
                settings.append(Setting(name: name, value: String(assignment[assignment.index(after: equals)...])))
            }
            index += 1
        }
    }

    /// Back to the wire form, escaping what needs it.
    var encoded: String {
        func escape(_ text: String) -> String {
            var out = ""
            for character in text {
                if character == "\\" || character == " " || character == "\t" || character == "\n" || character == "\r" {
                    out.append("\\")
                }
                out.append(character)
            }
            return out
        }
        let words = settings.flatMap { ["-c", escape("\($0.name)=\($0.value)")] } + others.map(escape)
        return words.joined(separator: " ")
    }
}
