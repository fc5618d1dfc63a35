import NIOCore

/// Incremental decoder for the server-to-client byte stream (always typed frames).
///
/// A plain value type: the owner calls ``next(from:)`` until it returns nil. Unknown
/// message identifiers are passed through as frames, not rejected.
public struct PGBackendDecoder: Sendable {
    /// Maximum value of a frame's length field. Checked as soon as the 5-byte header is
    /// readable, before waiting for or allocating the payload.
    public var maxMessageLength: Int

    /// Creates a decoder.
    public init(maxMessageLength: Int = 64 * 1024 * 1024) {
        self.maxMessageLength = maxMessageLength
    }

    /// Returns one complete frame and consumes it from `buffer`, or nil (buffer untouched)
    /// if more bytes are needed. Payloads are slices of `buffer` (never copies).
    ///
    /// - Throws: ``PGWireError`` with `.invalidLength` or `.messageTooLarge`.
    public mutating func next(from buffer: inout ByteBuffer) throws -> PGFrame? {
        try PGTypedFrameDecoding.next(from: &buffer, maxMessageLength: self.maxMessageLength)
    }

    /// The identifier and whole size (identifier, length field, payload) of the next frame once
    /// it is complete in `buffer`, without consuming or slicing it: for relays that pass most
    /// frames on untouched. Nil if more bytes are needed; throws as ``next(from:)`` does.
    public func peekHeader(in buffer: ByteBuffer) throws -> (type: UInt8, size: Int)? {
        try PGTypedFrameDecoding.header(of: buffer, maxMessageLength: self.maxMessageLength)
    }
}
