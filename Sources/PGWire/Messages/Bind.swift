import NIOCore

/// Bind ('B'): binds parameter values to a prepared statement, creating a portal.
public struct Bind: Equatable, Sendable {
    /// The destination portal name; empty for the unnamed portal.
    public var portal: String
    /// The source prepared statement name; empty for the unnamed statement.
    public var statement: String
    /// Parameter format codes (0 text, 1 binary): none (all text), one (applies to all) or one per parameter.
    public var parameterFormats: [Int16]
    /// Parameter values; nil is SQL NULL (length -1). Decoded values are slices of the frame.
    public var parameters: [ByteBuffer?]
    /// Result column format codes, with the same none/one/each convention.
    public var resultFormats: [Int16]

    /// Creates a Bind message.
    public init(portal: String, statement: String, parameterFormats: [Int16], parameters: [ByteBuffer?], resultFormats: [Int16]) {
        self.portal = portal
        self.statement = statement
        self.parameterFormats = parameterFormats
        self.parameters = parameters
        self.resultFormats = resultFormats
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    ///
    /// Counts are checked against the remaining payload before arrays are allocated.
    public static func decode(payload: inout ByteBuffer) throws -> Bind {
        let portal = try payload.pgwireReadString("Bind portal name")
        let statement = try payload.pgwireReadString("Bind statement name")
        let parameterFormats = try payload.pgwireReadInt16Array("Bind parameter formats")
        let parameterCount = try payload.pgwireReadCount(minimumElementSize: 4, "Bind parameters")
        var parameters = [ByteBuffer?]()
        parameters.reserveCapacity(parameterCount)
        for _ in 0..<parameterCount {
            parameters.append(try payload.pgwireReadNullableValue("Bind parameter"))
        }
        let resultFormats = try payload.pgwireReadInt16Array("Bind result formats")
        try payload.pgwireExpectEnd("Bind")
        return Bind(
            portal: portal,
            statement: statement,
            parameterFormats: parameterFormats,
            parameters: parameters,
            resultFormats: resultFormats
        )
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(FrontendMessageID.bind.rawValue) { buffer in
            buffer.pgwireWriteString(self.portal)
            buffer.pgwireWriteString(self.statement)
            buffer.pgwireWriteInt16Array(self.parameterFormats)
            buffer.pgwireWriteCount(self.parameters.count)
            for parameter in self.parameters {
                buffer.pgwireWriteNullableValue(parameter)
            }
            buffer.pgwireWriteInt16Array(self.resultFormats)
        }
    }
}
