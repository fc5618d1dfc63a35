import NIOCore

/// CopyFail ('f'): the client aborts a COPY FROM STDIN.
public struct CopyFail: Equatable, Sendable {
    /// The reason reported as the error cause.
    public var message: String

    /// Creates a CopyFail message.
    public init(message: String) {
        self.message = message
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> CopyFail {
        let message = try payload.pgwireReadString("CopyFail")
        try payload.pgwireExpectEnd("CopyFail")
        return CopyFail(message: message)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(FrontendMessageID.copyFail.rawValue) { buffer in
            buffer.pgwireWriteString(self.message)
        }
    }
}
