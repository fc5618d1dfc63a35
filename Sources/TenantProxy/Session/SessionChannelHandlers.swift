import NIOCore
import NIOSSL
import NIOTLS

/// Thin adapter from the client channel's events to its `ClientSession`. Also where TLS starts:
/// a TLS record as the very first byte is a direct TLS connection (PostgreSQL 17's
/// sslnegotiation=direct); the session asks for TLS after an SSLRequest.
final class ClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let runtime: ProxyRuntime
    private var session: ClientSession?
    private var firstRead = true

    init(runtime: ProxyRuntime) {
        self.runtime = runtime
    }

    func channelActive(context: ChannelHandlerContext) {
        let session = ClientSession(client: context.channel, runtime: runtime)
        // unowned, not weak: a weak reference would give the session a side table, slowing every
        // retain and release of it; the handler and the session live exactly as long as the channel.
        session.startTLS = { [unowned self, unowned session] in
            guard let tls = self.runtime.tls.server else { return false }
            do {
                try ClientTLS.start(on: context.pipeline.syncOperations, before: self, context: tls, eventLoop: context.eventLoop) {
                    session.serverName = $0
                }
                return true
            } catch {
                return false
            }
        }
        self.session = session
        context.fireChannelActive()
        session.admit()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if firstRead {
            firstRead = false
            let buffer = unwrapInboundIn(data)
            if buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == 0x16, let session, session.beginDirectTLS() {
                // Feed the ClientHello through the handlers just put in front of this one.
                context.pipeline.fireChannelRead(data)
                return
            }
        }
        session?.clientRead(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        session?.clientReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted(let negotiated) = event {
            let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self).peerCertificate
            session?.tlsEstablished(alpn: negotiated, peerCertificate: certificate)
        }
        context.fireUserInboundEventTriggered(event)
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
        // Connection resets, failed TLS handshakes and the like: the session ends, nothing else is disturbed.
        context.close(promise: nil)
    }
}
