import PGWire

/// The proxy's log-in to the upstream PostgreSQL server, as a value: answers whatever
/// authentication the server asks for (SCRAM-SHA-256, MD5, cleartext) with the proxy's own
/// credentials, collects ParameterStatus and BackendKeyData, and reports ready at the first
/// ReadyForQuery.
struct UpstreamStartupMachine {
    enum Action: Equatable {
        case send(FrontendMessage)
        case wait
        case ready(parameters: [ParameterStatus], key: BackendKeyData?)
        /// The server refused: `serverError` is its ErrorResponse when it sent one.
        case fail(ProxyError, serverError: ErrorResponse?)
    }

    private enum State {
        case authenticating
        case scram(SCRAMClientExchange)
        case scramFinal(SCRAMClientExchange)
        /// SCRAM is complete: only AuthenticationOk may follow (no downgrade to a cleartext request).
        case awaitingOk
        case collecting
        case done
    }

    private var state: State = .authenticating
    private let user: String
    private let password: String?
    private var parameters: [ParameterStatus] = []
    private var key: BackendKeyData?

    static let relayedStartupErrors: Set<String> = ["3D000", "57P03", "57P01"]

    /// Cache of SaltedPassword per (role, salt, iterations), shared by the whole proxy.
    var keyCache: SCRAMKeyCache?

    init(user: String, password: String?) {
        self.user = user
        self.password = password
    }

    mutating func receive(_ message: BackendMessage) -> Action {
        switch (state, message) {
        case (_, .errorResponse(let error)):
            state = .done
            // Authentication-class failures are the operator's problem; don't show the upstream's
            // text (it names the proxy's own role). Others (e.g. database does not exist) go through.
            if let code = error.sqlState, code.hasPrefix("28") {
                return .fail(.upstreamAuthenticationFailed, serverError: nil)
            }
            // Relay only what tells the client something about its own request and names nothing
            // of the proxy's (a missing database, a server still starting or shutting down).
            if let code = error.sqlState, Self.relayedStartupErrors.contains(code) {
                return .fail(.upstreamUnavailable, serverError: error)
            }
            return .fail(.upstreamUnavailable, serverError: nil)

        case (.authenticating, .authentication(.ok)), (.awaitingOk, .authentication(.ok)):
            state = .collecting
            return .wait

        case (.authenticating, .authentication(.cleartextPassword)):
            guard let password else { return missingPassword() }
            return .send(.password(PasswordMessage(password: password)))

        case (.authenticating, .authentication(.md5Password(let salt))):
            guard let password else { return missingPassword() }
            return .send(.password(PasswordMessage(password: MD5Password.response(user: user, password: password, salt: salt))))

        case (.authenticating, .authentication(.sasl(let mechanisms))):
            guard mechanisms.contains("SCRAM-SHA-256") else {
                state = .done
                return .fail(.upstreamProtocol("no supported SASL mechanism offered"), serverError: nil)
            }
            guard let password else { return missingPassword() }
            var exchange = SCRAMClientExchange(password: password)
            if let keyCache {
                let user = self.user
                exchange.saltedPasswordProvider = { salt, iterations, derive in
                    keyCache.saltedPassword(user: user, salt: salt, iterations: iterations, derive: derive)
                }
            }
            let first = exchange.clientFirstMessage()
            state = .scram(exchange)
            return .send(.saslInitialResponse(SASLInitialResponse(mechanism: "SCRAM-SHA-256", initialResponse: first)))

        case (.scram(var exchange), .authentication(.saslContinue(let data))):
            do {
                let final = try exchange.receiveServerFirst(data)
                state = .scramFinal(exchange)
                return .send(.saslResponse(SASLResponse(data: final)))
            } catch {
                state = .done
                return .fail(.upstreamAuthenticationFailed, serverError: nil)
            }

        case (.scramFinal(let exchange), .authentication(.saslFinal(let data))):
            do {
                try exchange.receiveServerFinal(data)
                state = .awaitingOk
                return .wait
            } catch {
                state = .done
                return .fail(.upstreamAuthenticationFailed, serverError: nil)
            }

        case (.collecting, .parameterStatus(let status)):
            parameters.append(status)
            return .wait

        case (.collecting, .backendKeyData(let data)):
            key = data
            return .wait

        case (.collecting, .noticeResponse):
            return .wait

        case (.collecting, .negotiateProtocolVersion):
            return .wait

        case (.collecting, .readyForQuery):
            state = .done
            return .ready(parameters: parameters, key: key)

        default:
            state = .done
            return .fail(.upstreamProtocol("unexpected message during log-in"), serverError: nil)
        }
    }

    private mutating func missingPassword() -> Action {
        state = .done
        return .fail(.upstreamAuthenticationFailed, serverError: nil)
    }
}
