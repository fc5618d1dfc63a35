import NIOCore

/// Incremental decoder for the client-to-server byte stream.
///
/// A plain value type: the owner calls ``next(from:)`` repeatedly from its channel
/// handler until it returns nil, then waits for more bytes. Decoding is zero-copy:
/// frame payloads are slices of the input buffer.
///
/// The stream starts in ``Phase-swift.enum/startup`` with untyped, length-prefixed
/// packets. After a StartupMessage it switches to typed frames
/// (``Phase-swift.enum/messages``). SSLRequest and GSSENCRequest keep it in the startup
/// phase (the client sends a StartupMessage next, possibly over TLS). A CancelRequest
/// ends the stream (``Phase-swift.enum/finished``): any further byte is an error.
public struct PGFrontendDecoder: Sendable {
    /// The framing the decoder expects next.
    public enum Phase: Equatable, Sendable {
        /// Untyped length-prefixed packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).
        case startup
        /// Typed frames (identifier byte + `Int32` length + payload).
        case messages
        /// Nothing more may arrive (after a CancelRequest).
        case finished
    }

    /// The current phase. Settable so the owner can force a phase (e.g. `.messages` after
    /// handling startup itself).
    public var phase: Phase
    /// Maximum value of a typed frame's length field. Checked as soon as the 5-byte header is
    /// readable, before waiting for or allocating the payload.
    public var maxMessageLength: Int
    /// Maximum length of an untyped startup-phase packet (Postgres uses 10000).
    public var maxStartupPacketLength: Int = 10_000

    /// Creates a decoder in the ``Phase-swift.enum/startup`` phase.
    public init(maxMessageLength: Int = 64 * 1024 * 1024) {
        self.phase = .startup
        self.maxMessageLength = maxMessageLength
    }

    /// Returns one complete part and consumes it from `buffer`, or nil (buffer untouched)
    /// if more bytes are needed. Frame payloads are slices of `buffer` (never copies).
    ///
    /// - Throws: ``PGWireError`` on malformed input. The stream is unusable afterwards.
    public mutating func next(from buffer: inout ByteBuffer) throws -> PGFrontendPart? {
        switch self.phase {
        case .messages:
            guard let frame = try PGTypedFrameDecoding.next(from: &buffer, maxMessageLength: self.maxMessageLength) else {
                return nil
            }
            return .frame(frame)

        case .startup:
            guard let packet = try self.nextStartupPacket(from: &buffer) else {
                return nil
            }
            switch packet {
            case .startup:
                self.phase = .messages
            case .cancel:
                self.phase = .finished
            case .sslRequest, .gssencRequest:
                break
            }
            return .startup(packet)

        case .finished:
            guard buffer.readableBytes == 0 else {
                throw PGWireError.trailingBytes("\(buffer.readableBytes) bytes received after a CancelRequest")
            }
            return nil
        }
    }

    private func nextStartupPacket(from buffer: inout ByteBuffer) throws -> StartupPacket? {
        let start = buffer.readerIndex
        guard let length = buffer.getInteger(at: start, as: Int32.self) else {
            return nil
        }
        // The smallest packets (SSLRequest, GSSENCRequest) are 8 bytes: length + code.
        guard length >= 8 else {
            throw PGWireError.invalidLength("startup packet length \(length) is smaller than 8")
        }
        guard Int(length) <= self.maxStartupPacketLength else {
            throw PGWireError.messageTooLarge("startup packet length \(length) exceeds the maximum of \(self.maxStartupPacketLength)")
        }
        guard var body = buffer.getSlice(at: start + 4, length: Int(length) - 4) else {
            return nil
        }
        let packet = try StartupPacket.decode(body: &body)
        buffer.moveReaderIndex(forwardBy: Int(length))
        return packet
    }
}
