import NIOCore

/// FunctionCallResponse ('V'): the result of a fast-path function call.
public struct FunctionCallResponse: Equatable, Sendable {
    /// The result value; nil is SQL NULL (length -1). A decoded value is a slice of the frame.
    public var result: ByteBuffer?

    /// Creates a FunctionCallResponse message.
    public init(result: ByteBuffer?) {
        self.result = result
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> FunctionCallResponse {
        let result = try payload.pgwireReadNullableValue("FunctionCallResponse")
        try payload.pgwireExpectEnd("FunctionCallResponse")
        return FunctionCallResponse(result: result)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.functionCallResponse.rawValue) { buffer in
            buffer.pgwireWriteNullableValue(self.result)
        }
    }
}
