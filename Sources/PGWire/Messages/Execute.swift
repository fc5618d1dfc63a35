import NIOCore

/// Execute ('E'): runs a portal.
public struct Execute: Equatable, Sendable {
    /// The portal name; empty for the unnamed portal.
    public var portal: String
    /// Maximum number of rows to return; 0 means no limit.
    public var maxRows: Int32

    /// Creates an Execute message.
    public init(portal: String, maxRows: Int32) {
        self.portal = portal
        self.maxRows = maxRows
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> Execute {
        let portal = try payload.pgwireReadString("Execute portal name")
        let maxRows = try payload.pgwireReadInteger(as: Int32.self, "Execute")
        try payload.pgwireExpectEnd("Execute")
        return Execute(portal: portal, maxRows: maxRows)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(FrontendMessageID.execute.rawValue) { buffer in
            buffer.pgwireWriteString(self.portal)
            buffer.writeInteger(self.maxRows)
        }
    }
}
