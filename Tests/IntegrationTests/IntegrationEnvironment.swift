// The fixture behind the PostgresNIO integration tests: a real PostgreSQL 15 cluster created with
// initdb in a temporary directory, and the tenant-proxy binary run as subprocesses in front of
// it (one in transaction pooling mode, one in session mode). The tests never import the
// TenantProxy module: they drive the built binary over the wire, as any client would.
//
// Binary: $TENANT_PROXY_BIN, else <package root>/.build/debug/tenant-proxy. PostgreSQL: $PG_BIN,
// else /usr/lib/postgresql/15/bin. When either is missing the tests are skipped with XCTSkip
// (set TENANT_PROXY_REQUIRE_INTEGRATION=1 to make that a failure instead).
//
// Waiting is always "poll a condition until a deadline", never a fixed sleep.

import Foundation
import NIOCore
import NIOPosix
import XCTest

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Where things are. `#filePath` is `<root>/Tests/IntegrationTests/IntegrationEnvironment.swift`.
enum IntegrationPaths {
    static func packageRoot(filePath: String = #filePath) -> URL {
        URL(fileURLWithPath: filePath)
            .deletingLastPathComponent()  // IntegrationTests
            .deletingLastPathComponent()  // Tests
            .deletingLastPathComponent()  // package root
    }

    /// The tenant-proxy binary, or an XCTSkip (a failure when integration tests are required).
    static func proxyBinary() throws -> String {
        let env = ProcessInfo.processInfo.environment
        let path: String
        let origin: String
        if let fromEnv = env["TENANT_PROXY_BIN"], !fromEnv.isEmpty {
            path = fromEnv
            origin = "TENANT_PROXY_BIN"
        } else {
            path = packageRoot().appendingPathComponent(".build/debug/tenant-proxy").path
            origin = "the default location"
        }
        guard FileManager.default.isExecutableFile(atPath: path) else {
            try unavailable("tenant-proxy binary not found at \(path) (\(origin)): run `swift build` "
                + "first or set TENANT_PROXY_BIN to the built binary")
        }
        return path
    }

    /// The PostgreSQL server binaries (initdb, pg_ctl, psql).
    static func postgresBinDir() throws -> String {
        let env = ProcessInfo.processInfo.environment
        var candidates: [String] = []
        if let fromEnv = env["PG_BIN"], !fromEnv.isEmpty { candidates.append(fromEnv) }
        candidates.append("/usr/lib/postgresql/15/bin")
        for dir in candidates where FileManager.default.isExecutableFile(atPath: dir + "/initdb") {
            return dir
        }
        try unavailable("PostgreSQL server binaries not found in \(candidates.joined(separator: ", ")) "
            + "(install postgresql-15 or set PG_BIN)")
    }

    private static func unavailable(_ message: String) throws -> Never {
        if ProcessInfo.processInfo.environment["TENANT_PROXY_REQUIRE_INTEGRATION"] == "1" {
            throw FixtureError(message)
        }
        throw XCTSkip(message)
    }
}

// MARK: - small process and socket utilities

/// A child process started with posix_spawn and reaped with waitpid. (Foundation's Process on
/// Linux notices an exit only when every holder of an inherited socket has gone, so a command
/// that leaves a daemon behind, like `pg_ctl start`, would look like it never finished.)
final class ChildProcess {
    let pid: pid_t
    private(set) var exitStatus: Int32?

    /// stdout and stderr go to files; stdin is /dev/null.
    init(_ command: [String], stdout: String, stderr: String) throws {
        precondition(!command.isEmpty)
        #if canImport(Glibc)
        var actions = posix_spawn_file_actions_t()
        #else
        var actions: posix_spawn_file_actions_t?
        #endif
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o644)

        let argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, command[0], &actions, nil, argv, environ)
        guard rc == 0 else {
            throw FixtureError("posix_spawn \(command[0]) failed: \(String(cString: strerror(rc)))")
        }
        self.pid = pid
    }

    /// Reaps the child if it has exited (non-blocking).
    var isRunning: Bool {
        if exitStatus != nil { return false }
        var status: Int32 = 0
        let rc = waitpid(pid, &status, WNOHANG)
        if rc == pid {
            // exited: the code; killed by a signal: 128 + the signal, as a shell says
            exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            return false
        }
        if rc < 0 && errno == ECHILD {
            exitStatus = -1
            return false
        }
        return true
    }

    /// Waits until the child exits or `timeout` passes; true when it exited.
    @discardableResult
    func wait(timeout: TimeInterval) -> Bool {
        Subprocess.poll(timeout: timeout) { !isRunning }
    }

    func signal(_ sig: Int32) {
        if isRunning { kill(pid, sig) }
    }
}

enum Subprocess {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static var isRoot: Bool { getuid() == 0 }

    /// Postgres refuses to run as root: server commands run as the postgres OS user then.
    static func asPostgres(_ command: [String]) -> [String] {
        isRoot ? ["/usr/sbin/runuser", "-u", "postgres", "--"] + command : command
    }

    /// Runs a command to completion (output captured through files), failing on a non-zero
    /// exit or after `timeout` seconds.
    @discardableResult
    static func run(_ command: [String], in scratch: URL, timeout: TimeInterval = 60,
                    check: Bool = true) throws -> Result {
        let token = UUID().uuidString
        let outPath = scratch.appendingPathComponent("cmd-\(token).out").path
        let errPath = scratch.appendingPathComponent("cmd-\(token).err").path
        defer {
            try? FileManager.default.removeItem(atPath: outPath)
            try? FileManager.default.removeItem(atPath: errPath)
        }
        let child = try ChildProcess(command, stdout: outPath, stderr: errPath)
        let finished = child.wait(timeout: timeout)
        if !finished {
            child.signal(SIGKILL)
            child.wait(timeout: 10)
        }
        let result = Result(
            status: child.exitStatus ?? -1,
            stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
        if !finished {
            throw FixtureError("timed out after \(timeout)s: \(command.joined(separator: " "))\n\(result.stderr)")
        }
        if check && result.status != 0 {
            throw FixtureError("exit \(result.status): \(command.joined(separator: " "))\n"
                + "stdout:\n\(result.stdout)\nstderr:\n\(result.stderr)")
        }
        return result
    }

    /// Polls `condition` every 20 ms until it holds (true) or the deadline passes (false).
    static func poll(timeout: TimeInterval, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if condition() { return true }
            if Date() >= deadline { return false }
            usleep(20_000)
        }
    }
}

enum Net {
    /// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close).
    static func freePort() throws -> Int {
        let channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).wait()
        defer { try? channel.close().wait() }
        guard let port = channel.localAddress?.port else { throw FixtureError("no local port") }
        return port
    }

    static func portAccepts(host: String = "127.0.0.1", port: Int) -> Bool {
        do {
            let channel = try ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.milliseconds(500))
                .connect(host: host, port: port).wait()
            try? channel.close().wait()
            return true
        } catch {
            return false
        }
    }
}

// MARK: - PostgreSQL

final class PostgresCluster {
    let bin: String
    let dir: URL
    let data: URL
    let socketDir: URL
    let logFile: URL
    let port: Int
    private(set) var started = false

    init(bin: String, dir: URL) throws {
        self.bin = bin
        self.dir = dir
        self.data = dir.appendingPathComponent("pgdata")
        self.socketDir = dir.appendingPathComponent("sock")
        self.logFile = dir.appendingPathComponent("postgres.log")
        self.port = try Net.freePort()
    }

    func initialize() throws {
        try FileManager.default.createDirectory(at: socketDir, withIntermediateDirectories: true)
        if Subprocess.isRoot {
            guard let pw = getpwnam("postgres") else {
                throw FixtureError("running as root but there is no `postgres` OS user")
            }
            for path in [dir.path, socketDir.path] {
                guard chown(path, pw.pointee.pw_uid, pw.pointee.pw_gid) == 0 else {
                    throw FixtureError("chown \(path) failed: errno \(errno)")
                }
            }
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir.path)
        try Subprocess.run(Subprocess.asPostgres([
            bin + "/initdb", "-D", data.path, "-U", "postgres",
            "--auth-host=scram-sha-256", "--auth-local=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        ]), in: dir, timeout: 120)
        let conf = """

            listen_addresses = '127.0.0.1'
            port = \(port)
            unix_socket_directories = '\(socketDir.path)'
            password_encryption = 'scram-sha-256'
            max_connections = 50
            fsync = off
            synchronous_commit = off
            full_page_writes = off
            logging_collector = off
            shared_buffers = 32MB

            """
        let confURL = data.appendingPathComponent("postgresql.conf")
        let handle = try FileHandle(forWritingTo: confURL)
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(conf.utf8))
    }

    func start() throws {
        try Subprocess.run(Subprocess.asPostgres([
            bin + "/pg_ctl", "-D", data.path, "-l", logFile.path, "-w", "-t", "60", "start",
        ]), in: dir, timeout: 90)
        started = true
        guard Subprocess.poll(timeout: 30, { Net.portAccepts(port: port) }) else {
            throw FixtureError("postgres did not accept connections on \(port)\n\(logTail())")
        }
    }

    /// Runs SQL as the superuser over the unix socket, one statement per -c (each its own
    /// transaction, so CREATE DATABASE works).
    func psql(_ statements: [String], database: String = "postgres") throws {
        var cmd = [bin + "/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", socketDir.path,
                   "-p", String(port), "-U", "postgres", "-d", database]
        for statement in statements { cmd += ["-c", statement] }
        try Subprocess.run(Subprocess.asPostgres(cmd), in: dir, timeout: 60)
    }

    func stop() {
        guard started else { return }
        _ = try? Subprocess.run(Subprocess.asPostgres([
            bin + "/pg_ctl", "-D", data.path, "-m", "immediate", "-w", "-t", "60", "stop",
        ]), in: dir, timeout: 90, check: false)
        started = false
    }

    func logTail(lines: Int = 40) -> String { lastLines(of: logFile, count: lines) }
}

/// The last `count` lines of a log file ("" when it cannot be read), for failure messages.
func lastLines(of file: URL, count: Int) -> String {
    guard let text = try? String(contentsOf: file, encoding: .utf8) else { return "" }
    return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(count).joined(separator: "\n")
}

// MARK: - tenant-proxy

final class ProxyInstance {
    let name: String
    let poolMode: String
    let binary: String
    let dir: URL
    let configURL: URL
    let stderrURL: URL
    let host = "127.0.0.1"
    let port: Int
    private var child: ChildProcess?

    init(name: String, poolMode: String, binary: String, dir: URL, upstreamPort: Int,
         poolSize: Int, tenantMap: String) throws {
        self.name = name
        self.poolMode = poolMode
        self.binary = binary
        self.dir = dir
        self.port = try Net.freePort()
        self.configURL = dir.appendingPathComponent("\(name).toml")
        self.stderrURL = dir.appendingPathComponent("\(name).stderr")
        let mapFile = "tenants.toml"
        // Both proxies share one map: written once (a rewrite would make the first one reload).
        let mapURL = dir.appendingPathComponent(mapFile)
        if !FileManager.default.fileExists(atPath: mapURL.path) {
            try tenantMap.write(to: mapURL, atomically: true, encoding: .utf8)
        }
        // event_loop_threads = 1: every client and upstream connection on one loop, so which
        // connection a client gets does not depend on how clients spread over the loops.
        let config = """
            [server]
            listen_host = "\(host)"
            listen_port = \(port)
            event_loop_threads = 1
            shutdown_timeout_seconds = 5

            [tls]
            require = false

            [auth]
            lockout_failures = 0

            [tenancy]
            map_file = "\(mapFile)"

            [upstream]
            host = "127.0.0.1"
            port = \(upstreamPort)
            user = "proxy_scram"
            password = "pw"
            database = "app"

            [pool]
            mode = "\(poolMode)"
            size = \(poolSize)

            [log]
            level = "\(ProcessInfo.processInfo.environment["TENANT_PROXY_ITEST_LOG_LEVEL"] ?? "info")"

            """
        try config.write(to: configURL, atomically: true, encoding: .utf8)
    }

    var isRunning: Bool { child?.isRunning ?? false }

    /// Starts `<bin> --config <file>` (paths in the config are relative to its folder) and
    /// waits until the port accepts TCP connections.
    func start(timeout: TimeInterval = 30) throws {
        let child = try ChildProcess([binary, "--config", configURL.path],
                                     stdout: dir.appendingPathComponent("\(name).stdout").path,
                                     stderr: stderrURL.path)
        self.child = child
        var exitedEarly = false
        let listening = Subprocess.poll(timeout: timeout) {
            if !child.isRunning { exitedEarly = true; return true }
            return Net.portAccepts(host: host, port: port)
        }
        if exitedEarly {
            throw FixtureError("tenant-proxy (\(name)) exited with \(child.exitStatus ?? -1) "
                + "before listening; stderr:\n\(stderrTail())")
        }
        if !listening {
            throw FixtureError("tenant-proxy (\(name)) did not listen on \(port) within \(timeout)s; "
                + "stderr:\n\(stderrTail())")
        }
    }

    /// SIGTERM, wait for a graceful exit, SIGKILL as the fallback.
    func stop(timeout: TimeInterval = 15) {
        guard let child else { return }
        child.signal(SIGTERM)
        if !child.wait(timeout: timeout) {
            child.signal(SIGKILL)
            child.wait(timeout: 10)
        }
        self.child = nil
    }

    func stderrTail(lines: Int = 60) -> String { lastLines(of: stderrURL, count: lines) }
}

// MARK: - the whole environment

final class IntegrationEnvironment {
    let dir: URL
    let postgres: PostgresCluster
    /// pool mode "transaction"
    let transactionProxy: ProxyInstance
    /// pool mode "session"
    let sessionProxy: ProxyInstance
    let poolSize = 2

    var proxies: [ProxyInstance] { [transactionProxy, sessionProxy] }

    private init(dir: URL, postgres: PostgresCluster, transactionProxy: ProxyInstance,
                 sessionProxy: ProxyInstance) {
        self.dir = dir
        self.postgres = postgres
        self.transactionProxy = transactionProxy
        self.sessionProxy = sessionProxy
    }

    static func start() throws -> IntegrationEnvironment {
        let binary = try IntegrationPaths.proxyBinary()
        let pgBin = try IntegrationPaths.postgresBinDir()

        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("tp-swift-it-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let postgres = try PostgresCluster(bin: pgBin, dir: dir)
        var proxies: [ProxyInstance] = []
        do {
            try postgres.initialize()
            try postgres.start()
            try postgres.psql([
                "CREATE ROLE proxy_scram LOGIN PASSWORD 'pw'",
                "CREATE DATABASE app OWNER proxy_scram",
            ])

            let verifier = try Subprocess.run([binary, "hash-password", "--password", "alicepw"],
                                              in: dir).stdout
                .trimmingCharacters(in: .whitespacesAndNewlines)
            guard verifier.hasPrefix("SCRAM-SHA-256$") else {
                throw FixtureError("unexpected hash-password output: \(verifier)")
            }
            let tenantMap = "[users.alice]\npassword = \"\(verifier)\"\nmode = \"global\"\n"

            for (name, mode) in [("proxy-transaction", "transaction"), ("proxy-session", "session")] {
                let proxy = try ProxyInstance(name: name, poolMode: mode, binary: binary, dir: dir,
                                              upstreamPort: postgres.port, poolSize: 2,
                                              tenantMap: tenantMap)
                proxies.append(proxy)
                try proxy.start()
            }
            return IntegrationEnvironment(dir: dir, postgres: postgres,
                                          transactionProxy: proxies[0], sessionProxy: proxies[1])
        } catch {
            for proxy in proxies { proxy.stop() }
            let pgLog = postgres.logTail()
            postgres.stop()
            try? FileManager.default.removeItem(at: dir)
            if let fixture = error as? FixtureError, !pgLog.isEmpty {
                throw FixtureError(fixture.description + "\npostgres log:\n" + pgLog)
            }
            throw error
        }
    }

    func shutdown() {
        for proxy in proxies { proxy.stop() }
        postgres.stop()
        try? FileManager.default.removeItem(at: dir)
    }
}
