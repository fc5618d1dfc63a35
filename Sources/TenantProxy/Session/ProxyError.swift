import PGWire

/// An error the proxy reports to a client. Knows how to render itself as an ErrorResponse, so every
/// refusal carries a SQLSTATE, a message and a hint. Texts never name hosts, other tenants or secrets.
struct ProxyError: Error, Equatable, CustomStringConvertible {
    enum Severity: String, Equatable {
        case error = "ERROR"
        case fatal = "FATAL"
    }

    var severity: Severity
    var sqlState: String
    var message: String
    var detail: String?
    var hint: String?
    /// Why a log-in was refused, for tenant_proxy_auth_failures_total's `reason` label (a small
    /// fixed set; never sent to the client). nil: "bad_credentials" for 28P01, else "other".
    var failureReason: String?

    var description: String { "\(severity.rawValue) \(sqlState): \(message)" }

    /// The label of tenant_proxy_auth_failures_total for this refusal.
    var metricReason: String {
        failureReason ?? (sqlState == "28P01" ? "bad_credentials" : "other")
    }

    func reason(_ label: String) -> ProxyError {
        var tagged = self
        tagged.failureReason = label
        return tagged
    }

    var errorResponse: ErrorResponse {
        ErrorResponse(severity: severity.rawValue, sqlState: sqlState, message: message, detail: detail, hint: hint)
    }

    // MARK: - Connection and authentication

    /// Same text whether the user is unknown or the password wrong: no user enumeration.
    static func authenticationFailed(user: String) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "28P01",
                   message: "password authentication failed for user \"\(user)\"",
                   hint: "Check the user name and password the proxy was given.").reason("bad_credentials")
    }

    static let noUserName = ProxyError(
        severity: .fatal, sqlState: "28000", message: "no PostgreSQL user name specified in startup packet",
        hint: "Pass a user name, e.g. psql -U NAME.")

    static func unsupportedProtocol(_ version: UInt32) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "0A000",
                   message: "unsupported frontend protocol \(version >> 16).\(version & 0xFFFF): server supports 3.0",
                   hint: "Use a client that speaks protocol 3.0.")
    }

    static let replicationUnsupported = ProxyError(
        severity: .fatal, sqlState: "0A000", message: "replication connections are not supported by tenant-proxy",
        hint: "Connect replication clients to PostgreSQL directly.")

    static let tlsUnavailable = ProxyError(
        severity: .fatal, sqlState: "08P01", message: "the proxy does not offer TLS on this listener",
        hint: "Connect with sslmode=disable or prefer.").reason("tls_required")

    static func protocolViolation(_ what: String) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "08P01", message: "invalid frontend message: \(what)",
                   hint: "The client sent bytes that are not PostgreSQL protocol 3.0; the connection was closed.")
    }

    static let tooManyClients = ProxyError(
        severity: .fatal, sqlState: "53300", message: "sorry, too many clients already",
        hint: "Raise server.max_client_connections or close idle connections.")

    /// As PostgreSQL's idle_in_transaction_session_timeout.
    static func idleTransactionTimeout(seconds: Int) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "25P03", message: "terminating connection due to idle-in-transaction timeout",
                   detail: "The client sent nothing inside its transaction for \(seconds) second\(seconds == 1 ? "" : "s"); "
                       + "the transaction was rolled back.",
                   hint: "Commit or roll back transactions promptly; the limit is pool.idle_transaction_timeout_seconds.")
    }

    /// As PostgreSQL's authentication_timeout ("canceling authentication due to timeout").
    static func loginTimeout(seconds: Int) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "57014", message: "canceling authentication due to timeout",
                   detail: "The log-in did not finish within \(seconds) seconds of connecting.",
                   hint: "Check that the client completes the start-up and authentication exchange; "
                       + "the limit is server.login_timeout_seconds.").reason("login_timeout")
    }

    static let shuttingDown = ProxyError(
        severity: .fatal, sqlState: "57P01", message: "terminating connection because the proxy is shutting down",
        hint: "Reconnect; another proxy instance or the restarted one will serve you.")

    static let killedByAdmin = ProxyError(
        severity: .fatal, sqlState: "57P01", message: "terminating connection due to administrator command",
        hint: "An operator ended this tenant's sessions from the admin console (KILL); reconnect later.")

    static let tenantMoved = ProxyError(
        severity: .fatal, sqlState: "57P01", message: "terminating connection because the tenant moved to another database cluster",
        hint: "Reconnect: the new connection goes to the tenant's new cluster.")

    static let adminOnly = ProxyError(
        severity: .fatal, sqlState: "28000", message: "only admin users may connect to the admin console (database \"proxy\")",
        hint: "List the user in [admin] users of proxy.conf, or connect to another database.").reason("admin_only")

    static let notAcceptingConnections = ProxyError(
        severity: .fatal, sqlState: "57P03", message: "the proxy is shutting down and accepts no new connections",
        hint: "Retry against another proxy instance or after the restart.")

    // MARK: - Upstream

    static let upstreamUnavailable = ProxyError(
        severity: .fatal, sqlState: "08006", message: "could not connect to the upstream database server",
        hint: "The database behind the proxy is unreachable; retry shortly or ask the operator.")

    static let upstreamLost = ProxyError(
        severity: .fatal, sqlState: "08006", message: "connection to the upstream database server was lost",
        hint: "Reconnect; any open transaction was rolled back.")

    static let upstreamAuthenticationFailed = ProxyError(
        severity: .fatal, sqlState: "08006", message: "the proxy could not log in to the upstream database server",
        hint: "The proxy's upstream credentials are misconfigured; ask the operator.")

    static func upstreamProtocol(_ what: String) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "08006", message: "unexpected reply from the upstream database server",
                   detail: what, hint: "Reconnect; if it persists ask the operator.")
    }
}

// MARK: - Tenancy

extension ProxyError {
    static func tenantMissing(user: String, setting: String, separator: String) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "28000", message: "no tenant given for user \"\(user)\"",
                   hint: "Pass options='-c \(setting)=<tenant id>'"
                       + (separator.isEmpty ? "." : ", or connect as \(user)\(separator)<tenant>.")).reason("tenant")
    }

    /// Same text whether the tenant does not exist or the user may not use it: no tenant enumeration.
    static func tenantNotFound(_ identifier: String) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "28000", message: "tenant \"\(identifier)\" not found",
                   hint: "Check the tenant id or name, and that this user may use it.").reason("tenant")
    }

    static func tenantNotActive(_ identifier: String) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "28000", message: "tenant \"\(identifier)\" is not active",
                   hint: "The tenant is suspended; ask the operator.").reason("tenant")
    }

    static let tenantSourcesDisagree = ProxyError(
        severity: .fatal, sqlState: "28000", message: "tenant sources disagree",
        hint: "The startup options, user name and database name name different tenants; give one.").reason("tenant")

    static func contextEscape(_ what: String) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "42501", message: "\(what) is not allowed through tenant-proxy",
                   hint: "Tenant sessions cannot change their role; connect as a global user for that.")
    }

    static func guardRefusal(_ reason: String) -> ProxyError {
        ProxyError(severity: .error, sqlState: "42501", message: reason,
                   hint: "This statement would change or escape the session's tenant context; the session is still usable.")
    }

    static func switchRefused(_ value: String) -> ProxyError {
        ProxyError(severity: .error, sqlState: "42501", message: "tenant \"\(value)\" not found or not permitted",
                   hint: "Set the tenant setting to the id of an active tenant this user may use.")
    }

    static let contextNotApplied = ProxyError(
        severity: .fatal, sqlState: "08006", message: "the tenant context could not be applied on the upstream connection",
        hint: "Reconnect; if it persists ask the operator to check the upstream role's privileges.")

    static let lookupFailed = ProxyError(
        severity: .fatal, sqlState: "08006", message: "the tenant could not be looked up upstream",
        hint: "Reconnect; if it persists ask the operator (is there a tenants table?).")
}

// MARK: - Pooling

extension ProxyError {
    static func poolTimeout(seconds: Int) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "53300",
                   message: "no upstream connection became free within \(seconds) seconds",
                   hint: "The pool is exhausted; retry later, or ask the operator to raise pool.size or tenant_max_connections.")
    }

    static let tenantTooManyClients = ProxyError(
        severity: .fatal, sqlState: "53300", message: "too many connections for this tenant",
        hint: "Close idle connections of this tenant or ask the operator to raise pool.tenant_max_clients.")

    static func sessionStateRefused(_ reason: String) -> ProxyError {
        ProxyError(severity: .error, sqlState: "0A000", message: reason,
                   hint: "The proxy runs in transaction pooling mode: session state would leak to the next client. Use session mode for this.")
    }
}

// MARK: - Authentication methods and TLS

extension ProxyError {
    static func tlsRequired(user: String) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "28000", message: "TLS is required for user \"\(user)\"",
                   hint: "Connect with sslmode=require (or verify-full).").reason("tls_required")
    }

    static let cleartextNeedsTLS = ProxyError(
        severity: .fatal, sqlState: "28000", message: "password and token authentication require TLS",
        hint: "Connect with sslmode=require (or verify-full): a cleartext secret never crosses an unencrypted connection.").reason("tls_required")

    static func rejectedByRule(user: String) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "28000", message: "connection rejected for user \"\(user)\"",
                   hint: "The proxy's authentication rules do not admit this user, database and address.").reason("rejected")
    }

    static func certificateFailed(user: String) -> ProxyError {
        ProxyError(severity: .fatal, sqlState: "28000", message: "certificate authentication failed for user \"\(user)\"",
                   hint: "Present a client certificate signed by the configured CA whose CN or SAN names this user.").reason("certificate")
    }

    static let lockedOut = ProxyError(
        severity: .fatal, sqlState: "28000", message: "too many failed logins from this address",
        hint: "Wait and retry later.").reason("locked_out")

    static let tokenExpired = ProxyError(
        severity: .fatal, sqlState: "28000", message: "token expired",
        hint: "The session's token has expired; reconnect with a fresh token.").reason("token_expired")

    static let directTLSWithoutALPN = ProxyError(
        severity: .fatal, sqlState: "08P01", message: "direct TLS connection without ALPN postgresql",
        hint: "Use a client that negotiates ALPN \"postgresql\" (PostgreSQL 17 libpq).").reason("tls_required")
}
