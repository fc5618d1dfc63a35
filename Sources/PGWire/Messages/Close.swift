import NIOCore

/// Close ('C'): closes a prepared statement or portal.
public struct Close: Equatable, Sendable {
    /// Whether ``name`` refers to a statement ('S') or a portal ('P').
    public typealias Kind = PGTargetKind

    /// Statement or portal.
    public var kind: Kind
    /// The statement or portal name; empty for the unnamed one.
    public var name: String

    /// Creates a Close message.
    public init(kind: Kind, name: String) {
        self.kind = kind
        self.name = name
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> Close {
        let byte = try payload.pgwireReadInteger(as: UInt8.self, "Close")
        guard let kind = Kind(rawValue: byte) else {
            throw PGWireError.invalidValue("Close: unknown target kind \(byte)")
        }
        let name = try payload.pgwireReadString("Close name")
        try payload.pgwireExpectEnd("Close")
        return Close(kind: kind, name: name)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(FrontendMessageID.close.rawValue) { buffer in
            buffer.writeInteger(self.kind.rawValue)
            buffer.pgwireWriteString(self.name)
        }
    }
}
