import NIOCore

/// ParameterDescription ('t'): the parameter types of a described statement.
public struct ParameterDescription: Equatable, Sendable {
    /// The parameter type OIDs.
    public var dataTypes: [UInt32]

    /// Creates a ParameterDescription message.
    public init(dataTypes: [UInt32]) {
        self.dataTypes = dataTypes
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> ParameterDescription {
        let count = try payload.pgwireReadCount(minimumElementSize: 4, "ParameterDescription")
        var types = [UInt32]()
        types.reserveCapacity(count)
        for _ in 0..<count {
            types.append(payload.readInteger(as: UInt32.self)!)
        }
        try payload.pgwireExpectEnd("ParameterDescription")
        return ParameterDescription(dataTypes: types)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.parameterDescription.rawValue) { buffer in
            buffer.pgwireWriteCount(self.dataTypes.count)
            for type in self.dataTypes {
                buffer.writeInteger(type)
            }
        }
    }
}
