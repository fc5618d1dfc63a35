import NIOCore

/// ParameterStatus ('S'): the current value of a run-time parameter reported by the server.
public struct ParameterStatus: Equatable, Sendable {
    /// The parameter name, e.g. `server_version`.
    public var name: String
    /// The parameter value.
    public var value: String

    /// Creates a ParameterStatus message.
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> ParameterStatus {
        let name = try payload.pgwireReadString("ParameterStatus name")
        let value = try payload.pgwireReadString("ParameterStatus value")
        try payload.pgwireExpectEnd("ParameterStatus")
        return ParameterStatus(name: name, value: value)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.parameterStatus.rawValue) { buffer in
            buffer.pgwireWriteString(self.name)
            buffer.pgwireWriteString(self.value)
        }
    }
}
