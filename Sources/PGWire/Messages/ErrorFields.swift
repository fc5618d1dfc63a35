import NIOCore

/// Identifier bytes of the fields of ErrorResponse and NoticeResponse.
public enum ErrorFieldCode {
    /// ascii: S - severity (localized).
    public static let severity = UInt8(ascii: "S")
    /// ascii: V - severity (never localized).
    public static let severityNonLocalized = UInt8(ascii: "V")
    /// ascii: C - SQLSTATE code.
    public static let sqlState = UInt8(ascii: "C")
    /// ascii: M - primary message.
    public static let message = UInt8(ascii: "M")
    /// ascii: D - detail.
    public static let detail = UInt8(ascii: "D")
    /// ascii: H - hint.
    public static let hint = UInt8(ascii: "H")
    /// ascii: P - cursor position in the query string.
    public static let position = UInt8(ascii: "P")
    /// ascii: p - position in an internally generated query.
    public static let internalPosition = UInt8(ascii: "p")
    /// ascii: q - internally generated query.
    public static let internalQuery = UInt8(ascii: "q")
    /// ascii: W - context (call stack).
    public static let context = UInt8(ascii: "W")
    /// ascii: s - schema name.
    public static let schemaName = UInt8(ascii: "s")
    /// ascii: t - table name.
    public static let tableName = UInt8(ascii: "t")
    /// ascii: c - column name.
    public static let columnName = UInt8(ascii: "c")
    /// ascii: d - data type name.
    public static let dataTypeName = UInt8(ascii: "d")
    /// ascii: n - constraint name.
    public static let constraintName = UInt8(ascii: "n")
    /// ascii: F - source file.
    public static let file = UInt8(ascii: "F")
    /// ascii: L - source line.
    public static let line = UInt8(ascii: "L")
    /// ascii: R - source routine.
    public static let routine = UInt8(ascii: "R")
}

/// The field list shared by ErrorResponse and NoticeResponse (order preserved).
///
/// Wire format: repeated `Byte1 code` + NUL-terminated value, ended by a single NUL byte.
public struct ErrorFields: Equatable, Sendable {
    /// One field: its code byte (see ``ErrorFieldCode``) and value.
    public struct Field: Equatable, Sendable {
        /// The field code, e.g. `UInt8(ascii: "M")`.
        public var code: UInt8
        /// The field value.
        public var value: String

        /// Creates a field.
        public init(code: UInt8, value: String) {
            self.code = code
            self.value = value
        }
    }

    /// The fields in wire order.
    public var fields: [Field]

    /// Creates a field list.
    public init(fields: [Field]) {
        self.fields = fields
    }

    /// Decodes a field list; the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> ErrorFields {
        ErrorFields(fields: try Self.decodeFields(payload: &payload, context: "ErrorFields"))
    }

    static func decodeFields(payload: inout ByteBuffer, context: String) throws -> [Field] {
        var fields = [Field]()
        while true {
            guard let code = payload.readInteger(as: UInt8.self) else {
                throw PGWireError.missingTerminator("\(context): field list is missing its terminating NUL")
            }
            if code == 0 { break }
            let value = try payload.pgwireReadString("\(context) field value")
            fields.append(Field(code: code, value: value))
        }
        try payload.pgwireExpectEnd(context)
        return fields
    }

    static func encodeFields(_ fields: [Field], into buffer: inout ByteBuffer) {
        for field in fields where field.code != 0 {
            buffer.writeInteger(field.code)
            buffer.pgwireWriteString(field.value)
        }
        buffer.writeInteger(UInt8(0))
    }
}

/// Common accessors of types holding an ``ErrorFields/Field`` list
/// (``ErrorFields``, ``ErrorResponse``, ``NoticeResponse``).
public protocol ErrorFieldsMessage {
    /// The fields in wire order.
    var fields: [ErrorFields.Field] { get set }
    /// Creates the value from its fields.
    init(fields: [ErrorFields.Field])
}

extension ErrorFields: ErrorFieldsMessage {}

extension ErrorFieldsMessage {
    /// Creates a message with fields S, V (same severity), C, M and, when given, D and H.
    public init(severity: String = "ERROR", sqlState: String, message: String, detail: String? = nil, hint: String? = nil) {
        var fields: [ErrorFields.Field] = [
            .init(code: ErrorFieldCode.severity, value: severity),
            .init(code: ErrorFieldCode.severityNonLocalized, value: severity),
            .init(code: ErrorFieldCode.sqlState, value: sqlState),
            .init(code: ErrorFieldCode.message, value: message),
        ]
        if let detail = detail {
            fields.append(.init(code: ErrorFieldCode.detail, value: detail))
        }
        if let hint = hint {
            fields.append(.init(code: ErrorFieldCode.hint, value: hint))
        }
        self.init(fields: fields)
    }

    /// The value of the first field with the given code, or nil.
    public subscript(code code: UInt8) -> String? {
        self.fields.first(where: { $0.code == code })?.value
    }

    /// The non-localized severity (V), falling back to the localized one (S).
    public var severity: String? { self[code: ErrorFieldCode.severityNonLocalized] ?? self[code: ErrorFieldCode.severity] }
    /// The SQLSTATE code (C).
    public var sqlState: String? { self[code: ErrorFieldCode.sqlState] }
    /// The primary message (M).
    public var message: String? { self[code: ErrorFieldCode.message] }
    /// The detail (D).
    public var detail: String? { self[code: ErrorFieldCode.detail] }
    /// The hint (H).
    public var hint: String? { self[code: ErrorFieldCode.hint] }

    /// The fields as an ``ErrorFields`` value.
    public var errorFields: ErrorFields {
        get { ErrorFields(fields: self.fields) }
        set { self.fields = newValue.fields }
    }
}
