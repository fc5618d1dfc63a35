import Foundation
import PGWire
import TOMLKit

/// A tenant as the operator described it in the tenant map (or as found in the upstream's
/// `tenants` table).
struct Tenant: Equatable, Sendable {
    enum Status: String, Sendable { case active, suspended }
    enum Isolation: String, Sendable { case rls, schema, database }

    /// Name in the map (the table key); for tenants found upstream, their `name` column or id.
    var name: String
    /// The value placed in the tenant setting: a UUID or operator-chosen text, already validated.
    var id: String
    var aliases: [String] = []
    var status: Status = .active
    var isolation: Isolation = .rls
    var schema: String = ""
    var database: String = ""
    /// Client database names that select this tenant.
    var databases: [String] = []
    /// The upstream cluster the tenant lives on (`[upstream]` is "default", others `[clusters.NAME]`).
    var upstream: String = "default"
}

/// A user the proxy authenticates, with what it may do.
struct TenantUser: Sendable {
    enum Mode: String, Sendable {
        case pinned
        /// A trusted app that sets the tenant setting itself, per request.
        case `switch`
        /// No tenant context (migrations, admin).
        case global
    }

    var name: String
    var verifier: SCRAMVerifier?
    /// `md5` + md5(password + user), for method md5.
    var md5: String?
    /// This user's authentication method (rules in proxy.conf may override it).
    var auth: AuthMethod = .scram
    /// Overrides tls.require for this user.
    var requireTLS: Bool?
    /// Client-certificate CN or SAN values that log in as this user (default: the user name).
    var certificateNames: [String] = []
    var mode: Mode = .pinned
    /// Session or transaction pooling for this user's clients, whatever their database
    /// (nil: the database's mode, else [pool] mode).
    var poolMode: ProxyConfig.Pool.Mode?
    /// Tenant names, ids or aliases, as written; `["*"]` = any tenant.
    var tenants: [String] = []
    var userID: String?

    var mayUseAnyTenant: Bool { tenants.contains("*") }
}

/// The operator-edited file of tenants and users. Immutable once parsed: a reload builds a new
/// map and swaps it in whole, so a bad edit never leaves a half-applied map.
struct TenantMap: Sendable {
    private(set) var tenants: [String: Tenant] = [:]
    private(set) var users: [String: TenantUser] = [:]
    /// id, name and every alias -> tenant name.
    private var index: [String: String] = [:]
    /// client database name -> tenant name.
    private var databaseIndex: [String: String] = [:]

    subscript(user name: String) -> TenantUser? { users[name] }

    /// The tenant an identifier (id, name or alias) names.
    func tenant(named identifier: String) -> Tenant? {
        index[identifier].flatMap { tenants[$0] }
    }

    func tenant(forDatabase database: String) -> Tenant? {
        databaseIndex[database].flatMap { tenants[$0] }
    }

    /// Whether `user` may be bound to `tenant`.
    func user(_ user: TenantUser, mayUse tenant: Tenant) -> Bool {
        if user.mayUseAnyTenant { return true }
        return user.tenants.contains { entry in
            entry == tenant.id || entry == tenant.name || tenant.aliases.contains(entry)
        }
    }

    /// Tenants placed on a cluster the configuration does not define.
    func unknownClusters(known: Set<String>) -> [ConfigProblem] {
        tenants.values.filter { !known.contains($0.upstream) }.sorted { $0.name < $1.name }.map {
            ConfigProblem(key: "tenants.\($0.name).upstream", problem: "names unknown cluster \"\($0.upstream)\"",
                          fix: "use \"default\" or a [clusters.NAME] of proxy.conf (\(known.sorted().joined(separator: ", ")))")
        }
    }

    // MARK: - Loading

    /// Loads the map and checks that every tenant is placed on a configured cluster.
    static func load(path: String, clusters: Set<String>) throws -> TenantMap {
        let map = try load(path: path)
        let problems = map.unknownClusters(known: clusters)
        if !problems.isEmpty { throw ConfigError(file: path, problems: problems) }
        return map
    }

    static func load(path: String) throws -> TenantMap {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: path, problems: [
                ConfigProblem(key: "(file)", problem: "cannot be read", fix: "check tenancy.map_file and the file's permissions")
            ])
        }
        return try parse(text, file: path)
    }

    static func parse(_ text: String, file: String) throws -> TenantMap {
        let root: TOMLTable
        do {
            root = try TOMLTable(string: text)
        } catch {
            throw ConfigError(file: file, problems: [
                ConfigProblem(key: "(syntax)", problem: "not valid TOML: \(error)", fix: "correct the syntax at the position shown")
            ])
        }
        var problems: [ConfigProblem] = []
        var map = TenantMap()
        for key in root.keys where key != "users" && key != "tenants" {
            problems.append(ConfigProblem(key: key, problem: "unknown section", fix: "use [tenants.NAME] and [users.NAME]"))
        }
        if let tenants = root["tenants"]?.table {
            for name in tenants.keys {
                guard let entry = tenants[name]?.table else {
                    problems.append(ConfigProblem(key: "tenants.\(name)", problem: "must be a table", fix: "write [tenants.\(name)]"))
                    continue
                }
                if let tenant = parseTenant(name: name, entry: entry, problems: &problems) {
                    map.add(tenant, problems: &problems)
                }
            }
        }
        if let users = root["users"]?.table {
            for name in users.keys {
                guard let entry = users[name]?.table else {
                    problems.append(ConfigProblem(key: "users.\(name)", problem: "must be a table",
                                                  fix: "write [users.\(name)] with password = \"SCRAM-SHA-256$...\""))
                    continue
                }
                if let user = parseUser(name: name, entry: entry, problems: &problems) {
                    map.users[name] = user
                }
            }
        }
        for user in map.users.values where !user.mayUseAnyTenant {
            for entry in user.tenants where map.tenant(named: entry) == nil && !TenantIdentifier.isUUID(entry) {
                problems.append(ConfigProblem(key: "users.\(user.name).tenants", problem: "names unknown tenant \"\(entry)\"",
                                              fix: "add [tenants.\(entry)] or correct the name"))
            }
        }
        if !problems.isEmpty { throw ConfigError(file: file, problems: problems) }
        return map
    }

    private mutating func add(_ tenant: Tenant, problems: inout [ConfigProblem]) {
        for key in [tenant.id, tenant.name] + tenant.aliases {
            if let other = index[key], other != tenant.name {
                problems.append(ConfigProblem(key: "tenants.\(tenant.name)", problem: "\"\(key)\" also names tenant \(other)",
                                              fix: "make ids, names and aliases unique"))
            }
            index[key] = tenant.name
        }
        for database in tenant.databases {
            if let other = databaseIndex[database], other != tenant.name {
                problems.append(ConfigProblem(key: "tenants.\(tenant.name).databases",
                                              problem: "database \"\(database)\" is also mapped to tenant \(other)",
                                              fix: "map each database name to one tenant"))
            }
            databaseIndex[database] = tenant.name
        }
        tenants[tenant.name] = tenant
    }

    private static let tenantKeys: Set<String> = ["id", "aliases", "status", "isolation", "schema", "database", "databases", "upstream"]
    private static let userKeys: Set<String> = ["password", "mode", "tenants", "user_id", "md5", "auth", "require_tls", "cert_names", "pool_mode"]

    private static func parseTenant(name: String, entry: TOMLTable, problems: inout [ConfigProblem]) -> Tenant? {
        let key = "tenants.\(name)"
        for field in entry.keys where !tenantKeys.contains(field) {
            problems.append(ConfigProblem(key: "\(key).\(field)", problem: "unknown key",
                                          fix: "use one of \(tenantKeys.sorted().joined(separator: ", "))"))
        }
        guard let id = entry["id"]?.string, TenantIdentifier.isValid(id) else {
            problems.append(ConfigProblem(key: "\(key).id", problem: "is missing or not a valid tenant id",
                                          fix: "use a UUID or 1-63 characters of letters, digits, '-', '_' and '.'"))
            return nil
        }
        var tenant = Tenant(name: name, id: id)
        tenant.aliases = strings(entry["aliases"], key: "\(key).aliases", problems: &problems)
        if let raw = entry["status"] {
            guard let text = raw.string, let status = Tenant.Status(rawValue: text) else {
                problems.append(ConfigProblem(key: "\(key).status", problem: "must be \"active\" or \"suspended\"", fix: "status = \"active\""))
                return nil
            }
            tenant.status = status
        }
        if let raw = entry["isolation"] {
            guard let text = raw.string, let isolation = Tenant.Isolation(rawValue: text) else {
                problems.append(ConfigProblem(key: "\(key).isolation", problem: "must be rls, schema or database", fix: "isolation = \"rls\""))
                return nil
            }
            tenant.isolation = isolation
        }
        tenant.schema = entry["schema"]?.string ?? ""
        tenant.database = entry["database"]?.string ?? ""
        tenant.databases = strings(entry["databases"], key: "\(key).databases", problems: &problems)
        if let raw = entry["upstream"] {
            guard let cluster = raw.string, !cluster.isEmpty else {
                problems.append(ConfigProblem(key: "\(key).upstream", problem: "must name a cluster", fix: "upstream = \"default\""))
                return nil
            }
            tenant.upstream = cluster
        }
        if tenant.isolation == .schema, !TenantIdentifier.isValid(tenant.schema) {
            problems.append(ConfigProblem(key: "\(key).schema", problem: "isolation = schema needs a valid schema name",
                                          fix: "set schema = \"<name>\" (letters, digits, '_')"))
        }
        if tenant.isolation == .database, tenant.database.isEmpty {
            problems.append(ConfigProblem(key: "\(key).database", problem: "isolation = database needs a database name",
                                          fix: "set database = \"<upstream database>\""))
        }
        return tenant
    }

    private static func parseUser(name: String, entry: TOMLTable, problems: inout [ConfigProblem]) -> TenantUser? {
        let key = "users.\(name)"
        for field in entry.keys where !userKeys.contains(field) {
            problems.append(ConfigProblem(key: "\(key).\(field)", problem: "unknown key",
                                          fix: "use one of \(userKeys.sorted().joined(separator: ", "))"))
        }
        var verifier: SCRAMVerifier?
        if let stored = entry["password"]?.string {
            guard let parsed = try? SCRAMVerifier(parsing: stored) else {
                // Never echo the stored value: it is secret-equivalent.
                problems.append(ConfigProblem(key: "\(key).password", problem: "is not a SCRAM-SHA-256 verifier",
                                              fix: "replace it with the output of `tenant-proxy hash-password`"))
                return nil
            }
            verifier = parsed
        }
        var auth = AuthMethod.scram
        if let raw = entry["auth"] {
            guard let text = raw.string, let method = AuthMethod(rawValue: text) else {
                problems.append(ConfigProblem(key: "\(key).auth", problem: "unknown method",
                                              fix: "use one of \(AuthMethod.allCases.map(\.rawValue).joined(separator: ", "))"))
                return nil
            }
            auth = method
        }
        let md5 = entry["md5"]?.string
        if let md5, !(md5.hasPrefix("md5") && md5.utf8.count == 35) {
            problems.append(ConfigProblem(key: "\(key).md5", problem: "is not an MD5 password hash",
                                          fix: "write \"md5\" followed by the 32 hex digits of md5(password + user name)"))
            return nil
        }
        if verifier == nil, [.scram, .password].contains(auth) {
            problems.append(ConfigProblem(key: "\(key).password", problem: "is missing",
                                          fix: "add the output of `tenant-proxy hash-password`"))
            return nil
        }
        if auth == .md5, md5 == nil {
            problems.append(ConfigProblem(key: "\(key).md5", problem: "is missing for auth = md5",
                                          fix: "add md5 = \"md5<hex of md5(password + user name)>\""))
            return nil
        }
        var user = TenantUser(name: name, verifier: verifier)
        user.md5 = md5
        user.auth = auth
        user.requireTLS = entry["require_tls"]?.bool
        user.certificateNames = strings(entry["cert_names"], key: "\(key).cert_names", problems: &problems)
        if user.certificateNames.isEmpty { user.certificateNames = [name] }
        if let raw = entry["mode"] {
            guard let text = raw.string, let mode = TenantUser.Mode(rawValue: text) else {
                problems.append(ConfigProblem(key: "\(key).mode", problem: "must be pinned, switch or global", fix: "mode = \"pinned\""))
                return nil
            }
            user.mode = mode
        }
        if let raw = entry["pool_mode"] {
            guard let text = raw.string, let mode = ProxyConfig.Pool.Mode(rawValue: text) else {
                problems.append(ConfigProblem(key: "\(key).pool_mode", problem: "must be session or transaction",
                                              fix: "pool_mode = \"session\""))
                return nil
            }
            user.poolMode = mode
        }
        user.tenants = strings(entry["tenants"], key: "\(key).tenants", problems: &problems)
        if let userID = entry["user_id"]?.string {
            guard TenantIdentifier.isValid(userID) else {
                problems.append(ConfigProblem(key: "\(key).user_id", problem: "is not a valid id", fix: "use a UUID"))
                return nil
            }
            user.userID = userID
        }
        if user.mode != .global, user.tenants.isEmpty {
            problems.append(ConfigProblem(key: "\(key).tenants", problem: "a \(user.mode.rawValue) user needs at least one tenant",
                                          fix: "list tenant names, or [\"*\"] for any"))
        }
        return user
    }

    private static func strings(_ value: TOMLValueConvertible?, key: String, problems: inout [ConfigProblem]) -> [String] {
        guard let value else { return [] }
        guard let array = value.array else {
            problems.append(ConfigProblem(key: key, problem: "must be an array of strings", fix: "write [\"a\", \"b\"]"))
            return []
        }
        var result: [String] = []
        for element in array {
            guard let text = element.string else {
                problems.append(ConfigProblem(key: key, problem: "must contain only strings", fix: "quote every element"))
                return []
            }
            result.append(text)
        }
        return result
    }
}

/// Rules for tenant ids and other values the proxy places into SQL: validated here, then quoted
/// as literals, never taken from the client as is.
enum TenantIdentifier {
    static func isUUID(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return false }
        for (offset, byte) in bytes.enumerated() {
            if [8, 13, 18, 23].contains(offset) {
                guard byte == UInt8(ascii: "-") else { return false }
            } else {
                guard isHex(byte) else { return false }
            }
        }
        return true
    }

    /// UUIDs, or 1-63 characters of [A-Za-z0-9_.-].
    static func isValid(_ text: String) -> Bool {
        if isUUID(text) { return true }
        let bytes = Array(text.utf8)
        guard (1...63).contains(bytes.count) else { return false }
        return bytes.allSatisfy { isAlphanumeric($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }
    }

    private static func isHex(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x46) || (byte >= 0x61 && byte <= 0x66)
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
    }
}
