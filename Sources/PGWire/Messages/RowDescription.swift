import NIOCore

/// RowDescription ('T'): describes the columns of the rows that follow.
public struct RowDescription: Equatable, Sendable {
    /// One column description.
    public struct Field: Equatable, Sendable {
        /// The column name.
        public var name: String
        /// The OID of the source table, or 0.
        public var tableOID: UInt32
        /// The attribute number of the source column, or 0.
        public var columnAttributeNumber: Int16
        /// The OID of the column's data type.
        public var dataTypeOID: UInt32
        /// The data type size (`pg_type.typlen`); negative for variable width.
        public var dataTypeSize: Int16
        /// The type modifier (`pg_attribute.atttypmod`).
        public var typeModifier: Int32
        /// The format code (0 text, 1 binary).
        public var format: Int16

        /// Creates a field description.
        public init(
            name: String,
            tableOID: UInt32,
            columnAttributeNumber: Int16,
            dataTypeOID: UInt32,
            dataTypeSize: Int16,
            typeModifier: Int32,
            format: Int16
        ) {
            self.name = name
            self.tableOID = tableOID
            self.columnAttributeNumber = columnAttributeNumber
            self.dataTypeOID = dataTypeOID
            self.dataTypeSize = dataTypeSize
            self.typeModifier = typeModifier
            self.format = format
        }
    }

    /// The column descriptions in order.
    public var fields: [Field]

    /// Creates a RowDescription message.
    public init(fields: [Field]) {
        self.fields = fields
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> RowDescription {
        // Each field is at least a 1-byte empty name plus 18 bytes of fixed data.
        let count = try payload.pgwireReadCount(minimumElementSize: 19, "RowDescription fields")
        var fields = [Field]()
        fields.reserveCapacity(count)
        for _ in 0..<count {
            let name = try payload.pgwireReadString("RowDescription field name")
            guard let (tableOID, attribute, typeOID, size, modifier, format) = payload.readMultipleIntegers(
                as: (UInt32, Int16, UInt32, Int16, Int32, Int16).self
            ) else {
                throw PGWireError.truncated("RowDescription: payload ends inside a field description")
            }
            fields.append(Field(
                name: name,
                tableOID: tableOID,
                columnAttributeNumber: attribute,
                dataTypeOID: typeOID,
                dataTypeSize: size,
                typeModifier: modifier,
                format: format
            ))
        }
        try payload.pgwireExpectEnd("RowDescription")
        return RowDescription(fields: fields)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.rowDescription.rawValue) { buffer in
            buffer.pgwireWriteCount(self.fields.count)
            for field in self.fields {
                buffer.pgwireWriteString(field.name)
                buffer.writeMultipleIntegers(
                    field.tableOID,
                    field.columnAttributeNumber,
                    field.dataTypeOID,
                    field.dataTypeSize,
                    field.typeModifier,
                    field.format
                )
            }
        }
    }
}
