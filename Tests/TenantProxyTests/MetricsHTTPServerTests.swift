import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOPosix
import XCTest

@testable import TenantProxy

final class MetricsHTTPServerTests: XCTestCase {
    private var isReady: NIOLockedValueBox<Bool>!
    private var scrapes: NIOLockedValueBox<Int>!
    private var metrics: ProxyMetrics!
    private var routes: MetricsHTTPRoutes!

    override func setUp() {
        super.setUp()
        let isReady = NIOLockedValueBox(false)
        let scrapes = NIOLockedValueBox(0)
        self.isReady = isReady
        self.scrapes = scrapes
        metrics = ProxyMetrics(maxTenantLabels: 4)
        routes = MetricsHTTPRoutes(
            metrics: metrics,
            snapshot: {
                let count = scrapes.withLockedValue { count in
                    count += 1
                    return count
                }
                return MetricsSnapshot(
                    clients: ["active": 2],
                    waitingClients: 3,
                    tenants: [TenantCounters(tenant: "acme", queries: 10 * count)]
                )
            },
            ready: { isReady.withLockedValue { $0 } }
        )
    }

    private func respond(_ method: HTTPMethod, _ uri: String) -> MetricsHTTPRoutes.Response {
        let loop = EmbeddedEventLoop()
        return try! routes.respond(method: method, uri: uri, on: loop).wait()
    }

    // MARK: - Routes

    func testMetricsTakesASnapshotPerScrapeAndRendersIt() {
        let first = respond(.GET, "/metrics")
        XCTAssertEqual(first.status, .ok)
        XCTAssertEqual(first.contentType, "text/plain; version=0.0.4; charset=utf-8")
        XCTAssertTrue(first.body.contains("tenant_proxy_waiting_clients 3.0\n"), first.body)
        XCTAssertTrue(first.body.contains(#"tenant_proxy_clients{state="active"} 2.0"#), first.body)
        XCTAssertTrue(first.body.contains(#"tenant_proxy_queries_total{tenant="acme"} 10"#), first.body)

        let second = respond(.GET, "/metrics?name[]=x")
        XCTAssertEqual(second.status, .ok)
        XCTAssertTrue(second.body.contains(#"tenant_proxy_queries_total{tenant="acme"} 20"#), second.body)
        XCTAssertEqual(scrapes.withLockedValue { $0 }, 2)
    }

    func testHealthzIsAlwaysOk() {
        let response = routes.respond(method: .GET, uri: "/healthz")
        XCTAssertEqual(response, .init(status: .ok, contentType: "text/plain; charset=utf-8", body: "ok\n"))
    }

    func testReadyzFollowsTheReadyClosure() {
        XCTAssertEqual(routes.respond(method: .GET, uri: "/readyz").status, .serviceUnavailable)
        XCTAssertEqual(routes.respond(method: .GET, uri: "/readyz").body, "not ready\n")
        isReady.withLockedValue { $0 = true }
        XCTAssertEqual(routes.respond(method: .GET, uri: "/readyz").status, .ok)
        XCTAssertEqual(routes.respond(method: .GET, uri: "/readyz").body, "ready\n")
        isReady.withLockedValue { $0 = false }
        XCTAssertEqual(routes.respond(method: .GET, uri: "/readyz").status, .serviceUnavailable)
    }

    func testUnknownPathIs404AndOtherMethodsAre405WithoutScraping() {
        XCTAssertEqual(routes.respond(method: .GET, uri: "/").status, .notFound)
        XCTAssertEqual(routes.respond(method: .GET, uri: "/metrics/extra").status, .notFound)
        XCTAssertEqual(routes.respond(method: .POST, uri: "/nope").status, .notFound)
        for method: HTTPMethod in [.POST, .PUT, .DELETE, .HEAD] {
            let response = respond(method, "/metrics")
            XCTAssertEqual(response.status, .methodNotAllowed, "\(method)")
            XCTAssertEqual(response.allow, "GET")
        }
        XCTAssertEqual(routes.respond(method: .POST, uri: "/readyz").status, .methodNotAllowed)
        XCTAssertEqual(scrapes.withLockedValue { $0 }, 0)
    }

    // MARK: - Pipeline on an EmbeddedChannel

    func testPipelineAnswersWithHeadersAndKeepsTheConnection() throws {
        let channel = try makeChannel()
        defer { _ = try? channel.finish() }

        try channel.writeInbound(ByteBuffer(string: "GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n"))
        let response = try readResponse(channel)
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 200 OK\r\n"), response)
        XCTAssertTrue(response.contains("content-type: text/plain; charset=utf-8\r\n"), response)
        XCTAssertTrue(response.contains("content-length: 3\r\n"), response)
        XCTAssertTrue(response.hasSuffix("\r\n\r\nok\n"), response)
        XCTAssertTrue(channel.isActive, "HTTP/1.1 keeps the connection open")

        try channel.writeInbound(ByteBuffer(string: "GET /readyz HTTP/1.1\r\nHost: proxy\r\n\r\n"))
        XCTAssertTrue(try readResponse(channel).hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"))
    }

    func testPipelinedRequestsAreAnsweredInOrder() throws {
        let channel = try makeChannel()
        defer { _ = try? channel.finish() }
        isReady.withLockedValue { $0 = true }

        try channel.writeInbound(
            ByteBuffer(
                string: "GET /nope HTTP/1.1\r\nHost: p\r\n\r\n"
                    + "DELETE /metrics HTTP/1.1\r\nHost: p\r\n\r\n"
                    + "GET /readyz HTTP/1.1\r\nHost: p\r\n\r\n"
            )
        )
        let all = try readResponse(channel)
        // Bodies end in "\n" only, so each status line follows the previous body directly.
        let statusLines = all.components(separatedBy: "HTTP/1.1 ").dropFirst().map {
            $0.components(separatedBy: "\r\n")[0]
        }
        XCTAssertEqual(statusLines, ["404 Not Found", "405 Method Not Allowed", "200 OK"], all)
        XCTAssertTrue(all.contains("allow: GET\r\n"), all)
        XCTAssertTrue(all.hasSuffix("ready\n"), all)
    }

    func testConnectionCloseIsHonoured() throws {
        let channel = try makeChannel()
        defer { _ = try? channel.finish() }

        try channel.writeInbound(ByteBuffer(string: "GET /metrics HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"))
        let response = try readResponse(channel)
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 200 OK\r\n"), response)
        XCTAssertTrue(response.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"), response)
        XCTAssertTrue(response.lowercased().contains("connection: close\r\n"), response)
        XCTAssertTrue(response.contains("tenant_proxy_waiting_clients 3.0\n"), response)
        channel.embeddedEventLoop.run()
        XCTAssertFalse(channel.isActive)
    }

    func testMalformedRequestGets400AndIsClosed() throws {
        let channel = try makeChannel()
        defer { _ = try? channel.finish() }

        _ = try? channel.writeInbound(ByteBuffer(string: "NOT HTTP AT ALL\r\n\r\n"))
        XCTAssertTrue(try readResponse(channel).hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        channel.embeddedEventLoop.run()
        XCTAssertFalse(channel.isActive)
    }

    func testHeadGets405HeadersButNoBody() throws {
        let channel = try makeChannel()
        defer { _ = try? channel.finish() }

        try channel.writeInbound(ByteBuffer(string: "HEAD /metrics HTTP/1.1\r\nHost: p\r\n\r\n"))
        let response = try readResponse(channel)
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n"), response)
        XCTAssertTrue(response.contains("content-length: 19\r\n"), response)
        XCTAssertTrue(response.hasSuffix("\r\n\r\n"), response)
    }

    private func makeChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try MetricsHTTPServer.configure(channel.pipeline.syncOperations, routes: routes)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        return channel
    }

    /// Everything written so far, as text.
    private func readResponse(_ channel: EmbeddedChannel) throws -> String {
        var text = ""
        while let data = try channel.readOutbound(as: IOData.self) {
            guard case .byteBuffer(let buffer) = data else {
                XCTFail("unexpected file region")
                continue
            }
            text += String(buffer: buffer)
        }
        return text
    }

    // MARK: - Real socket

    func testServesOverTCPOnAnEphemeralPortAndCloseStopsIt() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { XCTAssertNoThrow(try group.syncShutdownGracefully()) }
        isReady.withLockedValue { $0 = true }
        let server = MetricsHTTPServer(
            group: group,
            host: "127.0.0.1",
            port: 0,
            metrics: metrics,
            gather: routes.gather,
            ready: routes.ready
        )
        XCTAssertNil(server.localAddress)
        try server.start()
        let port = try XCTUnwrap(server.localAddress?.port)
        XCTAssertNotEqual(port, 0)

        let metricsResponse = try RawHTTPClient.fetch(
            "GET /metrics HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
            port: port,
            group: group
        )
        XCTAssertTrue(metricsResponse.hasPrefix("HTTP/1.1 200 OK\r\n"), metricsResponse)
        XCTAssertTrue(metricsResponse.contains(#"tenant_proxy_queries_total{tenant="acme"} 10"#), metricsResponse)

        let readyResponse = try RawHTTPClient.fetch(
            "GET /readyz HTTP/1.0\r\n\r\n",
            port: port,
            group: group
        )
        XCTAssertTrue(readyResponse.hasPrefix("HTTP/1.0 200 OK\r\n"), readyResponse)
        XCTAssertTrue(readyResponse.hasSuffix("\r\n\r\nready\n"), readyResponse)

        // A scraper holding a keep-alive connection must not keep the server alive after close().
        let idle = try RawHTTPClient.connect(port: port, group: group)
        try idle.channel.writeAndFlush(ByteBuffer(string: "GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n")).wait()
        try idle.firstBytes.futureResult.wait()
        try server.close().wait()
        try idle.channel.closeFuture.wait()
        XCTAssertTrue(idle.text.hasPrefix("HTTP/1.1 200 OK\r\n"), idle.text)
        XCTAssertThrowsError(try RawHTTPClient.connect(port: port, group: group))
    }
}

/// A TCP client that sends bytes as given and keeps everything it reads, to see the server's
/// exact answer (status line, headers, closing) without an HTTP client's interpretation.
final class RawHTTPClient: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    let firstBytes: EventLoopPromise<Void>
    let closed: EventLoopPromise<Void>
    private let received = NIOLockedValueBox("")
    private let channelBox = NIOLockedValueBox<(any Channel)?>(nil)

    var text: String { received.withLockedValue { $0 } }
    var channel: any Channel { channelBox.withLockedValue { $0! } }

    private init(eventLoop: any EventLoop) {
        firstBytes = eventLoop.makePromise()
        closed = eventLoop.makePromise()
    }

    static func connect(port: Int, group: any EventLoopGroup) throws -> RawHTTPClient {
        let client = RawHTTPClient(eventLoop: group.next())
        do {
            let channel = try ClientBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(client) }
                }
                .connect(host: "127.0.0.1", port: port)
                .wait()
            client.channelBox.withLockedValue { $0 = channel }
            return client
        } catch {
            // NIO traps on promises that are never completed.
            client.firstBytes.fail(error)
            client.closed.fail(error)
            throw error
        }
    }

    /// Sends `request` and returns all the server wrote until it closed the connection.
    static func fetch(_ request: String, port: Int, group: any EventLoopGroup) throws -> String {
        let client = try connect(port: port, group: group)
        try client.channel.writeAndFlush(ByteBuffer(string: request)).wait()
        try client.closed.futureResult.wait()
        return client.text
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        received.withLockedValue { $0 += String(buffer: buffer) }
        firstBytes.succeed(())
    }

    func channelInactive(context: ChannelHandlerContext) {
        firstBytes.fail(ChannelError.eof)
        closed.succeed(())
        context.fireChannelInactive()
    }
}
