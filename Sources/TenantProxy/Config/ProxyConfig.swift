import Foundation
import TOMLKit

/// The proxy's configuration (`proxy.conf`, TOML). Every key is documented in proxy.conf.example.
struct ProxyConfig: Sendable {
    struct Server: Sendable {
        var listenHost = "127.0.0.1"
        var listenPort = 6432
        var maxMessageBytes = 64 * 1024 * 1024
        var maxClientConnections = 10_000
        var shutdownTimeoutSeconds = 30
        /// A client that has not logged in this long after connecting is closed (FATAL 57014).
        var loginTimeoutSeconds = 60
        var eventLoopThreads = 0
        /// SO_REUSEPORT on the listener: several instances share one port (rolling restarts).
        var reusePort = false
        /// TCP keepalive on client and upstream sockets (0: the system's timing).
        var keepalive = Keepalive()
        /// 1-255 when several instances run (it is written into cancel keys); 0 = alone.
        var instanceID = 0
        /// A port of this instance alone for cancel requests forwarded by peers (0 = none).
        var cancelPort = 0
    }

    /// SO_KEEPALIVE and its timings, as PostgreSQL's tcp_keepalives_* and PgBouncer's tcp_keep*:
    /// a client or server that vanished without a FIN (a laptop closed, a NAT entry dropped, a
    /// host powered off) is found and its connection closed instead of held for ever.
    struct Keepalive: Sendable, Equatable {
        var enabled = true
        var idleSeconds = 0
        var intervalSeconds = 0
        var count = 0
    }

    /// Another instance behind the same address: cancel requests carrying its id go there.
    struct Peer: Sendable, Equatable {
        var instanceID: Int
        var host: String
        var port: Int
    }

    struct Metrics: Sendable {
        var listenHost = "127.0.0.1"
        /// 0: no metrics endpoint.
        var listenPort = 0
        var maxTenantLabels = 100
    }

    struct Admin: Sendable {
        /// Tenant-map users allowed into the virtual database `proxy`.
        var users: [String] = []
    }

    struct Auth: Sendable {
        var trustLoopback = false
        var failureDelayMilliseconds = 250
        var lockoutFailures = 20
        var lockoutWindowSeconds = 60
        var lockoutSeconds = 300
        var rules: [AuthRule] = []
    }

    struct TLS: Sendable {
        var certFile = ""
        var keyFile = ""
        var clientCAFile = ""
        var require = true
        var minVersion = "1.2"
        var sniDomain = ""

        var enabled: Bool { !certFile.isEmpty && !keyFile.isEmpty }
    }

    enum UpstreamTLSMode: String, Sendable { case disable, prefer, require, verifyFull = "verify-full" }

    struct Tenancy: Sendable {
        /// Absolute path of the tenant map (resolved against the config file's folder).
        var mapFile = ""
        var tenantSetting = "nile.tenant_id"
        var userSetting = "nile.user_id"
        var userSeparator = "."
        var lookupUpstream = true
        var lookupCacheSeconds = 30
    }

    struct Upstream: Sendable {
        /// "default" for [upstream], NAME for [clusters.NAME].
        var name = "default"
        var host = "127.0.0.1"
        var port = 5432
        var user = "postgres"
        var password: String? = nil
        /// Role for global-mode users (migrations, admin); nil: the same as `user`.
        var globalUser: String? = nil
        var globalPassword: String? = nil
        /// Empty: the client's own database name.
        var database = ""
        var connectTimeoutSeconds = 5
        var tls: UpstreamTLSMode = .prefer
        var tlsCAFile = ""
        var tlsServerName = ""
    }

    struct Pool: Sendable {
        enum Mode: String, Sendable { case session, transaction }
        /// For clients whose user (tenant map `pool_mode`) and database (`databaseModes`) name none.
        var mode: Mode = .session
        /// `[pool.database_modes]`: the mode of clients connecting to a database name, as
        /// PgBouncer's per-database pool_mode.
        var databaseModes: [String: Mode] = [:]

        /// A client's pool mode: its user's, else its database's, else `mode` (PgBouncer's order).
        func mode(user: TenantUser?, database: String) -> Mode {
            user?.poolMode ?? databaseModes[database] ?? mode
        }
        /// Upstream connections per (role, database), across all event loops (transaction mode).
        var size = 20
        var maxClientWaitSeconds = 30
        var idleTimeoutSeconds = 300
        /// A pooled connection older than this is closed when it comes back, never in the middle of
        /// a transaction (0 = no limit), as PgBouncer's server_lifetime.
        var serverLifetimeSeconds = 3600
        /// A client idle inside a transaction for longer than this is ended with FATAL 25P03 and its
        /// transaction rolled back (0 = never), as PgBouncer's idle_transaction_timeout.
        var idleTransactionTimeoutSeconds = 0
        /// Most upstream connections lent to one tenant's clients at once (0 = no limit).
        var tenantMaxConnections = 0
        /// Most client connections of one tenant (0 = no limit).
        var tenantMaxClients = 0
        /// Settings the server does not report that clients may SET at session level in transaction
        /// mode: the proxy reads the value back after the transaction and restores it on every lend.
        var trackExtraParameters = Pool.defaultExtraParameters

        /// What ORMs and drivers set when they connect (Rails: client_min_messages), and timeouts.
        static let defaultExtraParameters = [
            "client_min_messages", "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
            "extra_float_digits", "bytea_output",
        ]
        /// Never tracked: the tenant context (search_path in schema isolation), the role, and
        /// transaction characteristics (SET SESSION CHARACTERISTICS is refused for a reason).
        static let untrackable: Set<String> = [
            "search_path", "role", "session_authorization", "transaction_isolation", "transaction_read_only",
            "transaction_deferrable", "default_transaction_isolation", "default_transaction_read_only",
            "default_transaction_deferrable", "session_replication_role", "temp_tablespaces",
        ]
    }

    struct Log: Sendable {
        var level = "info"
        /// "text" or "json" (one JSON object per line).
        var format = "text"
    }

    var server = Server()
    var auth = Auth()
    var tenancy = Tenancy()
    var pool = Pool()
    var tls = TLS()
    var jwt: JWTSettings?
    var upstream = Upstream()
    /// Every upstream cluster by name, "default" (= `upstream`) included.
    var clusters: [String: Upstream] = ["default": Upstream()]
    var peers: [Peer] = []
    var metrics = Metrics()
    var admin = Admin()
    var log = Log()

    /// The cluster a tenant is placed on; unknown names (refused when the map loads) fall back
    /// to the default cluster.
    func cluster(_ name: String) -> Upstream {
        clusters[name] ?? upstream
    }

    static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// Parses and validates; throws `ConfigError` listing every problem.
    static func load(path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ProxyConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: path, problems: [
                ConfigProblem(key: "(file)", problem: "cannot be read", fix: "check the path and its permissions")
            ])
        }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        return try parse(text, file: path, baseDirectory: base, environment: environment)
    }

    static func parse(
        _ text: String,
        file: String,
        baseDirectory: String,
        environment: [String: String]
    ) throws -> ProxyConfig {
        try parseReadingKeys(text, file: file, baseDirectory: baseDirectory, environment: environment).config
    }

    /// `parse`, also giving the dotted name of every key the parser reads (SHOW CONFIG's rows are
    /// checked against them).
    static func parseReadingKeys(
        _ text: String,
        file: String,
        baseDirectory: String,
        environment: [String: String]
    ) throws -> (config: ProxyConfig, keys: Set<String>) {
        let root: TOMLTable
        do {
            root = try TOMLTable(string: text)
        } catch {
            throw ConfigError(file: file, problems: [
                ConfigProblem(key: "(syntax)", problem: "not valid TOML: \(error)", fix: "correct the syntax at the position shown")
            ])
        }
        var reader = TOMLSectionReader(root: root)
        var config = ProxyConfig()

        config.server.listenHost = reader.string("server", "listen_host", default: config.server.listenHost)
        config.server.listenPort = reader.int("server", "listen_port", default: config.server.listenPort, range: 1...65535)
        config.server.maxMessageBytes = reader.int(
            "server", "max_message_bytes", default: config.server.maxMessageBytes, range: 1024...(1 << 30))
        config.server.maxClientConnections = reader.int(
            "server", "max_client_connections", default: config.server.maxClientConnections, range: 1...1_000_000)
        config.server.shutdownTimeoutSeconds = reader.int(
            "server", "shutdown_timeout_seconds", default: config.server.shutdownTimeoutSeconds, range: 0...86_400)
        config.server.loginTimeoutSeconds = reader.int(
            "server", "login_timeout_seconds", default: config.server.loginTimeoutSeconds, range: 1...3_600)
        config.server.eventLoopThreads = reader.int(
            "server", "event_loop_threads", default: config.server.eventLoopThreads, range: 0...256)
        config.server.reusePort = reader.bool("server", "reuse_port", default: false)
        config.server.keepalive.enabled = reader.bool("server", "tcp_keepalive", default: true)
        config.server.keepalive.idleSeconds = reader.int("server", "tcp_keepalive_idle_seconds", default: 0, range: 0...32_767)
        config.server.keepalive.intervalSeconds = reader.int(
            "server", "tcp_keepalive_interval_seconds", default: 0, range: 0...32_767)
        config.server.keepalive.count = reader.int("server", "tcp_keepalive_count", default: 0, range: 0...127)
        config.server.instanceID = reader.int("server", "instance_id", default: 0, range: 0...255)
        config.server.cancelPort = reader.int("server", "cancel_port", default: 0, range: 0...65535)
        config.peers = readPeers(reader: &reader, instanceID: config.server.instanceID)

        config.metrics.listenHost = reader.string("metrics", "listen_host", default: config.metrics.listenHost)
        config.metrics.listenPort = reader.int("metrics", "listen_port", default: 0, range: 0...65535)
        config.metrics.maxTenantLabels = reader.int(
            "metrics", "max_tenant_labels", default: config.metrics.maxTenantLabels, range: 0...100_000)
        config.admin.users = reader.stringArray("admin", "users", default: [])

        config.auth.trustLoopback = reader.bool("auth", "trust_loopback", default: false)
        config.auth.failureDelayMilliseconds = reader.int("auth", "failure_delay_ms", default: 250, range: 0...60_000)
        config.auth.lockoutFailures = reader.int("auth", "lockout_failures", default: 20, range: 0...1_000_000)
        config.auth.lockoutWindowSeconds = reader.int("auth", "lockout_window_seconds", default: 60, range: 1...86_400)
        config.auth.lockoutSeconds = reader.int("auth", "lockout_seconds", default: 300, range: 1...86_400)
        config.auth.rules = AuthRule.read(reader: &reader)

        config.tls.certFile = reader.optionalString("tls", "cert_file").map { resolve($0, against: baseDirectory) } ?? ""
        config.tls.keyFile = reader.optionalString("tls", "key_file").map { resolve($0, against: baseDirectory) } ?? ""
        config.tls.clientCAFile = reader.optionalString("tls", "client_ca_file").map { $0.isEmpty ? "" : resolve($0, against: baseDirectory) } ?? ""
        config.tls.require = reader.bool("tls", "require", default: true)
        config.tls.minVersion = reader.string("tls", "min_version", default: "1.2")
        config.tls.sniDomain = reader.string("tls", "sni_domain", default: "").lowercased()
        if !["1.2", "1.3"].contains(config.tls.minVersion) {
            reader.problem("tls.min_version", "must be \"1.2\" or \"1.3\"", fix: "min_version = \"1.2\"")
        }
        if config.tls.certFile.isEmpty != config.tls.keyFile.isEmpty {
            reader.problem("tls.cert_file", "cert_file and key_file go together", fix: "set both, or neither")
        }
        for (key, path) in [("cert_file", config.tls.certFile), ("key_file", config.tls.keyFile), ("client_ca_file", config.tls.clientCAFile)]
        where !path.isEmpty && !FileManager.default.isReadableFile(atPath: path) {
            reader.problem("tls.\(key)", "file \(path) cannot be read", fix: "check the path and its permissions")
        }
        if config.tls.require && !config.tls.enabled {
            reader.problem("tls.require", "TLS is required (the default) but no certificate is configured",
                           fix: "set tls.cert_file and tls.key_file, or require = false to accept plain connections")
        }
        config.jwt = JWTConfigReader.read(reader: &reader, baseDirectory: baseDirectory, environment: environment)

        let mapFile = reader.string("tenancy", "map_file", default: "tenants.toml")
        config.tenancy.mapFile = resolve(mapFile, against: baseDirectory)
        if !FileManager.default.isReadableFile(atPath: config.tenancy.mapFile) {
            reader.problem("tenancy.map_file", "file \(config.tenancy.mapFile) cannot be read",
                           fix: "create it (see tenants.toml.example) or point map_file at it")
        }
        for key in ["tenant_setting", "user_setting"] {
            let defaultValue = key == "tenant_setting" ? config.tenancy.tenantSetting : config.tenancy.userSetting
            let name = reader.string("tenancy", key, default: defaultValue).lowercased()
            if !ContextInjector.isValidSettingName(name) {
                reader.problem("tenancy.\(key)", "\"\(name)\" is not a custom setting name",
                               fix: "use prefix.name with letters, digits and '_', e.g. \"app.current_tenant\"")
            }
            if key == "tenant_setting" { config.tenancy.tenantSetting = name } else { config.tenancy.userSetting = name }
        }
        config.tenancy.userSeparator = reader.string("tenancy", "user_separator", default: ".")
        if config.tenancy.userSeparator.count > 1 {
            reader.problem("tenancy.user_separator", "must be one character or empty", fix: "user_separator = \".\"")
        }
        config.tenancy.lookupUpstream = reader.bool("tenancy", "lookup_upstream", default: true)
        config.tenancy.lookupCacheSeconds = reader.int(
            "tenancy", "lookup_cache_seconds", default: config.tenancy.lookupCacheSeconds, range: 0...86_400)

        config.upstream = readUpstream(section: "upstream", name: "default", reader: &reader,
                                       baseDirectory: baseDirectory, environment: environment)
        config.clusters = ["default": config.upstream]
        for name in reader.subsections("clusters") {
            guard TenantIdentifier.isValid(name), !name.contains("."), name != "default" else {
                reader.problem("clusters.\(name)", "is not a usable cluster name",
                               fix: "use letters, digits, '-' and '_' (\"default\" is [upstream])")
                continue
            }
            config.clusters[name] = readUpstream(section: "clusters.\(name)", name: name, reader: &reader,
                                                 baseDirectory: baseDirectory, environment: environment)
        }

        let mode = reader.string("pool", "mode", default: "session")
        if let parsed = Pool.Mode(rawValue: mode) {
            config.pool.mode = parsed
        } else {
            reader.problem("pool.mode", "must be session or transaction (got \(mode))", fix: "mode = \"transaction\"")
        }
        for (database, raw) in reader.stringTable("pool", "database_modes") {
            if let parsed = Pool.Mode(rawValue: raw) {
                config.pool.databaseModes[database] = parsed
            } else {
                reader.problem("pool.database_modes.\(database)", "must be session or transaction (got \(raw))",
                               fix: "\(database) = \"session\"")
            }
        }
        config.pool.size = reader.int("pool", "size", default: config.pool.size, range: 1...10_000)
        config.pool.maxClientWaitSeconds = reader.int(
            "pool", "max_client_wait_seconds", default: config.pool.maxClientWaitSeconds, range: 1...86_400)
        config.pool.idleTimeoutSeconds = reader.int(
            "pool", "idle_timeout_seconds", default: config.pool.idleTimeoutSeconds, range: 1...86_400)
        config.pool.serverLifetimeSeconds = reader.int(
            "pool", "server_lifetime_seconds", default: config.pool.serverLifetimeSeconds, range: 0...2_592_000)
        config.pool.idleTransactionTimeoutSeconds = reader.int(
            "pool", "idle_transaction_timeout_seconds", default: config.pool.idleTransactionTimeoutSeconds, range: 0...86_400)
        config.pool.tenantMaxConnections = reader.int(
            "pool", "tenant_max_connections", default: 0, range: 0...10_000)
        config.pool.tenantMaxClients = reader.int("pool", "tenant_max_clients", default: 0, range: 0...1_000_000)
        var extra: [String] = []
        let context = [config.tenancy.tenantSetting, config.tenancy.userSetting]
        for raw in reader.stringArray("pool", "track_extra_parameters", default: Pool.defaultExtraParameters) {
            let name = raw.lowercased()
            if !ContextInjector.isSafeSettingName(name) || name.contains(".") {
                reader.problem("pool.track_extra_parameters", "\"\(raw)\" is not a setting name",
                               fix: "list PostgreSQL's own setting names, such as \"statement_timeout\" (no custom dotted ones)")
            } else if Pool.untrackable.contains(name) || context.contains(name) {
                reader.problem("pool.track_extra_parameters", "\(name) cannot be tracked: it is part of the tenant context, the role or the transaction characteristics",
                               fix: "remove \(name) (clients set it with SET LOCAL inside their transactions)")
            } else if !extra.contains(name), !TransactionModeGuard.trackedParameters.contains(name) {
                extra.append(name)
            }
        }
        config.pool.trackExtraParameters = extra

        config.log.level = reader.string("log", "level", default: "info").lowercased()
        if !logLevels.contains(config.log.level) {
            reader.problem("log.level", "unknown level \(config.log.level)", fix: "use one of \(logLevels.joined(separator: ", "))")
        }

        config.log.format = reader.string("log", "format", default: "text").lowercased()
        if !["text", "json"].contains(config.log.format) {
            reader.problem("log.format", "must be text or json (got \(config.log.format))", fix: "format = \"json\"")
        }

        reader.reportUnknownKeys()
        if !reader.problems.isEmpty {
            throw ConfigError(file: file, problems: reader.problems)
        }
        return (config, reader.keysAsked)
    }

    /// One upstream cluster: `[upstream]` or a `[clusters.NAME]` section, same keys.
    private static func readUpstream(
        section: String,
        name: String,
        reader: inout TOMLSectionReader,
        baseDirectory: String,
        environment: [String: String]
    ) -> Upstream {
        var upstream = Upstream()
        upstream.name = name
        upstream.host = reader.string(section, "host", default: upstream.host)
        upstream.port = reader.int(section, "port", default: upstream.port, range: 1...65535)
        upstream.user = reader.string(section, "user", default: upstream.user)
        upstream.database = reader.string(section, "database", default: "")
        upstream.connectTimeoutSeconds = reader.int(
            section, "connect_timeout_seconds", default: upstream.connectTimeoutSeconds, range: 1...600)
        upstream.password = SecretSource.read(
            section: section, key: "password", reader: &reader, baseDirectory: baseDirectory, environment: environment)
        let tlsMode = reader.string(section, "tls", default: "prefer")
        if let mode = UpstreamTLSMode(rawValue: tlsMode) {
            upstream.tls = mode
        } else {
            reader.problem("\(section).tls", "must be disable, prefer, require or verify-full", fix: "tls = \"verify-full\"")
        }
        upstream.tlsCAFile = reader.optionalString(section, "tls_ca_file").map { $0.isEmpty ? "" : resolve($0, against: baseDirectory) } ?? ""
        upstream.tlsServerName = reader.string(section, "tls_server_name", default: "")
        if upstream.host.hasPrefix("/"), upstream.tls == .require || upstream.tls == .verifyFull {
            // libpq ignores sslmode on a Unix-domain socket; a configuration that asks for TLS
            // must not get a connection without it unnoticed.
            reader.problem("\(section).tls", "TLS is not used on a Unix-domain socket (host \(upstream.host) is a socket directory)",
                           fix: "use tls = \"prefer\" or \"disable\" with a socket directory, or a host name for TLS")
        } else if upstream.tls == .verifyFull, upstream.tlsCAFile.isEmpty {
            reader.problem("\(section).tls_ca_file", "verify-full needs the CA that signed the server's certificate",
                           fix: "set tls_ca_file = \"/path/to/ca.crt\"")
        }
        upstream.globalUser = reader.optionalString(section, "global_user")
        upstream.globalPassword = SecretSource.read(
            section: section, key: "global_password", reader: &reader, baseDirectory: baseDirectory, environment: environment)
        if upstream.host.isEmpty {
            reader.problem("\(section).host", "must not be empty", fix: "set the address of the PostgreSQL server")
        }
        if upstream.user.isEmpty {
            reader.problem("\(section).user", "must not be empty", fix: "set the role the proxy logs in as")
        }
        return upstream
    }

    /// `[[peers]]`: the other instances, each with a distinct id.
    private static func readPeers(reader: inout TOMLSectionReader, instanceID: Int) -> [Peer] {
        guard let array = reader.rawArray("", "peers") else { return [] }
        var peers: [Peer] = []
        for (index, element) in array.enumerated() {
            let key = "peers[\(index)]"
            guard let table = element.table else {
                reader.problem(key, "must be a table", fix: "write [[peers]] with instance_id, host and port")
                continue
            }
            for field in table.keys where !["instance_id", "host", "port"].contains(field) {
                reader.problem("\(key).\(field)", "unknown key", fix: "use instance_id, host and port")
            }
            guard let id = table["instance_id"]?.int, (1...255).contains(id), let host = table["host"]?.string, !host.isEmpty,
                  let port = table["port"]?.int, (1...65535).contains(port) else {
                reader.problem(key, "needs instance_id (1-255), host and port", fix: "instance_id = 2, host = \"10.0.0.2\", port = 6432")
                continue
            }
            if id == instanceID || peers.contains(where: { $0.instanceID == id }) {
                reader.problem("\(key).instance_id", "\(id) is used twice (or is this instance's own id)",
                               fix: "give every instance its own server.instance_id and list the others as peers")
                continue
            }
            peers.append(Peer(instanceID: id, host: host, port: port))
        }
        if !peers.isEmpty, instanceID == 0 {
            reader.problem("server.instance_id", "peers are listed but this instance has no id",
                           fix: "set instance_id = 1..255, different on every instance")
        }
        return peers
    }

    static func resolve(_ path: String, against base: String) -> String {
        if path.hasPrefix("/") { return path }
        return URL(fileURLWithPath: base).appendingPathComponent(path).standardizedFileURL.path
    }
}

/// A secret given inline (`KEY`), in a file (`KEY_file`) or in an environment variable (`KEY_env`).
/// The value is never logged and never placed in an error text.
enum SecretSource {
    static func read(
        section: String,
        key: String,
        reader: inout TOMLSectionReader,
        baseDirectory: String,
        environment: [String: String]
    ) -> String? {
        let inline = reader.optionalString(section, key)
        let file = reader.optionalString(section, "\(key)_file")
        let env = reader.optionalString(section, "\(key)_env")
        let given = [inline, file, env].compactMap { $0 }.count
        if given > 1 {
            reader.problem("\(section).\(key)", "is given more than one way",
                           fix: "keep only one of \(key), \(key)_file and \(key)_env")
        }
        if let file {
            let path = ProxyConfig.resolve(file, against: baseDirectory)
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                reader.problem("\(section).\(key)_file", "file \(path) cannot be read", fix: "check the path and its permissions")
                return nil
            }
            return text.trimmingCharacters(in: .newlines)
        }
        if let env {
            guard !env.isEmpty else {
                reader.problem("\(section).\(key)_env", "is empty", fix: "name the environment variable that holds the secret")
                return nil
            }
            guard let value = environment[env] else {
                reader.problem("\(section).\(key)_env", "environment variable \(env) is not set",
                               fix: "export \(env) before starting the proxy")
                return nil
            }
            return value
        }
        return inline
    }
}
