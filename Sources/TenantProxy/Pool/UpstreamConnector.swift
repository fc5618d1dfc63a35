import NIOCore
import NIOPosix
import NIOSSL
import PGWire

/// Opens an upstream connection: TCP, then, unless upstream.tls is disable, an SSLRequest and
/// TLS when the server agrees (prefer), or an error when it does not (require, verify-full).
/// The returned channel is ready for the startup message.
enum UpstreamConnector {
    struct Refused: Error, CustomStringConvertible {
        var description: String
    }

    static func connect(
        on eventLoop: EventLoop, config: ProxyConfig.Upstream, keepalive: ProxyConfig.Keepalive, tls: NIOSSLContext?,
        handler: ChannelHandler
    ) -> EventLoopFuture<Channel> {
        if let path = socketPath(host: config.host, port: config.port) {
            // A Unix-domain socket: no TCP options, and no TLS (as libpq: the kernel carries the
            // bytes; check-config refuses tls = require / verify-full with a socket directory).
            return ClientBootstrap(group: eventLoop)
                .connectTimeout(.seconds(Int64(config.connectTimeoutSeconds)))
                .channelInitializer { channel in channel.pipeline.addHandler(handler) }
                .connect(unixDomainSocketPath: path)
        }
        let negotiate = config.tls != .disable && tls != nil
        guard negotiate else {
            // TCP_NODELAY at the TCP level (ClientBootstrap's default too); socketOption(.tcp_nodelay)
            // would set SO_DEBUG, which only root may: every connect failed under a service user.
            return ClientBootstrap(group: eventLoop)
                .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                .channelOptions(keepalive.socketOptions)
                .connectTimeout(.seconds(Int64(config.connectTimeoutSeconds)))
                .channelInitializer { channel in channel.pipeline.addHandler(handler) }
                .connect(host: config.host, port: config.port)
        }
        let promise = eventLoop.makePromise(of: Void.self)
        let negotiator = UpstreamTLSNegotiator(
            mode: config.tls, context: tls, serverHostname: serverHostname(config), done: promise)
        let connected = ClientBootstrap(group: eventLoop)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .channelOptions(keepalive.socketOptions)
            .connectTimeout(.seconds(Int64(config.connectTimeoutSeconds)))
            .channelInitializer { channel in channel.pipeline.addHandlers([negotiator, handler]) }
            .connect(host: config.host, port: config.port)
        // The negotiation promise must complete whatever happens to the TCP connect.
        connected.whenFailure { promise.fail($0) }
        return connected
            .flatMap { channel in
                var request = channel.allocator.buffer(capacity: 8)
                StartupPacket.sslRequest.encode(into: &request)
                channel.writeAndFlush(request, promise: nil)
                return promise.futureResult.map { channel }.flatMapErrorThrowing { error in
                    channel.close(promise: nil)
                    throw error
                }
            }
    }

    /// libpq's rule: a host starting with "/" names the directory of the server's Unix-domain
    /// socket, `.s.PGSQL.<port>` in it. Nil for a host name or address.
    static func socketPath(host: String, port: Int) -> String? {
        guard host.hasPrefix("/") else { return nil }
        return (host.hasSuffix("/") ? host : host + "/") + ".s.PGSQL.\(port)"
    }

    /// Connects to `host` (a name, an address or a socket directory) and `port`.
    static func connect(_ bootstrap: ClientBootstrap, host: String, port: Int) -> EventLoopFuture<Channel> {
        if let path = socketPath(host: host, port: port) {
            return bootstrap.connect(unixDomainSocketPath: path)
        }
        return bootstrap.connect(host: host, port: port)
    }

    /// A DNS name against a certificate name, with a leading `*.` matching one label.
    static func name(_ name: String, matches pattern: String) -> Bool {
        let name = name.lowercased(), pattern = pattern.lowercased()
        if pattern.hasPrefix("*.") {
            guard let dot = name.firstIndex(of: ".") else { return false }
            return name[dot...] == pattern.dropFirst(1) && name[..<dot].count > 0
        }
        return name == pattern
    }

    /// The name sent as SNI and verified: tls_server_name, else the host unless it is an IP
    /// literal (then the peer's address is verified against the certificate's IP SANs).
    private static func serverHostname(_ config: ProxyConfig.Upstream) -> String? {
        if !config.tlsServerName.isEmpty { return config.tlsServerName }
        if (try? SocketAddress(ipAddress: config.host, port: 0)) != nil { return nil }
        return config.host
    }
}

/// Reads the server's one-byte answer to SSLRequest and puts TLS in place.
private final class UpstreamTLSNegotiator: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    let mode: ProxyConfig.UpstreamTLSMode
    let context: NIOSSLContext?
    let serverHostname: String?
    let done: EventLoopPromise<Void>
    private var finished = false

    init(mode: ProxyConfig.UpstreamTLSMode, context: NIOSSLContext?, serverHostname: String?, done: EventLoopPromise<Void>) {
        self.mode = mode
        self.context = context
        self.serverHostname = serverHostname
        self.done = done
    }

    func channelRead(context handlerContext: ChannelHandlerContext, data: NIOAny) {
        guard !finished else { return handlerContext.fireChannelRead(data) }
        finished = true
        var buffer = unwrapInboundIn(data)
        let answer = buffer.readInteger(as: UInt8.self)
        // Bytes after the answer were not protected by TLS: never treat them as the server's.
        guard buffer.readableBytes == 0 else {
            return fail(handlerContext, "unexpected data after the SSLRequest answer")
        }
        switch answer {
        case UInt8(ascii: "S"):
            do {
                guard let context else { throw UpstreamConnector.Refused(description: "no TLS context") }
                let ssl: NIOSSLClientHandler
                if mode == .verifyFull, let name = serverHostname {
                    // swift-nio-ssl also accepts a certificate whose IP SAN matches the peer's
                    // address; verify-full means the configured name, as libpq checks it.
                    ssl = try NIOSSLClientHandler._makeSSLClientHandler(context: context, serverHostname: name) { certificate, channel in
                        TLSContexts.dnsNames(of: certificate).contains { UpstreamConnector.name(name, matches: $0) }
                            ? channel.eventLoop.makeSucceededVoidFuture()
                            : channel.eventLoop.makeFailedFuture(UpstreamConnector.Refused(description: "certificate does not name \(name)"))
                    }
                } else {
                    ssl = try NIOSSLClientHandler(context: context, serverHostname: serverHostname)
                }
                try handlerContext.pipeline.syncOperations.addHandler(ssl, position: .after(self))
                handlerContext.pipeline.removeHandler(self, promise: nil)
                done.succeed(())
            } catch {
                fail(handlerContext, "TLS could not start: \(error)")
            }
        case UInt8(ascii: "N"):
            guard mode == .prefer else {
                return fail(handlerContext, "the server does not accept TLS (upstream.tls = \(mode.rawValue))")
            }
            handlerContext.pipeline.removeHandler(self, promise: nil)
            done.succeed(())
        default:
            fail(handlerContext, "unexpected answer to SSLRequest")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !finished {
            finished = true
            done.fail(UpstreamConnector.Refused(description: "connection closed during TLS negotiation"))
        }
        context.fireChannelInactive()
    }

    private func fail(_ context: ChannelHandlerContext, _ reason: String) {
        done.fail(UpstreamConnector.Refused(description: reason))
        context.close(promise: nil)
    }
}
