import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 listener of its own for Prometheus scrapes and orchestrator probes, apart from
/// the PostgreSQL port: `GET /metrics`, `GET /healthz` (the loops are serving) and `GET /readyz`
/// (the proxy takes new clients; false while draining).
final class MetricsHTTPServer: Sendable {
    let group: any EventLoopGroup
    let host: String
    let port: Int
    let routes: MetricsHTTPRoutes

    private let state = NIOLockedValueBox(State())

    private struct State {
        var listener: (any Channel)?
        /// Open scrape connections, closed with the listener so `close()` leaves nothing behind.
        var connections: [ObjectIdentifier: any Channel] = [:]
        var closed = false
    }

    /// - Parameters:
    ///   - port: 0 binds an ephemeral port; read it back from `localAddress`.
    ///   - gather: called on an event loop for each scrape; it must not block (the proxy hops
    ///     onto each of its loops and answers with a future).
    ///   - ready: answers `/readyz`; called on an event loop, it must not block.
    init(
        group: any EventLoopGroup,
        host: String,
        port: Int,
        metrics: ProxyMetrics,
        gather: @escaping @Sendable (EventLoop) -> EventLoopFuture<MetricsSnapshot>,
        ready: @escaping @Sendable () -> Bool
    ) {
        self.group = group
        self.host = host
        self.port = port
        self.routes = MetricsHTTPRoutes(metrics: metrics, gather: gather, ready: ready)
    }

    /// The address actually bound (useful when the port is 0); nil before `start()`.
    var localAddress: SocketAddress? {
        state.withLockedValue { $0.listener?.localAddress }
    }

    /// Binds and starts serving. Blocks until bound, so call it off the event loops.
    func start() throws {
        let routes = self.routes
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [weak self] channel in
                self?.track(channel)
                return channel.eventLoop.makeCompletedFuture {
                    try Self.configure(channel.pipeline.syncOperations, routes: routes)
                }
            }
        let listener = try bootstrap.bind(host: host, port: port).wait()
        let closedMeanwhile = state.withLockedValue { state in
            state.listener = listener
            return state.closed
        }
        if closedMeanwhile { listener.close(promise: nil) }
    }

    /// Stops listening and closes open scrape connections. Does not block; the future completes
    /// once the listener is closed.
    @discardableResult
    func close() -> EventLoopFuture<Void> {
        let (listener, connections) = state.withLockedValue { state in
            state.closed = true
            defer { state.connections = [:] }
            return (state.listener, Array(state.connections.values))
        }
        for connection in connections {
            connection.close(promise: nil)
        }
        guard let listener else { return group.next().makeSucceededVoidFuture() }
        return listener.close().recover { _ in }  // Already closed is as good as closed.
    }

    /// The pipeline of one scrape connection: NIO's HTTP/1.1 codec (with its 400-and-close on
    /// malformed requests), then the routes.
    static func configure(_ pipeline: ChannelPipeline.SynchronousOperations, routes: MetricsHTTPRoutes) throws {
        try pipeline.configureHTTPServerPipeline(withErrorHandling: true)
        try pipeline.addHandler(MetricsHTTPHandler(routes: routes))
    }

    private func track(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        let accepted = state.withLockedValue { state in
            guard !state.closed else { return false }
            state.connections[id] = channel
            return true
        }
        guard accepted else {
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { [weak self] _ in
            self?.state.withLockedValue { _ = $0.connections.removeValue(forKey: id) }
        }
    }
}

// MARK: - Routes

/// What each request gets, apart from any channel so that it is tested as a plain function.
struct MetricsHTTPRoutes: Sendable {
    struct Response: Equatable {
        var status: HTTPResponseStatus
        var contentType: String
        var body: String
        /// The `Allow` header, set on 405 as RFC 9110 asks.
        var allow: String?
    }

    static let metricsContentType = "text/plain; version=0.0.4; charset=utf-8"
    static let textContentType = "text/plain; charset=utf-8"

    let metrics: ProxyMetrics
    let gather: @Sendable (EventLoop) -> EventLoopFuture<MetricsSnapshot>
    let ready: @Sendable () -> Bool

    init(metrics: ProxyMetrics, gather: @escaping @Sendable (EventLoop) -> EventLoopFuture<MetricsSnapshot>,
         ready: @escaping @Sendable () -> Bool) {
        self.metrics = metrics
        self.gather = gather
        self.ready = ready
    }

    /// With a snapshot that is at hand at once.
    init(metrics: ProxyMetrics, snapshot: @escaping @Sendable () -> MetricsSnapshot, ready: @escaping @Sendable () -> Bool) {
        self.init(metrics: metrics, gather: { loop in loop.makeSucceededFuture(snapshot()) }, ready: ready)
    }

    /// The answer, once the snapshot (for /metrics) is gathered; on `loop`.
    func respond(method: HTTPMethod, uri: String, on loop: EventLoop) -> EventLoopFuture<Response> {
        let immediate = respond(method: method, uri: uri)
        guard immediate.status == .ok, immediate.contentType == Self.metricsContentType else {
            return loop.makeSucceededFuture(immediate)
        }
        let metrics = self.metrics
        return gather(loop).map { snapshot in
            metrics.update(from: snapshot)
            return Response(status: .ok, contentType: Self.metricsContentType, body: metrics.render())
        }
    }

    /// Routing without the snapshot: /metrics answers with what was last gathered.
    func respond(method: HTTPMethod, uri: String) -> Response {
        let path =
            uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? uri
        guard ["/metrics", "/healthz", "/readyz"].contains(path) else {
            return Response(status: .notFound, contentType: Self.textContentType, body: "not found\n")
        }
        guard method == .GET else {
            return Response(
                status: .methodNotAllowed,
                contentType: Self.textContentType,
                body: "method not allowed\n",
                allow: "GET"
            )
        }
        switch path {
        case "/metrics":
            return Response(status: .ok, contentType: Self.metricsContentType, body: metrics.render())
        case "/readyz":
            return ready()
                ? Response(status: .ok, contentType: Self.textContentType, body: "ready\n")
                : Response(status: .serviceUnavailable, contentType: Self.textContentType, body: "not ready\n")
        default:
            // Answering at all shows the process is up and its event loops are turning.
            return Response(status: .ok, contentType: Self.textContentType, body: "ok\n")
        }
    }
}

// MARK: - Handler

/// Runs the routes for each complete request and writes the answer; bodies are ignored.
final class MetricsHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let routes: MetricsHTTPRoutes
    private var request: HTTPRequestHead?

    init(routes: MetricsHTTPRoutes) {
        self.routes = routes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break
        case .end:
            guard let head = request else { return }
            request = nil
            let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
            routes.respond(method: head.method, uri: head.uri, on: context.eventLoop).whenComplete { [self] result in
                let context = boundContext.value
                switch result {
                case .success(let response):
                    write(response, for: head, context: context)
                case .failure:
                    write(MetricsHTTPRoutes.Response(status: .internalServerError, contentType: MetricsHTTPRoutes.textContentType,
                                   body: "could not gather metrics\n"), for: head, context: context)
                }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func write(
        _ response: MetricsHTTPRoutes.Response,
        for request: HTTPRequestHead,
        context: ChannelHandlerContext
    ) {
        let body = context.channel.allocator.buffer(string: response.body)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: response.contentType)
        headers.add(name: "content-length", value: String(body.readableBytes))
        if let allow = response.allow {
            headers.add(name: "allow", value: allow)
        }
        let keepAlive = request.isKeepAlive
        if !keepAlive {
            headers.add(name: "connection", value: "close")
        }
        let head = HTTPResponseHead(version: request.version, status: response.status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if request.method != .HEAD {  // A HEAD answer announces its body's length but never sends it.
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
