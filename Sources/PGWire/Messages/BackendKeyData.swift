import NIOCore

/// BackendKeyData ('K'): the key a client needs to cancel queries of this session.
public struct BackendKeyData: Equatable, Sendable {
    /// The backend process ID.
    public var processID: Int32
    /// The secret key.
    public var secretKey: Int32

    /// Creates a BackendKeyData message.
    public init(processID: Int32, secretKey: Int32) {
        self.processID = processID
        self.secretKey = secretKey
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> BackendKeyData {
        let processID = try payload.pgwireReadInteger(as: Int32.self, "BackendKeyData")
        let secretKey = try payload.pgwireReadInteger(as: Int32.self, "BackendKeyData")
        try payload.pgwireExpectEnd("BackendKeyData")
        return BackendKeyData(processID: processID, secretKey: secretKey)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.backendKeyData.rawValue) { buffer in
            buffer.writeInteger(self.processID)
            buffer.writeInteger(self.secretKey)
        }
    }
}
