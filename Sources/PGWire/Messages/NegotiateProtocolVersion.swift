import NIOCore

/// NegotiateProtocolVersion ('v'): the server does not support the requested minor version
/// or some `_pq_.` protocol options.
public struct NegotiateProtocolVersion: Equatable, Sendable {
    /// The newest minor protocol version the server supports for the requested major version.
    public var newestMinorVersion: Int32
    /// The protocol options the server did not recognize.
    public var unrecognizedOptions: [String]

    /// Creates a NegotiateProtocolVersion message.
    public init(newestMinorVersion: Int32, unrecognizedOptions: [String]) {
        self.newestMinorVersion = newestMinorVersion
        self.unrecognizedOptions = unrecognizedOptions
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> NegotiateProtocolVersion {
        let minor = try payload.pgwireReadInteger(as: Int32.self, "NegotiateProtocolVersion")
        let count = try payload.pgwireReadInteger(as: Int32.self, "NegotiateProtocolVersion")
        guard count >= 0 else {
            throw PGWireError.invalidValue("NegotiateProtocolVersion: negative option count \(count)")
        }
        // Each option is at least its NUL terminator.
        guard Int(count) <= payload.readableBytes else {
            throw PGWireError.truncated("NegotiateProtocolVersion: option count \(count) exceeds the remaining payload")
        }
        var options = [String]()
        options.reserveCapacity(Int(count))
        for _ in 0..<Int(count) {
            options.append(try payload.pgwireReadString("NegotiateProtocolVersion option"))
        }
        try payload.pgwireExpectEnd("NegotiateProtocolVersion")
        return NegotiateProtocolVersion(newestMinorVersion: minor, unrecognizedOptions: options)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.negotiateProtocolVersion.rawValue) { buffer in
            buffer.writeInteger(self.newestMinorVersion)
            buffer.writeInteger(Int32(truncatingIfNeeded: self.unrecognizedOptions.count))
            for option in self.unrecognizedOptions {
                buffer.pgwireWriteString(option)
            }
        }
    }
}
