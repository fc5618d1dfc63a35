import NIOCore

/// PasswordMessage ('p'): a cleartext or MD5-hashed password.
///
/// 'p' is also used for SASL and GSSAPI responses; see ``FrontendMessage/PasswordKind``.
public struct PasswordMessage: Equatable, Sendable {
    /// The password (cleartext, or `"md5" + hex digest`).
    public var password: String

    /// Creates a PasswordMessage.
    public init(password: String) {
        self.password = password
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> PasswordMessage {
        let password = try payload.pgwireReadString("PasswordMessage")
        try payload.pgwireExpectEnd("PasswordMessage")
        return PasswordMessage(password: password)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(FrontendMessageID.password.rawValue) { buffer in
            buffer.pgwireWriteString(self.password)
        }
    }
}

extension PasswordMessage: CustomStringConvertible {
    /// Never reveals the password.
    public var description: String { "PasswordMessage(<redacted>)" }
}
