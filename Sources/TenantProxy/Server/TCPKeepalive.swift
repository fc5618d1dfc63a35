#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore
import NIOPosix

extension ProxyConfig.Keepalive {
    typealias SocketOption = (option: ChannelOptions.Types.SocketOption, value: SocketOptionValue)

    /// SO_KEEPALIVE and the TCP timings given (0 leaves the system's); none when off. Set at the
    /// socket or TCP level by number: `socketOption(.tcp_nodelay)`-style shorthands put TCP
    /// options at the socket level, where they mean something else.
    var socketOptions: [SocketOption] {
        guard enabled else { return [] }
        var options: [SocketOption] = [
            (ChannelOptions.Types.SocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_KEEPALIVE)), 1)
        ]
        #if canImport(Glibc)
        let idle = TCP_KEEPIDLE
        #else
        let idle = TCP_KEEPALIVE
        #endif
        for (name, seconds) in [(idle, idleSeconds), (TCP_KEEPINTVL, intervalSeconds), (TCP_KEEPCNT, count)] where seconds > 0 {
            options.append((ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: name)),
                            SocketOptionValue(seconds)))
        }
        return options
    }
}

extension ServerBootstrap {
    func serverChannelOptions(_ options: [ProxyConfig.Keepalive.SocketOption]) -> ServerBootstrap {
        options.reduce(self) { $0.serverChannelOption($1.option, value: $1.value) }
    }
}

extension ClientBootstrap {
    func channelOptions(_ options: [ProxyConfig.Keepalive.SocketOption]) -> ClientBootstrap {
        options.reduce(self) { $0.channelOption($1.option, value: $1.value) }
    }
}
