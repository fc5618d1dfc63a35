import NIOCore

/// CopyData ('d'): a chunk of COPY data; the same message in both directions.
public struct CopyData: Equatable, Sendable {
    /// The data. A decoded value is a slice of the frame (no copy).
    public var data: ByteBuffer

    /// Creates a CopyData message.
    public init(data: ByteBuffer) {
        self.data = data
    }

    /// Decodes the payload (after identifier and length); all of it is the data.
    public static func decode(payload: inout ByteBuffer) throws -> CopyData {
        CopyData(data: payload.readSlice(length: payload.readableBytes)!)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(FrontendMessageID.copyData.rawValue)
        buffer.writeInteger(Int32(truncatingIfNeeded: self.data.readableBytes + 4))
        var data = self.data
        buffer.writeBuffer(&data)
    }
}
