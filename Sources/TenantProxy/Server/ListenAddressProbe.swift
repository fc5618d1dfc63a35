#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// Whether a process already listens on the client address. The proxy listens with one socket
/// per event loop in a SO_REUSEPORT group, which a second instance started by mistake could join
/// and take a share of the connections; unless `[server] reuse_port` asks for that, the proxy
/// first binds a socket there without listening: with SO_REUSEADDR (as the listeners have) only
/// a listening socket on the address makes that bind fail. (Two instances started at the same
/// instant could both pass it: it catches the mistake, it is not a lock.)
enum ListenAddressProbe {
    struct InUse: Error, CustomStringConvertible {
        let address: String

        var description: String {
            "cannot listen on \(address): Address already in use (another process listens there; to share the port between instances of the proxy set [server] reuse_port = true in each)"
        }
    }

    static func ensureNobodyListens(host: String, port: Int) throws {
        let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        let descriptor = socket(address.protocol.rawValue, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        defer { close(descriptor) }
        var one: Int32 = 1
        _ = setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = address.withSockAddr { pointer, size in bind(descriptor, pointer, socklen_t(size)) }
        // Other failures (a privileged port, an address not on this host) are the listeners' own
        // to report: their bind fails the same way.
        if bound != 0, errno == EADDRINUSE { throw InUse(address: "\(host):\(port)") }
    }
}
