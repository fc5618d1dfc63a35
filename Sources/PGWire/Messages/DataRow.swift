import NIOCore

/// DataRow ('D'): one result row.
public struct DataRow: Equatable, Sendable {
    /// Column values; nil is SQL NULL (length -1). Decoded values are slices of the frame.
    public var columns: [ByteBuffer?]

    /// Creates a DataRow message.
    public init(columns: [ByteBuffer?]) {
        self.columns = columns
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> DataRow {
        let count = try payload.pgwireReadCount(minimumElementSize: 4, "DataRow columns")
        var columns = [ByteBuffer?]()
        columns.reserveCapacity(count)
        for _ in 0..<count {
            columns.append(try payload.pgwireReadNullableValue("DataRow column"))
        }
        try payload.pgwireExpectEnd("DataRow")
        return DataRow(columns: columns)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.dataRow.rawValue) { buffer in
            buffer.pgwireWriteCount(self.columns.count)
            for column in self.columns {
                buffer.pgwireWriteNullableValue(column)
            }
        }
    }
}
