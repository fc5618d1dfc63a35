/// Client side (the proxy authenticating to the upstream Postgres).
///
/// Usage: send `clientFirstMessage()` in SASLInitialResponse with mechanism `mechanism`;
/// feed AuthenticationSASLContinue data to `receiveServerFirst(_:)` and send the result in
/// SASLResponse; feed AuthenticationSASLFinal data to `receiveServerFinal(_:)`, which throws
/// unless the server proved it knows the password.
///
/// Without channel binding the gs2 header is "n,," and the mechanism "SCRAM-SHA-256". With a
/// channel binding (the upstream connection is TLS and the server offered SCRAM-SHA-256-PLUS)
/// it is "p=<type>,," and "SCRAM-SHA-256-PLUS", and "c=" carries the binding data, so the
/// exchange only succeeds if the server computed the same data (no man in the middle).
public struct SCRAMClientExchange: Sendable {
    /// The largest iteration count accepted from a server. PostgreSQL's default is 4096;
    /// a larger count only costs CPU, so a hostile or misconfigured server cannot stall us.
    static let maximumIterations = 1_000_000

    private let gs2Header: String
    private let channelBinding: SCRAMChannelBinding?
    private let password: [UInt8]
    private let clientNonce: String
    private let clientFirstBare: String
    /// ServerSignature expected in the server-final-message, known once the server-first arrives.
    private var expectedServerSignature: [UInt8]?
    /// Derives SaltedPassword for (salt, iterations); the caller may cache it, since a server
    /// keeps its salt, so that each new upstream connection does not pay for PBKDF2 again.
    public var saltedPasswordProvider: ((_ salt: [UInt8], _ iterations: Int, _ derive: () -> [UInt8]) -> [UInt8])?

    /// Creates an exchange for `password`.
    /// - Parameters:
    ///   - password: the clear-text password, prepared as PostgreSQL does (ASCII as is, otherwise raw UTF-8).
    ///   - clientNonce: the client nonce; 18 random bytes, base64-encoded, when nil.
    public init(password: String, clientNonce: String? = nil) {
        self.init(username: "", password: password, clientNonce: clientNonce, channelBinding: nil)
    }

    /// Creates an exchange for `password` that binds to the TLS channel with `channelBinding`
    /// (SCRAM-SHA-256-PLUS), or uses none when it is nil (SCRAM-SHA-256, "n,,").
    /// - Parameters:
    ///   - password: the clear-text password, prepared as PostgreSQL does.
    ///   - clientNonce: the client nonce; 18 random bytes, base64-encoded, when nil.
    ///   - channelBinding: the upstream connection's binding; for "tls-server-end-point" the hash
    ///     of the certificate the server presented. Only pass it if the server offered -PLUS.
    public init(password: String, clientNonce: String? = nil, channelBinding: SCRAMChannelBinding?) {
        self.init(username: "", password: password, clientNonce: clientNonce, channelBinding: channelBinding)
    }

    /// As `init(password:clientNonce:channelBinding:)`, with a username for the "n=" attribute
    /// (PostgreSQL ignores it; used by tests to reproduce RFC vectors).
    init(username: String, password: String, clientNonce: String?, channelBinding: SCRAMChannelBinding? = nil) {
        self.channelBinding = channelBinding
        self.gs2Header = channelBinding.map { "p=\($0.type),," } ?? "n,,"
        self.password = SCRAMPrimitives.normalize(password: password)
        self.clientNonce = clientNonce ?? SCRAMPrimitives.randomNonce()
        // saslname: "," and "=" are escaped as "=2C" and "=3D".
        var saslName = ""
        for character in username {
            switch character {
            case "=": saslName += "=3D"
            case ",": saslName += "=2C"
            default: saslName.append(character)
            }
        }
        self.clientFirstBare = "n=\(saslName),r=\(self.clientNonce)"
    }

    /// The SASL mechanism to name in SASLInitialResponse: "SCRAM-SHA-256-PLUS" with channel
    /// binding, "SCRAM-SHA-256" without.
    public var mechanism: String {
        channelBinding != nil ? SCRAMMechanism.scramSHA256Plus : SCRAMMechanism.scramSHA256
    }

    /// "n,,n=,r=<nonce>", or "p=<type>,,n=,r=<nonce>" with channel binding (PostgreSQL ignores the
    /// username; an empty n= is sent, like libpq).
    public mutating func clientFirstMessage() -> [UInt8] {
        Array((gs2Header + clientFirstBare).utf8)
    }

    /// Takes the server-first-message and returns the client-final-message.
    ///
    /// Validates that the server nonce extends ours, the salt is base64, and the iteration count
    /// is between 1 and a sane upper bound (1,000,000). Throws `.serverError` on "e=...".
    public mutating func receiveServerFirst(_ message: [UInt8]) throws -> [UInt8] {
        guard expectedServerSignature == nil else {
            throw SCRAMError(.malformedMessage, "unexpected server-first-message")
        }
        let what = "server-first-message"
        let text = try SCRAMMessage.text(message, what: what)
        if text.hasPrefix("e=") {
            throw SCRAMError(.serverError, "server error: \(text.dropFirst(2))")
        }
        // server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count ["," extensions]
        let parts = SCRAMMessage.parts(Substring(text))
        if let first = parts.first, first.hasPrefix("m=") {
            throw SCRAMError(.malformedMessage, "server requires an unsupported SCRAM extension")
        }
        guard parts.count >= 3 else {
            throw SCRAMError(.malformedMessage, "\(what) is missing attributes")
        }
        let nonce = try SCRAMMessage.value(of: parts[0], key: "r", what: what)
        let saltText = try SCRAMMessage.value(of: parts[1], key: "s", what: what)
        let iterationText = try SCRAMMessage.value(of: parts[2], key: "i", what: what)
        for part in parts.dropFirst(3) where !SCRAMMessage.isAttribute(part) {
            throw SCRAMError(.malformedMessage, "malformed attribute in \(what)")
        }

        guard SCRAMPrimitives.isValidNonce(nonce) else {
            throw SCRAMError(.malformedMessage, "invalid nonce in \(what)")
        }
        guard nonce.count > clientNonce.count, nonce.hasPrefix(clientNonce) else {
            throw SCRAMError(.nonceMismatch, "server nonce does not extend the client nonce")
        }
        guard let salt = SCRAMBase64.decode(saltText), !salt.isEmpty else {
            throw SCRAMError(.malformedMessage, "salt in \(what) is not valid base64")
        }
        guard !iterationText.isEmpty, iterationText.count <= 10,
              iterationText.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let iterations = Int(iterationText)
        else {
            throw SCRAMError(.malformedMessage, "iteration count in \(what) is not a number")
        }
        guard iterations >= 1, iterations <= Self.maximumIterations else {
            throw SCRAMError(.malformedMessage, "iteration count \(iterations) in \(what) is out of range 1...\(Self.maximumIterations)")
        }

        // c= base64(gs2 header + channel binding data): "biws" for "n,,".
        let cbindInput = Array(gs2Header.utf8) + (channelBinding?.data ?? [])
        let clientFinalWithoutProof = "c=\(SCRAMBase64.encode(cbindInput)),r=\(nonce)"
        let authMessage = Array("\(clientFirstBare),\(text),\(clientFinalWithoutProof)".utf8)

        let password = self.password
        let derive = { SCRAMPrimitives.saltedPassword(password, salt: salt, iterations: iterations) }
        let salted = saltedPasswordProvider?(salt, iterations, derive) ?? derive()
        let clientKey = SCRAMPrimitives.clientKey(saltedPassword: salted)
        let storedKey = SCRAMPrimitives.sha256(clientKey)
        let clientSignature = SCRAMPrimitives.hmac(key: storedKey, authMessage)
        let proof = SCRAMPrimitives.xor(clientKey, clientSignature)
        let serverKey = SCRAMPrimitives.serverKey(saltedPassword: salted)
        expectedServerSignature = SCRAMPrimitives.hmac(key: serverKey, authMessage)

        return Array("\(clientFinalWithoutProof),p=\(SCRAMBase64.encode(proof))".utf8)
    }

    /// Verifies the server-final-message "v=<ServerSignature>" in constant time.
    ///
    /// - Throws: `.serverError` on "e=<error>", `.invalidServerSignature` on a wrong signature,
    ///   `.malformedMessage` on anything else or when called before `receiveServerFirst(_:)`.
    public func receiveServerFinal(_ message: [UInt8]) throws {
        guard let expected = expectedServerSignature else {
            throw SCRAMError(.malformedMessage, "unexpected server-final-message")
        }
        let what = "server-final-message"
        let text = try SCRAMMessage.text(message, what: what)
        let parts = SCRAMMessage.parts(Substring(text))
        let first = parts[0]
        if first.hasPrefix("e=") {
            throw SCRAMError(.serverError, "server error: \(first.dropFirst(2))")
        }
        let signatureText = try SCRAMMessage.value(of: first, key: "v", what: what)
        for part in parts.dropFirst() where !SCRAMMessage.isAttribute(part) {
            throw SCRAMError(.malformedMessage, "malformed attribute in \(what)")
        }
        guard let signature = SCRAMBase64.decode(signatureText) else {
            throw SCRAMError(.malformedMessage, "server signature is not valid base64")
        }
        guard constantTimeEquals(signature, expected) else {
            throw SCRAMError(.invalidServerSignature, "server signature does not match")
        }
    }
}
