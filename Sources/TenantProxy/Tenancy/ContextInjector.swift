/// Builds the SQL that gives an upstream connection a session's tenant context. Every value placed
/// in it has been validated (`TenantIdentifier`) and is quoted as a literal; setting names come
/// from the configuration and are validated at load.
struct ContextInjector: Sendable {
    let tenantSetting: String
    let userSetting: String
    init(tenantSetting: String, userSetting: String) {
        self.tenantSetting = tenantSetting
        self.userSetting = userSetting
    }

    static func isValidSettingName(_ name: String) -> Bool {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 2 else { return false }
        return parts.allSatisfy { part in
            guard let first = part.utf8.first, !(first >= 0x30 && first <= 0x39) else { return false }
            return part.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }
        }
    }

    /// A client-supplied setting name the proxy may place in a SET of its own: plain identifier
    /// characters only (and at most one dot), so it can never carry SQL.
    static func isSafeSettingName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...63).contains(bytes.count), bytes.filter({ $0 == 0x2E }).count <= 1,
              let first = bytes.first, !(first >= 0x30 && first <= 0x39), first != 0x2E, bytes.last != 0x2E else { return false }
        return bytes.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F || $0 == 0x2E }
    }

    static func literal(_ value: String) -> String {
        quoted(value, by: UInt8(ascii: "'"))
    }

    static func identifier(_ value: String) -> String {
        quoted(value, by: UInt8(ascii: "\""))
    }

    /// `quote` + value with each quote byte doubled + `quote`. Bytes, as PostgreSQL reads them:
    /// by Characters, a quote followed by a combining mark was one Character, not a quote, and
    /// went through undoubled, ending the literal early. (Also ~20 times cheaper: appending
    /// Characters cost ~500 instructions each, on every log-in.) A UTF-8 multi-byte sequence
    /// never contains an ASCII byte, so doubling one cannot split a character.
    private static func quoted(_ value: String, by quote: UInt8) -> String {
        var bytes: [UInt8] = [quote]
        bytes.reserveCapacity(value.utf8.count + 2)
        for byte in value.utf8 {
            if byte == quote { bytes.append(quote) }
            bytes.append(byte)
        }
        bytes.append(quote)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The statements that set the context, as one simple-query string; nil when there is nothing
    /// to set (global users, or a switch user without a tenant yet).
    func statements(tenant: Tenant?, userID: String?) -> String? {
        var parts: [String] = []
        if let tenant {
            parts.append("SET \(tenantSetting) = \(Self.literal(tenant.id))")
            if tenant.isolation == .schema {
                parts.append("SET search_path = \(Self.identifier(tenant.schema)), public")
            }
        }
        if let userID {
            parts.append("SET \(userSetting) = \(Self.literal(userID))")
        }
        return parts.isEmpty ? nil : parts.joined(separator: "; ")
    }

    /// The settings a context sets, as `statements` builds it.
    struct Settings: OptionSet {
        let rawValue: UInt8
        static let tenant = Settings(rawValue: 1)
        static let user = Settings(rawValue: 2)
        static let searchPath = Settings(rawValue: 4)
    }

    /// Which settings `statements` sets: the names after `SET ` at the start of each statement,
    /// reading quotes as PostgreSQL does (a literal's or identifier's doubled quote toggles twice),
    /// so a tenant id or user id holding `; SET nile.user_id = ` inside its literal counts for
    /// nothing. Bytes of the string's own storage; no Foundation, no generic search (both cost
    /// metadata lookups per call).
    func settings(in statements: String) -> Settings {
        var statements = statements
        return statements.withUTF8 { bytes in
            var found: Settings = []
            var quote: UInt8 = 0
            var start = true
            var index = 0
            while index < bytes.count {
                let byte = bytes[index]
                if quote != 0 {
                    if byte == quote { quote = 0 }
                } else if byte == 0x27 || byte == 0x22 {
                    quote = byte
                } else if start {
                    if let setting = settingSet(at: index, in: bytes) { found.insert(setting) }
                } else if byte == 0x3B {
                    // "; " separates statements.
                    start = index + 1 < bytes.count && bytes[index + 1] == 0x20
                    index += start ? 2 : 1
                    continue
                }
                start = false
                index += 1
            }
            return found
        }
    }

    /// The setting a statement starting at `index` sets (`SET name = `), if one of the three.
    private func settingSet(at index: Int, in bytes: UnsafeBufferPointer<UInt8>) -> Settings? {
        func matches(_ text: String) -> Bool {
            var offset = index
            for byte in text.utf8 {
                guard offset < bytes.count, bytes[offset] == byte else { return false }
                offset += 1
            }
            return true
        }
        if matches("SET \(tenantSetting) = ") { return .tenant }
        if matches("SET \(userSetting) = ") { return .user }
        if matches("SET search_path = ") { return .searchPath }
        return nil
    }

    /// What moves a pooled connection from the context `current` set to `wanted` (either may be
    /// empty: none), as one simple-query string, or nil when nothing is to be sent. A setting
    /// `wanted` sets is overwritten by its SET, not reset first; the tenant and user settings are
    /// reset whenever `current` is a context, whatever it reads as (a client's own, validated SET
    /// of them may have changed the connection since), search_path when `current` set it.
    /// One message, not a RESET query and a SET query: PostgreSQL parses, runs and answers one
    /// (one ReadyForQuery for the proxy to swallow), on every tenant switch of a pooled connection.
    func switchStatements(from current: String, to wanted: String) -> String? {
        let stale = current.isEmpty ? [] : settings(in: current).union([.tenant, .user]).subtracting(settings(in: wanted))
        var parts: [String] = []
        if stale.contains(.tenant) { parts.append("RESET \(tenantSetting)") }
        if stale.contains(.user) { parts.append("RESET \(userSetting)") }
        if stale.contains(.searchPath) { parts.append("RESET search_path") }
        if !wanted.isEmpty { parts.append(wanted) }
        return parts.isEmpty ? nil : parts.joined(separator: "; ")
    }

    /// Looks a tenant up in the upstream's `tenants` table, with the context already set so the
    /// row is visible under the table's own row-level security. Works whether or not the table has
    /// Nile's optional columns (`status`, `deleted`), hence to_jsonb.
    func lookupStatements(uuid: String, userID: String?) -> String {
        let tenant = Tenant(name: uuid, id: uuid)
        let set = statements(tenant: tenant, userID: userID) ?? ""
        return set + "; SELECT coalesce(to_jsonb(t) ->> 'status', 'active'), to_jsonb(t) ->> 'deleted', to_jsonb(t) ->> 'name'"
            + " FROM public.tenants t WHERE t.id::text = \(Self.literal(uuid))"
    }
}
