import XCTest
@testable import TenantProxy

final class StatementGuardTests: XCTestCase {
    let settings: Set<String> = ["nile.tenant_id", "NILE.user_id"]
    lazy var pinned = StatementGuard(policy: GuardPolicy(tenantSettings: settings, mode: .pinned))
    lazy var switching = StatementGuard(policy: GuardPolicy(tenantSettings: settings, mode: .switchTenant))
    lazy var global = StatementGuard(policy: GuardPolicy(tenantSettings: settings, mode: .global))
    lazy var pinnedSCSOn = StatementGuard(policy: GuardPolicy(tenantSettings: settings, mode: .pinned, standardConformingStrings: true))

    private func assertRefused(_ g: StatementGuard, _ sql: String, containing fragment: String? = nil,
                               file: StaticString = #filePath, line: UInt = #line) {
        let v = g.inspect(sql)
        XCTAssertNotNil(v.refusal, "expected refusal: \(sql)", file: file, line: line)
        // Every refusal but "unterminated" must reach the guard (see GuardPrefilter).
        if v.refusal != "unterminated quoted string, quoted identifier or comment" {
            XCTAssertTrue(GuardPrefilter.mayMatter(sql), "the prefilter would let a refused text skip the guard: \(sql)", file: file, line: line)
        }
        if let fragment, let r = v.refusal {
            XCTAssertTrue(r.contains(fragment), "reason \"\(r)\" lacks \"\(fragment)\"", file: file, line: line)
        }
    }

    private func assertAllowed(_ g: StatementGuard, _ sql: String, file: StaticString = #filePath, line: UInt = #line) {
        let v = g.inspect(sql)
        XCTAssertNil(v.refusal, "expected allowed: \(sql) — \(v.refusal ?? "")", file: file, line: line)
    }

    // MARK: pinned: tenant settings

    func testPinnedRefusesTenantSetInAnySpelling() {
        let cases = [
            "SET nile.tenant_id = 'x'",
            "set nile.tenant_id to 'x'",
            "SET nile.tenant_id TO DEFAULT",
            "set nile.tenant_id to default",
            "SET SESSION nile.tenant_id = 'x'",
            "SET LOCAL nile.tenant_id = 'x'",
            "BEGIN; SET LOCAL nile.tenant_id = 'x'; SELECT 1; COMMIT",
            "SELECT 1; SeT   NILE.Tenant_ID = 'x'",
            "SET \"nile\".\"tenant_id\" = 'x'",
            "SET \"nile.tenant_id\" = 'x'",
            "SET \"NILE.TENANT_ID\" = 'x'",
            "SET nile . tenant_id = 'x'",
            "SET nile /* c */ . /* d */ tenant_id = 'x'",
            "SET nile -- c\n . tenant_id = 'x'",
            "SET U&\"nile.tenant\\005fid\" = 'x'",
            "SET U&\"nile.tenant!005fid\" UESCAPE '!' = 'x'",
            "SET U&\"nile\".U&\"tenant\\005Fid\" = 'x'",
            "SET nile.user_id = 'u'",
            "SET nile.tenant_id=-1",
            "SET nile.tenant_id FROM CURRENT",
            "RESET nile.tenant_id",
            "reset \"nile\".tenant_id",
            "SELECT 1;;; RESET nile.user_id;",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET nile.tenant_id = 'x' AS 'select 1'",
            "ALTER FUNCTION f() SET nile.tenant_id = 'x'",
            "ALTER FUNCTION f() RESET nile.tenant_id",
            "SELECT 1 /* unterminated-looking */; SET nile.tenant_id = 'x'",
            "SELECT x$$ ; SET nile.tenant_id = 'x'; SELECT $$",
            "SELECT 'a'\n'\\'; SET nile.tenant_id = 'x'; -- '",
        ]
        for sql in cases { assertRefused(pinned, sql) }
        assertRefused(pinned, "SET nile.tenant_id = 'x'", containing: "SET of nile.tenant_id is not allowed for a pinned session")
        assertRefused(pinned, "RESET nile.tenant_id", containing: "RESET of nile.tenant_id")
    }

    func testPinnedAllowsHiddenOrUnrelatedText() {
        let cases = [
            "SELECT 'SET nile.tenant_id = 1'",
            "SELECT $$ ; SET nile.tenant_id = 1 $$",
            "SELECT $a$ $b$ ; SET nile.tenant_id = 1; $b$ $a$",
            "/* /* nested */ SET nile.tenant_id=1 */ SELECT 1",
            "SELECT 1 -- ; SET nile.tenant_id = 1",
            "SELECT E'\\''; SELECT E'\\'; SET nile.tenant_id = 1; --'",
            "SELECT \"SET nile.tenant_id = 1\" FROM t",
            "SELECT 'it''s; SET nile.tenant_id = 1'",
            "SELECT U&'; SET nile.tenant_id = 1' UESCAPE '!'",
            "SELECT E'a'\n'\\'; SET nile.tenant_id = 1; --'",
            "SELECT B'01''; SET nile.tenant_id = 'x'; --'",
            "SELECT $1$$; SET nile.tenant_id = 'x'; $$",
            "SET search_path = myschema, public",
            "SET TimeZone = 'UTC'",
            "set statement_timeout to 5000",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "SET LOCAL lock_timeout = '1s'",
            "SET nile.other = 'x'",
            "SET nile.tenant_idx = 'x'",
            "SET nile_tenant_id = 'x'",
            "SHOW nile.tenant_id",
            "SELECT current_setting('nile.tenant_id')",
            "SELECT set_config_like()",
            "SELECT my_set_config(1)",
            "UPDATE t SET role = 'admin', tenant_id = 'x' WHERE id = 1",
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
            "DISCARD PLANS",
            "DISCARD TEMP",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            "SET client_encoding = 'UTF8'",
            "SET NAMES 'utf8'",
            "",
            ";;",
        ]
        for sql in cases { assertAllowed(pinned, sql) }
    }

    // MARK: pinned: set_config and other escapes

    func testPinnedRefusesSetConfigEverywhere() {
        let cases = [
            "select set_config('nile.tenant_id','x',false)",
            "select pg_catalog.set_config('nile.tenant_id','x',false)",
            "SELECT SET_CONFIG('search_path', 'x', false)",
            "SELECT \"set_config\"('a.b', 'c', false)",
            "SELECT \"SET_CONFIG\"('a.b', 'c', false)",
            "SELECT \"pg_catalog\".\"set_config\"('a.b', 'c', false)",
            "SELECT U&\"set\\005fconfig\"('nile.tenant_id', 'x', false)",
            "SELECT set_config /* c */ ('nile.' || 'tenant_id', 'x', false)",
            "SELECT * FROM t WHERE set_config('nile.tenant_id', t.other, true) IS NOT NULL",
            "SELECT 1; SELECT count(*) FROM (SELECT set_config('nile.tenant_id', $1, false)) s",
            "PREPARE p AS SELECT set_config('nile.tenant_id', 'x', false)",
            "EXPLAIN ANALYZE SELECT set_config('nile.tenant_id', 'x', false)",
        ]
        for sql in cases { assertRefused(pinned, sql, containing: "set_config") }
    }

    func testPinnedRefusesRoleAuthorizationDoAndAdmin() {
        assertRefused(pinned, "SET ROLE x", containing: "SET ROLE")
        assertRefused(pinned, "set role none", containing: "SET ROLE")
        assertRefused(pinned, "SET SESSION ROLE x", containing: "SET ROLE")
        assertRefused(pinned, "SET LOCAL ROLE x", containing: "SET ROLE")
        assertRefused(pinned, "SET role = 'admin'", containing: "SET ROLE")
        assertRefused(pinned, "SET \"ROLE\" TO admin", containing: "SET ROLE")
        assertRefused(pinned, "RESET ROLE", containing: "RESET ROLE")
        assertRefused(pinned, "set session authorization x", containing: "SESSION AUTHORIZATION")
        assertRefused(pinned, "SET SESSION SESSION AUTHORIZATION x", containing: "SESSION AUTHORIZATION")
        assertRefused(pinned, "SET LOCAL SESSION AUTHORIZATION DEFAULT", containing: "SESSION AUTHORIZATION")
        assertRefused(pinned, "SET session_authorization = 'x'", containing: "SESSION AUTHORIZATION")
        assertRefused(pinned, "RESET SESSION AUTHORIZATION", containing: "SESSION AUTHORIZATION")
        assertRefused(pinned, "DO $$ begin end $$", containing: "DO")
        assertRefused(pinned, "do language plpgsql $$ begin perform 1; end $$", containing: "DO")
        assertRefused(pinned, "SELECT 1; DO 'begin end'", containing: "DO")
        assertRefused(pinned, "/* c */ DO $x$ begin end $x$", containing: "DO")
        assertRefused(pinned, "ALTER SYSTEM SET work_mem = '1GB'", containing: "ALTER SYSTEM")
        assertRefused(pinned, "ALTER ROLE app SET nile.tenant_id = 'x'", containing: "ALTER ROLE")
        assertRefused(pinned, "alter user app set search_path = x", containing: "ALTER USER")
        assertRefused(pinned, "ALTER ROLE ALL IN DATABASE db RESET ALL", containing: "ALTER ROLE")
        assertRefused(pinned, "ALTER DATABASE db SET work_mem = '1MB'", containing: "ALTER DATABASE")
        assertRefused(pinned, "LOAD 'plugin'", containing: "LOAD")
        assertRefused(pinned, "COPY t FROM PROGRAM 'id'", containing: "PROGRAM")
        assertRefused(pinned, "SET client_encoding = 'SJIS'", containing: "client_encoding")
        assertRefused(pinned, "SET NAMES 'big5'", containing: "client_encoding")
        assertAllowed(pinned, "ALTER ROLE app RENAME TO app2")
        assertAllowed(pinned, "ALTER TABLE t ADD COLUMN c int")
        assertAllowed(pinned, "COPY t TO STDOUT")
        assertAllowed(pinned, "SELECT 'DO $$ begin end $$'")
        assertAllowed(pinned, "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING")
    }

    func testResetAllAndDiscardAllAreFlagged() {
        XCTAssertEqual(pinned.inspect("RESET ALL"), GuardVerdict(reapplyContextAfter: true))
        XCTAssertEqual(pinned.inspect("discard all"), GuardVerdict(reapplyContextAfter: true))
        XCTAssertEqual(pinned.inspect("SELECT 1; DISCARD ALL; SELECT 2"), GuardVerdict(reapplyContextAfter: true))
        XCTAssertEqual(pinned.inspect("DISCARD PLANS"), .allow)
        XCTAssertEqual(pinned.inspect("SELECT 'RESET ALL'"), .allow)
        XCTAssertEqual(switching.inspect("RESET ALL"), GuardVerdict(reapplyContextAfter: true))
        XCTAssertEqual(pinned.inspect("SELECT abalance FROM pgbench_accounts WHERE aid = $1"), .allow)
    }

    func testNonHeadSetIsCheckedOnlyForTenantSettings() {
        assertAllowed(pinned, "UPDATE t SET a = 1, b = 2")
        assertAllowed(pinned, "UPDATE t SET \"a.b\" = 1")
        assertAllowed(pinned, "UPDATE t SET (a, b) = (1, 2)")
        // A composite column named like the setting is refused too: the safe reading.
        assertRefused(pinned, "UPDATE t SET nile.tenant_id = 1")
        let undotted = StatementGuard(policy: GuardPolicy(tenantSettings: ["tenant"], mode: .pinned))
        assertRefused(undotted, "ALTER FUNCTION f() SET tenant = 'x'")
        assertAllowed(undotted, "UPDATE t SET other = 'x'")
    }

    func testIdentifierAndNumberEdges() {
        assertRefused(pinned, "SELECT 1 AS x$$; SET nile.tenant_id = 'x'", containing: "nile.tenant_id")
        assertRefused(pinned, "SELECT 0x$$; SET nile.tenant_id = 'x'")
        assertAllowed(pinned, "SELECT 1$$; SET nile.tenant_id = 'x'$$")
        assertRefused(pinned, "SELECT 1=--$$\n1; SET nile.tenant_id = 'x'")
    }

    // MARK: unterminated input

    func testUnterminatedInputIsRefusedWithoutCrashing() {
        let cases = ["SELECT 'abc", "SELECT $$ abc", "SELECT $t$ abc $T$", "SELECT /* /* */ 1",
                     "SELECT \"abc", "SELECT E'abc\\'", "SELECT U&'abc", "SELECT B'0101"]
        for sql in cases { assertRefused(pinned, sql, containing: "unterminated") }
        for sql in cases { XCTAssertTrue(global.inspect(sql).isAllowed) }
    }

    // MARK: standard_conforming_strings

    func testBackslashAmbiguity() {
        // With standard_conforming_strings off the server reads this as one string, then SET.
        assertRefused(pinned, "SELECT 'a\\''; SET nile.tenant_id = 'x'; --'")
        // Known to be on: the whole tail is inside a string.
        assertAllowed(pinnedSCSOn, "SELECT 'a\\''; SET nile.tenant_id = 'x'; --'")
        assertAllowed(pinned, "SELECT 'C:\\temp\\'")  // unterminated only under the 'off' reading
        assertAllowed(pinned, "SELECT 'a\\b' AS path")
        let off = StatementGuard(policy: GuardPolicy(tenantSettings: settings, mode: .pinned, standardConformingStrings: false))
        assertRefused(off, "SELECT 'a\\''; SET nile.tenant_id = 'x'; --'")
        assertAllowed(off, "SELECT 'a\\'; SET nile.tenant_id = 1; --'")
    }

    // MARK: switch mode

    func testSwitchModeReportsChanges() {
        XCTAssertEqual(switching.inspect("SET nile.tenant_id = 'abc'").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "abc", isLocal: false)])
        XCTAssertEqual(switching.inspect("SET LOCAL \"NILE\".tenant_id TO E'a\\'b'").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "a'b", isLocal: true)])
        XCTAssertEqual(switching.inspect("set nile.tenant_id to $$0193c0d1-aaaa$$").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "0193c0d1-aaaa", isLocal: false)])
        XCTAssertEqual(switching.inspect("SET nile.tenant_id = U&'\\0061b'").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "ab", isLocal: false)])
        XCTAssertEqual(switching.inspect("SET nile.tenant_id = 'ab'\n'cd'").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "abcd", isLocal: false)])
        XCTAssertEqual(switching.inspect("SET nile.tenant_id = 0042").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "42", isLocal: false)])
        XCTAssertEqual(switching.inspect("SET nile.tenant_id =-7").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "-7", isLocal: false)])
        XCTAssertEqual(switching.inspect("SET nile.tenant_id = Acme").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "acme", isLocal: false)])
        XCTAssertEqual(switching.inspect("SET nile.tenant_id = \"Acme\"").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "Acme", isLocal: false)])
        XCTAssertEqual(switching.inspect("SET nile.tenant_id TO DEFAULT").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: nil, isLocal: false)])
        XCTAssertEqual(switching.inspect("RESET nile.tenant_id").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: nil, isLocal: false)])
        XCTAssertEqual(switching.inspect("BEGIN; SET LOCAL nile.tenant_id = 'a'; SET nile.user_id = 'u'; SELECT 1"),
                       GuardVerdict(tenantSettingChanges: [
                           TenantSettingChange(name: "nile.tenant_id", value: "a", isLocal: true),
                           TenantSettingChange(name: "nile.user_id", value: "u", isLocal: false),
                       ]))
        XCTAssertEqual(switching.inspect("RESET ALL; SET nile.tenant_id = 'a'"),
                       GuardVerdict(tenantSettingChanges: [TenantSettingChange(name: "nile.tenant_id", value: "a", isLocal: false)],
                                    reapplyContextAfter: true))
        XCTAssertEqual(switching.inspect("SET search_path = x").tenantSettingChanges, [])
    }

    func testSwitchModeSetConfig() {
        XCTAssertEqual(switching.inspect("SELECT set_config('nile.tenant_id', 'x', false)").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "x", isLocal: false)])
        XCTAssertEqual(switching.inspect("select pg_catalog.set_config('NILE.TENANT_ID', E'y', true);").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: "y", isLocal: true)])
        XCTAssertEqual(switching.inspect("SELECT set_config('nile.tenant_id', NULL, 'off')").tenantSettingChanges,
                       [TenantSettingChange(name: "nile.tenant_id", value: nil, isLocal: false)])
        XCTAssertEqual(switching.inspect("SELECT set_config('request.jwt.claims', $1, true)"), .allow)
        assertRefused(switching, "SELECT set_config('nile.tenant_id', $1, false)")
        assertRefused(switching, "SELECT set_config($1, 'x', false)", containing: "computed")
        assertRefused(switching, "SELECT set_config('nile.' || 'tenant_id', 'x', false)", containing: "computed")
        assertRefused(switching, "SELECT set_config('nile.tenant_id', 'x', false), 1")
        assertRefused(switching, "SELECT 1 WHERE false AND set_config('nile.tenant_id', 'x', false) = 'x'")
        assertRefused(switching, "SELECT set_config('role', 'admin', false)")
        assertRefused(switching, "SELECT set_config")
    }

    func testSwitchModeStillRefuses() {
        assertRefused(switching, "SET ROLE admin")
        assertRefused(switching, "SET SESSION AUTHORIZATION admin")
        assertRefused(switching, "DO $$ begin end $$")
        assertRefused(switching, "SET nile.tenant_id = 'a', 'b'")
        assertRefused(switching, "SET nile.tenant_id = 'a' || 'b'")
        assertRefused(switching, "SET nile.tenant_id = B'0101'")
        assertRefused(switching, "SET nile.tenant_id = E'\\u12'")
        assertRefused(switching, "SET nile.tenant_id FROM CURRENT")
        assertRefused(switching, "ALTER FUNCTION f() SET nile.tenant_id = 'x'")
        assertRefused(switching, "SET nile.tenant_id 'x'")
        XCTAssertEqual(switching.inspectFunctionCall().isAllowed, false)
        XCTAssertEqual(pinned.inspectFunctionCall().isAllowed, false)
        XCTAssertEqual(global.inspectFunctionCall(), .allow)
    }

    // MARK: global mode

    func testGlobalAllowsEverything() {
        for sql in ["SET nile.tenant_id = 'x'", "SELECT set_config('nile.tenant_id', 'x', false)", "SET ROLE admin",
                    "DO $$ begin end $$", "ALTER SYSTEM SET work_mem = '1GB'", "RESET ALL"] {
            XCTAssertEqual(global.inspect(sql), .allow)
        }
    }

    // MARK: byte entry points and robustness

    func testRawBufferEntryPoint() {
        let bytes = Array("SELECT 1; SET nile.tenant_id = 'x'".utf8)
        let v = bytes.withUnsafeBytes { pinned.inspect(utf8: $0) }
        XCTAssertFalse(v.isAllowed)
        let ok = Array("SELECT 1".utf8).withUnsafeBytes { pinned.inspect(utf8: $0) }
        XCTAssertEqual(ok, .allow)
    }

    func testEveryPrefixOfTrickyTextIsHandled() {
        let text = "SELECT E'\\'' , U&\"a!0061\" UESCAPE '!', $t$ x $t$, 'a'\n'b' /* /* */ */; SET \"nile\".tenant_id = 'x'"
        let bytes = Array(text.utf8)
        for n in 0...bytes.count {
            _ = Array(bytes.prefix(n)).withUnsafeBufferPointer { pinned.inspect(utf8: $0) }
            _ = Array(bytes.prefix(n)).withUnsafeBufferPointer { switching.inspect(utf8: $0) }
        }
        XCTAssertFalse(pinned.inspect(text).isAllowed)
    }

    func testHotPathIsCheap() {
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        let g = pinned
        var allowed = 0
        let start = ContinuousClock.now
        for _ in 0..<100_000 where g.inspect(sql).isAllowed { allowed += 1 }
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(allowed, 100_000)
        print("guard: 100k inspections of a pgbench -S statement took \(elapsed)")
    }
}
