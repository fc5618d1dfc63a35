/// Server side of one SCRAM-SHA-256 exchange (the proxy authenticating a client). Value type; the proxy drives it.
///
/// Usage: feed the SASLInitialResponse data to `receiveClientFirst(_:)` and send the result
/// as AuthenticationSASLContinue; feed the SASLResponse data to `receiveClientFinal(_:)` and
/// send the result as AuthenticationSASLFinal. Any thrown `SCRAMError` ends the exchange.
public struct SCRAMServerExchange: Sendable {
    private enum State {
        case initial
        case sentServerFirst(clientFirstBare: String, serverFirst: String, combinedNonce: String)
        case done
        case failed
    }

    private let verifier: SCRAMVerifier
    private let serverNonce: String
    /// True for a mock exchange: the proof can never verify.
    private let doomed: Bool
    private var state: State = .initial

    /// The gs2 channel-binding flag the client sent: "n" (no support), "y" (client supports it but
    /// thinks the server does not) or "p" (client requires it). Nil before the client-first-message.
    public private(set) var channelBindingFlag: Character?
    /// The channel binding type the client named with "p=<type>", e.g. "tls-server-end-point".
    public private(set) var channelBindingType: String?
    /// The gs2 header exactly as received (e.g. "n,,"). The client-final "c=" attribute carries
    /// base64(gs2 header + channel binding data), so this is the cbind input to check against.
    public private(set) var gs2Header: String?

    /// Creates an exchange for a known user.
    /// - Parameters:
    ///   - verifier: the user's stored verifier.
    ///   - serverNonce: the server's nonce part; 18 random bytes, base64-encoded, when nil.
    public init(verifier: SCRAMVerifier, serverNonce: String? = nil) {
        self.init(verifier: verifier, serverNonce: serverNonce, doomed: false)
    }

    private init(verifier: SCRAMVerifier, serverNonce: String?, doomed: Bool) {
        self.verifier = verifier
        self.serverNonce = serverNonce ?? SCRAMPrimitives.randomNonce()
        self.doomed = doomed
    }

    /// Used when the user is unknown: produce a plausible server-first from a deterministic fake verifier so unknown users are indistinguishable until the proof fails.
    ///
    /// The salt is derived from the username and the proxy's `secret` (as PostgreSQL derives its
    /// mock salt from the username and a cluster-wide nonce), so repeated attempts for the same
    /// unknown user see the same salt, and a prober cannot tell that the user does not exist.
    /// The iteration count is PostgreSQL's default. `receiveClientFinal(_:)` always throws `.invalidProof`.
    public static func mock(username: String, secret: [UInt8]) -> SCRAMServerExchange {
        let material = Array(username.utf8)
        let salt = Array(SCRAMPrimitives.hmac(key: secret, Array("salt:".utf8) + material)
            .prefix(SCRAMPrimitives.defaultSaltLength))
        let verifier = SCRAMVerifier(
            iterations: SCRAMPrimitives.defaultIterations,
            salt: salt,
            storedKey: SCRAMPrimitives.hmac(key: secret, Array("stored:".utf8) + material),
            serverKey: SCRAMPrimitives.hmac(key: secret, Array("server:".utf8) + material))
        return SCRAMServerExchange(verifier: verifier, serverNonce: nil, doomed: true)
    }

    /// Takes the SASLInitialResponse data (client-first-message), returns server-first-message bytes. Channel binding: accept gs2 "n,," and "y,,"; reject "p=..." with .unsupportedChannelBinding for now (a later TLS issue adds -PLUS; keep the cbind input available so it can be checked).
    ///
    /// An authorization identity ("a=...") and mandatory extensions ("m=...") are rejected as
    /// PostgreSQL does; the username ("n=") is ignored, since PostgreSQL takes the user from the
    /// startup message.
    public mutating func receiveClientFirst(_ message: [UInt8]) throws -> [UInt8] {
        guard case .initial = state else {
            state = .failed
            throw SCRAMError(.malformedMessage, "unexpected client-first-message")
        }
        state = .failed  // until it succeeds
        let what = "client-first-message"
        let text = try SCRAMMessage.text(message, what: what)

        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        var rest = Substring(text)
        guard let flag = rest.first else {
            throw SCRAMError(.malformedMessage, "\(what) is empty")
        }
        rest = rest.dropFirst()
        switch flag {
        case "n", "y":
            guard rest.first == "," else {
                throw SCRAMError(.malformedMessage, "malformed gs2 channel-binding flag in \(what)")
            }
            rest = rest.dropFirst()
        case "p":
            guard rest.first == "=", let comma = rest.firstIndex(of: ",") else {
                throw SCRAMError(.malformedMessage, "malformed gs2 channel-binding flag in \(what)")
            }
            let type = rest[rest.index(after: rest.startIndex)..<comma]
            guard !type.isEmpty,
                  type.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2D || $0 == 0x2E })
            else {
                throw SCRAMError(.malformedMessage, "malformed channel binding type in \(what)")
            }
            channelBindingType = String(type)
            rest = rest[rest.index(after: comma)...]
        default:
            throw SCRAMError(.malformedMessage, "malformed gs2 channel-binding flag in \(what)")
        }
        channelBindingFlag = flag
        if rest.hasPrefix("a=") {
            throw SCRAMError(.malformedMessage, "authorization identity is not supported")
        }
        guard rest.first == "," else {
            throw SCRAMError(.malformedMessage, "malformed gs2 header in \(what)")
        }
        rest = rest.dropFirst()
        let header = String(text[text.startIndex..<rest.startIndex])
        gs2Header = header
        if flag == "p" {
            // A later TLS change adds SCRAM-SHA-256-PLUS; the header above is kept for that check.
            throw SCRAMError(.unsupportedChannelBinding, "channel binding is not supported")
        }

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let clientFirstBare = String(rest)
        let parts = SCRAMMessage.parts(rest)
        if let first = parts.first, first.hasPrefix("m=") {
            throw SCRAMError(.malformedMessage, "client requires an unsupported SCRAM extension")
        }
        guard parts.count >= 2 else {
            throw SCRAMError(.malformedMessage, "\(what) is missing attributes")
        }
        _ = try SCRAMMessage.value(of: parts[0], key: "n", what: what)
        let clientNonce = try SCRAMMessage.value(of: parts[1], key: "r", what: what)
        guard SCRAMPrimitives.isValidNonce(clientNonce) else {
            throw SCRAMError(.malformedMessage, "invalid nonce in \(what)")
        }
        for part in parts.dropFirst(2) where !SCRAMMessage.isAttribute(part) {
            throw SCRAMError(.malformedMessage, "malformed attribute in \(what)")
        }

        let combinedNonce = String(clientNonce) + serverNonce
        let serverFirst = "r=\(combinedNonce),s=\(SCRAMBase64.encode(verifier.salt)),i=\(verifier.iterations)"
        state = .sentServerFirst(clientFirstBare: clientFirstBare, serverFirst: serverFirst, combinedNonce: combinedNonce)
        return Array(serverFirst.utf8)
    }

    /// Takes client-final-message, verifies nonce, channel binding echo (c=biws or c=eSws for "y,,") and proof with constant-time comparison; returns server-final-message bytes ("v=...").
    public mutating func receiveClientFinal(_ message: [UInt8]) throws -> [UInt8] {
        guard case let .sentServerFirst(clientFirstBare, serverFirst, combinedNonce) = state else {
            state = .failed
            throw SCRAMError(.malformedMessage, "unexpected client-final-message")
        }
        state = .failed  // until it succeeds
        let what = "client-final-message"
        let text = try SCRAMMessage.text(message, what: what)

        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let parts = SCRAMMessage.parts(Substring(text))
        guard parts.count >= 3 else {
            throw SCRAMError(.malformedMessage, "\(what) is missing attributes")
        }
        let channelBinding = try SCRAMMessage.value(of: parts[0], key: "c", what: what)
        let nonce = try SCRAMMessage.value(of: parts[1], key: "r", what: what)
        let proofText = try SCRAMMessage.value(of: parts[parts.count - 1], key: "p", what: what)
        for part in parts[2..<(parts.count - 1)] where !SCRAMMessage.isAttribute(part) {
            throw SCRAMError(.malformedMessage, "malformed attribute in \(what)")
        }

        // The channel binding echo must be base64 of the gs2 header we received
        // ("n,," -> "biws", "y,," -> "eSws"); no channel binding data without -PLUS.
        guard let cbindInput = SCRAMBase64.decode(channelBinding) else {
            throw SCRAMError(.malformedMessage, "channel binding attribute is not valid base64")
        }
        guard let header = gs2Header, cbindInput == Array(header.utf8) else {
            throw SCRAMError(.malformedMessage, "unexpected SCRAM channel-binding attribute in \(what)")
        }

        guard constantTimeEquals(Array(nonce.utf8), Array(combinedNonce.utf8)) else {
            throw SCRAMError(.nonceMismatch, "SCRAM nonce mismatch")
        }

        guard let proof = SCRAMBase64.decode(proofText) else {
            throw SCRAMError(.malformedMessage, "client proof is not valid base64")
        }
        guard proof.count == SCRAMPrimitives.keyLength else {
            throw SCRAMError(.malformedMessage, "client proof has the wrong length")
        }

        // AuthMessage = client-first-message-bare "," server-first-message "," client-final-message-without-proof
        let withoutProof = parts[0..<(parts.count - 1)].joined(separator: ",")
        let authMessage = Array("\(clientFirstBare),\(serverFirst),\(withoutProof)".utf8)

        let clientSignature = SCRAMPrimitives.hmac(key: verifier.storedKey, authMessage)
        let clientKey = SCRAMPrimitives.xor(proof, clientSignature)
        let computedStoredKey = SCRAMPrimitives.sha256(clientKey)
        let proofMatches = constantTimeEquals(computedStoredKey, verifier.storedKey)
        guard proofMatches, !doomed else {
            throw SCRAMError(.invalidProof, "password authentication failed")
        }

        let serverSignature = SCRAMPrimitives.hmac(key: verifier.serverKey, authMessage)
        state = .done
        return Array("v=\(SCRAMBase64.encode(serverSignature))".utf8)
    }
}
