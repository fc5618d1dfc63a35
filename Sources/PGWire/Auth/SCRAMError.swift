/// An error raised while parsing or verifying a SCRAM-SHA-256 exchange or verifier.
///
/// Messages describe what was wrong with a message's structure; they never
/// include passwords, keys, proofs or signatures.
public struct SCRAMError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The category of a SCRAM failure.
    public enum Code: Sendable {
        /// A message was empty, not UTF-8, missing attributes, out of order, or had bad base64.
        case malformedMessage
        /// The peer asked for a channel binding type this side does not support (gs2 "p=...").
        case unsupportedChannelBinding
        /// The client's channel binding data ("c=" of a SCRAM-SHA-256-PLUS exchange) does not match
        /// this connection's: the client is not talking to us directly (a man in the middle).
        case channelBindingMismatch
        /// The nonce in a later message does not match (or extend) the negotiated nonce.
        case nonceMismatch
        /// The client's proof did not verify: wrong password, or a mock exchange for an unknown user.
        case invalidProof
        /// The server's signature ("v=") did not verify: the server does not know the password.
        case invalidServerSignature
        /// A stored verifier string could not be parsed.
        case invalidVerifier
        /// The server ended the exchange with "e=<server-error-value>".
        case serverError
    }

    /// The category of this error.
    public let code: Code
    /// A human-readable explanation, free of secrets.
    public let message: String

    /// Creates an error with a code and a secret-free message.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String {
        "SCRAMError.\(code): \(message)"
    }
}

/// Compares two byte arrays in time that depends only on their lengths, not their contents.
///
/// Arrays of different lengths compare unequal at once: lengths are not secret here
/// (keys, proofs and MD5 responses have fixed lengths).
public func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for i in 0..<a.count {
        difference |= a[i] ^ b[i]
    }
    return difference == 0
}
