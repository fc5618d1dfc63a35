import Foundation
import XCTest

@testable import TenantProxy

/// SHOW CONFIG promises every setting in force: each key the parser reads has a row, each row is
/// a key the parser reads, and a row says "restart" exactly when RELOAD keeps the running value.
final class AdminConfigRowsTests: XCTestCase {
    private var folder: ScratchFolder!

    override func setUpWithError() throws {
        folder = try ScratchFolder("admin-config-rows")
        // Only readability is checked when parsing; the contents are not.
        for name in ["tenants.toml", "tenant-map.toml", "server.crt", "server.key", "clients-ca.crt", "upstream-ca.crt", "jwks.json"] {
            try folder.write(name)
        }
    }

    override func tearDownWithError() throws {
        folder?.remove()
    }

    /// Every key this version reads, each set to a value other than its default.
    private let everyKey = """
        [[peers]]
        instance_id = 2
        host = "10.0.0.2"
        port = 6432

        [server]
        listen_host = "127.0.0.2"
        listen_port = 7432
        max_message_bytes = 2048
        max_client_connections = 500
        shutdown_timeout_seconds = 7
        event_loop_threads = 3
        reuse_port = true
        tcp_keepalive = false
        tcp_keepalive_idle_seconds = 30
        tcp_keepalive_interval_seconds = 5
        tcp_keepalive_count = 3
        instance_id = 1
        cancel_port = 7433

        [metrics]
        listen_host = "127.0.0.3"
        listen_port = 9187
        max_tenant_labels = 5

        [admin]
        users = ["ops"]

        [auth]
        trust_loopback = true
        failure_delay_ms = 10
        lockout_failures = 3
        lockout_window_seconds = 9
        lockout_seconds = 11

        [[auth.rules]]
        user = "alice"
        database = "app"
        address = "127.0.0.1/32"
        method = "scram-sha-256"

        [tls]
        cert_file = "server.crt"
        key_file = "server.key"
        client_ca_file = "clients-ca.crt"
        require = false
        min_version = "1.3"
        sni_domain = "db.example.com"

        [tenancy]
        map_file = "tenant-map.toml"
        tenant_setting = "app.tenant"
        user_setting = "app.user"
        user_separator = "+"
        lookup_upstream = false
        lookup_cache_seconds = 4

        [upstream]
        host = "10.0.0.9"
        port = 6543
        user = "app_proxy"
        password = "upstream-secret"
        global_user = "app_global"
        global_password = "global-secret"
        database = "app"
        connect_timeout_seconds = 8
        tls = "verify-full"
        tls_ca_file = "upstream-ca.crt"
        tls_server_name = "pg.example.com"

        [clusters.replica]
        host = "10.0.0.10"
        port = 6544
        user = "replica_proxy"
        password = "replica-secret"
        database = "app"
        connect_timeout_seconds = 9
        tls = "require"
        tls_ca_file = "upstream-ca.crt"
        tls_server_name = "replica.example.com"

        [pool]
        mode = "transaction"
        size = 7
        max_client_wait_seconds = 6
        idle_timeout_seconds = 40
        server_lifetime_seconds = 600
        idle_transaction_timeout_seconds = 20
        tenant_max_connections = 3
        tenant_max_clients = 50
        track_extra_parameters = ["work_mem"]

        [pool.database_modes]
        reporting = "session"

        [log]
        level = "debug"
        format = "json"

        [jwt]
        jwks_file = "jwks.json"
        jwks_url = "https://idp.example.com/jwks.json"
        jwks_refresh_seconds = 60
        unknown_kid_refetch_seconds = 5
        hs256_secret = "0123456789abcdef0123456789abcdef-hs256"
        issuer = "https://idp.example.com/"
        audience = "tenant-proxy"
        leeway_seconds = 3
        tenant_claim = "org.tenant"
        user_claim = "email"
        """

    private func parse(_ text: String) throws -> (config: ProxyConfig, keys: Set<String>) {
        try ProxyConfig.parseReadingKeys(text, file: "proxy.conf", baseDirectory: folder.path, environment: [:])
    }

    private func rows(_ config: ProxyConfig) -> [String: (value: String, changeable: String)] {
        var byKey: [String: (value: String, changeable: String)] = [:]
        for row in AdminConfigRows.rows(config) {
            let key = try! XCTUnwrap(row[0])
            XCTAssertNil(byKey[key], "\(key) shown twice")
            byKey[key] = (row[1] ?? "", row[2] ?? "")
        }
        return byKey
    }

    func testEveryKeyReadIsShownAndEveryRowIsAKey() throws {
        let (config, keys) = try parse(everyKey)
        let shown = rows(config)
        // A secret's `_file` and `_env` forms are the same setting as the inline key.
        let settings = Set(keys.map { key -> String in
            for suffix in ["_file", "_env"] where key.hasSuffix(suffix) {
                let base = String(key.dropLast(suffix.count))
                if shown[base] != nil { return base }
            }
            return key
        })
        XCTAssertEqual(settings.subtracting(shown.keys).sorted(), [], "read but not shown by SHOW CONFIG")
        XCTAssertEqual(Set(shown.keys).subtracting(settings).sorted(), [], "shown but not a setting")
    }

    func testSecretsAreShownOnlyAsSet() throws {
        let (config, _) = try parse(everyKey)
        let shown = rows(config)
        for key in ["upstream.password", "upstream.global_password", "clusters.replica.password", "jwt.hs256_secret"] {
            XCTAssertEqual(shown[key]?.value, "(set)", key)
        }
        let text = AdminConfigRows.rows(config).flatMap { $0 }.compactMap { $0 }.joined(separator: "\n")
        for secret in ["upstream-secret", "global-secret", "replica-secret", "0123456789abcdef"] {
            XCTAssertFalse(text.contains(secret), "a secret is shown")
        }
    }

    /// RELOAD from the defaults to a file changing every key: what it keeps is what the rows
    /// mark "restart" (the [jwt] section is kept as a whole).
    func testRestartRowsAreWhatReloadKeeps() throws {
        let (running, _) = try parse("[tls]\nrequire = false\n[jwt]\nhs256_secret = \"an-hs256-secret-of-at-least-32-bytes\"\n")
        var fresh = try parse(everyKey).config
        let shown = rows(fresh)
        let kept = Set(ProxyRuntime.keepRestartOnly(in: &fresh, from: running))
        var restart: Set<String> = []
        for (key, row) in shown {
            XCTAssert(["yes", "restart"].contains(row.changeable), "\(key): \(row.changeable)")
            if row.changeable == "restart" { restart.insert(key.hasPrefix("jwt.") ? "jwt" : key) }
        }
        XCTAssertEqual(kept.sorted(), restart.sorted())
        XCTAssertEqual(fresh.jwt, running.jwt)
        XCTAssertEqual(fresh.pool.idleTimeoutSeconds, running.pool.idleTimeoutSeconds)
        XCTAssertEqual(fresh.pool.size, 7, "a reloadable key takes the new value")
        XCTAssertEqual(fresh.pool.serverLifetimeSeconds, 600)
        XCTAssertEqual(fresh.pool.idleTransactionTimeoutSeconds, 20)
    }
}
