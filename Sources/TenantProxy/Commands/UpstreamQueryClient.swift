import NIOCore
import NIOPosix
import PGWire

/// A minimal simple-query client for the command-line tools (`audit`): logs in like a session's
/// upstream connection does (`UpstreamStartupMachine`), runs one Query, returns its rows.
/// Not for the proxy's hot path.
final class UpstreamQueryClient {
    struct QueryError: Error, CustomStringConvertible {
        var description: String
    }

    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    private let handler: Handler

    static func connect(
        host: String, port: Int, user: String, password: String?, database: String, timeoutSeconds: Int
    ) throws -> UpstreamQueryClient {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let handler = Handler(machine: UpstreamStartupMachine(user: user, password: password), loop: group.next())
        do {
            let bootstrap = ClientBootstrap(group: group)
                .connectTimeout(.seconds(Int64(timeoutSeconds)))
                .channelInitializer { $0.pipeline.addHandler(handler) }
            let channel = try UpstreamConnector.connect(bootstrap, host: host, port: port).wait()
            var buffer = channel.allocator.buffer(capacity: 128)
            StartupMessage(parameters: ["user": user, "database": database, "application_name": "tenant-proxy audit"])
                .encode(into: &buffer)
            channel.writeAndFlush(buffer, promise: nil)
            try handler.ready.futureResult.wait()
            return UpstreamQueryClient(group: group, channel: channel, handler: handler)
        } catch {
            handler.ready.fail(error)
            try? group.syncShutdownGracefully()
            throw error
        }
    }

    private init(group: MultiThreadedEventLoopGroup, channel: Channel, handler: Handler) {
        self.group = group
        self.channel = channel
        self.handler = handler
    }

    /// Runs one simple query; rows as text (nil = NULL). Throws with the server's message on error.
    func query(_ sql: String) throws -> [[String?]] {
        let result = try channel.eventLoop.flatSubmit { [handler, channel] in
            let promise = channel.eventLoop.makePromise(of: [[String?]].self)
            handler.startQuery(promise)
            var buffer = channel.allocator.buffer(capacity: sql.utf8.count + 8)
            FrontendMessage.query(Query(query: sql)).encode(into: &buffer)
            channel.writeAndFlush(buffer, promise: nil)
            return promise.futureResult
        }.wait()
        return result
    }

    func close() {
        var buffer = channel.allocator.buffer(capacity: 5)
        FrontendMessage.terminate.encode(into: &buffer)
        try? channel.writeAndFlush(buffer).wait()
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }

    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer

        var machine: UpstreamStartupMachine?
        let ready: EventLoopPromise<Void>
        private var decoder = PGBackendDecoder()
        private var pending: ByteBuffer?
        private var query: EventLoopPromise<[[String?]]>?
        private var rows: [[String?]] = []
        private var error: ErrorResponse?

        init(machine: UpstreamStartupMachine, loop: EventLoop) {
            self.machine = machine
            self.ready = loop.makePromise()
        }

        func startQuery(_ promise: EventLoopPromise<[[String?]]>) {
            query = promise
            rows = []
            error = nil
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var incoming = unwrapInboundIn(data)
            var buffer: ByteBuffer
            if var existing = pending {
                existing.writeBuffer(&incoming)
                buffer = existing
            } else {
                buffer = incoming
            }
            do {
                while let frame = try decoder.next(from: &buffer) {
                    try handle(BackendMessage.decode(frame), context: context)
                }
            } catch {
                failAll(QueryError(description: "unreadable reply from the server: \(error)"), context: context)
            }
            pending = buffer.readableBytes > 0 ? buffer : nil
        }

        private func handle(_ message: BackendMessage, context: ChannelHandlerContext) throws {
            if var startup = machine {
                let action = startup.receive(message)
                machine = startup
                switch action {
                case .wait:
                    break
                case .send(let reply):
                    var out = context.channel.allocator.buffer(capacity: 128)
                    reply.encode(into: &out)
                    context.writeAndFlush(wrapInboundOut(out), promise: nil)
                case .ready:
                    machine = nil
                    ready.succeed(())
                case .fail(let proxyError, let serverError):
                    let text = serverError.map { "\($0.sqlState ?? "?"): \($0.message ?? "")" } ?? proxyError.message
                    failAll(QueryError(description: text), context: context)
                }
                return
            }
            switch message {
            case .dataRow(let row):
                rows.append(row.columns.map { $0.map { String(buffer: $0) } })
            case .errorResponse(let response):
                error = response
            case .readyForQuery:
                let promise = query
                query = nil
                if let error {
                    promise?.fail(QueryError(description: "\(error.sqlState ?? "?"): \(error.message ?? "")"))
                } else {
                    promise?.succeed(rows)
                }
            default:
                break
            }
        }

        private func failAll(_ error: Error, context: ChannelHandlerContext) {
            ready.fail(error)
            query?.fail(error)
            query = nil
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            let error = QueryError(description: "the server closed the connection")
            ready.fail(error)
            query?.fail(error)
            query = nil
        }

        typealias OutboundOut = ByteBuffer
        func wrapInboundOut(_ value: ByteBuffer) -> NIOAny { NIOAny(value) }
    }
}
