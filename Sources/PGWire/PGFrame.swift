import NIOCore

/// A typed protocol frame passed through without interpretation.
///
/// On the wire a typed message is one identifier byte, an `Int32` length that
/// counts itself and the payload (but not the identifier), then the payload.
/// ``payload`` holds only the payload, without the 4-byte length.
public struct PGFrame: Equatable, Sendable {
    /// The message identifier byte (see ``FrontendMessageID`` / ``BackendMessageID``).
    public var type: UInt8
    /// The message payload, excluding the identifier and the length field.
    public var payload: ByteBuffer

    /// Creates a frame from its identifier byte and payload.
    public init(type: UInt8, payload: ByteBuffer) {
        self.type = type
        self.payload = payload
    }

    /// Writes the identifier, the `Int32` length (`payload.readableBytes + 4`) and the payload.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(self.type)
        buffer.writeInteger(Int32(truncatingIfNeeded: self.payload.readableBytes + 4))
        var payload = self.payload
        buffer.writeBuffer(&payload)
    }
}

extension PGFrame: CustomStringConvertible {
    /// The identifier and payload size (never the payload bytes, which may hold secrets).
    public var description: String {
        let scalar = Unicode.Scalar(self.type)
        let printable = self.type >= 0x20 && self.type < 0x7F ? "'\(Character(scalar))'" : "0x\(String(self.type, radix: 16))"
        return "PGFrame(type: \(printable), payload: \(self.payload.readableBytes) bytes)"
    }
}

/// Shared framing logic for typed messages (used by both stream decoders).
enum PGTypedFrameDecoding {
    /// Decodes one typed frame from `buffer`, or returns nil leaving the buffer untouched.
    ///
    /// The length field is validated as soon as the 5-byte header is readable, before
    /// waiting for the payload, so a hostile length never causes buffering or allocation.
    static func next(from buffer: inout ByteBuffer, maxMessageLength: Int) throws -> PGFrame? {
        guard let (type, size) = try header(of: buffer, maxMessageLength: maxMessageLength) else { return nil }
        buffer.moveReaderIndex(forwardBy: 5)
        let payload = buffer.readSlice(length: size - 5)!
        return PGFrame(type: type, payload: payload)
    }

    /// The identifier and whole size (identifier, length field and payload) of the frame at the
    /// buffer's reader index once all of it is readable, else nil; the same checks as `next`.
    static func header(of buffer: ByteBuffer, maxMessageLength: Int) throws -> (type: UInt8, size: Int)? {
        guard buffer.readableBytes >= 5 else { return nil }
        // Two loads from the readable bytes: ByteBuffer.getInteger twice cost ~130 instructions
        // a header, and the relay reads five or six headers a transaction.
        let (type, length) = buffer.withUnsafeReadableBytes { bytes in
            (bytes[0], Int32(bigEndian: bytes.loadUnaligned(fromByteOffset: 1, as: Int32.self)))
        }
        guard length >= 4 else {
            throw PGWireError.invalidLength("message length \(length) is smaller than 4")
        }
        guard Int(length) <= maxMessageLength else {
            throw PGWireError.messageTooLarge("message length \(length) exceeds the maximum of \(maxMessageLength)")
        }
        guard buffer.readableBytes >= 1 + Int(length) else {
            return nil
        }
        return (type, 1 + Int(length))
    }
}
