import NIOCore

/// SASLInitialResponse ('p'): the selected SASL mechanism and the client's first message.
public struct SASLInitialResponse: Equatable, Sendable {
    /// The selected mechanism, e.g. `SCRAM-SHA-256`.
    public var mechanism: String
    /// The mechanism-specific initial response; nil is sent as length -1.
    public var initialResponse: [UInt8]?

    /// Creates a SASLInitialResponse.
    public init(mechanism: String, initialResponse: [UInt8]?) {
        self.mechanism = mechanism
        self.initialResponse = initialResponse
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> SASLInitialResponse {
        let mechanism = try payload.pgwireReadString("SASLInitialResponse mechanism")
        let length = try payload.pgwireReadInteger(as: Int32.self, "SASLInitialResponse")
        let response: [UInt8]?
        if length == -1 {
            response = nil
        } else if length < 0 {
            throw PGWireError.invalidValue("SASLInitialResponse: response length \(length) is negative")
        } else {
            response = try payload.pgwireReadBytes(length: Int(length), "SASLInitialResponse")
        }
        try payload.pgwireExpectEnd("SASLInitialResponse")
        return SASLInitialResponse(mechanism: mechanism, initialResponse: response)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(FrontendMessageID.password.rawValue) { buffer in
            buffer.pgwireWriteString(self.mechanism)
            if let response = self.initialResponse {
                buffer.writeInteger(Int32(truncatingIfNeeded: response.count))
                buffer.writeBytes(response)
            } else {
                buffer.writeInteger(Int32(-1))
            }
        }
    }
}

extension SASLInitialResponse: CustomStringConvertible {
    /// Never reveals the response bytes.
    public var description: String {
        "SASLInitialResponse(mechanism: \(self.mechanism), response: \(self.initialResponse.map { "\($0.count) bytes" } ?? "nil"))"
    }
}
