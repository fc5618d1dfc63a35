import PGWire

/// How the proxy will authenticate one connection, decided when its startup packet arrives.
struct AuthPlan {
    var method: AuthMethod = .scram
    /// The user's SCRAM verifier (also checks cleartext passwords); nil for unknown users.
    var verifier: SCRAMVerifier?
    /// The user's stored MD5 hash (`md5` + hex), for method md5.
    var md5: String?
    /// The connection is encrypted.
    var tls = false
    /// TLS channel binding data: SCRAM-SHA-256-PLUS is offered when present.
    var channelBinding: SCRAMChannelBinding?
    /// Names in the verified client certificate (CN and SAN); nil without one.
    var certificateNames: [String]?
    /// Names that log in as this user by certificate.
    var acceptedCertificateNames: [String] = []
    /// Trust is allowed (configured, and the client is on loopback).
    var trustAllowed = false
    var requireTLS = false
    var jwtVerifier: JWTVerifier?
}

/// The client's side of connection start-up, as a value: startup packet, encryption requests,
/// cancel requests and authentication (SCRAM-SHA-256 with or without channel binding, MD5,
/// cleartext over TLS, client certificates, JWT as the password, trust). Each event returns the
/// action the channel handler runs; nothing here touches a socket.
struct ClientStartupMachine {
    enum Action: Equatable {
        /// Answer an SSLRequest or GSSENCRequest with 'N' and expect a new startup packet.
        case refuseEncryption
        /// Answer an SSLRequest with 'S' and start TLS; a new startup packet follows inside it.
        case acceptEncryption
        /// Forward this cancel request and close.
        case cancel(CancelRequest)
        /// Send these messages and wait for the client's next message.
        case send([BackendMessage])
        /// The client proved who it is; `messages` (SASLFinal, or nothing) go out first.
        case authenticated(user: String, startup: StartupMessage, messages: [BackendMessage], token: VerifiedToken?)
        /// Send the error and close the connection. `authentication` failures are delayed and counted.
        case fail(ProxyError, authentication: Bool)
    }

    private enum State {
        case awaitingStartup
        case awaitingSASLInitial(user: String, startup: StartupMessage, plan: AuthPlan)
        case awaitingSASLResponse(user: String, startup: StartupMessage, exchange: SCRAMServerExchange, known: Bool)
        case awaitingPassword(user: String, startup: StartupMessage, plan: AuthPlan, salt: [UInt8]?)
        case done
    }

    private var state: State = .awaitingStartup
    /// Each encryption request is answered once, as PostgreSQL does.
    private var refusedSSL = false
    private var refusedGSS = false
    private let tlsAvailable: Bool
    private let mockSecret: [UInt8]
    /// The connection is already encrypted: another encryption request is a protocol error.
    private let insideTLS: Bool

    /// - Parameters:
    ///   - tlsAvailable: the proxy has a certificate and the connection is not encrypted yet.
    ///   - mockSecret: per-process secret that makes the fake SCRAM exchange for unknown users
    ///     stable per user name, so probing cannot tell unknown users from wrong passwords.
    init(tlsAvailable: Bool, mockSecret: [UInt8], insideTLS: Bool = false) {
        self.insideTLS = insideTLS
        self.tlsAvailable = tlsAvailable
        self.mockSecret = mockSecret
    }

    /// - Parameters:
    ///   - user: the user the startup packet's user name names (after splitting off a tenant suffix).
    ///   - plan: how to authenticate it (from the rules, the user's entry and the connection).
    mutating func receive(_ packet: StartupPacket, user: String?, plan: AuthPlan) -> Action {
        guard case .awaitingStartup = state else {
            state = .done
            return .fail(.protocolViolation("startup packet received twice"), authentication: false)
        }
        if insideTLS, packet == .sslRequest || packet == .gssencRequest {
            state = .done
            return .fail(.protocolViolation("encryption requested inside TLS"), authentication: false)
        }
        switch packet {
        case .sslRequest:
            guard !refusedSSL else {
                state = .done
                return .fail(.protocolViolation("SSLRequest sent twice"), authentication: false)
            }
            refusedSSL = true
            return tlsAvailable ? .acceptEncryption : .refuseEncryption
        case .gssencRequest:
            guard !refusedGSS else {
                state = .done
                return .fail(.protocolViolation("GSSENCRequest sent twice"), authentication: false)
            }
            refusedGSS = true
            return .refuseEncryption
        case .cancel(let request):
            state = .done
            return .cancel(request)
        case .startup(let startup):
            return start(startup, user: user, plan: plan)
        }
    }

    private mutating func start(_ startup: StartupMessage, user: String?, plan: AuthPlan) -> Action {
        state = .done
        guard startup.protocolVersion >> 16 == 3 else {
            return .fail(.unsupportedProtocol(startup.protocolVersion), authentication: false)
        }
        guard let user, !user.isEmpty else {
            return .fail(.noUserName, authentication: false)
        }
        if let replication = startup.parameters["replication"]?.lowercased(),
           !["false", "0", "off", "no"].contains(replication) {
            return .fail(.replicationUnsupported, authentication: false)
        }
        if plan.requireTLS, !plan.tls {
            return .fail(.tlsRequired(user: startup.user ?? user), authentication: false)
        }
        var preamble: [BackendMessage] = []
        // Protocol 3.x with x > 0, or _pq_ options: tell the client what we speak (3.0, no options).
        let protocolOptions = startup.parameters.keys.filter { $0.hasPrefix("_pq_.") }.sorted()
        if startup.protocolVersion & 0xFFFF != 0 || !protocolOptions.isEmpty {
            preamble.append(.negotiateProtocolVersion(
                NegotiateProtocolVersion(newestMinorVersion: 0, unrecognizedOptions: protocolOptions)))
        }
        let shownName = startup.user ?? user
        switch plan.method {
        case .reject:
            return .fail(.rejectedByRule(user: shownName), authentication: true)
        case .trust:
            guard plan.trustAllowed else { return .fail(.rejectedByRule(user: shownName), authentication: true) }
            return .authenticated(user: user, startup: startup, messages: preamble, token: nil)
        case .cert:
            guard plan.tls, let names = plan.certificateNames,
                  names.contains(where: { plan.acceptedCertificateNames.contains($0) }) else {
                return .fail(.certificateFailed(user: shownName), authentication: true)
            }
            return .authenticated(user: user, startup: startup, messages: preamble, token: nil)
        case .scram:
            var mechanisms = ["SCRAM-SHA-256"]
            if plan.channelBinding != nil { mechanisms.insert("SCRAM-SHA-256-PLUS", at: 0) }
            state = .awaitingSASLInitial(user: user, startup: startup, plan: plan)
            return .send(preamble + [.authentication(.sasl(mechanisms: mechanisms))])
        case .md5:
            let salt = MD5Password.randomSalt()
            state = .awaitingPassword(user: user, startup: startup, plan: plan, salt: salt)
            return .send(preamble + [.authentication(.md5Password(salt: salt))])
        case .password, .jwt:
            // A cleartext secret never crosses an unencrypted connection.
            guard plan.tls else { return .fail(.cleartextNeedsTLS, authentication: false) }
            state = .awaitingPassword(user: user, startup: startup, plan: plan, salt: nil)
            return .send(preamble + [.authentication(.cleartextPassword)])
        }
    }

    mutating func receive(_ frame: PGFrame) -> Action {
        let current = state
        state = .done
        switch current {
        case .awaitingStartup, .done:
            return .fail(.protocolViolation("unexpected message during start-up"), authentication: false)

        case .awaitingSASLInitial(let user, let startup, let plan):
            guard frame.type == FrontendMessageID.password.rawValue,
                  case .saslInitialResponse(let initial)? = try? FrontendMessage.decode(frame, passwordKind: .saslInitial)
            else {
                return .fail(.protocolViolation("expected SASLInitialResponse"), authentication: false)
            }
            let offered = plan.channelBinding != nil ? ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"] : ["SCRAM-SHA-256"]
            guard offered.contains(initial.mechanism) else {
                return .fail(ProxyError(severity: .fatal, sqlState: "28000",
                                        message: "client selected an invalid SASL authentication mechanism",
                                        hint: "Use \(offered.joined(separator: " or ")) ."), authentication: true)
            }
            var exchange = plan.verifier.map { SCRAMServerExchange(verifier: $0, channelBinding: plan.channelBinding) }
                ?? SCRAMServerExchange.mock(username: user, secret: mockSecret, channelBinding: plan.channelBinding)
            do {
                let serverFirst = try exchange.receiveClientFirst(initial.initialResponse ?? [], mechanism: initial.mechanism)
                state = .awaitingSASLResponse(user: user, startup: startup, exchange: exchange, known: plan.verifier != nil)
                return .send([.authentication(.saslContinue(data: serverFirst))])
            } catch {
                return .fail(ProxyError(severity: .fatal, sqlState: "08P01", message: "SCRAM exchange refused",
                                        hint: "The client's SCRAM-SHA-256 message was malformed or its channel binding does not match."),
                             authentication: true)
            }

        case .awaitingSASLResponse(let user, let startup, var exchange, let known):
            guard frame.type == FrontendMessageID.password.rawValue,
                  case .saslResponse(let response)? = try? FrontendMessage.decode(frame, passwordKind: .sasl)
            else {
                return .fail(.protocolViolation("expected SASLResponse"), authentication: false)
            }
            guard let serverFinal = try? exchange.receiveClientFinal(response.data), known else {
                // The name as the client sent it, whether or not a tenant suffix was split off.
                return .fail(.authenticationFailed(user: startup.user ?? user), authentication: true)
            }
            return .authenticated(user: user, startup: startup,
                                  messages: [.authentication(.saslFinal(data: serverFinal))], token: nil)

        case .awaitingPassword(let user, let startup, let plan, let salt):
            guard frame.type == FrontendMessageID.password.rawValue,
                  case .password(let message)? = try? FrontendMessage.decode(frame, passwordKind: .password)
            else {
                return .fail(.protocolViolation("expected PasswordMessage"), authentication: false)
            }
            let failed = ProxyError.authenticationFailed(user: startup.user ?? user)
            switch plan.method {
            case .md5:
                guard let salt, let stored = plan.md5,
                      MD5Password.verify(response: message.password, storedHash: stored, salt: salt)
                else { return .fail(failed, authentication: true) }
                return .authenticated(user: user, startup: startup, messages: [], token: nil)
            case .password:
                // Unknown users cost the same key derivation as known ones: no timing signal.
                let verifier = plan.verifier ?? SCRAMVerifier.make(password: "", salt: Array(mockSecret.prefix(16)), iterations: 4096)
                guard Self.passwordMatches(message.password, verifier: verifier), plan.verifier != nil
                else { return .fail(failed, authentication: true) }
                return .authenticated(user: user, startup: startup, messages: [], token: nil)
            case .jwt:
                guard let jwtVerifier = plan.jwtVerifier, let token = try? jwtVerifier.verifySync(message.password)
                else { return .fail(failed, authentication: true) }
                return .authenticated(user: user, startup: startup, messages: [], token: token)
            default:
                return .fail(failed, authentication: true)
            }
        }
    }

    /// A cleartext password checked against a SCRAM verifier: derive the keys with the verifier's
    /// salt and iterations and compare in constant time.
    static func passwordMatches(_ password: String, verifier: SCRAMVerifier) -> Bool {
        let derived = SCRAMVerifier.make(password: password, salt: verifier.salt, iterations: verifier.iterations)
        return constantTimeEquals(derived.storedKey, verifier.storedKey) && constantTimeEquals(derived.serverKey, verifier.serverKey)
    }
}
