import NIOCore

/// Query ('Q'): a simple-protocol query string.
public struct Query: Equatable, Sendable {
    /// The SQL text (may contain several statements).
    public var query: String

    /// Creates a Query message.
    public init(query: String) {
        self.query = query
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> Query {
        let query = try payload.pgwireReadString("Query")
        try payload.pgwireExpectEnd("Query")
        return Query(query: query)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(FrontendMessageID.query.rawValue) { buffer in
            buffer.pgwireWriteString(self.query)
        }
    }
}
