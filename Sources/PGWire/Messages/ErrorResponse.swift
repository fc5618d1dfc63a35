import NIOCore

/// ErrorResponse ('E'): an error reported by the server.
///
/// Use the convenience `init(severity:sqlState:message:detail:hint:)` and the accessors
/// (`severity`, `sqlState`, `message`, `detail`, `hint`, `subscript(code:)`) from
/// ``ErrorFieldsMessage``.
public struct ErrorResponse: Equatable, Sendable, ErrorFieldsMessage {
    /// The fields in wire order.
    public var fields: [ErrorFields.Field]

    /// Creates an ErrorResponse from its fields.
    public init(fields: [ErrorFields.Field]) {
        self.fields = fields
    }

    /// Creates an ErrorResponse from an ``ErrorFields`` value.
    public init(_ errorFields: ErrorFields) {
        self.fields = errorFields.fields
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> ErrorResponse {
        ErrorResponse(fields: try ErrorFields.decodeFields(payload: &payload, context: "ErrorResponse"))
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.errorResponse.rawValue) { buffer in
            ErrorFields.encodeFields(self.fields, into: &buffer)
        }
    }
}
