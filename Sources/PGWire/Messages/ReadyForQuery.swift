import NIOCore

/// The transaction status reported by ReadyForQuery.
public enum TransactionStatus: UInt8, Sendable, CaseIterable {
    /// ascii: I - idle, not in a transaction block.
    case idle = 73
    /// ascii: T - in a transaction block.
    case inTransaction = 84
    /// ascii: E - in a failed transaction block (queries are rejected until it ends).
    case failed = 69
}

/// ReadyForQuery ('Z'): the server is ready for a new query cycle.
public struct ReadyForQuery: Equatable, Sendable {
    /// The current transaction status.
    public var status: TransactionStatus

    /// Creates a ReadyForQuery message.
    public init(status: TransactionStatus) {
        self.status = status
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> ReadyForQuery {
        let byte = try payload.pgwireReadInteger(as: UInt8.self, "ReadyForQuery")
        guard let status = TransactionStatus(rawValue: byte) else {
            throw PGWireError.invalidValue("ReadyForQuery: unknown transaction status \(byte)")
        }
        try payload.pgwireExpectEnd("ReadyForQuery")
        return ReadyForQuery(status: status)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.readyForQuery.rawValue) { buffer in
            buffer.writeInteger(self.status.rawValue)
        }
    }
}
