import NIOCore
import NIOSSL
import NIOTLS

/// Puts TLS in front of a client connection: after an SSLRequest answered 'S', or at once for a
/// direct TLS connection (PostgreSQL 17's sslnegotiation=direct, which must negotiate ALPN
/// "postgresql"). An SNIHandler reads the server name from the ClientHello first, for tenant
/// resolution by SNI.
enum ClientTLS {
    static func start(
        on pipeline: ChannelPipeline.SynchronousOperations, before handler: ChannelHandler,
        context: NIOSSLContext, eventLoop: EventLoop, serverName: @escaping (String?) -> Void
    ) throws {
        let sni = SNIHandler { result in
            switch result {
            case .hostname(let name): serverName(name.lowercased())
            case .fallback: serverName(nil)
            }
            return eventLoop.makeSucceededVoidFuture()
        }
        let ssl = NIOSSLServerHandler(context: context)
        try pipeline.addHandler(ByteToMessageHandler(sni), position: .before(handler))
        try pipeline.addHandler(ssl, position: .before(handler))
    }
}

