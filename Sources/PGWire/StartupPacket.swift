import NIOCore

/// An untyped packet a client may send before the session's typed message flow starts.
public enum StartupPacket: Equatable, Sendable {
    /// A StartupMessage opening a session.
    case startup(StartupMessage)
    /// SSLRequest (code 80877103): the client asks to switch to TLS.
    case sslRequest
    /// GSSENCRequest (code 80877104): the client asks for GSSAPI encryption.
    case gssencRequest
    /// CancelRequest (code 80877102): the connection is used only to cancel a query.
    case cancel(CancelRequest)

    /// The request code of an SSLRequest (`1234 << 16 | 5679`).
    public static let sslRequestCode: UInt32 = 80_877_103
    /// The request code of a GSSENCRequest (`1234 << 16 | 5680`).
    public static let gssencRequestCode: UInt32 = 80_877_104
    /// The request code of a CancelRequest (`1234 << 16 | 5678`).
    public static let cancelRequestCode: UInt32 = CancelRequest.requestCode

    /// Writes the complete packet including its length.
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .startup(let message):
            message.encode(into: &buffer)
        case .sslRequest:
            buffer.writeInteger(Int32(8))
            buffer.writeInteger(Self.sslRequestCode)
        case .gssencRequest:
            buffer.writeInteger(Int32(8))
            buffer.writeInteger(Self.gssencRequestCode)
        case .cancel(let request):
            request.encode(into: &buffer)
        }
    }

    /// Decodes one packet from its body: everything after the 4-byte length field.
    ///
    /// `body` must contain exactly the packet (the stream decoders slice it by length).
    public static func decode(body: inout ByteBuffer) throws -> StartupPacket {
        let code = try body.pgwireReadInteger(as: UInt32.self, "startup packet code")
        switch code {
        case Self.sslRequestCode:
            try body.pgwireExpectEnd("SSLRequest")
            return .sslRequest
        case Self.gssencRequestCode:
            try body.pgwireExpectEnd("GSSENCRequest")
            return .gssencRequest
        case Self.cancelRequestCode:
            let processID = try body.pgwireReadInteger(as: Int32.self, "CancelRequest")
            let secretKey = try body.pgwireReadInteger(as: Int32.self, "CancelRequest")
            try body.pgwireExpectEnd("CancelRequest")
            return .cancel(CancelRequest(processID: processID, secretKey: secretKey))
        default:
            guard code >> 16 == 3 else {
                throw PGWireError.unknownStartupCode("unsupported startup code \(code) (protocol \(code >> 16).\(code & 0xFFFF))")
            }
            return .startup(try StartupMessage.decode(protocolVersion: code, body: &body))
        }
    }
}

/// One unit produced by ``PGFrontendDecoder``: an untyped startup-phase packet or a typed frame.
public enum PGFrontendPart: Equatable, Sendable {
    /// A startup-phase packet.
    case startup(StartupPacket)
    /// A typed message frame.
    case frame(PGFrame)
}
