import Foundation
import XCTest

@testable import TenantProxy

final class ProxyConfigTests: XCTestCase {
    private var folder: ScratchFolder!
    private var directory: String { folder.path }

    override func setUpWithError() throws {
        folder = try ScratchFolder("proxy-config-tests")
        // The default tenant map must exist, or every parse reports it.
        try write("tenants.toml", "")
    }

    override func tearDownWithError() throws {
        folder?.remove()
    }

    @discardableResult
    private func write(_ name: String, _ contents: String) throws -> String {
        try folder.write(name, contents)
    }

    /// These tests are about other sections: they run without TLS unless the text says otherwise
    /// (TLS is required by default, and needs a certificate).
    private func parse(_ text: String, environment: [String: String] = [:]) throws -> ProxyConfig {
        let withTLS = text.contains("[tls]") ? text : text + "\n[tls]\nrequire = false\n"
        return try ProxyConfig.parse(withTLS, file: "proxy.conf", baseDirectory: directory, environment: environment)
    }

    func testTLSIsRequiredByDefaultAndNeedsACertificate() throws {
        try write("tenants.toml", "")
        let found = problems("[tls]\n")
        XCTAssertNotNil(problem("tls.require", in: found))
        try write("server.crt", "x")
        try write("server.key", "x")
        let config = try parse("[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n")
        XCTAssertTrue(config.tls.require)
        XCTAssertTrue(config.tls.enabled)
    }

    /// The problems a config is rejected with; fails the test when it is accepted.
    private func problems(
        _ text: String,
        environment: [String: String] = [:],
        file: StaticString = #filePath,
        line: UInt = #line
    ) -> [ConfigProblem] {
        do {
            _ = try parse(text, environment: environment)
            XCTFail("config was accepted", file: file, line: line)
            return []
        } catch let error as ConfigError {
            XCTAssertEqual(error.file, "proxy.conf", file: file, line: line)
            for problem in error.problems {
                XCTAssertFalse(problem.fix.isEmpty, "\(problem.key) has no fix", file: file, line: line)
            }
            return error.problems
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
            return []
        }
    }

    private func problem(
        _ key: String,
        in problems: [ConfigProblem],
        file: StaticString = #filePath,
        line: UInt = #line
    ) -> ConfigProblem? {
        let found = problems.first { $0.key == key }
        XCTAssertNotNil(found, "no problem for \(key) in \(problems)", file: file, line: line)
        return found
    }

    // MARK: - Defaults and keys

    func testEmptyFileGivesDefaults() throws {
        let config = try parse("")
        XCTAssertEqual(config.server.listenHost, "127.0.0.1")
        XCTAssertEqual(config.server.listenPort, 6432)
        XCTAssertEqual(config.server.maxMessageBytes, 64 * 1024 * 1024)
        XCTAssertEqual(config.server.maxClientConnections, 10_000)
        XCTAssertEqual(config.server.shutdownTimeoutSeconds, 30)
        XCTAssertEqual(config.server.eventLoopThreads, 0)
        XCTAssertFalse(config.auth.trustLoopback)
        XCTAssertEqual(config.tenancy.mapFile, (directory as NSString).appendingPathComponent("tenants.toml"))
        XCTAssertEqual(config.tenancy.tenantSetting, "nile.tenant_id")
        XCTAssertEqual(config.tenancy.userSetting, "nile.user_id")
        XCTAssertEqual(config.tenancy.userSeparator, ".")
        XCTAssertTrue(config.tenancy.lookupUpstream)
        XCTAssertEqual(config.tenancy.lookupCacheSeconds, 30)
        XCTAssertEqual(config.upstream.host, "127.0.0.1")
        XCTAssertEqual(config.upstream.port, 5432)
        XCTAssertEqual(config.upstream.user, "postgres")
        XCTAssertNil(config.upstream.password)
        XCTAssertNil(config.upstream.globalUser)
        XCTAssertNil(config.upstream.globalPassword)
        XCTAssertEqual(config.upstream.database, "")
        XCTAssertEqual(config.upstream.connectTimeoutSeconds, 5)
        XCTAssertEqual(config.log.level, "info")
    }

    func testEveryKeyIsRead() throws {
        try write("map.toml", "")
        let config = try parse("""
            [server]
            listen_host = "0.0.0.0"
            listen_port = 7000
            max_message_bytes = 2048
            max_client_connections = 12
            shutdown_timeout_seconds = 0
            event_loop_threads = 3

            [auth]
            trust_loopback = true

            [tenancy]
            map_file = "map.toml"
            tenant_setting = "App.Tenant"
            user_setting = "app.user_id"
            user_separator = "@"
            lookup_upstream = false
            lookup_cache_seconds = 0

            [upstream]
            host = "db.internal"
            port = 5433
            user = "proxy"
            password = "inline-pw"
            global_user = "migrator"
            global_password = "global-pw"
            database = "appdb"
            connect_timeout_seconds = 9

            [log]
            level = "DEBUG"
            """)
        XCTAssertEqual(config.server.listenHost, "0.0.0.0")
        XCTAssertEqual(config.server.listenPort, 7000)
        XCTAssertEqual(config.server.maxMessageBytes, 2048)
        XCTAssertEqual(config.server.maxClientConnections, 12)
        XCTAssertEqual(config.server.shutdownTimeoutSeconds, 0)
        XCTAssertEqual(config.server.eventLoopThreads, 3)
        XCTAssertTrue(config.auth.trustLoopback)
        XCTAssertEqual(config.tenancy.mapFile, (directory as NSString).appendingPathComponent("map.toml"))
        XCTAssertEqual(config.tenancy.tenantSetting, "app.tenant", "setting names are case-insensitive")
        XCTAssertEqual(config.tenancy.userSetting, "app.user_id")
        XCTAssertEqual(config.tenancy.userSeparator, "@")
        XCTAssertFalse(config.tenancy.lookupUpstream)
        XCTAssertEqual(config.tenancy.lookupCacheSeconds, 0)
        XCTAssertEqual(config.upstream.host, "db.internal")
        XCTAssertEqual(config.upstream.port, 5433)
        XCTAssertEqual(config.upstream.user, "proxy")
        XCTAssertEqual(config.upstream.password, "inline-pw")
        XCTAssertEqual(config.upstream.globalUser, "migrator")
        XCTAssertEqual(config.upstream.globalPassword, "global-pw")
        XCTAssertEqual(config.upstream.database, "appdb")
        XCTAssertEqual(config.upstream.connectTimeoutSeconds, 9)
        XCTAssertEqual(config.log.level, "debug")
    }

    func testAbsoluteMapFileIsKeptAsIs() throws {
        let path = try write("elsewhere.toml", "")
        XCTAssertEqual(try parse("[tenancy]\nmap_file = \"\(path)\"").tenancy.mapFile, path)
    }

    func testMissingTenantMapIsReported() {
        let found = problems("[tenancy]\nmap_file = \"missing.toml\"")
        XCTAssertEqual(found.map(\.key), ["tenancy.map_file"])
    }

    // MARK: - Ranges and types

    func testOutOfRangeListenPortIsReportedWithKeyAndFix() throws {
        for port in [0, 70_000, -1] {
            let found = problems("[server]\nlisten_port = \(port)")
            let listen = try XCTUnwrap(problem("server.listen_port", in: found))
            XCTAssertTrue(listen.problem.contains("1-65535"), listen.problem)
            XCTAssertTrue(listen.problem.contains("\(port)"), listen.problem)
            XCTAssertTrue(listen.fix.contains("6432"), "fix should suggest the default: \(listen.fix)")
        }
    }

    func testOtherRangesAreChecked() {
        let found = problems("""
            [server]
            max_message_bytes = 10
            event_loop_threads = 1000
            [upstream]
            port = 0
            connect_timeout_seconds = 0
            [tenancy]
            lookup_cache_seconds = -5
            """)
        XCTAssertEqual(Set(found.map(\.key)), [
            "server.max_message_bytes", "server.event_loop_threads", "upstream.port",
            "upstream.connect_timeout_seconds", "tenancy.lookup_cache_seconds",
        ])
    }

    func testWrongTypesAreReported() throws {
        let found = problems("""
            [server]
            listen_port = "6432"
            listen_host = 5
            [auth]
            trust_loopback = "yes"
            [upstream]
            port = 5432.5
            """)
        XCTAssertEqual(try XCTUnwrap(problem("server.listen_port", in: found)).problem, "must be an integer")
        XCTAssertEqual(try XCTUnwrap(problem("server.listen_host", in: found)).problem, "must be a string")
        XCTAssertEqual(try XCTUnwrap(problem("auth.trust_loopback", in: found)).problem, "must be true or false")
        XCTAssertEqual(try XCTUnwrap(problem("upstream.port", in: found)).problem, "must be an integer")
        XCTAssertEqual(found.count, 4)
    }

    func testInvalidValuesAreReported() {
        let found = problems("""
            [tenancy]
            tenant_setting = "no_dot"
            user_separator = "::"
            [upstream]
            host = ""
            user = ""
            [log]
            level = "verbose"
            """)
        XCTAssertEqual(Set(found.map(\.key)), [
            "tenancy.tenant_setting", "tenancy.user_separator", "upstream.host", "upstream.user", "log.level",
        ])
    }

    func testExtraTrackedParametersAreCheckedAndDeduplicated() throws {
        XCTAssertEqual(try parse("").pool.trackExtraParameters, ProxyConfig.Pool.defaultExtraParameters)
        let config = try parse("""
            [pool]
            track_extra_parameters = ["Statement_Timeout", "statement_timeout", "TimeZone", "work_mem"]
            """)
        // TimeZone is reported by the server (tracked anyway); names are lower-cased once.
        XCTAssertEqual(config.pool.trackExtraParameters, ["statement_timeout", "work_mem"])
        XCTAssertEqual(try parse("[pool]\ntrack_extra_parameters = []").pool.trackExtraParameters, [])
        for refused in ["search_path", "role", "nile.tenant_id", "nile.user_id", "myapp.flag", "default_transaction_read_only", "bad name"] {
            let found = problems("[pool]\ntrack_extra_parameters = [\"\(refused)\"]")
            XCTAssertEqual(found.map(\.key), ["pool.track_extra_parameters"], refused)
        }
    }

    func testPoolModeComesFromTheUserThenTheDatabaseThenThePoolSection() throws {
        let config = try parse("""
            [pool]
            mode = "transaction"

            [pool.database_modes]
            reporting = "session"
            app = "transaction"
            """)
        XCTAssertEqual(config.pool.databaseModes, ["reporting": .session, "app": .transaction])
        let map = try TenantMap.parse("""
            [users.batch]
            mode = "global"
            auth = "trust"
            pool_mode = "session"
            [users.web]
            mode = "global"
            auth = "trust"
            pool_mode = "transaction"
            [users.plain]
            mode = "global"
            auth = "trust"
            """, file: "tenants.toml")
        let (batch, web, plain) = (map[user: "batch"], map[user: "web"], map[user: "plain"])
        XCTAssertEqual(batch?.poolMode, .session)
        XCTAssertNil(plain?.poolMode)
        XCTAssertEqual(config.pool.mode(user: plain, database: "app"), .transaction)
        XCTAssertEqual(config.pool.mode(user: plain, database: "reporting"), .session, "the database's mode")
        XCTAssertEqual(config.pool.mode(user: plain, database: "other"), .transaction, "[pool] mode")
        XCTAssertEqual(config.pool.mode(user: batch, database: "app"), .session, "the user's mode wins")
        XCTAssertEqual(config.pool.mode(user: web, database: "reporting"), .transaction, "the user's mode wins")
        XCTAssertEqual(config.pool.mode(user: nil, database: "reporting"), .session)
    }

    func testASocketDirectoryHostTakesNoTLSDemand() throws {
        let config = try parse("[upstream]\nhost = \"/var/run/postgresql\"\nport = 5433\n")
        XCTAssertEqual(UpstreamConnector.socketPath(host: config.upstream.host, port: config.upstream.port),
                       "/var/run/postgresql/.s.PGSQL.5433")
        XCTAssertEqual(UpstreamConnector.socketPath(host: "/tmp/", port: 5432), "/tmp/.s.PGSQL.5432")
        XCTAssertNil(UpstreamConnector.socketPath(host: "db.example.com", port: 5432))
        for mode in ["require", "verify-full"] {
            let found = problems("[upstream]\nhost = \"/tmp\"\ntls = \"\(mode)\"\ntls_ca_file = \"ca.crt\"\n")
            XCTAssertEqual(found.map(\.key), ["upstream.tls"], mode)
        }
        XCTAssertEqual(try parse("[upstream]\nhost = \"/tmp\"\ntls = \"disable\"\n").upstream.tls, .disable)
    }

    func testBadPoolModesAreReported() throws {
        let found = problems("[pool.database_modes]\nreporting = \"statement\"\nother = 3\n")
        XCTAssertEqual(Set(found.map(\.key)), ["pool.database_modes.reporting", "pool.database_modes.other"])
        XCTAssertEqual(problems("[pool]\ndatabase_modes = \"session\"\n").map(\.key), ["pool.database_modes"])
        XCTAssertThrowsError(try TenantMap.parse("[users.x]\nmode = \"global\"\nauth = \"trust\"\npool_mode = \"statement\"\n", file: "t")) { error in
            XCTAssertEqual((error as? ConfigError)?.problems.map(\.key), ["users.x.pool_mode"])
        }
    }

    // MARK: - Unknown keys

    func testUnknownKeyIsReportedWithItsDottedName() throws {
        let found = problems("[server]\nlisten_prot = 6432")
        XCTAssertEqual(found.map(\.key), ["server.listen_prot"])
        XCTAssertEqual(found.first?.problem, "unknown key")
    }

    func testUnknownSectionIsReportedWithItsName() {
        let found = problems("[srever]\nlisten_port = 6432")
        XCTAssertEqual(found.map(\.key), ["srever"])
        XCTAssertEqual(found.first?.problem, "unknown section")
    }

    func testUnknownTopLevelKeyIsReported() {
        let found = problems("listen_port = 6432")
        XCTAssertEqual(found.map(\.key), ["listen_port"])
    }

    func testSyntaxErrorIsReported() {
        let found = problems("[server\nlisten_port = 1")
        XCTAssertEqual(found.map(\.key), ["(syntax)"])
    }

    // MARK: - Secrets

    func testInlinePassword() throws {
        XCTAssertEqual(try parse("[upstream]\npassword = \"pw 1\"").upstream.password, "pw 1")
    }

    func testPasswordFileIsResolvedAgainstTheConfigFolderAndTrimmed() throws {
        try write("pg.secret", "from-file\n")
        XCTAssertEqual(try parse("[upstream]\npassword_file = \"pg.secret\"").upstream.password, "from-file")
    }

    func testPasswordEnvIsReadFromTheGivenEnvironment() throws {
        let config = try parse("[upstream]\npassword_env = \"PG_PW\"\nglobal_password_env = \"PG_GLOBAL\"",
                               environment: ["PG_PW": "from-env", "PG_GLOBAL": "global-env"])
        XCTAssertEqual(config.upstream.password, "from-env")
        XCTAssertEqual(config.upstream.globalPassword, "global-env")
    }

    func testPasswordGivenMoreThanOneWayIsAProblem() throws {
        try write("pg.secret", "from-file")
        for lines in [["password = \"a\"", "password_env = \"PG_PW\""],
                      ["password_file = \"pg.secret\"", "password_env = \"PG_PW\""],
                      ["password = \"a\"", "password_file = \"pg.secret\""]] {
            let found = problems("[upstream]\n" + lines.joined(separator: "\n"), environment: ["PG_PW": "b"])
            XCTAssertEqual(found.map(\.key), ["upstream.password"], "\(lines)")
        }
    }

    func testMissingEnvironmentVariableNamesPasswordEnv() throws {
        let found = problems("[upstream]\npassword_env = \"PG_PW\"", environment: ["OTHER": "x"])
        XCTAssertEqual(found.map(\.key), ["upstream.password_env"])
        XCTAssertTrue(try XCTUnwrap(found.first).problem.contains("PG_PW"))
    }

    func testUnreadablePasswordFileIsReported() {
        let found = problems("[upstream]\npassword_file = \"nope.secret\"")
        XCTAssertEqual(found.map(\.key), ["upstream.password_file"])
    }

    func testSeveralProblemsAreReportedAtOnce() {
        let found = problems("""
            [server]
            listen_port = 0
            max_client_connections = "many"
            bogus = 1
            [upstream]
            password_env = "UNSET"
            [log]
            level = "loud"
            [extra]
            """)
        XCTAssertEqual(Set(found.map(\.key)), [
            "server.listen_port", "server.max_client_connections", "server.bogus", "upstream.password_env",
            "log.level", "extra",
        ])
    }

    func testSecretNeverAppearsInAnyProblemText() throws {
        let secret = "Sup3r-S3cret-Value"
        try write("pg.secret", secret)
        var texts: [String] = []
        var rejected = 0
        func collect(_ text: String, _ environment: [String: String] = [:]) {
            do {
                _ = try parse(text, environment: environment)
                XCTFail("accepted: \(text)")
            } catch {
                rejected += 1
                texts.append("\(error)")
                if let error = error as? ConfigError {
                    texts += error.problems.map { "\($0.key) \($0.problem) \($0.fix)" }
                }
            }
        }
        collect("[upstream]\npassword = \"\(secret)\"\npassword_env = \"PG_PW\"", ["PG_PW": secret])
        collect("[upstream]\npassword = \"\(secret)\"\npassword_file = \"pg.secret\"\nport = 0")
        collect("[upstream]\nglobal_password = \"\(secret)\"\nglobal_password_env = \"UNSET\"")
        collect("[upstream]\npasswd = \"\(secret)\"")
        collect("[upstream]\npassword = [\"\(secret)\"]")
        collect("[upstream]\npassword = \"\(secret)\"\n[log]\nlevel = \"loud\"")
        XCTAssertEqual(rejected, 6, "every case must be rejected")
        for text in texts {
            XCTAssertFalse(text.contains(secret), "secret leaked: \(text)")
        }
    }

    func testSecretIsNotEchoedByASyntaxError() {
        let secret = "Sup3r-S3cret-Value"
        do {
            _ = try parse("[upstream]\npassword = \"\(secret)\n")
            XCTFail("an unterminated string must be rejected")
        } catch {
            XCTAssertFalse("\(error)".contains(secret), "secret leaked: \(error)")
        }
    }
}
