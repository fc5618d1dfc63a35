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
    /// Set when the server offered SCRAM-SHA-256-PLUS (the connection is TLS).
    private let channelBinding: SCRAMChannelBinding?
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
        self.init(verifier: verifier, serverNonce: serverNonce, doomed: false, channelBinding: nil)
    }

    /// Creates an exchange for a known user on a connection whose channel binding is
    /// `channelBinding` (nil: plain TCP, SCRAM-SHA-256-PLUS not offered).
    public init(verifier: SCRAMVerifier, channelBinding: SCRAMChannelBinding?, serverNonce: String? = nil) {
        self.init(verifier: verifier, serverNonce: serverNonce, doomed: false, channelBinding: channelBinding)
    }

    private init(verifier: SCRAMVerifier, serverNonce: String?, doomed: Bool, channelBinding: SCRAMChannelBinding?) {
        self.channelBinding = channelBinding
        self.verifier = verifier
        self.serverNonce = serverNonce ?? SCRAMPrimitives.randomNonce()
        self.doomed = doomed
    }

    /// A process-wide secret for `mock(username:secret:)`, made once at start.
    public static func makeMockSecret() -> [UInt8] {
        SCRAMPrimitives.randomBytes(32)
    }

    /// Used when the user is unknown: produce a plausible server-first from a deterministic fake verifier so unknown users are indistinguishable until the proof fails.
    ///
    /// The salt is derived from the username and the proxy's `secret` (as PostgreSQL derives its
    /// mock salt from the username and a cluster-wide nonce), so repeated attempts for the same
    /// unknown user see the same salt, and a prober cannot tell that the user does not exist.
    /// The iteration count is PostgreSQL's default. `receiveClientFinal(_:)` always throws `.invalidProof`.
    public static func mock(username: String, secret: [UInt8]) -> SCRAMServerExchange {
        mock(username: username, secret: secret, channelBinding: nil)
    }

    /// `mock(username:secret:)` on a connection with `channelBinding` (nil: plain TCP), so the
    /// mechanism and gs2 checks are those of a real exchange; the proof still never verifies
    /// (a wrong "c=" fails with `.channelBindingMismatch` first, as it would for a known user).
    public static func mock(username: String, secret: [UInt8], channelBinding: SCRAMChannelBinding?) -> SCRAMServerExchange {
        let material = Array(username.utf8)
        let salt = Array(SCRAMPrimitives.hmac(key: secret, Array("salt:".utf8) + material)
            .prefix(SCRAMPrimitives.defaultSaltLength))
        let verifier = SCRAMVerifier(
            iterations: SCRAMPrimitives.defaultIterations,
            salt: salt,
            storedKey: SCRAMPrimitives.hmac(key: secret, Array("stored:".utf8) + material),
            serverKey: SCRAMPrimitives.hmac(key: secret, Array("server:".utf8) + material))
        return SCRAMServerExchange(verifier: verifier, serverNonce: nil, doomed: true, channelBinding: channelBinding)
    }

    /// Takes the SASLInitialResponse data (client-first-message) of mechanism SCRAM-SHA-256,
    /// returns server-first-message bytes. Same as `receiveClientFirst(_:mechanism:)` with
    /// "SCRAM-SHA-256": gs2 "n,," is accepted, "y,," only when this exchange has no channel
    /// binding, "p=..." never.
    ///
    /// An authorization identity ("a=...") and mandatory extensions ("m=...") are rejected as
    /// PostgreSQL does; the username ("n=") is ignored, since PostgreSQL takes the user from the
    /// startup message.
    public mutating func receiveClientFirst(_ message: [UInt8]) throws -> [UInt8] {
        try receiveClientFirst(message, mechanism: "SCRAM-SHA-256")
    }

    /// Takes the client-first-message of the SASLInitialResponse for `mechanism` (the mechanism
    /// the client selected there), returns server-first-message bytes.
    ///
    /// As PostgreSQL (auth-scram.c): "SCRAM-SHA-256-PLUS" is valid only when this exchange has
    /// channel binding and must come with gs2 "p=<type>" of that binding's type (another type:
    /// `.unsupportedChannelBinding`); "SCRAM-SHA-256" must come with "n" or "y". Without channel
    /// binding, "p=..." is `.unsupportedChannelBinding`. With it, "y" (the client supports binding
    /// but thinks the server does not, i.e. -PLUS was stripped from the offer) is refused as a
    /// downgrade with `.channelBindingMismatch`, while "n" (no client support) is allowed.
    /// Any other mechanism is `.malformedMessage`.
    public mutating func receiveClientFirst(_ message: [UInt8], mechanism: String) throws -> [UInt8] {
        guard case .initial = state else {
            state = .failed
            throw SCRAMError(.malformedMessage, "unexpected client-first-message")
        }
        state = .failed  // until it succeeds
        switch mechanism {
        case SCRAMMechanism.scramSHA256:
            break
        case SCRAMMechanism.scramSHA256Plus:
            guard channelBinding != nil else {
                throw SCRAMError(.unsupportedChannelBinding, "SCRAM-SHA-256-PLUS is not offered on this connection")
            }
        default:
            throw SCRAMError(.malformedMessage, "unsupported SASL mechanism")
        }
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
        try checkChannelBindingNegotiation(flag: flag, mechanism: mechanism)

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

    /// PostgreSQL's rules (auth-scram.c, read_client_first_message) for the gs2 channel-binding
    /// flag against the mechanism the client chose and what this connection offers.
    private func checkChannelBindingNegotiation(flag: Character, mechanism: String) throws {
        let plus = mechanism == SCRAMMechanism.scramSHA256Plus
        switch flag {
        case "n":
            // The client does not support channel binding (or chose not to use it): allowed.
            guard !plus else {
                throw SCRAMError(.malformedMessage, "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data")
            }
        case "y":
            guard !plus else {
                throw SCRAMError(.malformedMessage, "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data")
            }
            // The client supports channel binding and thinks the server does not: since this
            // server offered -PLUS, someone removed it from the mechanism list (a downgrade).
            guard channelBinding == nil else {
                throw SCRAMError(.channelBindingMismatch, "SCRAM channel binding negotiation error: the client supports channel binding but thinks the server does not")
            }
        default:  // "p"
            guard let binding = channelBinding else {
                throw SCRAMError(.unsupportedChannelBinding, "channel binding is not supported on this connection")
            }
            guard plus else {
                throw SCRAMError(.malformedMessage, "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data")
            }
            guard channelBindingType == binding.type else {
                throw SCRAMError(.unsupportedChannelBinding, "unsupported SCRAM channel-binding type")
            }
        }
    }

    /// Takes client-final-message, verifies nonce, channel binding (c= is base64 of the gs2 header,
    /// "biws" / "eSws", followed by the connection's binding data with "p=") and proof with
    /// constant-time comparison; returns server-final-message bytes ("v=...").
    ///
    /// - Throws: `.channelBindingMismatch` when -PLUS binding data differs from this connection's,
    ///   `.invalidProof` on a wrong password or a mock exchange.
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

        // The channel binding attribute is base64(gs2 header + channel binding data): with
        // "p=<type>" the connection's binding data follows the header; with "n,," / "y,," nothing
        // does ("biws" / "eSws"), and the flag must be the one the client sent first.
        guard let cbindInput = SCRAMBase64.decode(channelBinding), let header = gs2Header else {
            throw SCRAMError(.malformedMessage, "channel binding attribute is not valid base64")
        }
        if channelBindingFlag == "p", let binding = self.channelBinding {
            guard constantTimeEquals(cbindInput, Array(header.utf8) + binding.data) else {
                throw SCRAMError(.channelBindingMismatch, "SCRAM channel binding check failed")
            }
        } else {
            guard cbindInput == Array(header.utf8) else {
                throw SCRAMError(.malformedMessage, "unexpected SCRAM channel-binding attribute in \(what)")
            }
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
        // (the message up to the comma before the proof, which is its last attribute)
        let withoutProof = message[..<(message.lastIndex(of: UInt8(ascii: ",")) ?? message.endIndex)]
        var authMessage: [UInt8] = []
        authMessage.reserveCapacity(clientFirstBare.utf8.count + serverFirst.utf8.count + withoutProof.count + 2)
        authMessage += clientFirstBare.utf8
        authMessage.append(UInt8(ascii: ","))
        authMessage += serverFirst.utf8
        authMessage.append(UInt8(ascii: ","))
        authMessage += withoutProof

        let clientSignature = verifier.macs.clientSignature(authMessage)
        let clientKey = SCRAMPrimitives.xor(proof, clientSignature)
        let computedStoredKey = SCRAMPrimitives.sha256(clientKey)
        let proofMatches = constantTimeEquals(computedStoredKey, verifier.storedKey)
        guard proofMatches, !doomed else {
            throw SCRAMError(.invalidProof, "password authentication failed")
        }

        let serverSignature = verifier.macs.serverSignature(authMessage)
        state = .done
        return Array("v=\(SCRAMBase64.encode(serverSignature))".utf8)
    }
}
