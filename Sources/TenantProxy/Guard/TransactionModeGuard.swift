// TransactionModeGuard: decides whether client SQL (a Query message, possibly several statements,
// or a Parse message) may run on a connection lent for one transaction (transaction pool mode).
//
// In transaction mode the upstream connection goes to another client (possibly another tenant)
// once the transaction ends, so anything a statement leaves on the connection at session level
// would be seen by the next borrower. Such statements are refused (send ErrorResponse with
// `TransactionModeVerdict.sqlState`, 0A000 feature_not_supported; the client's session stays
// usable). Like StatementGuard it works on SQLLexer tokens, never on raw text, so keywords inside
// strings, comments and dollar quotes do not count, and quoted identifiers are not keywords.
//
// Refused (in any statement of the text):
//   - CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY TABLE/VIEW/SEQUENCE/..., anywhere in a
//     statement (so also EXPLAIN ANALYZE CREATE TEMP ...), except CREATE ... TABLE ... ON COMMIT
//     DROP (the ON COMMIT clause before a depth-0 AS);
//     SELECT ... INTO [GLOBAL|LOCAL] TEMP|TEMPORARY (INTO after INSERT/MERGE is not SELECT INTO);
//     objects created in the pg_temp / pg_temp_N schema (`CREATE TABLE pg_temp.t`,
//     `CREATE FUNCTION pg_temp.f()`, `CREATE VIEW v AS SELECT * FROM pg_temp.t` which makes v
//     temporary, `SELECT ... INTO pg_temp.t`), with the same ON COMMIT DROP exception for tables;
//   - DECLARE ... WITH HOLD (WITH HOLD between DECLARE and the first FOR);
//   - calls (name followed by `(`) of pg_advisory_lock, pg_advisory_lock_shared,
//     pg_try_advisory_lock, pg_try_advisory_lock_shared, pg_advisory_unlock,
//     pg_advisory_unlock_shared, pg_advisory_unlock_all, in any spelling: any case, "quoted",
//     U&"..." escapes, schema-qualified (the name token is what is matched). The *_xact_*
//     variants are allowed;
//   - LISTEN, UNLISTEN; LOAD;
//   - PREPARE name ... (PREPARE TRANSACTION 'gid' is allowed), EXECUTE name (also after EXPLAIN
//     and in CREATE TABLE ... AS EXECUTE);
//   - DEALLOCATE in a text holding any other statement. A text that is exactly one
//     `DEALLOCATE [PREPARE] name|ALL` (empty statements `;` around it are fine) is allowed and
//     reported in `deallocate`: the proxy answers it itself;
//   - session-level SET / RESET (SET, SET SESSION, RESET; not SET LOCAL) of a parameter not in
//     `trackedParameters` or `readBack` (pool.track_extra_parameters; such a SET is allowed and
//     reported in `changesReadBackSetting`): the name in any spelling (case, "quoted",
//     dotted). SET TIME ZONE is timezone and SET NAMES is client_encoding (tracked: allowed);
//     SET SCHEMA is search_path and SET XML OPTION is xmloption (refused); SET ROLE, SET SESSION AUTHORIZATION, RESET ROLE,
//     RESET SESSION AUTHORIZATION, SET SESSION CHARACTERISTICS AS TRANSACTION: refused;
//   - set_config(name, value, is_local) unless is_local is literally true ('true', 'on', ...)
//     or name is a literal tracked parameter.
// Allowed: everything else, e.g. SET LOCAL of anything, SET TRANSACTION, SET CONSTRAINTS,
// RESET ALL, RESET TIME ZONE, DISCARD (DISCARD ALL and a lone DEALLOCATE ALL set
// `discardsPreparedStatements`), BEGIN/COMMIT/ROLLBACK/SAVEPOINT, PREPARE TRANSACTION,
// COMMIT/ROLLBACK PREPARED, NOTIFY, pg_notify(), ordinary DML/DDL, UPDATE ... SET.
//
// Unterminated quotes and comments are refused, as StatementGuard does (the server would reject
// the text anyway; refusing means a lexer disagreement can never hide a statement).
// standard_conforming_strings unknown (nil): text holding a backslash in a '...' string is
// inspected under both readings and refused if either reading is refused or they disagree.
//
// What it cannot see: SQL run later from strings (function bodies, DO blocks, EXECUTE in
// PL/pgSQL), and indirect routes such as SET LOCAL search_path = pg_temp followed by an
// unqualified CREATE TABLE, or extension functions that keep session state (dblink_connect).
//
// Hot path: tokens are compared in place; an ordinary SELECT/INSERT/UPDATE is inspected without
// heap allocation. Names are only built after SET/RESET/DEALLOCATE, for quoted identifiers of a
// plausible length, and for refusal messages.

struct TransactionModeVerdict: Equatable, Sendable {
    enum Deallocate: Equatable, Sendable {
        case all
        case named(String)
    }

    /// Client-facing reason when refused (send as ErrorResponse with `sqlState`); nil when allowed.
    var refusal: String?
    /// The whole text is one DEALLOCATE statement: the proxy answers it itself (CommandComplete
    /// "DEALLOCATE") instead of forwarding it.
    var deallocate: Deallocate?
    /// The text holds DISCARD ALL, or is DEALLOCATE ALL: every prepared statement on the
    /// connection is (or is to be) dropped.
    var discardsPreparedStatements: Bool
    /// The text SETs, RESETs or set_config()s (not locally) a parameter of
    /// `TransactionModeGuard.readBack`: the server does not report its new value, so the proxy
    /// reads it back after the transaction.
    var changesReadBackSetting: Bool

    init(refusal: String? = nil, deallocate: Deallocate? = nil, discardsPreparedStatements: Bool = false,
         changesReadBackSetting: Bool = false) {
        self.refusal = refusal
        self.deallocate = deallocate
        self.discardsPreparedStatements = discardsPreparedStatements
        self.changesReadBackSetting = changesReadBackSetting
    }

    static let allow = TransactionModeVerdict()
    static func refuse(_ reason: String) -> TransactionModeVerdict { TransactionModeVerdict(refusal: reason) }
    /// feature_not_supported
    static let sqlState = "0A000"

    var isAllowed: Bool { refusal == nil }
}

struct TransactionModeGuard: Sendable {
    /// Parameters the proxy tracks and restores itself (a session-level SET of these is allowed).
    static let trackedParameters: Set<String> = [
        "client_encoding", "datestyle", "timezone", "intervalstyle", "application_name", "standard_conforming_strings",
    ]

    /// The session's standard_conforming_strings when known; nil: inspect both readings where
    /// they differ.
    var standardConformingStrings: Bool?

    /// Settings the server does not report that clients may SET at session level all the same
    /// (`pool.track_extra_parameters`): the proxy reads their values back after the transaction
    /// and restores them on every lend, as it does the reported ones.
    let readBack: Set<String>
    /// `trackedParameters`, the read-back ones, and more that the proxy restores itself for this
    /// session (a switch user's tenant setting).
    private let tracked: Set<String>

    init(standardConformingStrings: Bool? = nil, alsoTracked: Set<String> = [], readBack: Set<String> = []) {
        self.standardConformingStrings = standardConformingStrings
        self.readBack = readBack
        self.tracked = TransactionModeGuard.trackedParameters.union(alsoTracked).union(readBack)
    }

    func inspect(_ sql: String) -> TransactionModeVerdict {
        if let verdict = sql.utf8.withContiguousStorageIfAvailable({ inspect(utf8: $0) }) {
            return verdict
        }
        return Array(sql.utf8).withUnsafeBufferPointer { inspect(utf8: $0) }
    }

    /// Query/Parse text without its NUL terminator.
    func inspect(utf8 bytes: UnsafeRawBufferPointer) -> TransactionModeVerdict {
        inspect(utf8: bytes.bindMemory(to: UInt8.self))
    }

    func inspect(utf8 bytes: UnsafeBufferPointer<UInt8>) -> TransactionModeVerdict {
        switch standardConformingStrings {
        case .some(let on):
            var scan = TransactionScan(lexer: SQLLexer(bytes, standardConformingStrings: on), tolerateUnterminated: false, tracked: tracked,
                                       readBack: readBack)
            return scan.run().verdict
        case .none:
            var primary = TransactionScan(lexer: SQLLexer(bytes, standardConformingStrings: true), tolerateUnterminated: false, tracked: tracked,
                                          readBack: readBack)
            let (first, sawBackslash) = primary.run()
            guard first.isAllowed, sawBackslash else { return first }
            var alternative = TransactionScan(lexer: SQLLexer(bytes, standardConformingStrings: false), tolerateUnterminated: true, tracked: tracked,
                                              readBack: readBack)
            let (second, _) = alternative.run()
            if !second.isAllowed { return second }
            if second != first {
                return .refuse("statement is ambiguous: a string constant holds a backslash and standard_conforming_strings is not known; use E'' strings or no backslashes")
            }
            return first
        }
    }
}

/// One pass over the text.
private struct TransactionScan {
    var lexer: SQLLexer
    let tolerateUnterminated: Bool
    let tracked: Set<String>
    let readBack: Set<String>
    /// A statement sets a read-back parameter (see TransactionModeVerdict.changesReadBackSetting).
    var changesReadBack = false
    /// Non-empty statements seen.
    var statements = 0
    var discards = false
    var sawDeallocate = false
    var deallocateTarget: TransactionModeVerdict.Deallocate?

    /// Facts about the current statement.
    struct Statement {
        /// A CREATE keyword was seen: references to pg_temp.x create temporary objects.
        var creates = false
        /// ... but it is CREATE TABLE ... ON COMMIT DROP.
        var onCommitDropTable = false
        /// IMPORT FOREIGN SCHEMA ... INTO <schema>: INTO is not SELECT INTO.
        var isImport = false
    }

    init(lexer: SQLLexer, tolerateUnterminated: Bool, tracked: Set<String>, readBack: Set<String>) {
        self.tracked = tracked
        self.readBack = readBack
        self.lexer = lexer
        self.tolerateUnterminated = tolerateUnterminated
    }

    static let suffix = " is not supported in transaction pool mode"

    mutating func run() -> (verdict: TransactionModeVerdict, sawBackslash: Bool) {
        let v = scan()
        return (v, lexer.sawBackslashInStandardString)
    }

    private mutating func scan() -> TransactionModeVerdict {
        var atStart = true
        var prev: SQLToken?
        var statement = Statement()
        while let t = lexer.next() {
            switch t.kind {
            case .unterminated:
                if tolerateUnterminated { return verdict() }
                return .refuse("unterminated quoted string, quoted identifier or comment")
            case .punctuation(UInt8(ascii: ";")):
                atStart = true
                prev = nil
                continue
            default:
                break
            }
            if atStart {
                atStart = false
                statements += 1
                statement = Statement()
                if case .identifier = t.kind, let r = checkHead(t, lexer, &statement) { return .refuse(r) }
            }
            switch t.kind {
            case .identifier:
                if let r = checkWord(t, prev: prev, &statement) { return .refuse(r) }
            case .quotedIdentifier, .unicodeIdentifier:
                if let r = checkQuotedName(t, &statement) { return .refuse(r) }
            default:
                break
            }
            prev = t
        }
        return verdict()
    }

    private func verdict() -> TransactionModeVerdict {
        guard sawDeallocate else {
            return TransactionModeVerdict(discardsPreparedStatements: discards, changesReadBackSetting: changesReadBack)
        }
        if statements > 1 {
            return .refuse("DEALLOCATE combined with other statements" + TransactionScan.suffix
                           + "; send DEALLOCATE as a statement of its own (the proxy answers it)")
        }
        // A malformed DEALLOCATE goes to the server, which rejects it.
        return TransactionModeVerdict(deallocate: deallocateTarget,
                                      discardsPreparedStatements: discards || deallocateTarget == .all)
    }

    // MARK: statement heads

    /// `t` is the first token of a statement (an unquoted word); `after` is positioned after it.
    private mutating func checkHead(_ t: SQLToken, _ after: SQLLexer, _ statement: inout Statement) -> String? {
        let p = after
        switch t.end - t.start {
        case 3:
            if p.isKeyword(t, "set") { return checkSet(p) }
        case 4:
            if p.isKeyword(t, "load") {
                return "LOAD" + TransactionScan.suffix + ": a loaded library stays in the server process; use session pool mode"
            }
        case 5:
            if p.isKeyword(t, "reset") { return checkReset(p) }
        case 6:
            if p.isKeyword(t, "listen") {
                return "LISTEN" + TransactionScan.suffix
                    + ": notifications would go to whichever client uses the connection next; use session pool mode"
            }
            if p.isKeyword(t, "import") { statement.isImport = true }
        case 7:
            if p.isKeyword(t, "discard") {
                var q = p
                if let u = q.next(), q.isKeyword(u, "all") { discards = true }
            } else if p.isKeyword(t, "prepare") {
                var q = p
                if let u = q.next(), q.isKeyword(u, "transaction"), let gid = q.next() {
                    switch gid.kind {
                    case .string, .dollarString: return nil  // PREPARE TRANSACTION 'gid' (two-phase commit)
                    default: break
                    }
                }
                return "PREPARE" + TransactionScan.suffix
                    + ": SQL-level prepared statements outlive the transaction; use protocol-level prepared statements or session pool mode"
            } else if p.isKeyword(t, "execute") {
                return executeRefusal
            } else if p.isKeyword(t, "declare") {
                return checkDeclare(p)
            } else if p.isKeyword(t, "explain") {
                return checkExplain(p)
            }
        case 8:
            // UNLISTEN only removes state (drivers' reset queries send UNLISTEN *): allowed.
            break
        case 10:
            if p.isKeyword(t, "deallocate") { parseDeallocate(p) }
        default:
            break
        }
        return nil
    }

    private var executeRefusal: String {
        "EXECUTE" + TransactionScan.suffix
            + ": SQL-level prepared statements outlive the transaction; use protocol-level prepared statements or session pool mode"
    }

    /// EXPLAIN [ANALYZE] [VERBOSE] stmt | EXPLAIN (options) stmt: the explained statement's head.
    private func checkExplain(_ after: SQLLexer) -> String? {
        var p = after
        guard var t = p.next() else { return nil }
        if case .punctuation(UInt8(ascii: "(")) = t.kind {
            var depth = 1
            while depth > 0 {
                guard let u = p.next(), !u.isSemicolon else { return nil }
                if case .punctuation(let c) = u.kind {
                    if c == UInt8(ascii: "(") { depth += 1 } else if c == UInt8(ascii: ")") { depth -= 1 }
                }
            }
            guard let n = p.next() else { return nil }
            t = n
        } else {
            while p.isKeyword(t, "analyze") || p.isKeyword(t, "analyse") || p.isKeyword(t, "verbose") {
                guard let n = p.next() else { return nil }
                t = n
            }
        }
        if p.isKeyword(t, "execute") { return executeRefusal }
        if p.isKeyword(t, "declare") { return checkDeclare(p) }
        return nil  // CREATE ... and SELECT ... INTO are caught wherever they appear
    }

    // MARK: SET / RESET

    private func nextIsDot(_ p: SQLLexer) -> Bool {
        var q = p
        if let n = q.next(), case .punctuation(UInt8(ascii: ".")) = n.kind { return true }
        return false
    }

    /// Reads `name(.name)*` starting with `first`; leaves `p` after the name. Lower-cased.
    private func readName(_ first: SQLToken, _ p: inout SQLLexer) -> String? {
        p.readQualifiedName(first)
    }

    private func settingRefusal(_ what: String) -> String {
        what + TransactionScan.suffix
            + ": a session-level setting would stay on the connection for the next client; use SET LOCAL inside a transaction, or session pool mode"
    }

    private func roleRefusal(_ what: String) -> String {
        what + TransactionScan.suffix
            + ": it changes the connection's session state; use SET LOCAL ROLE inside a transaction, or session pool mode"
    }

    /// After a statement-head SET.
    private mutating func checkSet(_ after: SQLLexer) -> String? {
        var p = after
        guard var t = p.next() else { return nil }
        if p.isKeyword(t, "local") && !nextIsDot(p) { return nil }  // SET LOCAL: lasts until the transaction ends
        if p.isKeyword(t, "session") && !nextIsDot(p) {
            guard let n = p.next() else { return nil }
            if p.isKeyword(n, "authorization") { return roleRefusal("SET SESSION AUTHORIZATION") }
            if p.isKeyword(n, "characteristics") {
                return "SET SESSION CHARACTERISTICS" + TransactionScan.suffix
                    + ": it changes the connection's defaults; use SET TRANSACTION inside a transaction, or session pool mode"
            }
            t = n
        }
        if !nextIsDot(p) {
            if p.isKeyword(t, "transaction") || p.isKeyword(t, "constraints") { return nil }  // transaction-level
            if p.isKeyword(t, "names") { return nil }  // client_encoding: tracked
            if p.isKeyword(t, "role") { return roleRefusal("SET ROLE") }
            if p.isKeyword(t, "schema") { return settingRefusal("SET SCHEMA (search_path)") }
            if p.isKeyword(t, "time") {
                var q = p
                if let z = q.next(), q.isKeyword(z, "zone") { return nil }  // timezone: tracked
            }
            if p.isKeyword(t, "xml") {
                var q = p
                if let o = q.next(), q.isKeyword(o, "option") { return settingRefusal("SET XML OPTION (xmloption)") }
            }
            if p.isKeyword(t, "session") {  // SET SESSION SESSION AUTHORIZATION
                var q = p
                if let a = q.next(), q.isKeyword(a, "authorization") { return roleRefusal("SET SESSION AUTHORIZATION") }
            }
        }
        guard let name = readName(t, &p) else { return nil }  // not a SET the server accepts
        if tracked.contains(name) { return allowTracked(name) }
        switch name {
        case "role": return roleRefusal("SET ROLE")
        case "session_authorization": return roleRefusal("SET SESSION AUTHORIZATION")
        default: return settingRefusal("SET \(name)")
        }
    }

    /// A session-level change of a tracked parameter: allowed; noted when its value is to be read back.
    private mutating func allowTracked(_ name: String) -> String? {
        if readBack.contains(name) { changesReadBack = true }
        return nil
    }

    /// After a statement-head RESET.
    private mutating func checkReset(_ after: SQLLexer) -> String? {
        var p = after
        guard let t = p.next() else { return nil }
        if !nextIsDot(p) {
            if p.isKeyword(t, "all") { return nil }  // tracked parameters are restored by the proxy
            if p.isKeyword(t, "role") { return roleRefusal("RESET ROLE") }
            var q = p
            let n = q.next()
            if let n, p.isKeyword(t, "time"), q.isKeyword(n, "zone") { return nil }
            if let n, p.isKeyword(t, "transaction"), q.isKeyword(n, "isolation") { return nil }
            if let n, p.isKeyword(t, "session"), q.isKeyword(n, "authorization") {
                return roleRefusal("RESET SESSION AUTHORIZATION")
            }
        }
        guard let name = readName(t, &p) else { return nil }
        if tracked.contains(name) { return allowTracked(name) }
        switch name {
        case "role": return roleRefusal("RESET ROLE")
        case "session_authorization": return roleRefusal("RESET SESSION AUTHORIZATION")
        default: return settingRefusal("RESET \(name)")
        }
    }

    // MARK: DECLARE, DEALLOCATE

    /// After DECLARE: `name [options] CURSOR [WITH|WITHOUT HOLD] FOR query`.
    private func checkDeclare(_ after: SQLLexer) -> String? {
        var p = after
        guard let name = p.next(), !name.isSemicolon else { return nil }
        while let u = p.next(), !u.isSemicolon, !p.isKeyword(u, "for") {
            if p.isKeyword(u, "with") {
                var q = p
                if let h = q.next(), q.isKeyword(h, "hold") {
                    return "DECLARE ... WITH HOLD" + TransactionScan.suffix
                        + ": a holdable cursor outlives the transaction; use a cursor without HOLD inside a transaction, or session pool mode"
                }
            }
        }
        return nil
    }

    private mutating func parseDeallocate(_ after: SQLLexer) {
        sawDeallocate = true
        deallocateTarget = nil
        var p = after
        guard var t = p.next(), !t.isSemicolon else { return }
        if p.isKeyword(t, "prepare") {
            var q = p
            if let n = q.next(), !n.isSemicolon { t = n; p = q }  // else: a statement named "prepare"
        }
        let target: TransactionModeVerdict.Deallocate
        if p.isKeyword(t, "all") {
            target = .all
        } else if t.isIdentifierLike, let name = p.identifierValue(t) {
            target = .named(name)
        } else {
            return
        }
        if let n = p.next(), !n.isSemicolon { return }
        deallocateTarget = target
    }

    // MARK: words anywhere in a statement

    private static let advisoryNames: [StaticString] = [
        // The unlock functions only remove state (drivers' reset queries call pg_advisory_unlock_all).
        "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
    ]

    /// True when the unquoted word `t` starts with `prefix` (lower-case ASCII), ignoring case.
    private func hasPrefix(_ t: SQLToken, _ prefix: StaticString) -> Bool {
        let n = prefix.utf8CodeUnitCount
        guard t.end - t.start >= n else { return false }
        let k = prefix.utf8Start
        for i in 0..<n where SQLLexer.asciiLower(lexer.bytes[t.start + i]) != k[i] { return false }
        return true
    }

    private func nextIsOpenParen() -> Bool {
        var q = lexer
        if let n = q.next(), case .punctuation(UInt8(ascii: "(")) = n.kind { return true }
        return false
    }

    /// An unquoted word anywhere in a statement; the lexer is positioned after it.
    private mutating func checkWord(_ t: SQLToken, prev: SQLToken?, _ statement: inout Statement) -> String? {
        let length = t.end - t.start
        switch length {
        case 4:
            if lexer.isKeyword(t, "into") { return checkInto(prev: prev, statement) }
            return nil
        case 6:
            if lexer.isKeyword(t, "create") { return checkCreate(&statement) }
            return nil
        case 10:
            if lexer.isKeyword(t, "set_config"), nextIsOpenParen() { return checkSetConfig() }
            return nil
        default:
            break
        }
        guard length >= 7, hasPrefix(t, "pg_") else { return nil }
        if statement.creates, !statement.onCommitDropTable, isPgTemp(t), nextIsDot(lexer) {
            return pgTempRefusal
        }
        if length >= 16 {
            for name in TransactionScan.advisoryNames where lexer.isKeyword(t, name) {
                return nextIsOpenParen() ? advisoryRefusal("\(name)") : nil
            }
        }
        return nil
    }

    /// A "quoted" or U&"..." identifier: it names a function or schema, never a keyword.
    private mutating func checkQuotedName(_ t: SQLToken, _ statement: inout Statement) -> String? {
        guard t.kind == .unicodeIdentifier || t.bodyEnd - t.bodyStart >= 7,
              let raw = lexer.identifierValue(t) else { return nil }
        // Names differing only in case are different functions to the server; refused anyway
        // (the safe reading), as StatementGuard does for set_config.
        let name = GuardPolicy.asciiLowercased(raw)
        if name == "set_config" { return nextIsOpenParen() ? checkSetConfig() : nil }
        if statement.creates, !statement.onCommitDropTable,
           name == "pg_temp" || (name.hasPrefix("pg_temp_") && name.utf8.dropFirst(8).allSatisfy(SQLLexer.isDigit)),
           nextIsDot(lexer) {
            return pgTempRefusal
        }
        for advisory in TransactionScan.advisoryNames where name == "\(advisory)" {
            return nextIsOpenParen() ? advisoryRefusal(name) : nil
        }
        return nil
    }

    private func advisoryRefusal(_ name: String) -> String {
        let alternative = name.contains("unlock") ? "use the pg_advisory_xact_* functions" : "use pg_advisory_xact_lock"
        return "session-level advisory lock function \(name)()" + TransactionScan.suffix
            + ": the lock would outlive the transaction; \(alternative), or session pool mode"
    }

    private var pgTempRefusal: String {
        "creating objects in the pg_temp schema" + TransactionScan.suffix
            + ": temporary objects outlive the transaction; use CREATE TEMP TABLE ... ON COMMIT DROP, or session pool mode"
    }

    /// Unquoted pg_temp or pg_temp_<digits>.
    private func isPgTemp(_ t: SQLToken) -> Bool {
        if lexer.isKeyword(t, "pg_temp") { return true }
        guard case .identifier = t.kind, t.end - t.start > 8, hasPrefix(t, "pg_temp_") else { return false }
        for i in (t.start + 8)..<t.end where !SQLLexer.isDigit(lexer.bytes[i]) { return false }
        return true
    }

    private func isPgTempName(_ t: SQLToken, _ p: SQLLexer) -> Bool {
        if case .identifier = t.kind { return isPgTemp(t) }
        guard t.isIdentifierLike, let raw = p.identifierValue(t) else { return false }
        let name = GuardPolicy.asciiLowercased(raw)
        return name == "pg_temp" || (name.hasPrefix("pg_temp_") && name.utf8.count > 8 && name.utf8.dropFirst(8).allSatisfy(SQLLexer.isDigit))
    }

    /// After CREATE (anywhere: a statement head, after EXPLAIN ANALYZE, in CREATE SCHEMA ...).
    private mutating func checkCreate(_ statement: inout Statement) -> String? {
        statement.creates = true
        var p = lexer
        guard var t = p.next() else { return nil }
        if p.isKeyword(t, "or") {
            guard let r = p.next(), p.isKeyword(r, "replace"), let n = p.next() else { return nil }
            t = n
        }
        var temporary = false
        if p.isKeyword(t, "global") || p.isKeyword(t, "local") {
            guard let n = p.next() else { return nil }
            guard p.isKeyword(n, "temp") || p.isKeyword(n, "temporary") else { return nil }
            temporary = true
            guard let k = p.next() else { return nil }
            t = k
        } else if p.isKeyword(t, "temp") || p.isKeyword(t, "temporary") {
            temporary = true
            guard let k = p.next() else { return nil }
            t = k
        } else if p.isKeyword(t, "unlogged") {
            guard let k = p.next() else { return nil }
            t = k
        }
        guard p.isKeyword(t, "table") else {
            if temporary {
                let kind = t.isIdentifierLike ? " " + p.text(t).uppercased() : ""
                return "CREATE TEMP\(kind)" + TransactionScan.suffix
                    + ": temporary objects outlive the transaction; use session pool mode"
            }
            return nil
        }
        // CREATE ... TABLE name [(...)] [options] [ON COMMIT ...] [AS query | AS EXECUTE name]
        var onCommitDrop = false
        var depth = 0
        while let u = p.next(), !u.isSemicolon {
            switch u.kind {
            case .punctuation(UInt8(ascii: "(")), .punctuation(UInt8(ascii: "[")):
                depth += 1
                continue
            case .punctuation(UInt8(ascii: ")")), .punctuation(UInt8(ascii: "]")):
                depth -= 1
                continue
            default:
                break
            }
            guard depth == 0 else { continue }
            if p.isKeyword(u, "as") {
                var q = p
                if let e = q.next(), q.isKeyword(e, "execute") { return executeRefusal }
                break
            }
            if p.isKeyword(u, "on") {
                var q = p
                if let c = q.next(), q.isKeyword(c, "commit"), let d = q.next(), q.isKeyword(d, "drop") {
                    onCommitDrop = true
                }
            }
        }
        if onCommitDrop {
            statement.onCommitDropTable = true
            return nil
        }
        if temporary {
            return "CREATE TEMP TABLE" + TransactionScan.suffix
                + ": temporary objects outlive the transaction; add ON COMMIT DROP, or use session pool mode"
        }
        return nil
    }

    /// After INTO: SELECT ... INTO [GLOBAL|LOCAL] TEMP|TEMPORARY [TABLE] name, or INTO pg_temp.name.
    private func checkInto(prev: SQLToken?, _ statement: Statement) -> String? {
        if let prev, lexer.isKeyword(prev, "insert") || lexer.isKeyword(prev, "merge") { return nil }
        if statement.isImport { return nil }
        var p = lexer
        guard var t = p.next() else { return nil }
        let refusal = "SELECT ... INTO TEMP" + TransactionScan.suffix
            + ": temporary objects outlive the transaction; use CREATE TEMP TABLE ... ON COMMIT DROP AS SELECT ..., or session pool mode"
        if p.isKeyword(t, "global") || p.isKeyword(t, "local") {
            if let n = p.next(), p.isKeyword(n, "temp") || p.isKeyword(n, "temporary") { return refusal }
            return nil
        }
        if (p.isKeyword(t, "temp") || p.isKeyword(t, "temporary")) && !nextIsDot(p) { return refusal }
        if p.isKeyword(t, "unlogged"), let n = p.next() { t = n }
        if p.isKeyword(t, "table"), let n = p.next() { t = n }
        if isPgTempName(t, p) && nextIsDot(p) { return refusal }
        return nil
    }

    // MARK: set_config

    /// After set_config, which is followed by `(`: set_config(name, value, is_local).
    private mutating func checkSetConfig() -> String? {
        var p = lexer
        _ = p.next()  // (
        var depth = 0
        var argument = 0
        var firstToken: [SQLToken?] = [nil, nil, nil]
        var tokenCount = [0, 0, 0]
        while let u = p.next(), !u.isSemicolon {
            if case .punctuation(let c) = u.kind {
                if c == UInt8(ascii: "(") || c == UInt8(ascii: "[") {
                    depth += 1
                } else if c == UInt8(ascii: ")") || c == UInt8(ascii: "]") {
                    if depth == 0 { break }
                    depth -= 1
                } else if c == UInt8(ascii: ","), depth == 0 {
                    argument += 1
                    continue
                }
            }
            if argument < 3 {
                if tokenCount[argument] == 0 { firstToken[argument] = u }
                tokenCount[argument] += 1
            }
        }
        guard argument == 2 else { return nil }  // not the three-argument set_config: the server rejects it
        if tokenCount[0] == 1, let n = firstToken[0], let name = literalString(n, p),
           case let lowered = GuardPolicy.asciiLowercased(name), tracked.contains(lowered) {
            return allowTracked(lowered)
        }
        if tokenCount[2] == 1, let l = firstToken[2] {
            if p.isKeyword(l, "true") { return nil }
            if let s = literalString(l, p), TransactionModeGuard.parseBool(s) == true { return nil }
        }
        return "set_config() without is_local = true" + TransactionScan.suffix
            + ": a session-level setting would stay on the connection for the next client; use set_config(..., true) inside a transaction, or session pool mode"
    }

    private func literalString(_ t: SQLToken, _ p: SQLLexer) -> String? {
        switch t.kind {
        case .string(.bit), .string(.hex): return nil
        case .string, .dollarString: return p.stringValue(t)
        default: return nil
        }
    }
}

extension TransactionModeGuard {
    /// The server's parse_bool: unique prefixes of true/false/yes/no, on/off, 1/0, trimmed.
    static func parseBool(_ s: String) -> Bool? {
        var u = Array(s.utf8)
        while let f = u.first, SQLLexer.isSpace(f) { u.removeFirst() }
        while let l = u.last, SQLLexer.isSpace(l) { u.removeLast() }
        let v = String(decoding: u.map(SQLLexer.asciiLower), as: UTF8.self)
        guard !v.isEmpty else { return nil }
        if "true".hasPrefix(v) || "yes".hasPrefix(v) || v == "on" || v == "1" { return true }
        if "false".hasPrefix(v) || v == "no" || v == "n" || v == "off" || v == "of" || v == "0" { return false }
        return nil
    }
}
