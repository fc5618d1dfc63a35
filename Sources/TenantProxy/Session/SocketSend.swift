@_spi(Reflection) import Swift
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOConcurrencyHelpers
import NIOCore

/// Sending on a TCP channel's socket without SwiftNIO's write path.
///
/// Each NIO write and flush costs 1,000-1,400 instructions before the system call (channel
/// state checks that copy the lifecycle manager with retains, a pending-write record, the
/// generic metadata of the socket type looked up per write), twice per relayed transaction:
/// about a fifth of the proxy's work per transaction. `LoopWriter` instead sends straight on the
/// socket while NIO has nothing of its own queued, and gives NIO whatever the kernel does not
/// take at once (a full socket buffer), so backpressure, errors and closing stay NIO's.
///
/// NIO does not publish a channel's descriptor. `descriptor(of:)` reads it from the channel's
/// socket object (stored properties `socket` and `descriptor`, at offsets the runtime's field
/// metadata gives once per class), and uses it only if the kernel confirms that this descriptor
/// is the channel's connection (same local and remote address and port). Anything else (another
/// NIO layout, an EmbeddedChannel, a Unix socket) gives nil and NIO's write path; a test fails if
/// a NIO release changes the layout, so the fast path is never lost silently.
///
/// A descriptor number is reused once closed, so a send must never happen after NIO closed the
/// socket: NIO closes it only on the channel's event loop, inside `close0`, and marks the
/// channel inactive before any user code runs again; the writer sends from that loop and only
/// while `channel.isActive`.
enum SocketSend {
    /// The connected TCP socket under `channel`, verified against the channel's addresses.
    static func descriptor(of channel: Channel) -> CInt? {
        guard let local = channel.localAddress, let remote = channel.remoteAddress,
              let socket: AnyObject = storedProperty("socket", of: channel),
              let descriptor: CInt = storedProperty("descriptor", of: socket), descriptor >= 0,
              sameAddress(local, descriptor, getsockname),
              sameAddress(remote, descriptor, getpeername)
        else { return nil }
        return descriptor
    }

    /// A stored property's offset in instances of a class, and its declared type.
    private struct Field {
        let offset: Int
        let type: Any.Type
    }

    private struct FieldKey: Hashable {
        let type: ObjectIdentifier
        let label: String
    }

    /// Fields by class and name (nil: the class has none of that name), looked up once per
    /// class. Reading a property through `Mirror` materialised its children (field types
    /// resolved, values boxed): about 37,000 instructions per connection for the two, with
    /// their places known; about 410,000 for a whole log-in.
    private static let fields = NIOLockedValueBox<[FieldKey: Field?]>([:])

    /// A stored property of `object` (declared in its class or a superclass) when it has the
    /// type asked for: a class reference (`AnyObject`) or a plain value such as `CInt`.
    private static func storedProperty<Value>(_ label: String, of object: AnyObject) -> Value? {
        let key = FieldKey(type: ObjectIdentifier(type(of: object)), label: label)
        let cached = fields.withLockedValue { $0[key] }
        let found: Field?
        if let cached {
            found = cached
        } else {
            found = field(label, in: type(of: object))
            fields.withLockedValue { $0[key] = .some(found) }
        }
        guard let field = found else { return nil }
        // Only a field of exactly the type read: a native class reference is one strong pointer
        // (loaded as AnyObject, retained); a CInt is four bytes.
        if Value.self == AnyObject.self {
            guard field.type is AnyClass else { return nil }
        } else if field.type != Value.self {
            return nil
        }
        return withExtendedLifetime(object) {
            Unmanaged.passUnretained(object).toOpaque().load(fromByteOffset: field.offset, as: Value.self)
        }
    }

    private static func field(_ label: String, in type: AnyClass) -> Field? {
        var found: Field?
        _ = _forEachField(of: type, options: .classType) { name, offset, fieldType, _ in
            guard String(cString: name) == label else { return true }
            found = Field(offset: offset, type: fieldType)
            return false
        }
        return found
    }

    private typealias AddressQuery = (CInt, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?) -> CInt

    /// Whether the kernel's address for `descriptor` (its own or its peer's) is `address`.
    private static func sameAddress(_ address: SocketAddress, _ descriptor: CInt, _ query: AddressQuery) -> Bool {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { query(descriptor, $0, &length) }
        }
        guard status == 0 else { return false }
        switch address {
        case .v4(let v4):
            guard Int32(storage.ss_family) == AF_INET else { return false }
            let kernel = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
            return kernel.sin_port == v4.address.sin_port
                && kernel.sin_addr.s_addr == v4.address.sin_addr.s_addr
        case .v6(let v6):
            guard Int32(storage.ss_family) == AF_INET6 else { return false }
            let kernel = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
            var wanted = v6.address
            return kernel.sin6_port == wanted.sin6_port
                && withUnsafeBytes(of: kernel.sin6_addr) { a in withUnsafeBytes(of: &wanted.sin6_addr) { b in a.elementsEqual(b) } }
        default:
            return false
        }
    }

    /// Sends as much of `buffer` as the kernel takes now without blocking. Returns nil when all
    /// of it went, else the bytes still to send (all of them on EAGAIN or an error: NIO's write
    /// path then waits for room, or meets the same error and closes the channel its usual way).
    static func send(_ buffer: ByteBuffer, on descriptor: CInt) -> ByteBuffer? {
        let count = buffer.readableBytes
        guard count > 0 else { return nil }
        var sent = 0
        while true {
            let result = buffer.withUnsafeReadableBytes { bytes in
                #if canImport(Glibc)
                Glibc.send(descriptor, bytes.baseAddress, count, CInt(MSG_NOSIGNAL | MSG_DONTWAIT))
                #else
                Darwin.send(descriptor, bytes.baseAddress, count, MSG_DONTWAIT)
                #endif
            }
            if result == count { return nil }
            if result >= 0 {
                sent = result
                break
            }
            if errno != EINTR { break }
        }
        return buffer.getSlice(at: buffer.readerIndex + sent, length: count - sent)
    }
}
