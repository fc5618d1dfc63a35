import NIOCore
import PGWire

/// A client's named protocol-level prepared statements in transaction pooling mode. Each name the
/// client uses maps to a proxy name unique to this client and this Parse (`tp<session>_<n>`), so
/// clients sharing an upstream connection never collide, and the Parse is kept so the statement
/// can be prepared again on whichever connection the client borrows next.
struct PreparedStatements {
    struct Statement {
        var proxyName: String
        /// The client's Parse with the proxy name, ready to send again.
        var parse: ByteBuffer
        /// The proxy name and its terminator as they go on the wire (a slice of `parse`), for
        /// renamed Binds.
        var nameBytes: ByteBuffer

        init(proxyName: String, parse: ByteBuffer) {
            self.proxyName = proxyName
            self.parse = parse
            // A Parse is its type byte, its length, then the statement name and its terminator.
            self.nameBytes = parse.getSlice(at: parse.readerIndex + 5, length: proxyName.utf8.count + 1)!
        }
    }

    private let prefix: String
    private var counter = 0
    private(set) var statements: [String: Statement] = [:]

    init(sessionID: Int32) {
        prefix = "tp\(UInt32(bitPattern: sessionID))_"
    }

    /// A client Parse of a named statement: registers it and returns the Parse to send (renamed).
    mutating func register(_ parse: Parse, allocator: ByteBufferAllocator) -> Statement {
        counter += 1
        var renamed = parse
        renamed.name = prefix + String(counter)
        var buffer = allocator.buffer(capacity: renamed.query.utf8.count + 32)
        renamed.encode(into: &buffer)
        let statement = Statement(proxyName: renamed.name, parse: buffer)
        statements[parse.name] = statement
        return statement
    }

    subscript(name: String) -> Statement? { statements[name] }

    mutating func remove(_ name: String) {
        statements.removeValue(forKey: name)
    }

    mutating func removeAll() {
        statements.removeAll()
    }

    /// Reads the statement name of a Bind, Describe or Close payload without decoding the rest.
    /// Bind: portal\0 statement\0 ...; Describe/Close: kind byte, name\0.
    static func statementName(ofBind payload: ByteBuffer) -> (name: String, rest: ByteBuffer, portal: ByteBuffer)? {
        // The portal as bytes with its terminator: it goes into the renamed Bind as it came.
        guard let portalEnd = payload.readableBytesView.firstIndex(of: 0) else { return nil }
        var cursor = payload
        guard let portal = cursor.readSlice(length: portalEnd - payload.readerIndex + 1),
              let name = cursor.readNullTerminatedString() else { return nil }
        return (name, cursor, portal)
    }

    /// Whether a Parse payload names its statement (the unnamed one has an empty name: the payload
    /// starts with its terminator). Read without decoding the Parse.
    static func isNamed(parse payload: ByteBuffer) -> Bool {
        payload.getInteger(at: payload.readerIndex, as: UInt8.self).map { $0 != 0 } ?? false
    }

    /// The start of a Bind with its statement name replaced (type, length, portal, statement
    /// name, each name with its terminator), sent before the original's `restLength` bytes of
    /// parameters: those are not copied. Written into `header` (cleared first): a buffer the
    /// caller keeps reuses its storage once the previous header has gone out.
    static func writeRenamedBindHeader(into header: inout ByteBuffer, portal: ByteBuffer, statement: ByteBuffer, restLength: Int) {
        header.clear()
        header.writeInteger(FrontendMessageID.bind.rawValue)
        header.writeInteger(Int32(4 + portal.readableBytes + statement.readableBytes + restLength))
        header.writeImmutableBuffer(portal)
        header.writeImmutableBuffer(statement)
    }
}
