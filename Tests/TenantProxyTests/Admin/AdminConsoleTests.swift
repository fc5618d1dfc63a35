import Foundation
import NIOCore
import NIOEmbedded
import PGWire
import XCTest

@testable import TenantProxy

/// The admin console's protocol and commands on an EmbeddedChannel (no sockets, no event loops
/// of the proxy: views that gather from loops come back empty).
final class AdminConsoleTests: XCTestCase {
    private var runtime: ProxyRuntime!
    private var channel: EmbeddedChannel!
    private var console: AdminConsole!
    private var closed = false

    override func setUpWithError() throws {
        var config = ProxyConfig()
        config.upstream.password = "upstream-secret"
        config.clusters = ["default": config.upstream]
        let map = try TenantMap.parse("[tenants.acme]\nid = \"acme-id\"\naliases = [\"roadrunner\"]\n", file: "t")
        runtime = ProxyRuntime(config: config, map: map, logger: ProxyLogging.makeLogger(level: "critical"))
        channel = EmbeddedChannel()
        console = AdminConsole(runtime: runtime, channel: channel, user: "ops", maxMessageBytes: 1 << 20) { [weak self] in
            self?.closed = true
        }
    }

    override func tearDownWithError() throws {
        _ = try? channel.finish()
    }

    private func send(_ message: FrontendMessage) {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        message.encode(into: &buffer)
        console.read(buffer)
    }

    /// Everything the console wrote, decoded.
    private func replies() throws -> [BackendMessage] {
        var decoder = PGBackendDecoder()
        var messages: [BackendMessage] = []
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
            while let frame = try decoder.next(from: &buffer) {
                messages.append(try BackendMessage.decode(frame))
            }
        }
        return messages
    }

    private func query(_ sql: String) throws -> [BackendMessage] {
        send(.query(Query(query: sql)))
        return try replies()
    }

    private func rows(_ messages: [BackendMessage]) -> [[String?]] {
        messages.compactMap { message in
            guard case .dataRow(let row) = message else { return nil }
            return row.columns.map { $0.map { String(buffer: $0) } }
        }
    }

    private func error(_ messages: [BackendMessage]) -> ErrorResponse? {
        for case .errorResponse(let error) in messages { return error }
        return nil
    }

    func testShowVersionIsAResultSetEndingInReadyForQuery() throws {
        let messages = try query("SHOW VERSION;")
        guard case .rowDescription(let description) = messages.first else { return XCTFail("\(messages)") }
        XCTAssertEqual(description.fields.map(\.name), ["version"])
        XCTAssertEqual(rows(messages), [["tenant-proxy \(TenantProxyVersion.current)"]])
        XCTAssertEqual(messages.suffix(2).first, .commandComplete(CommandComplete(tag: "SHOW")))
        XCTAssertEqual(messages.last, .readyForQuery(ReadyForQuery(status: .idle)))
    }

    func testShowConfigMasksSecrets() throws {
        let messages = try query("show config")
        let config = Dictionary(uniqueKeysWithValues: rows(messages).map { ($0[0]!, $0[1]!) })
        XCTAssertEqual(config["upstream.password"], "(set)")
        XCTAssertEqual(config["pool.mode"], "session")
        for row in rows(messages) {
            XCTAssertFalse(row.compactMap { $0 }.joined().contains("upstream-secret"))
        }
    }

    func testUnknownCommandsAndTargetsAreErrorsWithHints() throws {
        let unknown = try XCTUnwrap(error(try query("FROB")))
        XCTAssertEqual(unknown.sqlState, "42601")
        XCTAssertNotNil(unknown.hint)
        XCTAssertEqual(error(try query("PAUSE nobody"))?.sqlState, "42704")
        XCTAssertEqual(error(try query("PAUSE CLUSTER nowhere"))?.sqlState, "42704")
        XCTAssertEqual(error(try query("RESUME"))?.sqlState, "55000")
        XCTAssertEqual(error(try query("SHOW FROBS"))?.sqlState, "42601")
        // the console stays usable
        XCTAssertEqual(rows(try query("SHOW VERSION")).count, 1)
        XCTAssertFalse(closed)
    }

    func testPauseAndResumeByAliasIdAndCluster() throws {
        XCTAssertNil(error(try query("PAUSE roadrunner")))
        XCTAssertEqual(runtime.pausedTargets, [.tenant("acme-id")])
        XCTAssertTrue(runtime.isPaused(tenant: "acme-id", cluster: "default"))
        XCTAssertFalse(runtime.isPaused(tenant: "other", cluster: "default"))
        XCTAssertNil(error(try query("RESUME TENANT acme-id")))
        XCTAssertEqual(runtime.pausedTargets, [])
        XCTAssertNil(error(try query("PAUSE CLUSTER default")))
        XCTAssertTrue(runtime.isPaused(tenant: nil, cluster: "default"))
        XCTAssertNil(error(try query("RESUME")))
        XCTAssertEqual(runtime.pausedTargets, [])
    }

    func testSuspendActivateAndKillReportWhatTheyDid() throws {
        XCTAssertTrue(try query("SUSPEND acme").contains(.commandComplete(CommandComplete(tag: "SUSPEND"))))
        XCTAssertTrue(runtime.isSuspended("acme-id"))
        XCTAssertTrue(try query("ACTIVATE acme").contains(.commandComplete(CommandComplete(tag: "ACTIVATE"))))
        XCTAssertFalse(runtime.isSuspended("acme-id"))
        XCTAssertEqual(error(try query("ACTIVATE acme"))?.sqlState, "55000")
        XCTAssertTrue(try query("KILL acme").contains(.commandComplete(CommandComplete(tag: "KILL 0"))))
    }

    func testExtendedProtocolIsRefusedAtSync() throws {
        send(.parse(Parse(name: "", query: "SHOW POOLS", parameterTypes: [])))
        send(.sync)
        let messages = try replies()
        XCTAssertEqual(error(messages)?.sqlState, "0A000")
        XCTAssertEqual(messages.last, .readyForQuery(ReadyForQuery(status: .idle)))
    }

    func testTerminateClosesAndEmptyQueryIsAnswered() throws {
        XCTAssertEqual(try query("  ;  ").first, .emptyQueryResponse)
        send(.terminate)
        XCTAssertTrue(closed)
    }
}
