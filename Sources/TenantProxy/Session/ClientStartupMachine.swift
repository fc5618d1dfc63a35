import PGWire

/// The client's side of connection start-up, as a value: startup packet, encryption requests,
/// cancel requests and SCRAM-SHA-256 authentication. Each event returns the action the channel
/// handler runs; nothing here touches a socket.
struct ClientStartupMachine {
    enum Action: Equatable {
        /// Answer an SSLRequest or GSSENCRequest with 'N' and expect a new startup packet.
        case refuseEncryption
        /// Forward this cancel request and close.
        case cancel(CancelRequest)
        /// Send these messages and wait for the client's next message.
        case send([BackendMessage])
        /// The client proved who it is; `messages` (SASLFinal, or nothing for trust) go out first.
        case authenticated(user: String, startup: StartupMessage, messages: [BackendMessage])
        /// Send the error and close the connection.
        case fail(ProxyError)
    }

    private enum State {
        case awaitingStartup
        case awaitingSASLInitial(user: String, startup: StartupMessage, verifier: SCRAMVerifier?)
        case awaitingSASLResponse(user: String, startup: StartupMessage, exchange: SCRAMServerExchange, known: Bool)
        case done
    }

    private var state: State = .awaitingStartup
    /// Each encryption request is answered once, as PostgreSQL does.
    private var refusedSSL = false
    private var refusedGSS = false
    private let trust: Bool
    private let mockSecret: [UInt8]

    /// - Parameters:
    ///   - trust: the client may log in without a password (configured and from loopback only).
    ///   - mockSecret: per-process secret that makes the fake SCRAM exchange for unknown users
    ///     stable per user name, so probing cannot tell unknown users from wrong passwords.
    init(trust: Bool, mockSecret: [UInt8]) {
        self.trust = trust
        self.mockSecret = mockSecret
    }

    /// - Parameters:
    ///   - user: the user the startup packet's user name names (after splitting off a tenant suffix).
    ///   - verifier: that user's SCRAM verifier, nil when the user is unknown.
    mutating func receive(_ packet: StartupPacket, user: String?, verifier: SCRAMVerifier?) -> Action {
        guard case .awaitingStartup = state else {
            state = .done
            return .fail(.protocolViolation("startup packet received twice"))
        }
        switch packet {
        case .sslRequest:
            guard !refusedSSL else {
                state = .done
                return .fail(.protocolViolation("SSLRequest sent twice"))
            }
            refusedSSL = true
            return .refuseEncryption
        case .gssencRequest:
            guard !refusedGSS else {
                state = .done
                return .fail(.protocolViolation("GSSENCRequest sent twice"))
            }
            refusedGSS = true
            return .refuseEncryption
        case .cancel(let request):
            state = .done
            return .cancel(request)
        case .startup(let startup):
            return start(startup, user: user, verifier: verifier)
        }
    }

    private mutating func start(_ startup: StartupMessage, user: String?, verifier: SCRAMVerifier?) -> Action {
        guard startup.protocolVersion >> 16 == 3 else {
            state = .done
            return .fail(.unsupportedProtocol(startup.protocolVersion))
        }
        guard let user, !user.isEmpty else {
            state = .done
            return .fail(.noUserName)
        }
        if let replication = startup.parameters["replication"], replication.lowercased() != "false", replication != "0",
           replication.lowercased() != "off", replication.lowercased() != "no" {
            state = .done
            return .fail(.replicationUnsupported)
        }
        var preamble: [BackendMessage] = []
        // Protocol 3.x with x > 0, or _pq_ options: tell the client what we speak (3.0, no options).
        let protocolOptions = startup.parameters.keys.filter { $0.hasPrefix("_pq_.") }.sorted()
        if startup.protocolVersion & 0xFFFF != 0 || !protocolOptions.isEmpty {
            preamble.append(.negotiateProtocolVersion(
                NegotiateProtocolVersion(newestMinorVersion: 0, unrecognizedOptions: protocolOptions)))
        }
        if trust {
            state = .done
            return .authenticated(user: user, startup: startup, messages: preamble)
        }
        state = .awaitingSASLInitial(user: user, startup: startup, verifier: verifier)
        return .send(preamble + [.authentication(.sasl(mechanisms: ["SCRAM-SHA-256"]))])
    }

    mutating func receive(_ frame: PGFrame) -> Action {
        switch state {
        case .awaitingStartup, .done:
            state = .done
            return .fail(.protocolViolation("unexpected message during start-up"))

        case .awaitingSASLInitial(let user, let startup, let verifier):
            guard frame.type == FrontendMessageID.password.rawValue,
                  case .saslInitialResponse(let initial)? = try? FrontendMessage.decode(frame, passwordKind: .saslInitial)
            else {
                state = .done
                return .fail(.protocolViolation("expected SASLInitialResponse"))
            }
            guard initial.mechanism == "SCRAM-SHA-256" else {
                state = .done
                return .fail(ProxyError(severity: .fatal, sqlState: "28000",
                                        message: "client selected an invalid SASL authentication mechanism",
                                        hint: "Use SCRAM-SHA-256."))
            }
            var exchange = verifier.map { SCRAMServerExchange(verifier: $0) }
                ?? SCRAMServerExchange.mock(username: user, secret: mockSecret)
            do {
                let serverFirst = try exchange.receiveClientFirst(initial.initialResponse ?? [])
                state = .awaitingSASLResponse(user: user, startup: startup, exchange: exchange, known: verifier != nil)
                return .send([.authentication(.saslContinue(data: serverFirst))])
            } catch {
                state = .done
                return .fail(ProxyError(severity: .fatal, sqlState: "08P01", message: "malformed SCRAM-SHA-256 message",
                                        hint: "The client's SCRAM exchange could not be parsed."))
            }

        case .awaitingSASLResponse(let user, let startup, var exchange, let known):
            state = .done
            guard frame.type == FrontendMessageID.password.rawValue,
                  case .saslResponse(let response)? = try? FrontendMessage.decode(frame, passwordKind: .sasl)
            else {
                return .fail(.protocolViolation("expected SASLResponse"))
            }
            guard let serverFinal = try? exchange.receiveClientFinal(response.data), known else {
                // The name as the client sent it, whether or not a tenant suffix was split off.
                return .fail(.authenticationFailed(user: startup.user ?? user))
            }
            return .authenticated(user: user, startup: startup,
                                  messages: [.authentication(.saslFinal(data: serverFinal))])
        }
    }
}
