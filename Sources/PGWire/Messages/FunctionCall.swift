import NIOCore

/// FunctionCall ('F'): the legacy fast-path function call.
public struct FunctionCall: Equatable, Sendable {
    /// The OID of the function to call.
    public var objectID: UInt32
    /// Argument format codes (0 text, 1 binary), with the none/one/each convention.
    public var argumentFormats: [Int16]
    /// Argument values; nil is SQL NULL (length -1). Decoded values are slices of the frame.
    public var arguments: [ByteBuffer?]
    /// The result format code.
    public var resultFormat: Int16

    /// Creates a FunctionCall message.
    public init(objectID: UInt32, argumentFormats: [Int16], arguments: [ByteBuffer?], resultFormat: Int16) {
        self.objectID = objectID
        self.argumentFormats = argumentFormats
        self.arguments = arguments
        self.resultFormat = resultFormat
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> FunctionCall {
        let objectID = try payload.pgwireReadInteger(as: UInt32.self, "FunctionCall")
        let formats = try payload.pgwireReadInt16Array("FunctionCall argument formats")
        let count = try payload.pgwireReadCount(minimumElementSize: 4, "FunctionCall arguments")
        var arguments = [ByteBuffer?]()
        arguments.reserveCapacity(count)
        for _ in 0..<count {
            arguments.append(try payload.pgwireReadNullableValue("FunctionCall argument"))
        }
        let resultFormat = try payload.pgwireReadInteger(as: Int16.self, "FunctionCall result format")
        try payload.pgwireExpectEnd("FunctionCall")
        return FunctionCall(objectID: objectID, argumentFormats: formats, arguments: arguments, resultFormat: resultFormat)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(FrontendMessageID.functionCall.rawValue) { buffer in
            buffer.writeInteger(self.objectID)
            buffer.pgwireWriteInt16Array(self.argumentFormats)
            buffer.pgwireWriteCount(self.arguments.count)
            for argument in self.arguments {
                buffer.pgwireWriteNullableValue(argument)
            }
            buffer.writeInteger(self.resultFormat)
        }
    }
}
