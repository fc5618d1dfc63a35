import XCTest

@testable import TenantProxy

final class GuardPrefilterTests: XCTestCase {
    private let pinned = StatementGuard(policy: GuardPolicy(tenantSettings: ["nile.tenant_id", "nile.user_id"], mode: .pinned))
    private let switching = StatementGuard(policy: GuardPolicy(tenantSettings: ["nile.tenant_id", "nile.user_id"], mode: .switchTenant))
    private let transactionGuard = TransactionModeGuard()

    func testOrdinaryStatementsSkipTheGuards() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",  // has "set": not skipped
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)",
            "BEGIN", "COMMIT", "END",
        ] where !sql.lowercased().contains("set") {
            XCTAssertFalse(GuardPrefilter.mayMatter(sql), sql)
        }
    }

    func testEveryWordIsFoundInAnyCaseAndPosition() {
        for word in GuardPrefilter.words {
            XCTAssertTrue(GuardPrefilter.mayMatter(word), word)
            XCTAssertTrue(GuardPrefilter.mayMatter("x " + word.uppercased()), word)
            XCTAssertTrue(GuardPrefilter.mayMatter("1" + word + "1"), word)
            XCTAssertFalse(GuardPrefilter.mayMatter(String(word.dropLast())), word)
        }
    }

    func testWhatTheGuardsActOnIsNeverSkipped() {
        for sql in [
            "SET nile.tenant_id = 'x'", "reset NILE.TENANT_ID", "select set_config('nile.tenant_id', 'x', false)",
            "SELECT \"set_config\"('a', 'b', false)", "SELECT U&\"set\\005fconfig\"('a','b',false)",
            "DO $$ BEGIN END $$", "ALTER SYSTEM SET x = 1", "LOAD 'x'", "COPY t TO PROGRAM 'x'", "DISCARD ALL",
            "LISTEN c", "UNLISTEN *", "PREPARE p AS SELECT 1", "EXECUTE p", "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "DEALLOCATE ALL", "CREATE TEMP TABLE t (a int)", "SELECT 1 INTO pg_temp.t",
            "SELECT pg_advisory_lock(1)", "SELECT PG_TRY_ADVISORY_LOCK_SHARED(1)", "SELECT E'\\''",
            "SELECT 'naïve'",
        ] {
            XCTAssertTrue(GuardPrefilter.mayMatter(sql), sql)
        }
    }

    /// Random texts from the words and punctuation the guards care about (and harmless ones):
    /// whenever the prefilter says a text may skip the guards, each guard allows it and reports
    /// nothing, or refuses it only for an unterminated quote or comment (the server then
    /// answers with its syntax error: with none of the words anywhere, no reading of the quotes
    /// can hide a statement).
    func testRandomTextsItSkipsAreAllowedByBothGuards() {
        let pieces = [
            "SELECT", "select", "FROM", "t", "WHERE", "a", "=", "1", ";", " ", " ", "\n", "(", ")", ",", ".", "'", "''",
            "'x'", "--", "/*", "*/", "$$", "$1", "$q$", "E", "U", "&", "\"", "\\", "SET", "set", "RESET", "LOCAL",
            "SESSION", "nile", "tenant_id", "nile.tenant_id", "set_config", "DO", "ALTER", "SYSTEM", "ROLE", "LOAD",
            "COPY", "PROGRAM", "DISCARD", "ALL", "LISTEN", "PREPARE", "EXECUTE", "DECLARE", "WITH", "HOLD", "FOR",
            "DEALLOCATE", "CREATE", "TEMP", "TABLE", "INTO", "pg_temp", "pg_advisory_lock", "BEGIN", "COMMIT",
            "names", "TO", "DEFAULT", "TIME", "ZONE", "EXPLAIN", "ANALYZE", "IMPORT", "on", "drop", "é",
        ]
        var generator = SystemRandomNumberGenerator()
        var skipped = 0
        for _ in 0..<20_000 {
            let count = Int.random(in: 1...12, using: &generator)
            let sql = (0..<count).map { _ in pieces.randomElement(using: &generator)! }.joined(separator: Bool.random() ? " " : "")
            guard !GuardPrefilter.mayMatter(sql) else { continue }
            skipped += 1
            for verdict in [pinned.inspect(sql), switching.inspect(sql)] {
                XCTAssertTrue(verdict.refusal.map(Self.isUnterminated) ?? true, "\(sql): \(verdict)")
                XCTAssertEqual(verdict.tenantSettingChanges, [], sql)
                XCTAssertFalse(verdict.reapplyContextAfter, sql)
            }
            let verdict = transactionGuard.inspect(sql)
            XCTAssertTrue(verdict.refusal.map(Self.isUnterminated) ?? true, "\(sql): \(verdict)")
            XCTAssertNil(verdict.deallocate, sql)
            XCTAssertFalse(verdict.discardsPreparedStatements, sql)
        }
        XCTAssertGreaterThan(skipped, 100, "the random texts should exercise the skipping path")
    }

    /// The table-driven scan says exactly what its definition says: a byte it cannot judge
    /// (non-ASCII, `"`, `&`, `\`) anywhere, or one of the words anywhere in any case. Random
    /// bytes biased towards the words' letters, at every length from one byte.
    func testTheScanMatchesItsDefinitionOnRandomBytes() {
        let alphabet = Array("setdoalrcpyhixnkmvgATSEDOLRCPYHIXNKMVG _;'\"&\\é0\n".utf8)
        let words = GuardPrefilter.words.map { Array($0.utf8) }
        func reference(_ bytes: [UInt8]) -> Bool {
            if bytes.contains(where: { $0 >= 0x80 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "&") || $0 == UInt8(ascii: "\\") }) {
                return true
            }
            let lower = bytes.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }
            return words.contains { word in
                lower.count >= word.count && (0...(lower.count - word.count)).contains { Array(lower[$0 ..< $0 + word.count]) == word }
            }
        }
        var generator = SystemRandomNumberGenerator()
        var found = 0
        for _ in 0..<50_000 {
            let bytes = (0..<Int.random(in: 1...14, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! }
            let expected = reference(bytes)
            let actual = bytes.withUnsafeBytes { GuardPrefilter.mayMatter($0) }
            XCTAssertEqual(actual, expected, String(decoding: bytes, as: UTF8.self))
            if expected { found += 1 }
        }
        XCTAssertGreaterThan(found, 1000)
        XCTAssertLessThan(found, 49_000)
    }

    private static func isUnterminated(_ refusal: String) -> Bool {
        refusal == "unterminated quoted string, quoted identifier or comment"
    }
}
