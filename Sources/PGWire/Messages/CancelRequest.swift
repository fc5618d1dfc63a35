import NIOCore

/// The untyped CancelRequest packet, sent on a fresh connection to cancel a running query.
///
/// Wire format: `Int32 16`, `Int32 80877102`, `Int32 processID`, `Int32 secretKey`.
public struct CancelRequest: Equatable, Sendable {
    /// The request code of a CancelRequest (`1234 << 16 | 5678`).
    public static let requestCode: UInt32 = 80_877_102

    /// The backend process ID from BackendKeyData.
    public var processID: Int32
    /// The secret key from BackendKeyData.
    public var secretKey: Int32

    /// Creates a cancel request.
    public init(processID: Int32, secretKey: Int32) {
        self.processID = processID
        self.secretKey = secretKey
    }

    /// Writes the complete 16-byte packet.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(Int32(16))
        buffer.writeInteger(Self.requestCode)
        buffer.writeInteger(self.processID)
        buffer.writeInteger(self.secretKey)
    }
}
