import NIOCore

/// SASLResponse ('p'): a subsequent client message of a SASL exchange.
public struct SASLResponse: Equatable, Sendable {
    /// The mechanism-specific data (the whole payload).
    public var data: [UInt8]

    /// Creates a SASLResponse.
    public init(data: [UInt8]) {
        self.data = data
    }

    /// Decodes the payload (after identifier and length); all of it is the data.
    public static func decode(payload: inout ByteBuffer) throws -> SASLResponse {
        SASLResponse(data: payload.readBytes(length: payload.readableBytes)!)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(FrontendMessageID.password.rawValue) { buffer in
            buffer.writeBytes(self.data)
        }
    }
}

extension SASLResponse: CustomStringConvertible {
    /// Never reveals the data.
    public var description: String { "SASLResponse(\(self.data.count) bytes)" }
}
