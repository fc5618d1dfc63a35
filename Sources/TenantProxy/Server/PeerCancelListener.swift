import Logging
import NIOCore
import NIOPosix
import PGWire

/// Sends one CancelRequest to a server (the upstream that runs the query, or a peer instance)
/// and closes; nothing comes back on a cancel connection.
enum CancelSender {
    static func send(_ request: CancelRequest, host: String, port: Int, on loop: EventLoop, timeoutSeconds: Int, logger: Logger,
                     what: String) {
        let bootstrap = ClientBootstrap(group: loop).connectTimeout(.seconds(Int64(timeoutSeconds)))
        UpstreamConnector.connect(bootstrap, host: host, port: port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    var buffer = channel.allocator.buffer(capacity: 16)
                    request.encode(into: &buffer)
                    channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
                case .failure(let error):
                    logger.warning("could not forward cancel request", metadata: ["to": "\(what)", "error": "\(error)"])
                }
            }
    }
}

extension CancelSender {
    /// Sends `request` to the server of the connection its session holds now (looked up on the
    /// session's loop, sent from `loop`) and counts where it went: `upstream`, or `idle` when the
    /// session holds none. False when no session of this instance has that key and secret; what
    /// that means (a peer's key, or none) is the caller's to decide and count.
    static func sendToHolder(_ request: CancelRequest, runtime: ProxyRuntime, on loop: EventLoop, logger: Logger) -> Bool {
        guard let target = runtime.registry.cancelTarget(for: request) else { return false }
        target.whenSuccess { target in
            guard let target else {
                runtime.metrics.cancelRequest(outcome: .idle)
                return
            }
            runtime.metrics.cancelRequest(outcome: .upstream)
            send(target.request, host: target.host, port: target.port, on: loop,
                 timeoutSeconds: runtime.config.upstream.connectTimeoutSeconds, logger: logger, what: "upstream")
        }
        return true
    }
}

/// `[server] cancel_port`: a listener of this instance alone (never shared through SO_REUSEPORT)
/// that takes only CancelRequests forwarded by peers. What arrives here is never forwarded
/// again, so a cancel key travels at most one hop between instances.
final class PeerCancelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let runtime: ProxyRuntime
    private var decoder = PGFrontendDecoder()
    private var pending: ByteBuffer?

    init(runtime: ProxyRuntime) {
        self.runtime = runtime
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = ByteBuffer.joining(unwrapInboundIn(data), after: &pending)
        do {
            guard let part = try decoder.next(from: &buffer) else {
                pending = buffer
                return
            }
            if case .startup(.cancel(let request)) = part,
               !CancelSender.sendToHolder(request, runtime: runtime, on: context.eventLoop, logger: runtime.logger) {
                runtime.metrics.cancelRequest(outcome: .unknownKey)
            }
        } catch {
            runtime.logger.info("peer cancel port: unreadable packet", metadata: ["error": "\(error)"])
        }
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
