/// Builds the SQL that gives an upstream connection a session's tenant context. Every value placed
/// in it has been validated (`TenantIdentifier`) and is quoted as a literal; setting names come
/// from the configuration and are validated at load.
struct ContextInjector: Sendable {
    let tenantSetting: String
    let userSetting: String
    /// `resetStatements` without and with search_path, built once: a tenant switch of a pooled
    /// connection (up to one lend in five at 100 clients on 20 connections) needs one of them.
    private let resets: (plain: String, searchPath: String)

    init(tenantSetting: String, userSetting: String) {
        self.tenantSetting = tenantSetting
        self.userSetting = userSetting
        let plain = "RESET \(tenantSetting); RESET \(userSetting)"
        resets = (plain, plain + "; RESET search_path")
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

    /// Whether `statements` (as built above) set search_path: a byte search, not Foundation's
    /// `contains`, which went through CFString on every tenant switch of a pooled connection.
    /// (Not the standard library's `firstRange(of:)` either: it instantiates generic metadata on
    /// every call.)
    /// (Nor two arrays of the bytes per call: the string's own storage is searched.)
    static func setsSearchPath(_ statements: String) -> Bool {
        let needle: StaticString = "SET search_path"
        var statements = statements
        return statements.withUTF8 { bytes in
            let length = needle.utf8CodeUnitCount
            guard bytes.count >= length else { return false }
            let first = needle.utf8Start.pointee
            for start in 0...(bytes.count - length) where bytes[start] == first {
                var offset = 1
                while offset < length, bytes[start + offset] == needle.utf8Start[offset] { offset += 1 }
                if offset == length { return true }
            }
            return false
        }
    }

    /// The statements that clear a context `statements` set (search_path too, for a tenant with
    /// isolation = schema), as one simple-query string.
    func resetStatements(searchPath: Bool) -> String {
        searchPath ? resets.searchPath : resets.plain
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
