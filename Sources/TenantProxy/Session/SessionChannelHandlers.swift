import NIOCore

/// Thin adapter from the client channel's events to its `ClientSession`.
final class ClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let runtime: ProxyRuntime
    private var session: ClientSession?

    init(runtime: ProxyRuntime) {
        self.runtime = runtime
    }

    func channelActive(context: ChannelHandlerContext) {
        session = ClientSession(client: context.channel, runtime: runtime)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        session?.clientRead(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        session?.clientReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        session?.clientWritabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        session?.clientClosed()
        session = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Connection resets and the like: the session ends, nothing else is disturbed.
        context.close(promise: nil)
    }
}

