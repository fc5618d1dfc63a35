import ArgumentParser
import Foundation
import NIOPosix

/// `tenant-proxy demo`: a throwaway local PostgreSQL with the demo schema, and the proxy in front of
/// it, in one command. Ctrl-C or SIGTERM stops the proxy and that PostgreSQL cleanly.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Start a local throwaway PostgreSQL with a demo schema and two tenants, and the proxy in front of it.")

    @Option(help: "Port the proxy listens on (127.0.0.1).")
    var port: Int = 6432

    @Option(name: .customLong("data-dir"), help: "Folder for the demo's PostgreSQL, config and logs (created or reused).")
    var dataDir: String = ".demo"

    @Option(name: .customLong("sql-dir"), help: "Folder with the deploy/sql scripts (default: found from the current folder).")
    var sqlDir: String?

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1-65535") }
    }

    func run() throws {
        let fileManager = FileManager.default
        let root = URL(fileURLWithPath: dataDir, relativeTo: URL(fileURLWithPath: fileManager.currentDirectoryPath))
            .standardizedFileURL.path
        try fileManager.createDirectory(atPath: root, withIntermediateDirectories: true)
        let sql = try sqlDir ?? DeployFiles.findSQLDirectory()
        let state = try DemoState.loadOrCreate(at: root + "/demo-state.toml")

        let postgres = LocalPostgres(
            dataDirectory: root + "/pgdata", socketDirectory: root + "/run", port: state.postgresPort,
            binDirectory: try LocalPostgres.findBinDirectory())
        let fresh = !postgres.isInitialized
        if fresh {
            print("creating a PostgreSQL cluster in \(postgres.dataDirectory) ...")
            fflush(stdout)
            try postgres.initialize(superuserPassword: state.superuserPassword)
        }
        try postgres.start()
        var stopped = false
        let stopPostgres = {
            guard !stopped else { return }
            stopped = true
            print("stopping the demo PostgreSQL ...")
            do { try postgres.stop() } catch { print("\(error)") }
        }
        do {
            if fresh || !state.schemaLoaded {
                try loadSchema(postgres: postgres, sqlDirectory: sql, state: state)
                var loaded = state
                loaded.schemaLoaded = true
                try loaded.save(to: root + "/demo-state.toml")
            }
            let configPath = try writeConfig(root: root, state: state, postgresPort: postgres.port)
            try runProxy(configPath: configPath, state: state)
        } catch {
            stopPostgres()
            throw error
        }
        stopPostgres()
    }

    private func loadSchema(postgres: LocalPostgres, sqlDirectory: String, state: DemoState) throws {
        print("loading the demo schema ...")
        let exists = try postgres.psql("select 1 from pg_database where datname = 'demo'", variables: [:])
        if !exists.contains("1") {
            try postgres.psql("create database demo")
        }
        let variables = ["proxy_password": state.proxyPassword, "owner_password": state.ownerPassword]
        for file in ["01_nile_schema.sql", "02_tenant_context.sql", "03_rls.sql", "04_roles.sql", "05_demo.sql"] {
            let text = try String(contentsOfFile: sqlDirectory + "/" + file, encoding: .utf8)
            try postgres.psql(text, database: "demo", variables: variables)
        }
    }

    private func writeConfig(root: String, state: DemoState, postgresPort: Int) throws -> String {
        func verifier(_ password: String) -> String { SCRAMVerifierFactory.make(password: password, iterations: 4096) }
        let map = """
            # Demo tenant map of tenant-proxy (written by `tenant-proxy demo`); see tenants.toml.example.
            [tenants.acme]
            id = "\(DemoState.acmeID)"
            aliases = ["acme-corp"]
            databases = ["acme"]

            [tenants.globex]
            id = "\(DemoState.globexID)"
            databases = ["globex"]

            [users.alice]
            password = "\(verifier("alice-demo"))"
            mode = "pinned"
            tenants = ["acme"]

            [users.bob]
            password = "\(verifier("bob-demo"))"
            mode = "pinned"
            tenants = ["globex"]

            [users.app]
            password = "\(verifier("app-demo"))"
            mode = "switch"
            tenants = ["*"]

            [users.admin]
            password = "\(verifier("admin-demo"))"
            mode = "global"

            """
        try map.write(toFile: root + "/tenants.toml", atomically: true, encoding: .utf8)
        if !FileManager.default.fileExists(atPath: root + "/server.crt") {
            // A self-signed certificate: TLS is the default even for the demo.
            try LocalPostgres.run("/usr/bin/openssl", [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", root + "/server.key", "-out", root + "/server.crt", "-days", "365",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ], asPostgres: false)
            chmod(root + "/server.key", 0o600)
        }
        let config = """
            # Written by `tenant-proxy demo`; see proxy.conf.example for every key.
            [server]
            listen_host = "127.0.0.1"
            listen_port = \(port)
            shutdown_timeout_seconds = 5

            [tls]
            cert_file = "server.crt"
            key_file = "server.key"
            require = true

            [tenancy]
            map_file = "tenants.toml"

            [upstream]
            host = "127.0.0.1"
            port = \(postgresPort)
            user = "tenant_proxy"
            password_file = "upstream-password"
            global_user = "app_owner"
            global_password_file = "owner-password"
            database = "demo"

            [admin]
            users = ["admin"]

            [metrics]
            listen_port = \(port + 2755)

            [log]
            level = "info"

            """
        try (state.proxyPassword + "\n").write(toFile: root + "/upstream-password", atomically: true, encoding: .utf8)
        try (state.ownerPassword + "\n").write(toFile: root + "/owner-password", atomically: true, encoding: .utf8)
        chmod(root + "/upstream-password", 0o600)
        chmod(root + "/owner-password", 0o600)
        let path = root + "/proxy.conf"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func runProxy(configPath: String, state: DemoState) throws {
        try ProxyServer.run(configPath: configPath) {
            print("")
            print("tenant-proxy demo is listening on 127.0.0.1:\(port). Connect with:")
            print("  PGPASSWORD=alice-demo psql -h 127.0.0.1 -p \(port) -U alice acme    # pinned user, tenant acme (by database name)")
            print("  PGPASSWORD=bob-demo psql -h 127.0.0.1 -p \(port) -U bob.globex demo # pinned user, tenant globex (by user suffix)")
            print("  PGPASSWORD=app-demo psql -h 127.0.0.1 -p \(port) -U app demo        # switch: SET nile.tenant_id = '<id>'")
            print("  PGPASSWORD=admin-demo psql -h 127.0.0.1 -p \(port) -U admin demo    # global: every tenant, migrations")
            print("  PGPASSWORD=admin-demo psql -h 127.0.0.1 -p \(port) -U admin proxy   # admin console: SHOW POOLS, SHOW STATS, PAUSE acme, ...")
            print("  curl http://127.0.0.1:\(port + 2755)/metrics                          # Prometheus metrics")
            print("Then: SELECT * FROM todos;  (acme = \(DemoState.acmeID), globex = \(DemoState.globexID))")
            print("Config: \(configPath). Press Ctrl-C to stop the proxy and the demo PostgreSQL.")
            fflush(stdout)
        }
    }
}

/// What the demo keeps between runs: ports and generated passwords.
struct DemoState {
    static let acmeID = "11111111-1111-4111-8111-111111111111"
    static let globexID = "22222222-2222-4222-8222-222222222222"

    var postgresPort: Int
    var superuserPassword: String
    var proxyPassword: String
    var ownerPassword: String
    var schemaLoaded: Bool

    static func loadOrCreate(at path: String) throws -> DemoState {
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            var values: [String: String] = [:]
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                if parts.count == 2 { values[parts[0]] = parts[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
            }
            if let port = values["postgres_port"].flatMap(Int.init), let superuser = values["superuser_password"],
               let proxy = values["proxy_password"], let owner = values["owner_password"] {
                return DemoState(postgresPort: port, superuserPassword: superuser, proxyPassword: proxy,
                                 ownerPassword: owner, schemaLoaded: values["schema_loaded"] == "true")
            }
        }
        let state = DemoState(postgresPort: try freePort(), superuserPassword: randomPassword(),
                              proxyPassword: randomPassword(), ownerPassword: randomPassword(), schemaLoaded: false)
        try state.save(to: path)
        return state
    }

    func save(to path: String) throws {
        let text = """
            postgres_port = \(postgresPort)
            superuser_password = "\(superuserPassword)"
            proxy_password = "\(proxyPassword)"
            owner_password = "\(ownerPassword)"
            schema_loaded = \(schemaLoaded)

            """
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
    }

    private static func randomPassword() -> String {
        let alphabet = Array("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        var generator = SystemRandomNumberGenerator()
        return String((0..<24).map { _ in alphabet.randomElement(using: &generator)! })
    }

    /// A port nobody listens on now: bind port 0 and read what the kernel chose.
    private static func freePort() throws -> Int {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let channel = try ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).wait()
        let port = channel.localAddress?.port ?? 55432
        try channel.close().wait()
        return port
    }
}
