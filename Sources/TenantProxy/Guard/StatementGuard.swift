// StatementGuard: decides whether client SQL (a Query message, possibly several statements, or a
// Parse message) may run in a tenant's session. See DESIGN.md, "guard" and "Known escape routes".
//
// It lexes the text with SQLLexer (so quoting and comments are understood exactly as the server
// understands them) and looks at tokens, never at raw text.
//
// Pinned sessions: refused, anywhere in the text
//   - SET [SESSION|LOCAL] <tenant setting> ... and RESET <tenant setting>, the name in any
//     spelling: any case, "quoted", "nile"."tenant_id", nile /*c*/ . tenant_id, U&"..." escapes
//     (GUC names are matched case-insensitively, as the server does). This also covers
//     CREATE/ALTER FUNCTION ... SET <tenant setting> and ALTER ... RESET <tenant setting>.
//   - any identifier that names set_config (set_config, "set_config", pg_catalog.set_config,
//     U&"set\005fconfig", and also "SET_CONFIG": a different function to the server, refused
//     because a tenant has no business calling something named like it), whatever its arguments.
//   at the start of a statement
//   - SET ROLE, SET SESSION AUTHORIZATION, SET role/session_authorization TO ..., RESET ROLE,
//     RESET SESSION AUTHORIZATION (with SESSION/LOCAL variants);
//   - DO; ALTER SYSTEM; ALTER ROLE|USER|DATABASE ... SET/RESET; LOAD; COPY ... PROGRAM;
//   - SET client_encoding / SET NAMES to an encoding whose multibyte characters can contain a
//     backslash byte (SJIS, BIG5, GBK, UHC, GB18030, JOHAB): the server lexes converted text, the
//     guard lexes the client's bytes, and those encodings would make the two disagree.
//   Allowed and flagged (reapplyContextAfter): RESET ALL, DISCARD ALL. Other DISCARDs, other SETs,
//   SET SESSION CHARACTERISTICS: allowed.
// Switch sessions: as pinned, except that a statement of its own
//   SET [SESSION|LOCAL] <tenant setting> {TO|=} <one literal value> | DEFAULT, and
//   RESET <tenant setting>, and
//   SELECT [pg_catalog.]set_config('<tenant setting>', '<literal>' | NULL, true|false)
//   are allowed and reported as changes for the proxy to validate. set_config of another literal
//   setting name is allowed (role, session_authorization and unsafe client encodings excepted);
//   set_config with a computed setting name is refused.
// Global sessions: everything is allowed.
//
// Unterminated quotes, dollar quotes and comments: refused. The server would reject the whole
// message with a syntax error anyway, so nothing a client can legitimately want is lost, and
// refusing means a disagreement between this lexer and the server's about where a quote ends can
// never let an uninspected tail through. (The error the client sees is ours, not the server's;
// text holding none of the words either guard acts on is not lexed at all, see GuardPrefilter,
// and an unterminated quote there gets the server's syntax error.)
//
// standard_conforming_strings: with it off, '...' strings take backslash escapes, which changes
// where they end. When the policy does not say which setting the session has (nil, the default:
// a client may turn it off with a plain SET), text holding a backslash in a '...' string is
// inspected under both readings and refused if either reading is refused or they disagree.
//
// What the guard cannot see: SQL inside string constants executed by the server later (function
// bodies, EXECUTE in PL/pgSQL, prepared statements created elsewhere). The database-side hardening
// (no CREATE, no set_config EXECUTE, no plpgsql for tenants) covers those; the guard is one layer.
//
// Hot path: the lexer reads UTF-8 bytes in place; an ordinary SELECT/INSERT/UPDATE is inspected
// without heap allocation (keywords are compared in place; names are only built after SET/RESET).

/// A change of a tenant setting requested by a switch-mode client.
struct TenantSettingChange: Equatable, Sendable {
    /// Lower-cased setting name, as configured in the policy.
    var name: String
    /// The new value; nil for RESET / SET ... TO DEFAULT / set_config(..., NULL, ...).
    var value: String?
    /// SET LOCAL or set_config(..., true): lasts until the end of the transaction.
    var isLocal: Bool
}

struct GuardPolicy: Equatable, Sendable {
    enum Mode: Equatable, Sendable {
        case pinned, switchTenant, global
    }
    /// Lower-cased GUC names, e.g. ["nile.tenant_id", "nile.user_id"].
    var tenantSettings: Set<String>
    var mode: Mode
    /// The session's standard_conforming_strings, when the proxy tracks it (ParameterStatus);
    /// nil: unknown, inspect both readings where they differ.
    var standardConformingStrings: Bool?

    init(tenantSettings: Set<String>, mode: Mode, standardConformingStrings: Bool? = nil) {
        self.tenantSettings = Set(tenantSettings.map(GuardPolicy.asciiLowercased))
        self.mode = mode
        self.standardConformingStrings = standardConformingStrings
    }

    /// Custom GUC names always have a dot; lets the guard skip `UPDATE t SET col = ...` cheaply.
    var everyTenantSettingHasDot: Bool {
        tenantSettings.allSatisfy { $0.utf8.contains(UInt8(ascii: ".")) }
    }

    static func asciiLowercased(_ s: String) -> String {
        if !s.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) { return s }
        return String(decoding: s.utf8.map { SQLLexer.asciiLower($0) }, as: UTF8.self)
    }
}

/// The guard's decision for one message.
struct GuardVerdict: Equatable, Sendable {
    /// Client-facing reason when refused (send as ErrorResponse 42501); nil when allowed.
    var refusal: String?
    /// Tenant setting changes the statement makes (switch mode only; validate each value).
    var tenantSettingChanges: [TenantSettingChange]
    /// The text holds RESET ALL or DISCARD ALL: re-apply the tenant context before the next
    /// statement of this client runs.
    var reapplyContextAfter: Bool

    init(refusal: String? = nil, tenantSettingChanges: [TenantSettingChange] = [], reapplyContextAfter: Bool = false) {
        self.refusal = refusal
        self.tenantSettingChanges = tenantSettingChanges
        self.reapplyContextAfter = reapplyContextAfter
    }

    static let allow = GuardVerdict()
    static func refuse(reason: String) -> GuardVerdict { GuardVerdict(refusal: reason) }

    var isAllowed: Bool { refusal == nil }
}

struct StatementGuard: Sendable {
    let policy: GuardPolicy

    init(policy: GuardPolicy) {
        self.policy = policy
    }

    /// Inspects the text of a Query or Parse message (without its NUL terminator).
    func inspect(_ sql: String) -> GuardVerdict {
        if policy.mode == .global { return .allow }
        if let verdict = sql.utf8.withContiguousStorageIfAvailable({ inspect(utf8: $0) }) {
            return verdict
        }
        return Array(sql.utf8).withUnsafeBufferPointer { inspect(utf8: $0) }
    }

    /// Inspects UTF-8 bytes in place (e.g. a ByteBuffer's readable bytes).
    func inspect(utf8 bytes: UnsafeRawBufferPointer) -> GuardVerdict {
        inspect(utf8: bytes.bindMemory(to: UInt8.self))
    }

    func inspect(utf8 bytes: UnsafeBufferPointer<UInt8>) -> GuardVerdict {
        if policy.mode == .global { return .allow }
        switch policy.standardConformingStrings {
        case .some(let on):
            var scan = Scan(lexer: SQLLexer(bytes, standardConformingStrings: on), policy: policy, tolerateUnterminated: false)
            return scan.run().verdict
        case .none:
            var primary = Scan(lexer: SQLLexer(bytes, standardConformingStrings: true), policy: policy, tolerateUnterminated: false)
            let (first, sawBackslash) = primary.run()
            guard first.isAllowed, sawBackslash else { return first }
            // standard_conforming_strings might be off: inspect that reading as well. If it is
            // unterminated under that reading, the server (were the setting off) rejects the text.
            var alternative = Scan(lexer: SQLLexer(bytes, standardConformingStrings: false), policy: policy, tolerateUnterminated: true)
            let (second, _) = alternative.run()
            if !second.isAllowed { return second }
            if second != first {
                return .refuse(reason: "statement is ambiguous: a string constant holds a backslash and standard_conforming_strings is not known; use E'' strings or no backslashes")
            }
            return first
        }
    }

    /// The FunctionCall protocol message ('F') calls a function by OID, out of the guard's sight:
    /// refused for pinned and switch sessions, allowed for global ones.
    func inspectFunctionCall() -> GuardVerdict {
        switch policy.mode {
        case .global: return .allow
        case .pinned, .switchTenant:
            return .refuse(reason: "the FunctionCall protocol message is not allowed \(Scan.sessionPhrase(policy.mode))")
        }
    }
}

/// One pass over the text.
private struct Scan {
    var lexer: SQLLexer
    let policy: GuardPolicy
    let tolerateUnterminated: Bool
    var changes: [TenantSettingChange] = []
    var reapply = false

    init(lexer: SQLLexer, policy: GuardPolicy, tolerateUnterminated: Bool) {
        self.lexer = lexer
        self.policy = policy
        self.tolerateUnterminated = tolerateUnterminated
    }

    static func sessionPhrase(_ mode: GuardPolicy.Mode) -> String {
        mode == .pinned ? "for a pinned session" : "for this session"
    }
    var phrase: String { Scan.sessionPhrase(policy.mode) }

    private func refuse(_ reason: String) -> GuardVerdict { .refuse(reason: reason) }

    mutating func run() -> (verdict: GuardVerdict, sawBackslash: Bool) {
        let v = scan()
        return (v, lexer.sawBackslashInStandardString)
    }

    private mutating func scan() -> GuardVerdict {
        var atStatementStart = true
        var statementStart = 0
        while let t = lexer.next() {
            switch t.kind {
            case .unterminated:
                if tolerateUnterminated { return verdict() }
                return refuse("unterminated quoted string, quoted identifier or comment")
            case .punctuation(UInt8(ascii: ";")):
                atStatementStart = true
                continue
            case .identifier:
                if atStatementStart {
                    statementStart = t.start
                    if let r = checkStatementHead(t) { return r }
                } else if lexer.isKeyword(t, "set") {
                    if let r = checkSet(head: false) { return r }
                } else if lexer.isKeyword(t, "reset") {
                    if let r = checkReset(head: false) { return r }
                }
                if lexer.isKeyword(t, "set_config"), let r = checkSetConfig(t, statementStart: statementStart) { return r }
            case .quotedIdentifier, .unicodeIdentifier:
                if atStatementStart { statementStart = t.start }
                if t.kind == .unicodeIdentifier || t.bodyEnd - t.bodyStart >= 10,
                   let name = lexer.identifierValue(t), GuardPolicy.asciiLowercased(name) == "set_config",
                   let r = checkSetConfig(t, statementStart: statementStart) {
                    return r
                }
            default:
                if atStatementStart { statementStart = t.start }
            }
            atStatementStart = false
        }
        return verdict()
    }

    private func verdict() -> GuardVerdict {
        GuardVerdict(refusal: nil, tenantSettingChanges: changes, reapplyContextAfter: reapply)
    }

    // MARK: statement heads

    private mutating func checkStatementHead(_ t: SQLToken) -> GuardVerdict? {
        switch t.end - t.start {
        case 2:
            if lexer.isKeyword(t, "do") { return refuse("DO blocks are not allowed \(phrase)") }
        case 3:
            if lexer.isKeyword(t, "set") { return checkSet(head: true) }
        case 4:
            if lexer.isKeyword(t, "load") { return refuse("LOAD is not allowed \(phrase)") }
            if lexer.isKeyword(t, "copy") {
                var p = lexer
                while let u = p.next(), !u.isSemicolon {
                    if p.isKeyword(u, "program") { return refuse("COPY ... PROGRAM is not allowed \(phrase)") }
                }
            }
        case 5:
            if lexer.isKeyword(t, "reset") { return checkReset(head: true) }
            if lexer.isKeyword(t, "alter") {
                var p = lexer
                guard let what = p.next() else { return nil }
                if p.isKeyword(what, "system") { return refuse("ALTER SYSTEM is not allowed \(phrase)") }
                if p.isKeyword(what, "role") || p.isKeyword(what, "user") || p.isKeyword(what, "database") {
                    while let u = p.next(), !u.isSemicolon {
                        if p.isKeyword(u, "set") || p.isKeyword(u, "reset") {
                            return refuse("ALTER \(p.text(what).uppercased()) ... \(p.text(u).uppercased()) is not allowed \(phrase)")
                        }
                    }
                }
            }
        case 7:
            if lexer.isKeyword(t, "discard") {
                var p = lexer
                if let u = p.next(), p.isKeyword(u, "all") { reapply = true }
            }
        default:
            break
        }
        return nil
    }

    // MARK: SET / RESET

    /// Reads `name(.name)*` starting with `first`; leaves `p` after the name.
    private func readName(_ first: SQLToken, _ p: inout SQLLexer) -> String? {
        p.readQualifiedName(first)
    }

    /// After the SET keyword (the lexer is positioned after it).
    private mutating func checkSet(head: Bool) -> GuardVerdict? {
        var p = lexer
        guard var t = p.next() else { return nil }
        var isLocal = false
        if p.isKeyword(t, "session") || p.isKeyword(t, "local") {
            var q = p
            let n = q.next()
            if let n, p.isKeyword(t, "session") {
                if p.isKeyword(n, "authorization") {
                    return head ? refuse("SET SESSION AUTHORIZATION is not allowed \(phrase)") : nil
                }
                if p.isKeyword(n, "characteristics") { return nil }
            }
            guard let n else { return nil }
            if case .punctuation(UInt8(ascii: ".")) = n.kind {
                // `session.x` / `local.x`: a setting name, not a modifier
            } else {
                isLocal = p.isKeyword(t, "local")
                t = n
                p = q
                if p.isKeyword(t, "session") {
                    var r = p
                    if let a = r.next(), r.isKeyword(a, "authorization") {
                        return head ? refuse("SET SESSION AUTHORIZATION is not allowed \(phrase)") : nil
                    }
                }
            }
        }
        // Cheap exit for the common non-head case (UPDATE ... SET col = ...): an unquoted name
        // without a dot cannot be a tenant setting when every tenant setting has a dot.
        if !head, policy.everyTenantSettingHasDot, case .identifier = t.kind {
            var q = p
            if let n = q.next(), case .punctuation(UInt8(ascii: ".")) = n.kind {} else { return nil }
        }
        guard let name = readName(t, &p) else { return nil }
        if policy.tenantSettings.contains(name) {
            guard policy.mode == .switchTenant else {
                return refuse("SET of \(name) is not allowed \(phrase)")
            }
            guard head else {
                return refuse("SET of \(name) is only allowed as a statement of its own")
            }
            guard let op = p.next(), p.isKeyword(op, "to") || p.isOperator(op, "=") else {
                return refuse("SET of \(name) must have the form SET \(name) TO '<value>'")
            }
            switch parseSingleValue(&p) {
            case .value(let v):
                changes.append(TenantSettingChange(name: name, value: v, isLocal: isLocal))
                return nil
            case .invalid:
                return refuse("SET of \(name) must have the form SET \(name) TO '<value>'")
            }
        }
        guard head else { return nil }
        switch name {
        case "role":
            return refuse("SET ROLE is not allowed \(phrase)")
        case "session_authorization":
            return refuse("SET SESSION AUTHORIZATION is not allowed \(phrase)")
        case "client_encoding", "names":
            if name == "client_encoding" {
                guard let op = p.next(), p.isKeyword(op, "to") || p.isOperator(op, "=") else { return nil }
            }
            switch parseSingleValue(&p) {
            case .value(let v):
                if let v, StatementGuard.isUnsafeClientEncoding(v) {
                    return refuse("client_encoding \(v) is not allowed \(phrase); use UTF8")
                }
                return nil
            case .invalid:
                return refuse("SET \(name) must name a single encoding")
            }
        default:
            return nil
        }
    }

    /// After the RESET keyword.
    private mutating func checkReset(head: Bool) -> GuardVerdict? {
        var p = lexer
        guard let t = p.next() else { return nil }
        if p.isKeyword(t, "all") {
            var q = p
            if let n = q.next(), case .punctuation(UInt8(ascii: ".")) = n.kind {
                // `all.x`: a setting name
            } else {
                if head { reapply = true }
                return nil
            }
        }
        if p.isKeyword(t, "session") {
            var q = p
            if let n = q.next(), q.isKeyword(n, "authorization") {
                return head ? refuse("RESET SESSION AUTHORIZATION is not allowed \(phrase)") : nil
            }
        }
        guard let name = readName(t, &p) else { return nil }
        if policy.tenantSettings.contains(name) {
            guard policy.mode == .switchTenant else { return refuse("RESET of \(name) is not allowed \(phrase)") }
            guard head else { return refuse("RESET of \(name) is only allowed as a statement of its own") }
            if let n = p.next(), !n.isSemicolon { return refuse("RESET of \(name) must have the form RESET \(name)") }
            changes.append(TenantSettingChange(name: name, value: nil, isLocal: false))
            return nil
        }
        guard head else { return nil }
        if name == "role" { return refuse("RESET ROLE is not allowed \(phrase)") }
        if name == "session_authorization" { return refuse("RESET SESSION AUTHORIZATION is not allowed \(phrase)") }
        return nil
    }

    private enum ValueParse { case value(String?), invalid }

    /// One value (string constant of any quoting, identifier, number, DEFAULT), then the end of
    /// the statement. Follows the server's flattening of SET values for a single argument.
    private func parseSingleValue(_ p: inout SQLLexer) -> ValueParse {
        guard let v = p.next() else { return .invalid }
        var result: String?
        switch v.kind {
        case .identifier:
            if p.isKeyword(v, "default") { result = nil } else {
                guard let s = p.identifierValue(v) else { return .invalid }
                result = s
            }
        case .quotedIdentifier, .unicodeIdentifier:
            guard let s = p.identifierValue(v) else { return .invalid }
            result = s
        case .string(.bit), .string(.hex):
            return .invalid
        case .string, .dollarString:
            guard let s = p.stringValue(v) else { return .invalid }
            result = s
        case .number:
            guard let s = normalizedNumber(p.text(v)) else { return .invalid }
            result = s
        case .operator:
            let sign = p.text(v)
            guard sign == "-" || sign == "+", let n = p.next(), case .number = n.kind,
                  let s = normalizedNumber(p.text(n)) else { return .invalid }
            result = sign == "-" ? "-" + s : s
        default:
            return .invalid
        }
        if let n = p.next(), !n.isSemicolon { return .invalid }
        return .value(result)
    }

    /// Integers that fit in int4 are printed back as the server prints them (leading zeros
    /// dropped); decimals are kept as written; other spellings are refused.
    private func normalizedNumber(_ text: String) -> String? {
        if text.utf8.allSatisfy(SQLLexer.isDigit) {
            if let i = Int32(text) { return String(i) }
            return text
        }
        if text.utf8.allSatisfy({ SQLLexer.isDigit($0) || $0 == UInt8(ascii: ".") || $0 | 0x20 == UInt8(ascii: "e") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "+") }) {
            return text
        }
        return nil
    }

    // MARK: set_config

    private mutating func checkSetConfig(_ callToken: SQLToken, statementStart: Int) -> GuardVerdict? {
        guard policy.mode == .switchTenant else {
            return refuse("set_config() is not allowed \(phrase)")
        }
        // Switch mode: the setting name must be a literal we can read.
        var p = lexer
        guard let open = p.next(), case .punctuation(UInt8(ascii: "(")) = open.kind else {
            return refuse("set_config must be called with literal arguments \(phrase)")
        }
        guard let nameToken = p.next(), let rawName = literalString(nameToken, &p),
              let comma = p.next(), case .punctuation(UInt8(ascii: ",")) = comma.kind else {
            return refuse("set_config with a computed setting name is not allowed \(phrase)")
        }
        let name = GuardPolicy.asciiLowercased(rawName)
        if name == "role" || name == "session_authorization" {
            return refuse("set_config of \(name) is not allowed \(phrase)")
        }
        let isTenant = policy.tenantSettings.contains(name)
        if !isTenant && name != "client_encoding" { return nil }
        let form = "set_config of \(name) must have the form SELECT set_config('\(name)', '<value>', false)"
        // value
        guard let valueToken = p.next() else { return refuse(form) }
        var value: String?
        if p.isKeyword(valueToken, "null") {
            value = nil
        } else {
            guard let v = literalString(valueToken, &p) else { return refuse(form) }
            value = v
        }
        if !isTenant {
            if let value, StatementGuard.isUnsafeClientEncoding(value) {
                return refuse("client_encoding \(value) is not allowed \(phrase); use UTF8")
            }
            if value == nil { return nil }
            // a computed value for client_encoding would be caught above only when literal
            return nil
        }
        guard let comma2 = p.next(), case .punctuation(UInt8(ascii: ",")) = comma2.kind,
              let localToken = p.next() else { return refuse(form) }
        let isLocal: Bool
        if p.isKeyword(localToken, "true") {
            isLocal = true
        } else if p.isKeyword(localToken, "false") {
            isLocal = false
        } else if let s = literalString(localToken, &p), let b = parseBool(s) {
            isLocal = b
        } else {
            return refuse(form)
        }
        guard let close = p.next(), case .punctuation(UInt8(ascii: ")")) = close.kind else { return refuse(form) }
        if let after = p.next(), !after.isSemicolon { return refuse(form) }
        // The statement must be exactly SELECT [pg_catalog.]set_config(...): a call in a WHERE or
        // CASE might not run, and the proxy would believe a change that did not happen.
        var s = lexer
        s.position = statementStart
        guard let sel = s.next(), s.isKeyword(sel, "select"), var fn = s.next() else { return refuse(form) }
        if let v = s.identifierValue(fn), GuardPolicy.asciiLowercased(v) == "pg_catalog" {
            guard let dot = s.next(), case .punctuation(UInt8(ascii: ".")) = dot.kind, let f = s.next() else { return refuse(form) }
            fn = f
        }
        guard fn.start == callToken.start else { return refuse(form) }
        changes.append(TenantSettingChange(name: name, value: value, isLocal: isLocal))
        return nil
    }

    /// A string constant (any quoting but bit strings) standing alone as an argument.
    private func literalString(_ t: SQLToken, _ p: inout SQLLexer) -> String? {
        switch t.kind {
        case .string(.bit), .string(.hex): return nil
        case .string, .dollarString: return p.stringValue(t)
        default: return nil
        }
    }

    private func parseBool(_ s: String) -> Bool? {
        switch GuardPolicy.asciiLowercased(s.trimmingSpaces()) {
        case "t", "tr", "tru", "true", "y", "ye", "yes", "on", "1": return true
        case "f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0": return false
        default: return nil
        }
    }
}

extension StatementGuard {
    /// Client encodings whose multibyte characters may contain the byte 0x5C (backslash).
    static func isUnsafeClientEncoding(_ name: String) -> Bool {
        // The server compares encoding names ignoring case and non-alphanumerics.
        let cleaned = String(decoding: name.utf8.compactMap { c -> UInt8? in
            let l = SQLLexer.asciiLower(c)
            return (SQLLexer.isDigit(l) || (l >= 0x61 && l <= 0x7A)) ? l : nil
        }, as: UTF8.self)
        for marker in ["sjis", "shiftjis", "mskanji", "big5", "gbk", "uhc", "gb18030", "johab",
                       "932", "936", "949", "950"] where cleaned.contains(marker) {
            return true
        }
        return false
    }
}

private extension String {
    func trimmingSpaces() -> String {
        let u = Array(utf8)
        var a = 0, b = u.count
        while a < b && SQLLexer.isSpace(u[a]) { a += 1 }
        while b > a && SQLLexer.isSpace(u[b - 1]) { b -= 1 }
        return String(decoding: u[a..<b], as: UTF8.self)
    }
}
