import XCTest
@testable import TenantProxy

final class TransactionModeGuardTests: XCTestCase {
    let tx = TransactionModeGuard()

    private enum Expect {
        case allow
        /// Refused, and the reason contains this text.
        case refuse(String)
        case deallocate(TransactionModeVerdict.Deallocate)
        /// Allowed with discardsPreparedStatements set.
        case discards
    }

    private func check(_ g: TransactionModeGuard, _ cases: [(String, Expect)], file: StaticString = #filePath, line: UInt = #line) {
        for (sql, expect) in cases {
            let v = g.inspect(sql)
            if v != .allow, v.refusal != "unterminated quoted string, quoted identifier or comment" {
                XCTAssertTrue(GuardPrefilter.mayMatter(sql), "the prefilter would let this skip the guard: \(sql)", file: file, line: line)
            }
            switch expect {
            case .allow:
                XCTAssertEqual(v, .allow, "expected allowed: \(sql) — \(v)", file: file, line: line)
            case .refuse(let fragment):
                guard let r = v.refusal else {
                    XCTFail("expected refusal: \(sql)", file: file, line: line)
                    continue
                }
                XCTAssertTrue(r.contains(fragment), "reason \"\(r)\" lacks \"\(fragment)\" for: \(sql)", file: file, line: line)
                XCTAssertTrue(r.contains("transaction pool mode"), "reason \"\(r)\"", file: file, line: line)
                XCTAssertNil(v.deallocate, file: file, line: line)
            case .deallocate(let target):
                XCTAssertEqual(v, TransactionModeVerdict(deallocate: target, discardsPreparedStatements: target == .all),
                               "for: \(sql)", file: file, line: line)
            case .discards:
                XCTAssertEqual(v, TransactionModeVerdict(discardsPreparedStatements: true), "for: \(sql)", file: file, line: line)
            }
        }
    }

    // MARK: the corpus

    func testTemporaryObjects() {
        check(tx, [
            ("CREATE TEMP TABLE t (a int)", .refuse("CREATE TEMP TABLE")),
            ("create temporary table t (a int)", .refuse("temporary objects outlive the transaction")),
            ("CREATE GLOBAL TEMPORARY TABLE t (a int)", .refuse("CREATE TEMP TABLE")),
            ("CREATE LOCAL TEMP TABLE t (a int)", .refuse("CREATE TEMP TABLE")),
            ("CREATE TEMP TABLE IF NOT EXISTS t (a int) ON COMMIT PRESERVE ROWS", .refuse("ON COMMIT DROP")),
            ("CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS", .refuse("CREATE TEMP TABLE")),
            ("CREATE TEMP TABLE t AS SELECT 1 AS on, 2 AS commit", .refuse("CREATE TEMP TABLE")),
            ("CREATE TEMP VIEW v AS SELECT 1", .refuse("CREATE TEMP VIEW")),
            ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", .refuse("CREATE TEMP VIEW")),
            ("CREATE TEMPORARY RECURSIVE VIEW v (n) AS SELECT 1", .refuse("CREATE TEMP RECURSIVE")),
            ("CREATE TEMP SEQUENCE s", .refuse("CREATE TEMP SEQUENCE")),
            ("SELECT 1; CREATE /* c */ TEMP -- c\n TABLE t (a int); SELECT 2", .refuse("CREATE TEMP TABLE")),
            ("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", .refuse("CREATE TEMP TABLE")),
            ("SELECT * INTO TEMP t FROM accounts", .refuse("SELECT ... INTO TEMP")),
            ("select 1 as x into temporary table t", .refuse("SELECT ... INTO TEMP")),
            ("SELECT 1 INTO LOCAL TEMP t", .refuse("SELECT ... INTO TEMP")),
            ("WITH q AS (SELECT 1 AS x) SELECT * INTO TEMP t FROM q", .refuse("SELECT ... INTO TEMP")),
            ("CREATE TABLE pg_temp.t (a int)", .refuse("pg_temp")),
            ("CREATE FUNCTION \"pg_temp\".f() RETURNS int LANGUAGE sql AS 'select 1'", .refuse("pg_temp")),
            ("CREATE VIEW v AS SELECT * FROM pg_temp_3.t", .refuse("pg_temp")),
            ("SELECT 1 INTO pg_temp.t", .refuse("SELECT ... INTO TEMP")),
            // the ON COMMIT DROP exception
            ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", .allow),
            ("BEGIN; CREATE TEMPORARY TABLE IF NOT EXISTS t (LIKE x) ON COMMIT DROP; INSERT INTO t SELECT 1; COMMIT", .allow),
            ("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT * FROM accounts", .allow),
            ("CREATE LOCAL TEMP TABLE t (a int GENERATED ALWAYS AS (1) STORED) ON COMMIT DROP", .allow),
            ("CREATE TABLE pg_temp.t (a int) ON COMMIT DROP", .allow),
            // not temporary
            ("CREATE TABLE t (a int)", .allow),
            ("CREATE SCHEMA s CREATE TABLE t (a int) CREATE VIEW v AS SELECT 1", .allow),
            ("CREATE TABLE t AS SELECT 1 AS execute", .allow),
            ("CREATE UNLOGGED TABLE temp (a int)", .allow),
            ("CREATE TABLE temp AS SELECT 1", .allow),
            ("INSERT INTO temp VALUES (1)", .allow),
            ("INSERT /* x */ INTO temp SELECT 1", .allow),
            ("MERGE INTO temp t USING s ON t.id = s.id WHEN MATCHED THEN DO NOTHING", .allow),
            ("SELECT * INTO archive FROM accounts", .allow),
            ("SELECT 'CREATE TEMP TABLE t (a int)'", .allow),
            ("SELECT $$ SELECT 1 INTO TEMP t $$ -- CREATE TEMP TABLE x\n", .allow),
            ("SELECT * FROM pg_temp.t", .allow),
            ("GRANT CREATE, TEMP ON DATABASE d TO r", .allow),
            ("IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO temp", .allow),
        ])
    }

    func testHoldableCursors() {
        check(tx, [
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", .refuse("WITH HOLD")),
            ("declare c binary insensitive no scroll cursor with /* */ hold for select 1", .refuse("WITH HOLD")),
            ("BEGIN; DECLARE hold CURSOR WITH HOLD FOR SELECT 1; COMMIT", .refuse("WITH HOLD")),
            ("EXPLAIN ANALYZE DECLARE c CURSOR WITH HOLD FOR SELECT 1", .refuse("WITH HOLD")),
            ("DECLARE c CURSOR FOR SELECT 1", .allow),
            ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", .allow),
            ("DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold", .allow),
            ("SELECT 'DECLARE c CURSOR WITH HOLD FOR SELECT 1'", .allow),
        ])
    }

    func testAdvisoryLocks() {
        check(tx, [
            ("SELECT pg_advisory_lock(1)", .refuse("pg_advisory_lock()")),
            ("SELECT PG_ADVISORY_LOCK(1)", .refuse("use pg_advisory_xact_lock")),
            ("SELECT pg_catalog.pg_advisory_lock(1, 2)", .refuse("pg_advisory_lock()")),
            ("SELECT \"pg_advisory_lock\"(1)", .refuse("pg_advisory_lock()")),
            ("SELECT U&\"pg\\005fadvisory_lock\"(1)", .refuse("pg_advisory_lock()")),
            ("SELECT pg_advisory_lock /* x */ (1)", .refuse("pg_advisory_lock()")),
            ("SELECT pg_advisory_lock_shared(1)", .refuse("pg_advisory_lock_shared()")),
            ("SELECT pg_try_advisory_lock(1)", .refuse("pg_try_advisory_lock()")),
            ("SELECT * FROM t WHERE pg_try_advisory_lock_shared(id)", .refuse("pg_try_advisory_lock_shared()")),
            // Unlocking only removes state (asyncpg's reset query calls pg_advisory_unlock_all).
            ("SELECT pg_advisory_unlock(1)", .allow),
            ("SELECT pg_advisory_unlock_shared(1)", .allow),
            ("SELECT 1; SELECT pg_advisory_unlock_all()", .allow),
            ("SELECT pg_advisory_xact_lock(1)", .allow),
            ("SELECT pg_advisory_xact_lock_shared(1)", .allow),
            ("SELECT pg_try_advisory_xact_lock(1), pg_try_advisory_xact_lock_shared(2)", .allow),
            ("SELECT 'pg_advisory_lock(1)' AS s -- pg_advisory_lock(1)\n", .allow),
            ("SELECT * FROM pg_locks WHERE locktype = 'advisory'", .allow),
        ])
    }

    func testListenUnlistenLoad() {
        check(tx, [
            ("LISTEN jobs", .refuse("LISTEN")),
            ("listen \"Jobs\";", .refuse("LISTEN")),
            ("SELECT 1; LISTEN jobs", .refuse("LISTEN")),
            // UNLISTEN only removes state (drivers' reset queries send UNLISTEN *).
            ("UNLISTEN *", .allow),
            ("UNLISTEN jobs", .allow),
            ("LOAD 'auto_explain'", .refuse("LOAD")),
            ("NOTIFY jobs, 'x'", .allow),
            ("SELECT pg_notify('jobs', 'LISTEN x')", .allow),
            ("SELECT 1 AS listen", .allow),
            ("SELECT \"listen\" FROM t", .allow),
        ])
    }

    func testSQLPreparedStatements() {
        check(tx, [
            ("PREPARE p AS SELECT 1", .refuse("use protocol-level prepared statements")),
            ("prepare p (int) as select $1", .refuse("PREPARE")),
            ("PREPARE transaction AS SELECT 1", .refuse("PREPARE")),
            ("EXECUTE p", .refuse("EXECUTE")),
            ("execute p(1, 'x')", .refuse("EXECUTE")),
            ("EXPLAIN ANALYZE EXECUTE p", .refuse("EXECUTE")),
            ("EXPLAIN (ANALYZE, BUFFERS) EXECUTE p", .refuse("EXECUTE")),
            ("CREATE TABLE t AS EXECUTE p", .refuse("EXECUTE")),
            ("PREPARE TRANSACTION 'gid-1'", .allow),
            ("COMMIT PREPARED 'gid-1'", .allow),
            ("ROLLBACK PREPARED 'gid-1'", .allow),
            ("GRANT EXECUTE ON FUNCTION f() TO r", .allow),
            ("CREATE TRIGGER trg AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", .allow),
            ("SELECT 1 AS execute", .allow),
            ("EXPLAIN SELECT 1", .allow),
        ])
    }

    func testDeallocate() {
        check(tx, [
            ("DEALLOCATE p", .deallocate(.named("p"))),
            ("deallocate S_1", .deallocate(.named("s_1"))),
            ("DEALLOCATE \"S_1\";", .deallocate(.named("S_1"))),
            ("DEALLOCATE PREPARE p ; -- done\n", .deallocate(.named("p"))),
            ("  /* c */ DEALLOCATE /* c */ PREPARE \"Q\" ;  ", .deallocate(.named("Q"))),
            ("DEALLOCATE prepare", .deallocate(.named("prepare"))),
            ("DEALLOCATE ALL", .deallocate(.all)),
            ("deallocate prepare all;", .deallocate(.all)),
            ("DEALLOCATE \"all\"", .deallocate(.named("all"))),
            ("DEALLOCATE p; SELECT 1", .refuse("DEALLOCATE combined with other statements")),
            ("SELECT 1; DEALLOCATE ALL", .refuse("DEALLOCATE")),
            ("DEALLOCATE a; DEALLOCATE b", .refuse("DEALLOCATE")),
            ("SELECT 'DEALLOCATE p'", .allow),
        ])
        // A malformed DEALLOCATE goes to the server (which rejects it).
        XCTAssertEqual(tx.inspect("DEALLOCATE p q"), .allow)
        XCTAssertEqual(tx.inspect("DEALLOCATE"), .allow)
    }

    func testSessionSettings() {
        check(tx, [
            ("SET search_path = app", .refuse("use SET LOCAL")),
            ("set work_mem to '64MB'", .refuse("SET work_mem")),
            ("SET SESSION statement_timeout = 0", .refuse("SET statement_timeout")),
            ("SET \"Work_Mem\" = '1MB'", .refuse("SET work_mem")),
            ("SET myapp.user_id = '7'", .refuse("SET myapp.user_id")),
            ("SET local.x = 1", .refuse("SET local.x")),
            ("BEGIN; SELECT 1; SET search_path = x; COMMIT", .refuse("SET search_path")),
            ("SET SCHEMA 'app'", .refuse("search_path")),
            ("SET XML OPTION DOCUMENT", .refuse("xmloption")),
            ("RESET search_path", .refuse("RESET search_path")),
            ("reset \"statement_timeout\"", .refuse("RESET statement_timeout")),
            ("SET ROLE admin", .refuse("SET ROLE")),
            ("SET SESSION ROLE admin", .refuse("SET ROLE")),
            ("SET role = 'admin'", .refuse("SET ROLE")),
            ("SET SESSION AUTHORIZATION admin", .refuse("SET SESSION AUTHORIZATION")),
            ("SET SESSION AUTHORIZATION DEFAULT", .refuse("SET SESSION AUTHORIZATION")),
            ("RESET ROLE", .refuse("RESET ROLE")),
            ("RESET SESSION AUTHORIZATION", .refuse("RESET SESSION AUTHORIZATION")),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", .refuse("SET TRANSACTION")),
            ("SELECT set_config('search_path', 'x', false)", .refuse("set_config(..., true)")),
            ("SELECT pg_catalog.set_config('work_mem', '1MB', 'off')", .refuse("set_config")),
            ("SELECT set_config('x.y', $1, $2)", .refuse("set_config")),
            ("SELECT \"set_config\"('x.y', 'v', NULL)", .refuse("set_config")),
            // tracked parameters, SET LOCAL and transaction-level forms
            ("SET application_name = 'app'", .allow),
            ("SET SESSION DateStyle TO 'ISO, MDY'", .allow),
            ("SET \"TimeZone\" = 'UTC'", .allow),
            ("SET TIME ZONE 'Europe/Paris'", .allow),
            ("SET SESSION TIME ZONE LOCAL", .allow),
            ("SET NAMES 'UTF8'", .allow),
            ("SET client_encoding TO 'UTF8'", .allow),
            ("SET IntervalStyle = iso_8601", .allow),
            ("SET standard_conforming_strings = on", .allow),
            ("RESET application_name", .allow),
            ("RESET TIME ZONE", .allow),
            ("RESET ALL", .allow),
            ("SET LOCAL search_path = app", .allow),
            ("BEGIN; SET LOCAL work_mem = '1GB'; SET LOCAL ROLE r; SELECT 1; COMMIT", .allow),
            ("SET LOCAL myapp.user_id = '7'", .allow),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", .allow),
            ("SET CONSTRAINTS ALL DEFERRED", .allow),
            ("RESET TRANSACTION ISOLATION LEVEL", .allow),
            ("SELECT set_config('search_path', 'x', true)", .allow),
            ("SELECT set_config('request.jwt.claims', $1, 'on')", .allow),
            ("SELECT set_config('application_name', 'x', false)", .allow),
            ("SELECT 'SET search_path = x'", .allow),
            ("ALTER TABLE t SET (fillfactor = 70)", .allow),
            ("ALTER FUNCTION f() SET search_path = x", .allow),
            ("UPDATE t SET search_path = 1", .allow),
        ])
    }

    func testDiscard() {
        check(tx, [
            ("DISCARD ALL", .discards),
            ("discard all;", .discards),
            ("SELECT 1; DISCARD ALL", .discards),
            ("DISCARD PLANS", .allow),
            ("DISCARD SEQUENCES", .allow),
            ("DISCARD TEMP", .allow),
            ("DISCARD TEMPORARY", .allow),
            ("SELECT 'DISCARD ALL'", .allow),
        ])
    }

    func testOrdinaryStatementsAreAllowed() {
        check(tx, [
            ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", .allow),
            ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;", .allow),
            ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2", .allow),
            ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)", .allow),
            ("BEGIN", .allow),
            ("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1; COMMIT", .allow),
            ("SAVEPOINT s; ROLLBACK TO SAVEPOINT s; RELEASE s", .allow),
            ("END", .allow),
            ("CREATE INDEX CONCURRENTLY i ON t (a)", .allow),
            ("DROP TABLE IF EXISTS t", .allow),
            ("COPY t FROM STDIN", .allow),
            ("CLOSE ALL", .allow),
            ("VACUUM t", .allow),
            ("", .allow),
            (";;", .allow),
        ])
    }

    // MARK: quoting, comments, lexer edges

    func testQuotingHidesAndRevealsKeywords() {
        check(tx, [
            // hidden
            ("SELECT 'it''s; LISTEN x'", .allow),
            ("SELECT E'\\'; LISTEN x; --'", .allow),
            ("SELECT $tag$ ; LISTEN x; $tag$", .allow),
            ("SELECT 1 /* ; LISTEN x; /* nested */ still comment; LISTEN y */", .allow),
            ("SELECT 1 -- ; LISTEN x\n", .allow),
            ("SELECT \"LISTEN x; SET work_mem = 1\" FROM t", .allow),
            ("SELECT U&'\\0041; LISTEN x'", .allow),
            ("SELECT 1$$; LISTEN x; $$", .allow),  // the number 1, then a dollar quote
            // revealed
            ("SELECT 'a' ; LISTEN x", .refuse("LISTEN")),
            ("SELECT $$ x $$; LISTEN x", .refuse("LISTEN")),
            ("SELECT x$$; LISTEN y; SELECT $$", .refuse("LISTEN")),  // x$$ is one identifier
            ("SELECT 1 /* a */ ; /* b */ LISTEN x", .refuse("LISTEN")),
            ("SELECT 'a'\n'b'; LISTEN x", .refuse("LISTEN")),
        ])
    }

    func testUnterminatedAndBackslashAmbiguity() {
        for sql in ["SELECT 'abc", "SELECT $$ abc", "SELECT /* x", "SELECT \"abc"] {
            XCTAssertEqual(tx.inspect(sql).refusal, "unterminated quoted string, quoted identifier or comment", sql)
        }
        // With standard_conforming_strings on the server sees LISTEN; with it off, one string.
        XCTAssertFalse(tx.inspect("SELECT 'a\\'; LISTEN x; --'").isAllowed)
        XCTAssertFalse(TransactionModeGuard(standardConformingStrings: true).inspect("SELECT 'a\\'; LISTEN x; --'").isAllowed)
        XCTAssertTrue(TransactionModeGuard(standardConformingStrings: false).inspect("SELECT 'a\\'; LISTEN x; --'").isAllowed)
        // ... and the other way round: off reveals what on hides.
        XCTAssertFalse(tx.inspect("SELECT 'a\\''; LISTEN x; --'").isAllowed)
        XCTAssertTrue(TransactionModeGuard(standardConformingStrings: true).inspect("SELECT 'a\\''; LISTEN x; --'").isAllowed)
        XCTAssertEqual(tx.inspect("SELECT 'C:\\temp\\'"), .allow)
        XCTAssertEqual(tx.inspect("SELECT 'a\\b' AS path"), .allow)
    }

    func testEveryPrefixIsHandled() {
        let text = "DEALLOCATE PREPARE \"x\"; CREATE TEMP TABLE t (a int) ON COMMIT DROP; SELECT set_config('a', 'b', true), E'\\'', $t$x$t$, pg_advisory_lock(1)"
        let bytes = Array(text.utf8)
        for n in 0...bytes.count {
            _ = Array(bytes.prefix(n)).withUnsafeBytes { tx.inspect(utf8: $0) }
        }
        XCTAssertNotNil(tx.inspect(text).refusal)
    }

    func testParseBool() {
        XCTAssertEqual(TransactionModeGuard.parseBool(" TRUE "), true)
        XCTAssertEqual(TransactionModeGuard.parseBool("t"), true)
        XCTAssertEqual(TransactionModeGuard.parseBool("on"), true)
        XCTAssertEqual(TransactionModeGuard.parseBool("o"), nil)
        XCTAssertEqual(TransactionModeGuard.parseBool("off"), false)
        XCTAssertEqual(TransactionModeGuard.parseBool("0"), false)
    }

    // MARK: hot path

    func testPgbenchStatementsOnRawBytes() {
        for sql in ["SELECT abalance FROM pgbench_accounts WHERE aid = $1",
                    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"] {
            let v = Array(sql.utf8).withUnsafeBytes { tx.inspect(utf8: $0) }
            XCTAssertEqual(v, .allow, sql)
        }
    }

    func testHotPathIsCheap() {
        let statements = ["SELECT abalance FROM pgbench_accounts WHERE aid = $1",
                          "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"]
        let g = tx
        var allowed = 0
        let start = ContinuousClock.now
        for i in 0..<100_000 where g.inspect(statements[i & 1]).isAllowed { allowed += 1 }
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(allowed, 100_000)
        print("transaction-mode guard: 100k inspections of pgbench statements took \(elapsed)")
    }

    func testVerdictConstants() {
        XCTAssertEqual(TransactionModeVerdict.sqlState, "0A000")
        XCTAssertEqual(TransactionModeVerdict.allow, TransactionModeVerdict())
        XCTAssertTrue(TransactionModeGuard.trackedParameters.contains("timezone"))
    }

    func testSwitchUsersTenantSettingIsTrackedByTheProxy() {
        let switchGuard = TransactionModeGuard(alsoTracked: ["nile.tenant_id"])
        XCTAssertTrue(switchGuard.inspect("SET nile.tenant_id = '11111111-1111-4111-8111-111111111111'").isAllowed)
        XCTAssertTrue(switchGuard.inspect("RESET nile.tenant_id").isAllowed)
        XCTAssertFalse(switchGuard.inspect("SET search_path = x").isAllowed)
        XCTAssertFalse(TransactionModeGuard().inspect("SET nile.tenant_id = 'x'").isAllowed)
    }

    func testReadBackSettingsAreAllowedAndNoted() {
        let guardWithExtras = TransactionModeGuard(readBack: ["client_min_messages", "statement_timeout"])
        for sql in [
            "SET client_min_messages TO 'warning'", "SET SESSION statement_timeout = 5000",
            "set \"Statement_Timeout\" to default", "RESET statement_timeout",
            "SELECT set_config('statement_timeout', '5s', false)", "SELECT 1; SET client_min_messages = notice",
        ] {
            let verdict = guardWithExtras.inspect(sql)
            XCTAssertTrue(verdict.isAllowed, sql)
            XCTAssertTrue(verdict.changesReadBackSetting, sql)
        }
        for sql in ["SET LOCAL statement_timeout = 5000", "SET TimeZone = 'UTC'", "SELECT 'SET statement_timeout = 1'", "SELECT 1"] {
            let verdict = guardWithExtras.inspect(sql)
            XCTAssertTrue(verdict.isAllowed, sql)
            XCTAssertFalse(verdict.changesReadBackSetting, sql)
        }
        XCTAssertFalse(guardWithExtras.inspect("SET work_mem = '1MB'").isAllowed)
        XCTAssertFalse(TransactionModeGuard().inspect("SET client_min_messages TO 'warning'").isAllowed)
    }
}
