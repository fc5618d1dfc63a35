import NIOCore

/// Parse ('P'): creates a prepared statement in the extended query protocol.
public struct Parse: Equatable, Sendable {
    /// The statement name; empty for the unnamed statement.
    public var name: String
    /// The SQL text.
    public var query: String
    /// Parameter type OIDs; 0 leaves a type unspecified.
    public var parameterTypes: [UInt32]

    /// Creates a Parse message.
    public init(name: String, query: String, parameterTypes: [UInt32]) {
        self.name = name
        self.query = query
        self.parameterTypes = parameterTypes
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> Parse {
        let name = try payload.pgwireReadString("Parse statement name")
        let query = try payload.pgwireReadString("Parse query")
        let count = try payload.pgwireReadCount(minimumElementSize: 4, "Parse parameter types")
        var types = [UInt32]()
        types.reserveCapacity(count)
        for _ in 0..<count {
            types.append(try payload.pgwireReadInteger(as: UInt32.self, "Parse parameter type"))
        }
        try payload.pgwireExpectEnd("Parse")
        return Parse(name: name, query: query, parameterTypes: types)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(FrontendMessageID.parse.rawValue) { buffer in
            buffer.pgwireWriteString(self.name)
            buffer.pgwireWriteString(self.query)
            buffer.pgwireWriteCount(self.parameterTypes.count)
            for type in self.parameterTypes {
                buffer.writeInteger(type)
            }
        }
    }
}
