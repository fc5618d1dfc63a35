import NIOCore

/// NoticeResponse ('N'): a notice (warning, info, ...) reported by the server.
///
/// Use the convenience `init(severity:sqlState:message:detail:hint:)` and the accessors
/// (`severity`, `sqlState`, `message`, `detail`, `hint`, `subscript(code:)`) from
/// ``ErrorFieldsMessage``.
public struct NoticeResponse: Equatable, Sendable, ErrorFieldsMessage {
    /// The fields in wire order.
    public var fields: [ErrorFields.Field]

    /// Creates a NoticeResponse from its fields.
    public init(fields: [ErrorFields.Field]) {
        self.fields = fields
    }

    /// Creates a NoticeResponse from an ``ErrorFields`` value.
    public init(_ errorFields: ErrorFields) {
        self.fields = errorFields.fields
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> NoticeResponse {
        NoticeResponse(fields: try ErrorFields.decodeFields(payload: &payload, context: "NoticeResponse"))
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.noticeResponse.rawValue) { buffer in
            ErrorFields.encodeFields(self.fields, into: &buffer)
        }
    }
}
