import NIOCore

/// Authentication ('R'): the server's authentication request or result.
///
/// The payload starts with an `Int32` code selecting the variant.
public enum Authentication: Equatable, Sendable {
    /// AuthenticationOk (0).
    case ok
    /// AuthenticationKerberosV5 (2).
    case kerberosV5
    /// AuthenticationCleartextPassword (3).
    case cleartextPassword
    /// AuthenticationMD5Password (5) with its 4-byte salt.
    ///
    /// `salt` must hold exactly 4 bytes; when encoding, shorter values are zero-padded and
    /// longer ones truncated so framing stays intact.
    case md5Password(salt: [UInt8])
    /// AuthenticationSCMCredential (6).
    case scmCredential
    /// AuthenticationGSS (7).
    case gss
    /// AuthenticationGSSContinue (8) with GSSAPI or SSPI data.
    case gssContinue(data: [UInt8])
    /// AuthenticationSSPI (9).
    case sspi
    /// AuthenticationSASL (10) with the offered mechanisms, in server preference order.
    case sasl(mechanisms: [String])
    /// AuthenticationSASLContinue (11) with mechanism-specific data.
    case saslContinue(data: [UInt8])
    /// AuthenticationSASLFinal (12) with mechanism-specific outcome data.
    case saslFinal(data: [UInt8])

    /// The `Int32` code of this variant on the wire.
    public var code: Int32 {
        switch self {
        case .ok: return 0
        case .kerberosV5: return 2
        case .cleartextPassword: return 3
        case .md5Password: return 5
        case .scmCredential: return 6
        case .gss: return 7
        case .gssContinue: return 8
        case .sspi: return 9
        case .sasl: return 10
        case .saslContinue: return 11
        case .saslFinal: return 12
        }
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> Authentication {
        let code = try payload.pgwireReadInteger(as: Int32.self, "Authentication")
        let result: Authentication
        switch code {
        case 0: result = .ok
        case 2: result = .kerberosV5
        case 3: result = .cleartextPassword
        case 5: result = .md5Password(salt: try payload.pgwireReadBytes(length: 4, "AuthenticationMD5Password salt"))
        case 6: result = .scmCredential
        case 7: result = .gss
        case 8: result = .gssContinue(data: payload.readBytes(length: payload.readableBytes)!)
        case 9: result = .sspi
        case 10:
            var mechanisms = [String]()
            while true {
                guard payload.readableBytes > 0 else {
                    throw PGWireError.missingTerminator("AuthenticationSASL: mechanism list is missing its terminating NUL")
                }
                let mechanism = try payload.pgwireReadString("AuthenticationSASL mechanism")
                if mechanism.isEmpty { break }
                mechanisms.append(mechanism)
            }
            result = .sasl(mechanisms: mechanisms)
        case 11: result = .saslContinue(data: payload.readBytes(length: payload.readableBytes)!)
        case 12: result = .saslFinal(data: payload.readBytes(length: payload.readableBytes)!)
        default:
            throw PGWireError.invalidValue("Authentication: unknown authentication code \(code)")
        }
        try payload.pgwireExpectEnd("Authentication")
        return result
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.authentication.rawValue) { buffer in
            buffer.writeInteger(self.code)
            switch self {
            case .ok, .kerberosV5, .cleartextPassword, .scmCredential, .gss, .sspi:
                break
            case .md5Password(let salt):
                for index in 0..<4 {
                    buffer.writeInteger(index < salt.count ? salt[index] : 0)
                }
            case .gssContinue(let data), .saslContinue(let data), .saslFinal(let data):
                buffer.writeBytes(data)
            case .sasl(let mechanisms):
                for mechanism in mechanisms where !mechanism.isEmpty {
                    buffer.pgwireWriteString(mechanism)
                }
                buffer.writeInteger(UInt8(0))
            }
        }
    }
}
