// PostgresNIO (vapor/postgres-nio) as the client of a running tenant-proxy, in front of a real
// PostgreSQL: see IntegrationEnvironment.swift for the fixture. Each test runs against both
// pooling modes (transaction and session) unless it says otherwise.

import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import XCTest

// Two statements with the same parameter and row types but different results: if the proxy
// ever ran one client's statement under another's name (or on a backend where the name means
// something else), the values would be wrong, not just the types.
/// A statement of (n, tag) returning (n × k, "<k>:" + tag, backend pid); only the SQL differs.
protocol NumberTagStatement: PostgresPreparedStatement where Row == (Int, String, Int32) {
    var n: Int { get }
    var tag: String { get }
}

extension NumberTagStatement {
    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(n)
        bindings.append(tag)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

struct TimesTwoStatement: NumberTagStatement {
    static let sql = "SELECT $1::int8 * 2, 'two:' || $2::text, pg_backend_pid()"
    typealias Row = (Int, String, Int32)
    var n: Int
    var tag: String
}

struct TimesThreeStatement: NumberTagStatement {
    static let sql = "SELECT $1::int8 * 3, 'three:' || $2::text, pg_backend_pid()"
    typealias Row = (Int, String, Int32)
    var n: Int
    var tag: String
}

final class PostgresNIOProxyTests: XCTestCase {
    // MARK: fixture: started lazily by the first test, stopped in the class tearDown

    private static let lock = NSLock()
    private static var shared: Result<IntegrationEnvironment, Error>?

    private static func environment() throws -> IntegrationEnvironment {
        lock.lock()
        defer { lock.unlock() }
        if shared == nil {
            shared = Result { try IntegrationEnvironment.start() }
        }
        return try shared!.get()
    }

    override class func tearDown() {
        lock.lock()
        if case .success(let env)? = shared { env.shutdown() }
        shared = nil
        lock.unlock()
        super.tearDown()
    }

    private var env: IntegrationEnvironment!
    /// The client-side logger: silent, or PostgresNIO's trace on stderr with
    /// TENANT_PROXY_ITEST_CLIENT_TRACE=1 (for debugging a hang or a protocol mix-up).
    private let quietLogger: Logger = {
        if ProcessInfo.processInfo.environment["TENANT_PROXY_ITEST_CLIENT_TRACE"] == "1" {
            var logger = Logger(label: "postgres-nio") { StreamLogHandler.standardError(label: $0) }
            logger.logLevel = .trace
            return logger
        }
        return Logger(label: "tenant-proxy.integration") { _ in SwiftLogNoOpLogHandler() }
    }()
    private static let connectionIDs = ConnectionIDs()

    /// Every connection a test opened: closed when the test overruns its deadline.
    private let openConnections = ConnectionRegistry()
    /// A test that takes longer than this fails (and its connections are closed) instead of
    /// hanging the run: a query the proxy never answers would otherwise wait forever.
    private static let testDeadlineSeconds: UInt64 = 20

    override func setUpWithError() throws {
        try super.setUpWithError()
        env = try Self.environment()
        for proxy in env.proxies where !proxy.isRunning {
            XCTFail("tenant-proxy (\(proxy.name)) is not running; stderr:\n\(proxy.stderrTail())")
        }
    }

    /// Set in tearDown: an assertion after it comes from a body that overran its deadline and
    /// was left behind; XCTest would abort on it, so it is only printed.
    private let finished = Flag()

    override func recordFailure(withDescription description: String, inFile filePath: String,
                                atLine lineNumber: Int, expected: Bool) {
        if finished.isSet {
            print("\(name) (after its end, ignored): \(description) at \(filePath):\(lineNumber)")
            return
        }
        super.recordFailure(withDescription: description, inFile: filePath, atLine: lineNumber,
                            expected: expected)
    }

    override func tearDown() {
        defer { finished.set() }
        if env != nil, (testRun?.totalFailureCount ?? 0) > 0 {
            for proxy in proxies {
                print("--- \(proxy.name) stderr (tail) ---\n\(proxy.stderrTail(lines: 30))")
            }
        }
        super.tearDown()
    }

    // MARK: helpers

    private func configuration(_ proxy: ProxyInstance, user: String = "alice",
                               password: String = "alicepw",
                               database: String = "app") -> PostgresConnection.Configuration {
        var config = PostgresConnection.Configuration(
            host: proxy.host, port: proxy.port, username: user, password: password,
            database: database, tls: .disable)
        config.options.connectTimeout = .seconds(10)
        return config
    }

    private func connect(_ proxy: ProxyInstance, password: String = "alicepw",
                         logger: Logger? = nil) async throws -> PostgresConnection {
        let connection = try await PostgresConnection.connect(
            on: MultiThreadedEventLoopGroup.singleton.any(),
            configuration: configuration(proxy, password: password),
            id: Self.connectionIDs.next(),
            logger: logger ?? quietLogger)
        openConnections.add(connection)
        return connection
    }

    /// The proxies under test: both, or those whose pool mode is listed in
    /// TENANT_PROXY_ITEST_POOL_MODES (comma-separated: transaction,session).
    private var proxies: [ProxyInstance] {
        guard let modes = ProcessInfo.processInfo.environment["TENANT_PROXY_ITEST_POOL_MODES"],
              !modes.isEmpty else { return env.proxies }
        let wanted = Set(modes.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        return env.proxies.filter { wanted.contains($0.poolMode) }
    }

    /// Runs `body` with a fresh connection and closes it afterwards, whatever happens.
    private func withConnection<T>(_ proxy: ProxyInstance, logger: Logger? = nil,
                                   _ body: (PostgresConnection) async throws -> T) async throws -> T {
        let connection = try await connect(proxy, logger: logger)
        do {
            let value = try await body(connection)
            try await connection.close()
            return value
        } catch {
            try? await connection.close()
            throw error
        }
    }

    /// Runs a test body with a deadline, reporting a thrown error with its full reflection
    /// (PostgresNIO's plain description of an error hides the details). Past the deadline the
    /// test fails at once and its connections are closed; the body is not waited for (a query
    /// sent on a connection that is already closed may never complete).
    private func reporting(_ body: @escaping () async throws -> Void) async throws {
        let registry = openConnections
        let seconds = Self.testDeadlineSeconds
        let outcome: Result<Void, Error> = await withCheckedContinuation { continuation in
            let once = ResumeOnce(continuation)
            let work = Task {
                do {
                    try await body()
                    once.resume(.success(()))
                } catch {
                    once.resume(.failure(error))
                }
            }
            Task {
                try? await Task.sleep(nanoseconds: seconds * 1_000_000_000)
                if once.resume(.failure(DeadlineExceeded(seconds: seconds))) {
                    work.cancel()
                    await registry.closeAll()
                }
            }
        }
        if case .failure(let error) = outcome {
            XCTFail("\(name): \(String(reflecting: error))")
            throw error
        }
    }

    private func sqlState(_ error: Error) -> String? {
        (error as? PSQLError)?.serverInfo?[.sqlState]
    }

    // MARK: 1. simple and parameterised queries, several types, NULL

    func testSimpleAndParameterisedQueriesReturnTheRightValues() async throws {
        try await reporting { [self] in
            for proxy in proxies {
                try await withConnection(proxy) { conn in
                    // literal SQL, no binds
                    let literal = try await conn.query(
                        "SELECT 1::int8, 'hello'::text, true, 2.5::float8, NULL::int4", logger: quietLogger)
                    var literalRows = 0
                    for try await (i, s, b, d, n) in literal.decode((Int, String, Bool, Double, Int?).self) {
                        literalRows += 1
                        XCTAssertEqual(i, 1, proxy.name)
                        XCTAssertEqual(s, "hello", proxy.name)
                        XCTAssertTrue(b, proxy.name)
                        XCTAssertEqual(d, 2.5, proxy.name)
                        XCTAssertNil(n, proxy.name)
                    }
                    XCTAssertEqual(literalRows, 1, proxy.name)

                    // bound parameters of several types, each computed on by the server
                    let int = 41
                    let text = "héllo"
                    let flag = false
                    let double = 1.25
                    let date = Date(timeIntervalSince1970: 1_700_000_000.5)
                    let uuid = UUID()
                    let none: String? = nil
                    let rows = try await conn.query("""
                        SELECT \(int) + 1, \(text) || ' wörld', NOT \(flag), \(double) * 2,
                               \(date) + interval '1 day', \(uuid)::uuid, \(uuid)::text,
                               \(none)::text IS NULL, \(none)::text
                        """, logger: quietLogger)
                    var count = 0
                    for try await row in rows {
                        count += 1
                        let (i, s, b, d, ts, u, uText, isNull, nullText) = try row.decode(
                            (Int, String, Bool, Double, Date, UUID, String, Bool, String?).self)
                        XCTAssertEqual(i, 42, proxy.name)
                        XCTAssertEqual(s, "héllo wörld", proxy.name)
                        XCTAssertTrue(b, proxy.name)
                        XCTAssertEqual(d, 2.5, proxy.name)
                        XCTAssertEqual(ts.timeIntervalSince1970, date.timeIntervalSince1970 + 86_400,
                                       accuracy: 0.000_001, proxy.name)
                        XCTAssertEqual(u, uuid, proxy.name)
                        XCTAssertEqual(uText, uuid.uuidString.lowercased(), proxy.name)
                        XCTAssertTrue(isNull, proxy.name)
                        XCTAssertNil(nullText, proxy.name)
                    }
                    XCTAssertEqual(count, 1, proxy.name)

                    // many rows, streamed through the proxy
                    let limit = 2_000
                    let series = try await conn.query(
                        "SELECT g, 'row ' || g, ARRAY[g, g * 2] FROM generate_series(1, \(limit)) AS g",
                        logger: quietLogger)
                    var expected = 1
                    for try await (g, label, pair) in series.decode((Int, String, [Int]).self) {
                        XCTAssertEqual(g, expected, proxy.name)
                        XCTAssertEqual(label, "row \(expected)", proxy.name)
                        XCTAssertEqual(pair, [g, g * 2], proxy.name)
                        expected += 1
                    }
                    XCTAssertEqual(expected - 1, limit, "\(proxy.name): row count")
                }
            }
        }
    }

    // MARK: 2. prepared statements from two concurrent connections, pool size 2

    func testPreparedStatementsFromConcurrentConnectionsStayCorrect() async throws {
        try await reporting { [self] in
            let iterations = 100
            for proxy in proxies {
                let logger = quietLogger
                // per connection: the backend pids its executions ran on
                let backendPids: [Int: Set<Int32>] = try await withThrowingTaskGroup(
                    of: (Int, Set<Int32>).self
                ) { group in
                    for client in 0..<2 {
                        let conn = try await connect(proxy)
                        group.addTask {
                            var pids = Set<Int32>()
                            do {
                                for i in 0..<iterations {
                                    let n = client * 1_000_000 + i
                                    let tag = "c\(client)-\(i)"
                                    if i % 2 == 0 {
                                        var seen = 0
                                        for try await (value, label, pid) in try await conn.execute(
                                            TimesTwoStatement(n: n, tag: tag), logger: logger) {
                                            seen += 1
                                            XCTAssertEqual(value, n * 2, "\(proxy.name) client \(client) i \(i)")
                                            XCTAssertEqual(label, "two:\(tag)", proxy.name)
                                            pids.insert(pid)
                                        }
                                        XCTAssertEqual(seen, 1, proxy.name)
                                    } else {
                                        var seen = 0
                                        for try await (value, label, pid) in try await conn.execute(
                                            TimesThreeStatement(n: n, tag: tag), logger: logger) {
                                            seen += 1
                                            XCTAssertEqual(value, n * 3, "\(proxy.name) client \(client) i \(i)")
                                            XCTAssertEqual(label, "three:\(tag)", proxy.name)
                                            pids.insert(pid)
                                        }
                                        XCTAssertEqual(seen, 1, proxy.name)
                                    }
                                }
                            } catch {
                                try? await conn.close()
                                throw error
                            }
                            try await conn.close()
                            return (client, pids)
                        }
                    }
                    var result: [Int: Set<Int32>] = [:]
                    for try await (client, pids) in group { result[client] = pids }
                    return result
                }

                let all = backendPids.values.reduce(into: Set<Int32>()) { $0.formUnion($1) }
                XCTAssertFalse(all.isEmpty, proxy.name)
                XCTAssertLessThanOrEqual(all.count, env.poolSize,
                                         "\(proxy.name): more upstream backends than the pool size: \(all)")
                if proxy.poolMode == "session" {
                    // one upstream connection per client, for its whole life
                    let a = backendPids[0] ?? [], b = backendPids[1] ?? []
                    XCTAssertEqual(a.count, 1, "\(proxy.name): client 0 moved between backends: \(a)")
                    XCTAssertEqual(b.count, 1, "\(proxy.name): client 1 moved between backends: \(b)")
                    XCTAssertTrue(a.isDisjoint(with: b), "\(proxy.name): two clients shared a backend")
                }
            }
        }
    }

    // MARK: 3. a server error keeps its SQLSTATE; the connection stays usable

    func testServerErrorKeepsSQLStateAndConnectionStaysUsable() async throws {
        try await reporting { [self] in
            for proxy in proxies {
                try await withConnection(proxy) { conn in
                    do {
                        try await conn.query("SELECT 1 / 0", logger: quietLogger)
                        XCTFail("\(proxy.name): division by zero did not fail")
                    } catch {
                        XCTAssertEqual(sqlState(error), "22012", "\(proxy.name): \(String(reflecting: error))")
                        XCTAssertEqual((error as? PSQLError)?.code, .server, proxy.name)
                    }

                    // with a bound parameter too
                    do {
                        try await conn.query("SELECT 10 / \(0)", logger: quietLogger)
                        XCTFail("\(proxy.name): division by zero did not fail")
                    } catch {
                        XCTAssertEqual(sqlState(error), "22012", "\(proxy.name): \(String(reflecting: error))")
                    }

                    // the same connection goes on working
                    let rows = try await conn.query("SELECT \(41) + 1", logger: quietLogger)
                    var values: [Int] = []
                    for try await value in rows.decode(Int.self) { values.append(value) }
                    XCTAssertEqual(values, [42], proxy.name)

                    // an error inside a transaction: 25P02 until ROLLBACK, then usable again
                    try await conn.query("BEGIN", logger: quietLogger)
                    do {
                        try await conn.query("SELECT 1 / 0", logger: quietLogger)
                        XCTFail("\(proxy.name): division by zero did not fail")
                    } catch {
                        XCTAssertEqual(sqlState(error), "22012", proxy.name)
                    }
                    do {
                        try await conn.query("SELECT 1", logger: quietLogger)
                        XCTFail("\(proxy.name): a statement in an aborted transaction succeeded")
                    } catch {
                        XCTAssertEqual(sqlState(error), "25P02", proxy.name)
                    }
                    try await conn.query("ROLLBACK", logger: quietLogger)
                    let after = try await conn.query("SELECT 'ok'::text", logger: quietLogger)
                    var texts: [String] = []
                    for try await text in after.decode(String.self) { texts.append(text) }
                    XCTAssertEqual(texts, ["ok"], proxy.name)
                }
            }
        }
    }

    // MARK: 4. a committed transaction is visible from a second connection

    func testCommittedTransactionIsVisibleFromSecondConnection() async throws {
        try await reporting { [self] in
            for proxy in proxies {
                let table = "it_tx_\(proxy.poolMode)_\(UUID().uuidString.prefix(8).lowercased())"
                let writer = try await connect(proxy)
                let reader = try await connect(proxy)
                do {
                    try await writer.query("CREATE TABLE \(unescaped: table) (id int8 PRIMARY KEY, note text)",
                                           logger: quietLogger)

                    func count(_ conn: PostgresConnection) async throws -> Int {
                        let rows = try await conn.query("SELECT count(*) FROM \(unescaped: table)",
                                                        logger: quietLogger)
                        var result = -1
                        for try await value in rows.decode(Int.self) { result = value }
                        return result
                    }

                    try await writer.query("BEGIN", logger: quietLogger)
                    try await writer.query("INSERT INTO \(unescaped: table) VALUES (\(1), \("first"))",
                                           logger: quietLogger)
                    try await writer.query("INSERT INTO \(unescaped: table) VALUES (\(2), \("second"))",
                                           logger: quietLogger)
                    // inside the transaction: the writer sees its rows, the reader does not yet
                    let inside = try await count(writer)
                    XCTAssertEqual(inside, 2, proxy.name)
                    let before = try await count(reader)
                    XCTAssertEqual(before, 0, "\(proxy.name): uncommitted rows visible")
                    try await writer.query("COMMIT", logger: quietLogger)

                    let rows = try await reader.query("SELECT id, note FROM \(unescaped: table) ORDER BY id",
                                                      logger: quietLogger)
                    var seen: [(Int, String)] = []
                    for try await (id, note) in rows.decode((Int, String).self) { seen.append((id, note)) }
                    XCTAssertEqual(seen.map(\.0), [1, 2], proxy.name)
                    XCTAssertEqual(seen.map(\.1), ["first", "second"], proxy.name)

                    // and a rolled-back one is not
                    try await writer.query("BEGIN", logger: quietLogger)
                    try await writer.query("INSERT INTO \(unescaped: table) VALUES (\(3), \("third"))",
                                           logger: quietLogger)
                    try await writer.query("ROLLBACK", logger: quietLogger)
                    let afterRollback = try await count(reader)
                    XCTAssertEqual(afterRollback, 2, proxy.name)

                    try await reader.query("DROP TABLE \(unescaped: table)", logger: quietLogger)
                } catch {
                    try? await writer.close()
                    try? await reader.close()
                    throw error
                }
                try await writer.close()
                try await reader.close()
            }
        }
    }

    // MARK: 5. wrong password -> 28P01

    func testWrongPasswordFailsWith28P01() async throws {
        try await reporting { [self] in
            for proxy in proxies {
                do {
                    let conn = try await connect(proxy, password: "not-alicepw")
                    try? await conn.close()
                    XCTFail("\(proxy.name): connected with a wrong password")
                } catch {
                    XCTAssertEqual(sqlState(error), "28P01", "\(proxy.name): \(String(reflecting: error))")
                    XCTAssertEqual((error as? PSQLError)?.code, .server, proxy.name)
                }
                // the proxy is still there for everyone else
                let ok = try await withConnection(proxy) { conn in
                    var values: [Int] = []
                    for try await v in try await conn.query("SELECT 1::int8", logger: quietLogger)
                        .decode(Int.self) { values.append(v) }
                    return values
                }
                XCTAssertEqual(ok, [1], proxy.name)
            }
        }
    }

    // MARK: 6. ParameterStatus: server_version is reported

    func testParameterStatusReportsServerVersion() async throws {
        try await reporting { [self] in
            for proxy in proxies {
                let capture = LogCapture()
                let version = try await withConnection(proxy, logger: capture.logger()) { conn in
                    var result = ""
                    for try await v in try await conn.query("SHOW server_version", logger: quietLogger)
                        .decode(String.self) { result = v }
                    return result
                }
                let params = capture.parameterStatuses()
                let reported = try XCTUnwrap(params["server_version"],
                                             "\(proxy.name): no server_version ParameterStatus; got \(params)")
                XCTAssertTrue(reported.hasPrefix("15."), "\(proxy.name): server_version \(reported)")
                XCTAssertEqual(reported, version, "\(proxy.name): ParameterStatus vs SHOW server_version")
                XCTAssertEqual(params["client_encoding"], "UTF8", "\(proxy.name): \(params)")
                XCTAssertEqual(params["integer_datetimes"], "on", "\(proxy.name): \(params)")
            }
        }
    }
}

/// Connection ids for PostgresNIO's log metadata.
final class ConnectionIDs: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0

    func next() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value
    }
}

struct DeadlineExceeded: Error, CustomStringConvertible {
    var seconds: UInt64
    var description: String {
        "the test overran its \(seconds)s deadline (a query got no answer); its connections were closed"
    }
}

/// Resumes a continuation once: the first caller wins (true), later calls do nothing (false).
final class ResumeOnce<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<T, Never>?

    init(_ continuation: CheckedContinuation<T, Never>) { self.continuation = continuation }

    @discardableResult
    func resume(_ value: T) -> Bool {
        lock.lock()
        let pending = continuation
        continuation = nil
        lock.unlock()
        guard let pending else { return false }
        pending.resume(returning: value)
        return true
    }
}

final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value
    }

    func set() {
        lock.lock()
        defer { lock.unlock() }
        value = true
    }
}

/// The connections one test opened.
final class ConnectionRegistry: @unchecked Sendable {
    private let lock = NSLock()
    private var connections: [PostgresConnection] = []

    func add(_ connection: PostgresConnection) {
        lock.lock()
        defer { lock.unlock() }
        connections.append(connection)
    }

    private var snapshot: [PostgresConnection] {
        lock.lock()
        defer { lock.unlock() }
        return connections
    }

    func closeAll() async {
        let all = snapshot
        for connection in all where !connection.isClosed {
            try? await connection.close()
        }
    }
}
