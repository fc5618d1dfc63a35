import NIOCore

/// CommandComplete ('C'): a command finished; carries its tag (e.g. `SELECT 3`).
public struct CommandComplete: Equatable, Sendable {
    /// The command tag.
    public var tag: String

    /// Creates a CommandComplete message.
    public init(tag: String) {
        self.tag = tag
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> CommandComplete {
        let tag = try payload.pgwireReadString("CommandComplete")
        try payload.pgwireExpectEnd("CommandComplete")
        return CommandComplete(tag: tag)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.commandComplete.rawValue) { buffer in
            buffer.pgwireWriteString(self.tag)
        }
    }
}
