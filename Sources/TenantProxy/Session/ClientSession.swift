import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PGWire

/// One client connection and the upstream connection serving it. In session pooling the client
/// has its own upstream connection for its life; in transaction pooling one is borrowed from the
/// loop's `UpstreamPool` for each transaction and given back at ReadyForQuery idle. Both channels
/// live on the same EventLoop, so this class is only touched from that loop and needs no lock.
///
/// Start-up and authentication are decided by `ClientStartupMachine` and `UpstreamStartupMachine`,
/// the tenant by `TenantResolver`. Before any client statement runs upstream, the connection
/// carries the tenant context (`ContextInjector`); client messages pass the guard; frames are
/// relayed as slices of the bytes read, without re-encoding.
final class ClientSession: UpstreamConnectionOwner {
    private enum Phase {
        case startup
        case connectingUpstream
        case relaying
        /// The admin console (database "proxy"): no upstream, commands answered by the proxy.
        case admin
        case closed

        var loggingIn: Bool { self == .startup || self == .connectingUpstream }
    }

    /// What the proxy owes the client when the upstream's next ReadyForQuery arrives: one entry
    /// per message that ends a query cycle (Query, Sync, FunctionCall), in order.
    /// (A plain value, so that ReplyQueue's items stay trivial to copy on the relay path.)
    private enum CycleNote {
        case plain
        /// The client's message was answered by the proxy and replaced by a Sync: send the
        /// messages kept in `answers` (first in line) before the ReadyForQuery.
        case answered
        /// The cycle ran RESET ALL / DISCARD ALL: re-apply the context before anything else runs.
        case reapply
        /// Both: the proxy refused a message of a batch whose RESET ALL / DISCARD ALL had gone
        /// upstream before it. The answer before the ReadyForQuery, then the context again.
        case answeredThenReapply
    }

    /// What executing a client's prepared statement does besides its result: a Bind in a later
    /// batch runs it again, and the proxy must act as after its first run.
    private struct StatementEffects: OptionSet {
        let rawValue: UInt8
        /// RESET ALL, DISCARD ALL: the context is to be re-applied after the batch.
        static let resetsContext = StatementEffects(rawValue: 1)
        /// DISCARD ALL, DEALLOCATE ALL: every prepared statement on the connection is gone.
        static let dropsStatements = StatementEffects(rawValue: 2)
        /// A SET of a read-back setting (see TransactionModeGuard.readBack).
        static let changesSettings = StatementEffects(rawValue: 4)
    }

    /// Queries of the proxy's own on the upstream connection, whose replies the client never sees.
    private struct Injection {
        enum Purpose {
            case connectContext
            case lookup(uuid: String)
            /// Written before the client's bytes of a transaction: nothing to do when done.
            case prelude
            /// Written after a RESET ALL / DISCARD ALL: the client waits for it.
            case reapply
            /// A transaction-mode log-in borrowed a connection to learn the server's parameters.
            case none
            /// Is the token's user a member of the tenant (users.tenant_users)?
            case membership(userID: String)
            /// After a transaction that set a read-back setting: the values it left.
            case readBack
        }

        var purpose: Purpose
        /// ReadyForQuery messages still to swallow (one per injected Query).
        var remaining: Int
        var rows: [[String?]] = []
        var error: ErrorResponse?
    }

    let client: Channel
    private let runtime: ProxyRuntime
    /// The runtime's logger with this session's client, user, session id and tenant, made when
    /// something is logged (never on the relay path): kept as a stored Logger, its metadata cost
    /// every idle client several hundred bytes.
    private var logger: Logger {
        var logger = runtime.logger
        if let address = client.remoteAddress {
            logger[metadataKey: "client"] = "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        }
        if !userName.isEmpty { logger[metadataKey: "user"] = "\(userName)" }
        if let proxyKey { logger[metadataKey: "session"] = "\(proxyKey.processID)" }
        if let name = binding?.tenant?.name { logger[metadataKey: "tenant"] = "\(name)" }
        return logger
    }
    private var phase: Phase = .startup {
        didSet {
            // Out of log-in (ready, admin console, closed, or a cancel request): off the watch,
            // and no longer a log-in in progress unless registering already ended that count.
            if oldValue.loggingIn, !phase.loggingIn {
                runtime.loginWatch(for: client.eventLoop)?.finish(self)
                if proxyKey == nil { runtime.countLogIn(false) }
            }
            if oldValue == .startup, phase != .startup {
                frontendDecoder.maxMessageLength = maxMessageBytes
            }
        }
    }
    /// Set at log-in from the user's, database's or [pool] mode.
    private var transactionPooling: Bool

    private var frontendDecoder: PGFrontendDecoder
    /// `[server] max_message_bytes` as it was when the client connected: the longest message
    /// after log-in. Before, the limit is `maxLogInMessageBytes`.
    private let maxMessageBytes: Int
    /// PostgreSQL's limit on a message before authentication ends (PG_MAX_AUTH_TOKEN_LENGTH):
    /// what a client has not yet proved who it is cannot make the proxy buffer more.
    static let maxLogInMessageBytes = 65_535
    private var backendDecoder: PGBackendDecoder
    /// Until log-in ends (then released).
    private var startupMachine: Boxed<ClientStartupMachine>?
    /// Session mode, while the dedicated connection logs in.
    private var upstreamMachine: Boxed<UpstreamStartupMachine>?
    private var loginHandler: UpstreamConnectionHandler?

    private var connection: UpstreamConnection?
    private var pool: UpstreamPool?
    private var poolKey: PoolKey?
    /// The pool's lane for `poolKey` (transaction pooling): lends and returns go straight to it.
    private var lane: UpstreamPool.Lane?
    private var waiterID: Int?
    /// Client bytes not yet relayed: an incomplete message, or whole ones held while paused.
    private var clientPending: ByteBuffer?
    /// Upstream bytes not yet forming a whole message.
    private var upstreamPending: ByteBuffer?

    private var userNameTenant: String?
    private var binding: SessionBinding? {
        didSet {
            // What the hot path asks of the binding, kept apart: reading through the optional
            // struct copies (and retains) all of it every time.
            wantedContext = binding.flatMap { runtime.injector.statements(tenant: $0.tenant, userID: $0.userID) }
                .map(runtime.contextInterner.intern)
            wantedContextKey = ContextKey(wantedContext ?? "")
            tenantLease = binding?.tenant?.id
            cluster = binding?.tenant?.upstream ?? "default"
            isSwitchUser = binding?.mode == .switch
        }
    }
    /// The context statements this client needs on its connection (nil: none), built once per
    /// change of the binding, not per transaction.
    private var wantedContext: String?
    /// `wantedContext` (or none) as the pool compares it.
    private var wantedContextKey = ContextKey("")
    private var statementGuard: StatementGuard?
    private var transactionGuard = TransactionModeGuard()
    private var seenMapGeneration = 0
    private var pendingLookup: String?
    private var tenantCounted: String?
    private(set) var proxyKey: BackendKeyData?

    /// Client messages are not relayed while the proxy runs its own query or waits for a connection.
    private var clientPaused = false
    private var injection: Injection?
    /// What PostgreSQL has still to answer, and what the client is owed at each ReadyForQuery.
    private var replies = ReplyQueue<CycleNote>()
    /// The proxy's answers to `.answered` cycles, in their order.
    private var answers: [[BackendMessage]] = []
    /// A Parse was refused: drop the client's messages up to its Sync, then answer with the error.
    private var refusedBatch: ErrorResponse?
    /// The refusal already went out (nothing of the batch was pending upstream): the Sync only
    /// needs its ReadyForQuery. Clients that wait for replies before Sync (Parse, Describe,
    /// Flush, as asyncpg does) see the error at once, as PostgreSQL would send it.
    private var refusedBatchSent = false
    /// A Parse or Bind of this batch resets the context: re-apply after the batch's Sync.
    private var reapplyAfterSync = false
    /// A statement of this transaction may have changed a read-back setting.
    private var settingsToReadBack = false
    /// The client's statements that do more than return a result, by the client's name for
    /// them ("" for the unnamed statement). Nearly always empty: a Bind only looks when not.
    private var statementEffects: [String: StatementEffects] = [:]
    /// Transaction mode: connections lent so far, and the lend on whose connection the client
    /// last parsed its unnamed statement. The unnamed statement found on a connection lent
    /// later is not the client's but whatever an earlier borrower left there.
    private var lends: UInt64 = 0
    private var unnamedLend: UInt64 = 0
    /// The client's unnamed statement when it was parsed between transactions on its own (a
    /// Parse+Sync, as `PQprepare` with an empty name sends, answered by the proxy) or with its
    /// Describe (Parse+Describe+Sync, as Go's lib/pq and pgx's describe-exec mode send, sent
    /// upstream for the description): the Parse, sent ahead of its Bind or Describe on a later
    /// lend. nil once a different Parse or a Query replaces it, or the server refused it.
    private var unnamedParse: ByteBuffer?
    /// Extended-protocol messages were sent since the last Sync: the connection is not free.
    private var extendedOpen = false
    /// Up to the client's next Sync its messages are dropped: the proxy refused a Parse of the
    /// batch, or one of its extended messages failed upstream (PostgreSQL discards them then).
    private var discardingToSync: Bool { refusedBatch != nil || replies.skippingUntilSync }
    private var prepared: PreparedStatements?
    /// Session settings the client asked for (startup parameters and options, and tracked
    /// parameters it SET later), restored on every borrowed connection. Lower-case names.
    /// Shared with every client that has the same settings (see SessionSettings).
    private var desiredSettings: SessionSettings
    private var startupParameters: [ParameterStatus] = []

    /// Set by the channel handler: puts TLS in front of this connection (false if it cannot).
    var startTLS: (() -> Bool)?
    /// TLS server name (SNI) the client asked for, lower-case.
    var serverName: String?
    private var tlsActive = false
    private var directTLS = false
    private var certificateNames: [String]?
    /// A refusal is waiting out the failed-login delay: ignore the client meanwhile.
    private var refusing = false
    private var pendingMembership: String?
    private var tokenExpired = false
    private var tokenTimer: Scheduled<Void>?
    /// This session's tenant totals on its loop (SHOW STATS, metrics).
    private var tally: TenantTally?
    private var waitStarted: NIODeadline?
    /// Held by an admin PAUSE until RESUME.
    private var heldByPause = false
    /// The map generation the tenant's cluster placement was last read at.
    private var placementGeneration = 0
    private var admin: AdminConsole?
    private var userName = ""
    private var databaseName = ""
    private let connectedAt = Date()

    /// Status of the last ReadyForQuery relayed: shutdown closes idle sessions at a boundary.
    private var transactionStatus: TransactionStatus = .idle
    /// The client said goodbye: the upstream closing next is expected, not an error.
    private var clientTerminated = false
    /// ReadyForQuery messages relayed (the idle-transaction watch compares them between sweeps).
    private var cycles: UInt64 = 0
    /// In its loop's IdleTransactionWatch.
    private var inTransactionWatch = false

    static let trackedParameters: Set<String> = TransactionModeGuard.trackedParameters

    init(client: Channel, runtime: ProxyRuntime) {
        self.client = client
        // Plaintext until TLS starts (startClientTLS).
        self.clientOut = LoopWriter(client, direct: true)
        self.desiredSettings = runtime.settingsInterner.intern([:])
        self.runtime = runtime
        let config = runtime.config
        self.transactionPooling = config.pool.mode == .transaction
        let maxMessage = config.server.maxMessageBytes
        self.maxMessageBytes = maxMessage
        self.frontendDecoder = PGFrontendDecoder(maxMessageLength: min(maxMessage, Self.maxLogInMessageBytes))
        self.backendDecoder = PGBackendDecoder(maxMessageLength: maxMessage)
        self.startupMachine = Boxed(ClientStartupMachine(tlsAvailable: runtime.tls.server != nil, mockSecret: runtime.mockSecret))
        runtime.countLogIn(true)
        runtime.loginWatch(for: client.eventLoop)?.watch(self, until: .now() + .seconds(Int64(config.server.loginTimeoutSeconds)))
    }

    /// Called once the channel is active: far over `max_client_connections` (see
    /// `ProxyRuntime.admitsLogIn`) the connection is refused before it costs anything more.
    func admit() {
        guard runtime.admitsLogIn(startupMessage: false) else { return fail(.tooManyClients) }
    }

    /// `[server] login_timeout_seconds` passed before the log-in finished (called by the loop's
    /// LoginWatch).
    func loginTimedOut() {
        guard phase.loggingIn else { return }
        let seconds = runtime.config.server.loginTimeoutSeconds
        runtime.metrics.authFailure(reason: "login_timeout")
        logger.info("refused client: log-in not finished in time", metadata: ["timeout_seconds": "\(seconds)"])
        fail(.loginTimeout(seconds: seconds))
    }

    static func isLoopback(_ address: SocketAddress?) -> Bool {
        guard let address else { return false }
        switch address {
        case .v4:
            return address.ipAddress?.hasPrefix("127.") ?? false
        case .v6:
            let ip = address.ipAddress ?? ""
            return ip == "::1" || ip.hasPrefix("::ffff:127.")
        case .unixDomainSocket:
            return true
        }
    }

    private var upstream: Channel? { connection?.channel }
    /// Writes to the client from its loop (see LoopWriter).
    private var clientOut: LoopWriter
    /// Bytes a client may send ahead while it waits for a connection before reading stops.
    static let heldBytesLimit = 64 * 1024
    /// What was last asked of the client channel's autoRead: setOption is not free (a future
    /// per call), so only changes go to the channel.
    private var clientReading = true

    private func setClientReading(_ reading: Bool) {
        guard reading != clientReading else { return }
        clientReading = reading
        client.setOption(ChannelOptions.autoRead, value: reading).whenFailure { _ in }
    }

    private func setUpstreamReading(_ reading: Bool) {
        guard let connection, reading != connection.reading else { return }
        connection.reading = reading
        connection.channel.setOption(ChannelOptions.autoRead, value: reading).whenFailure { _ in }
    }
    private var awaitingReply: Bool { !replies.isEmpty || injection != nil || extendedOpen }

    // MARK: - Client side events

    func clientRead(_ data: ByteBuffer) {
        guard phase != .closed else { return }
        if let admin {
            admin.read(data)
            return
        }
        tally?.counters.bytesReceived += data.readableBytes
        var buffer = ByteBuffer.joining(data, after: &clientPending)
        processClientBytes(&buffer)
    }

    private func processClientBytes(_ buffer: inout ByteBuffer) {
        guard !refusing else { return }
        do {
            switch phase {
            case .startup:
                try processStartup(&buffer)
            case .relaying where !clientPaused:
                try relayClientMessages(&buffer)
            case .connectingUpstream, .relaying, .admin, .closed:
                break
            }
        } catch let error as PGWireError {
            logger.info("closing client: malformed message", metadata: ["error": "\(error)"])
            fail(.protocolViolation(error.message))
            return
        } catch {
            fail(.protocolViolation("unreadable message"))
            return
        }
        if buffer.readableBytes > 0, phase != .closed {
            clientPending = buffer
            // Held bytes stay bounded: stop reading until they can go. Not during log-in, where
            // what is left is the start of a message still arriving (a start-up packet longer
            // than the first read, a SASL message in two segments), bounded by the decoder's
            // limits before authentication.
            if phase == .connectingUpstream || (phase == .relaying && clientPaused && buffer.readableBytes > Self.heldBytesLimit) {
                setClientReading(false)
            }
        }
    }

    /// Relays what was held while the proxy ran its own query or waited for a connection.
    private func resumeClient() {
        guard phase == .relaying else { return }
        clientPaused = false
        setClientReading(upstream?.isWritable ?? true)
        if var held = clientPending {
            clientPending = nil
            processClientBytes(&held)
            connection?.out.flush()
        }
    }

    func clientReadComplete() {
        connection?.out.flush()
    }

    func clientClosed() {
        guard phase != .closed else { return }
        if runtime.logger.logLevel <= .debug { logger.debug("client disconnected") }
        close()
    }

    func clientWritabilityChanged() {
        // Backpressure: stop reading the upstream while the client cannot take more bytes.
        setUpstreamReading(client.isWritable)
    }

    // MARK: - TLS

    /// Puts TLS in front of the client; from then on writes to it go through the pipeline.
    private func startClientTLS() -> Bool {
        guard startTLS?() == true else { return false }
        clientOut.usePipeline()
        return true
    }

    /// The first bytes are a TLS ClientHello: start TLS before reading them.
    func beginDirectTLS() -> Bool {
        guard phase == .startup, !tlsActive, startClientTLS() else { return false }
        directTLS = true
        tlsActive = true
        startupMachine = Boxed(ClientStartupMachine(tlsAvailable: false, mockSecret: runtime.mockSecret, insideTLS: true))
        return true
    }

    func tlsEstablished(alpn: String?, peerCertificate: NIOSSLCertificate?) {
        if directTLS, alpn != "postgresql" {
            // PostgreSQL 17 requires ALPN on direct TLS, so a cross-protocol attack cannot use it.
            fail(.directTLSWithoutALPN)
            return
        }
        certificateNames = peerCertificate.map(TLSContexts.names(of:))
    }

    // MARK: - Start-up

    private func processStartup(_ buffer: inout ByteBuffer) throws {
        defer { if phase != .startup { startupMachine = nil } }
        while phase == .startup, let startupMachine, let part = try frontendDecoder.next(from: &buffer) {
            let action: ClientStartupMachine.Action
            switch part {
            case .startup(let packet):
                if case .startup = packet, !runtime.admitsLogIn(startupMessage: true) {
                    return fail(.tooManyClients)
                }
                if case .startup(let startup) = packet, let name = startup.user {
                    let split = runtime.resolver().splitUserName(name)
                    userNameTenant = split.tenant
                    if runtime.throttle.isLocked(clientAddress) {
                        return refuseLogin(.lockedOut, count: false)
                    }
                    action = startupMachine.value.receive(packet, user: split.user, plan: authPlan(user: split.user, startup: startup))
                } else {
                    action = startupMachine.value.receive(packet, user: nil, plan: AuthPlan())
                }
            case .frame(let frame):
                action = startupMachine.value.receive(frame)
            }
            run(action, remaining: &buffer)
        }
    }

    private func run(_ action: ClientStartupMachine.Action, remaining buffer: inout ByteBuffer) {
        switch action {
        case .acceptEncryption:
            guard buffer.readableBytes == 0 else {
                fail(.protocolViolation("data sent before the encryption answer"))
                return
            }
            var answer = client.allocator.buffer(capacity: 1)
            answer.writeInteger(UInt8(ascii: "S"))
            clientOut.write(answer)
            clientOut.flush()
            guard startClientTLS() else {
                client.close(promise: nil)
                phase = .closed
                return
            }
            tlsActive = true
            startupMachine = Boxed(ClientStartupMachine(tlsAvailable: false, mockSecret: runtime.mockSecret, insideTLS: true))

        case .refuseEncryption:
            // Bytes after an SSLRequest before our answer would be a TLS ClientHello sent blind.
            guard buffer.readableBytes == 0 else {
                fail(.protocolViolation("data sent before the encryption answer"))
                return
            }
            var answer = client.allocator.buffer(capacity: 1)
            answer.writeInteger(UInt8(ascii: "N"))
            clientOut.write(answer)
            clientOut.flush()

        case .send(let messages):
            writeToClient(messages, flush: true)

        case .cancel(let request):
            forwardCancel(request)

        case .fail(let error, let authentication):
            logger.info("refused client", metadata: ["sqlstate": "\(error.sqlState)", "reason": "\(error.message)"])
            refuseLogin(error, count: authentication)

        case .authenticated(let user, let startup, let messages, let token):
            userName = user
            databaseName = startup.database ?? user
            writeToClient(messages, flush: true)
            if databaseName == "proxy" {
                startAdminConsole(user: user)
            } else {
                authenticated(user: user, startup: startup, token: token)
            }
        }
    }

    private var clientAddress: String { client.remoteAddress?.ipAddress ?? "?" }

    /// How this connection authenticates: the first matching rule, else the user's own method.
    private func authPlan(user name: String, startup: StartupMessage) -> AuthPlan {
        let config = runtime.config
        let user = runtime.map[user: name]
        var plan = AuthPlan()
        let database = startup.database ?? name
        plan.method = config.auth.rules.first { $0.matches(user: name, database: database, address: client.remoteAddress) }?.method
            ?? user?.auth ?? .scram
        plan.verifier = user?.verifier
        plan.md5 = user?.md5
        plan.tls = tlsActive
        plan.channelBinding = tlsActive ? runtime.tls.channelBinding : nil
        plan.certificateNames = certificateNames
        plan.acceptedCertificateNames = user?.certificateNames ?? []
        plan.trustAllowed = config.auth.trustLoopback && Self.isLoopback(client.remoteAddress)
        plan.requireTLS = user?.requireTLS ?? config.tls.require
        plan.jwtVerifier = runtime.jwtVerifier
        // Trust keeps its old meaning: configured and from loopback, it admits without a password.
        if plan.trustAllowed, plan.method == .scram, config.auth.rules.isEmpty { plan.method = .trust }
        return plan
    }

    /// Refuses a log-in after the configured delay (the same whatever the reason), counting
    /// authentication failures towards the address's lockout.
    private func refuseLogin(_ error: ProxyError, count: Bool) {
        if count { runtime.throttle.recordFailure(clientAddress) }
        runtime.metrics.authFailure(reason: error.metricReason)
        let delay = runtime.config.auth.failureDelayMilliseconds
        guard delay > 0, error.sqlState.hasPrefix("28") else { return fail(error) }
        refusing = true
        setClientReading(false)
        client.eventLoop.scheduleTask(in: .milliseconds(Int64(delay))) { [self] in
            refusing = false
            fail(error)
        }
    }

    private func authenticated(user: String, startup: StartupMessage, token: VerifiedToken?) {
        if runtime.isDraining {
            fail(.notAcceptingConnections)
            return
        }
        seenMapGeneration = runtime.mapGeneration
        let config = runtime.config
        transactionPooling = config.pool.mode(user: runtime.map[user: user], database: databaseName) == .transaction
        var sources: [(TenantSource, String)] = []
        if let tenant = token?.tenant { sources.append((.jwt, tenant)) }
        let domain = config.tls.sniDomain
        if !domain.isEmpty, let name = serverName, name.hasSuffix("." + domain) {
            sources.append((.sni, String(name.dropLast(domain.count + 1))))
        }
        let decision = runtime.resolver().resolve(startup: startup, user: user, userNameTenant: userNameTenant, extraSources: sources)
        var binding: SessionBinding
        switch decision {
        case .refused(let error):
            logger.info("refused client", metadata: ["sqlstate": "\(error.sqlState)", "reason": "\(error.message)"])
            refuseLogin(error, count: false)
            return
        case .bound(let bound):
            binding = bound
        case .lookup(let uuid, let bound):
            binding = bound
            switch runtime.cachedLookup(uuid) {
            case .hit(let record):
                switch TenantResolver.finishLookup(bound, uuid: uuid, found: record) {
                case .bound(let found): binding = found
                case .refused(let error): return fail(error)
                case .lookup: return fail(.lookupFailed)
                }
            case .miss:
                pendingLookup = uuid
            }
        }
        if let tenant = binding.tenant, runtime.isSuspended(tenant.id) {
            logger.info("refused client: tenant suspended from the console")
            return refuseLogin(.tenantNotActive(userNameTenant ?? tenant.name), count: false)
        }
        if let tenant = binding.tenant?.id {
            guard runtime.addTenantClient(tenant) else { return fail(.tenantTooManyClients) }
            tenantCounted = tenant
        }
        guard let key = runtime.registry.register(self) else {
            fail(.tooManyClients)
            return
        }
        proxyKey = key
        runtime.countLogIn(false)  // the registry counts it now (see `phase`)
        if let token {
            watchExpiry(of: token)
            // The token's user becomes nile.user_id only when it is a member of the tenant.
            binding.userID = nil
            if let claimed = token.user, TenantIdentifier.isValid(claimed), binding.tenant != nil {
                pendingMembership = claimed
            }
        }
        desiredSettings = runtime.settingsInterner.intern(Self.clientSettings(binding.upstreamParameters))
        // Transaction mode restores desiredSettings on each lend; the raw parameters would only
        // sit in memory for as long as the client stays.
        if transactionPooling { binding.upstreamParameters = [:] }
        bind(binding)
        phase = .connectingUpstream
        if transactionPooling {
            startPooled()
        } else {
            connectDedicated()
        }
    }

    private func bind(_ binding: SessionBinding) {
        self.binding = binding
        tally = runtime.stats(for: client.eventLoop)?.tally(for: binding.tenant?.id ?? "")
        placementGeneration = seenMapGeneration
        switch binding.mode {
        case .pinned:
            statementGuard = runtime.pinnedStatementGuard
            transactionGuard = runtime.transactionGuard
        case .switch:
            statementGuard = runtime.switchStatementGuard
            // A switch user's tenant SET becomes its context, which the proxy restores on every lend.
            transactionGuard = runtime.switchTransactionGuard
        case .global:
            statementGuard = nil
            transactionGuard = runtime.transactionGuard
        }
    }

    /// Settings a client asked for at start-up: its parameters and `-c` options, lower-case names.
    private static func clientSettings(_ parameters: [String: String]) -> [String: String] {
        var settings: [String: String] = [:]
        for (name, value) in parameters where name != "options" && !name.hasPrefix("_pq_.") && name != "replication" {
            settings[name.lowercased()] = value
        }
        if let options = parameters["options"], let parsed = StartupOptions(parsing: options) {
            for setting in parsed.settings { settings[setting.name.lowercased()] = setting.value }
        }
        return settings
    }

    private func upstreamRole(for binding: SessionBinding) -> (user: String, password: String?) {
        let config = runtime.config.cluster(binding.tenant?.upstream ?? "default")
        if binding.mode == .global, let global = config.globalUser {
            return (global, config.globalPassword)
        }
        return (config.user, config.password)
    }

    // MARK: - Session pooling: a dedicated upstream connection

    /// The cluster this session's tenant lives on.
    private var cluster = "default"
    private var isSwitchUser = false

    private func connectDedicated() {
        guard let binding else { return }
        let config = runtime.config.cluster(cluster)
        let role = upstreamRole(for: binding)
        var parameters = binding.upstreamParameters
        parameters["user"] = role.user
        parameters["database"] = binding.upstreamDatabase
        parameters.removeValue(forKey: "replication")
        for key in parameters.keys where key.hasPrefix("_pq_.") {
            parameters.removeValue(forKey: key)
        }
        upstreamMachine = Boxed(UpstreamStartupMachine(user: role.user, password: role.password))
        upstreamMachine?.value.keyCache = runtime.scramKeys
        let upstreamStartup = StartupMessage(parameters: parameters)
        let handler = UpstreamConnectionHandler()
        handler.loginOwner = self
        loginHandler = handler
        let key = PoolKey(cluster: config.name, user: role.user, database: binding.upstreamDatabase)
        poolKey = key

        UpstreamConnector.connect(on: client.eventLoop, config: config, keepalive: runtime.config.server.keepalive, tls: runtime.tls.upstream, handler: handler)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    guard phase == .connectingUpstream else {
                        channel.close(promise: nil)
                        return
                    }
                    let connection = UpstreamConnection(channel: channel, key: key)
                    connection.cancelHost = config.host
                    connection.cancelPort = config.port
                    connection.lastTenant = binding.tenant?.id
                    self.connection = connection
                    var buffer = channel.allocator.buffer(capacity: 256)
                    upstreamStartup.encode(into: &buffer)
                    channel.writeAndFlush(buffer, promise: nil)
                case .failure(let error):
                    logger.warning("upstream connect failed", metadata: ["error": "\(error)"])
                    fail(.upstreamUnavailable)
                }
            }
    }

    private func processUpstreamStartup(_ buffer: inout ByteBuffer) throws {
        while phase == .connectingUpstream, upstreamMachine != nil, let frame = try backendDecoder.next(from: &buffer) {
            let message = try BackendMessage.decode(frame)
            guard let action = upstreamMachine?.value.receive(message) else { return }
            switch action {
            case .wait:
                continue
            case .send(let reply):
                var out = client.allocator.buffer(capacity: 128)
                reply.encode(into: &out)
                upstream?.writeAndFlush(out, promise: nil)
            case .fail(let error, let serverError):
                logger.warning("upstream refused the proxy", metadata: ["sqlstate": "\(serverError?.sqlState ?? error.sqlState)"])
                if let serverError {
                    failRelayingServerError(serverError)
                } else {
                    fail(error)
                }
            case .ready(let parameters, let key):
                upstreamMachine = nil
                if let connection {
                    connection.backendKey = key
                    connection.owner = self
                    loginHandler?.connection = connection
                    loginHandler?.loginOwner = nil
                    loginHandler = nil
                }
                startupParameters = parameters
                applyContextAtConnect()
            }
        }
    }

    /// Session mode: the context (or the tenant lookup) goes first, then the client is ready.
    private func applyContextAtConnect() {
        guard let binding else { return }
        if pendingLookup == nil, let member = pendingMembership {
            return checkMembership(member)
        }
        if let uuid = pendingLookup {
            inject([runtime.injector.lookupStatements(uuid: uuid, userID: binding.userID)], purpose: .lookup(uuid: uuid))
        } else if let statements = runtime.injector.statements(tenant: binding.tenant, userID: binding.userID) {
            connection?.context = statements
            inject([statements], purpose: .connectContext)
        } else {
            becomeReady()
        }
    }

    /// Sets the tenant context and asks whether the token's user belongs to the tenant.
    private func checkMembership(_ userID: String) {
        guard let tenant = binding?.tenant,
              let context = runtime.injector.statements(tenant: tenant, userID: nil) else { return becomeReady() }
        connection?.context = context
        let query = "SELECT 1 FROM users.tenant_users WHERE tenant_id::text = \(ContextInjector.literal(tenant.id))"
            + " AND user_id::text = \(ContextInjector.literal(userID))"
        inject([context, query], purpose: .membership(userID: userID))
    }

    private func watchExpiry(of token: VerifiedToken) {
        guard let expiry = token.expiresAt else { return }
        // Rounded up, plus a millisecond: the timer (monotonic clock) must not fire before the
        // token's exp (wall clock), or a client could be told "expired" while it is not.
        let milliseconds = Int64((max(0, expiry.timeIntervalSinceNow) * 1000).rounded(.up)) + 1
        tokenTimer = client.eventLoop.scheduleTask(in: .milliseconds(milliseconds)) { [weak self] in
            guard let self else { return }
            tokenExpired = true
            if phase == .relaying, transactionStatus == .idle, !awaitingReply {
                endAtBoundary()
            }
        }
    }

    // MARK: - Transaction pooling: borrowed connections

    private func startPooled() {
        guard let binding else { return }
        let role = upstreamRole(for: binding)
        let key = PoolKey(cluster: cluster, user: role.user, database: binding.upstreamDatabase)
        poolKey = key
        pool = runtime.pool(for: client.eventLoop)
        if let pool { runtime.poolBudget.clientArrived(pool) }
        lane = pool?.lane(key)
        if pendingLookup == nil, pendingMembership == nil, let parameters = lane?.serverParameters {
            startupParameters = parameters
            becomeReady()
            return
        }
        // Learn the server's parameters (or look the tenant up) on a borrowed connection.
        borrow(for: .login)
    }

    /// Why a connection is borrowed: what to do once it is attached.
    private enum BorrowPurpose {
        /// Log-in in transaction mode: look the tenant up, check membership, or learn the
        /// server's parameters.
        case login
        /// The client's next transaction: its held bytes go out behind the prelude.
        case transaction
    }

    /// Borrows a connection from the loop's pool; the client is paused meanwhile. An idle
    /// connection is taken at once without allocating anything; otherwise the client waits.
    private func borrow(for purpose: BorrowPurpose) {
        refreshPlacement()
        // The lane's key, not a copy of poolKey (three strings retained and released per borrow).
        guard let pool, let lane else {
            logger.error("no pool for this event loop")
            return fail(.upstreamUnavailable)
        }
        if runtime.holdIfPaused(tenant: tenantLease, cluster: lane.key.cluster, session: self) {
            borrowPurpose = purpose
            heldByPause = true
            clientPaused = true
            setClientReading(false)
            return
        }
        clientPaused = true
        let context = wantedContextKey
        if let idle = pool.lendNow(lane, context: context, tenant: tenantLease) {
            return attach(idle, for: purpose)
        }
        // The callback captures only the session (no closure context or boxed flag to allocate
        // per wait): what it needs is in these fields. The serial tells this borrow's answer
        // from that of a borrow the answer itself may start (attach runs the client's next bytes).
        borrowPurpose = purpose
        borrowSerial &+= 1
        let serial = borrowSerial
        let id = pool.acquire(lane, context: context, tenant: tenantLease) { [self] result in
            poolAnswered(result)
        }
        // A connection freed at once answers before acquire returns; only a real wait is
        // recorded. Meanwhile what the client sends is held; reading stops only past
        // heldBytesLimit (toggling it on every wait cost two epoll_ctl calls a transaction).
        if answeredSerial != serial {
            waiterID = id
            waitStarted = .now()
        }
    }

    /// What the borrow waiting for the pool, or held by a pause, is for.
    private var borrowPurpose: BorrowPurpose = .transaction
    private var borrowSerial = 0
    private var answeredSerial = 0

    /// The pool's answer to `borrow`, at once or after a wait.
    private func poolAnswered(_ result: Result<UpstreamConnection, ProxyError>) {
        answeredSerial = borrowSerial
        waiterID = nil
        if let started = waitStarted {
            waitStarted = nil
            let waited = (NIODeadline.now() - started).nanoseconds
            tally?.counters.waitMicroseconds += Int(waited / 1000)
            pool?.waits.record(nanoseconds: waited)
        }
        switch result {
        case .success(let borrowed):
            attach(borrowed, for: borrowPurpose)
        case .failure(let error):
            logger.warning("no upstream connection", metadata: ["sqlstate": "\(error.sqlState)"])
            fail(error)
        }
    }

    /// RESUME: the borrow a pause held goes ahead (or waits again, if still paused).
    func pauseLifted() {
        guard heldByPause, phase == .relaying || phase == .connectingUpstream else { return }
        heldByPause = false
        if transactionPooling, connection == nil {
            borrow(for: borrowPurpose)
        } else {
            refreshPlacement()
            resumeClient()
        }
    }

    private func attach(_ borrowed: UpstreamConnection, for purpose: BorrowPurpose) {
        guard phase != .closed, pool != nil else {
            self.pool?.release(borrowed, tenant: tenantLease)
            return
        }
        borrowed.owner = self
        borrowed.lastTenant = tenantLease
        connection = borrowed
        lends &+= 1
        setUpstreamReading(client.isWritable)
        switch purpose {
        case .transaction:
            let prelude = preludeQueries(for: borrowed)
            if !prelude.isEmpty { inject(prelude, purpose: .prelude, flush: false) }
            resumeClient()
        case .login:
            guard let binding else { return }
            if let uuid = pendingLookup {
                inject([runtime.injector.lookupStatements(uuid: uuid, userID: binding.userID)], purpose: .lookup(uuid: uuid))
            } else if let member = pendingMembership {
                checkMembership(member)
            } else {
                startupParameters = lane?.serverParameters ?? []
                giveBack()
                becomeReady()
            }
        }
    }

    /// Returns the borrowed connection at a transaction boundary.
    private func giveBack() {
        guard let connection, let pool else { return }
        self.connection = nil
        pool.release(connection, tenant: tenantLease)
    }

    /// The tenant whose lease a borrow takes (its id).
    private var tenantLease: String?

    /// After a reload, a tenant moved to another cluster borrows from there (transaction mode);
    /// a session-mode client, whose upstream connection is on the old cluster, is ended.
    private func refreshPlacement() {
        let generation = runtime.mapGeneration
        guard generation != placementGeneration else { return }
        placementGeneration = generation
        guard let tenant = binding?.tenant, let current = runtime.map.tenants[tenant.name], current.id == tenant.id,
              current.upstream != tenant.upstream else { return }
        logger.info("tenant placed on another cluster", metadata: ["from": "\(tenant.upstream)", "to": "\(current.upstream)"])
        binding?.tenant?.upstream = current.upstream
        poolKey?.cluster = current.upstream
        lane = poolKey.flatMap { pool?.lane($0) }
        if !transactionPooling { fail(.tenantMoved) }
    }

    /// Queries that give a borrowed connection this client's context and settings, diffed against
    /// what the connection carries. Clearing the old context comes in its own Query before the new
    /// one, so a failing SET leaves no context at all (fail closed), never the previous tenant's.
    /// `keepingUnknown` (the re-application after a RESET ALL): settings whose value is unknown
    /// (changed in the batch, to be read back) are left as they are, not reset: the client may
    /// have SET one after its RESET ALL.
    private func preludeQueries(for connection: UpstreamConnection, keepingUnknown: Bool = false) -> [String] {
        var queries: [String] = []
        let wanted = wantedContext ?? ""
        if connection.contextKey != wantedContextKey {
            if !connection.context.isEmpty {
                // Two queries, RESET then SET, not one: statements of one Query message run in
                // one implicit transaction, so a failing SET would roll its RESET back and the
                // client's statements, already sent behind, would run in the previous tenant's
                // context. Apart, a failing SET leaves none.
                runtime.metrics.contextSwitch()
                queries.append(runtime.injector.resetStatements(searchPath: connection.contextMaySetSearchPath))
            }
            if !wanted.isEmpty { queries.append(wanted) }
            connection.context = wanted
        }
        // The connection carries exactly these settings (this client's, or another's with the
        // same): nothing to compare.
        if connection.appliedSettings === desiredSettings, connection.preparedStatements.count <= 500,
           !connection.preparedStatementsUncertain {
            return queries
        }
        let desired = desiredSettings.values
        var sets: [String] = []
        if connection.applied != desired {
            for (name, value) in desired.sorted(by: { $0.key < $1.key }) where connection.applied[name] != value {
                guard ContextInjector.isSafeSettingName(name) else { continue }
                if keepingUnknown, connection.applied[name] == UpstreamConnection.unknownContext { continue }
                sets.append("SET \(name) = \(ContextInjector.literal(value))")
                connection.applied[name] = value
            }
            for name in connection.applied.keys.sorted() where desired[name] == nil {
                guard ContextInjector.isSafeSettingName(name) else { continue }
                if keepingUnknown, connection.applied[name] == UpstreamConnection.unknownContext { continue }
                sets.append("RESET \(name)")
                connection.applied.removeValue(forKey: name)
            }
        }
        if !sets.isEmpty { queries.append(sets.joined(separator: "; ")) }
        // Unknown values kept: no borrower may skip the comparison (see readBackSettingsLater).
        connection.appliedSettings = keepingUnknown && connection.applied != desired ? nil : desiredSettings
        if connection.preparedStatements.count > 500 || connection.preparedStatementsUncertain {
            queries.append("DEALLOCATE ALL")
            connection.preparedStatements.removeAll()
            connection.preparedStatementsUncertain = false
        }
        return queries
    }

    // MARK: - Ready

    /// The upstream carries the context: the client gets its log-in replies and may start.
    private func becomeReady() {
        guard let proxyKey else { return }
        phase = .relaying
        var buffer = client.allocator.buffer(capacity: 512)
        BackendMessage.authentication(.ok).encode(into: &buffer)
        if transactionPooling {
            // The pool's connections started without the client's parameters; report the client's
            // own (the lane's server parameters are the ones in startupParameters).
            prepared = PreparedStatements(sessionID: proxyKey.processID)
            if let statuses = lane?.parameterStatuses(for: desiredSettings, allocator: client.allocator) {
                buffer.writeImmutableBuffer(statuses)
            } else {
                ParameterStatus.encode(startupParameters, as: desiredSettings, into: &buffer)
            }
        } else {
            for parameter in startupParameters { BackendMessage.parameterStatus(parameter).encode(into: &buffer) }
        }
        BackendMessage.backendKeyData(proxyKey).encode(into: &buffer)
        BackendMessage.readyForQuery(ReadyForQuery(status: .idle)).encode(into: &buffer)
        startupParameters = []
        clientOut.write(buffer)
        clientOut.flush()
        // The logger (with this session's metadata) costs more to build than the rest of a log-in.
        if runtime.logger.logLevel <= .debug { logger.debug("session ready") }
        resumeClient()
    }

    var eventLoop: EventLoop { client.eventLoop }

    /// Where a cancel request for this client goes now: the upstream connection it holds (on
    /// the session's loop).
    var cancelTarget: SessionRegistry.CancelTarget? {
        client.eventLoop.preconditionInEventLoop()
        guard let connection, let key = connection.backendKey else { return nil }
        return .init(key: key, host: connection.cancelHost, port: connection.cancelPort)
    }

    // MARK: - Injected queries

    private func inject(_ queries: [String], purpose: Injection.Purpose, flush: Bool = true) {
        guard let connection, !queries.isEmpty else { return }
        injection = Injection(purpose: purpose, remaining: queries.count)
        var buffer = connection.channel.allocator.buffer(capacity: 256)
        for sql in queries {
            FrontendMessage.query(Query(query: sql)).encode(into: &buffer)
        }
        connection.out.write(buffer)
        if flush { connection.out.flush() }
    }

    /// Consumes one upstream frame that answers an injected query.
    private func consumeInjected(_ frame: PGFrame) throws {
        switch frame.type {
        case BackendMessageID.dataRow.rawValue:
            var payload = frame.payload
            let row = try DataRow.decode(payload: &payload)
            injection?.rows.append(row.columns.map { $0.map { String(buffer: $0) } })
        case BackendMessageID.errorResponse.rawValue:
            var payload = frame.payload
            injection?.error = try ErrorResponse.decode(payload: &payload)
        case BackendMessageID.parameterStatus.rawValue:
            var payload = frame.payload
            let status = try ParameterStatus.decode(payload: &payload)
            connection?.parameters[status.name] = status.value
        case BackendMessageID.readyForQuery.rawValue:
            injection?.remaining -= 1
            guard let finished = injection, finished.remaining == 0 else { return }
            injection = nil
            finishInjection(finished)
        default:
            break  // RowDescription, CommandComplete, notices: the client never asked.
        }
    }

    private func finishInjection(_ finished: Injection) {
        if let error = finished.error {
            if case .membership = finished.purpose {
                logger.info("membership check failed upstream; no user id", metadata: ["sqlstate": "\(error.sqlState ?? "?")"])
            } else if case .readBack = finished.purpose {
                // The connection's settings stay unknown: it is closed, not lent again.
                logger.warning("reading back session settings failed upstream", metadata: ["sqlstate": "\(error.sqlState ?? "?")"])
                connection?.broken = true
            } else {
                logger.error("tenant context query failed upstream", metadata: [
                    "sqlstate": "\(error.sqlState ?? "?")", "message": "\(error.message ?? "")",
                ])
                connection?.broken = true
            }
        }
        switch finished.purpose {
        case .connectContext:
            guard finished.error == nil else { return fail(.contextNotApplied) }
            becomeReady()
        case .reapply:
            guard finished.error == nil else { return fail(.contextNotApplied) }
            resumeClient()
        case .prelude:
            // The client's statements went right behind; they must not have run without context.
            if finished.error != nil { fail(.contextNotApplied) }
        case .none:
            break
        case .readBack:
            if finished.error == nil { readBackFinished(finished.rows) }
        case .membership(let userID):
            pendingMembership = nil
            if finished.error == nil, !finished.rows.isEmpty {
                binding?.userID = userID
            }
            if transactionPooling {
                startupParameters = lane?.serverParameters ?? []
                giveBack()
                becomeReady()
            } else if let connection, let wanted = wantedContext, connection.context != wanted {
                connection.context = wanted
                inject([wanted], purpose: .connectContext)
            } else {
                becomeReady()
            }
        case .lookup(let uuid):
            guard finished.error == nil, let binding else { return fail(.lookupFailed) }
            pendingLookup = nil
            let record = finished.rows.first.map { row in
                UpstreamTenantRecord(
                    status: Tenant.Status(rawValue: (row.first ?? nil) ?? "active") ?? .suspended,
                    deleted: row.count > 1 && row[1] != nil,
                    name: row.count > 2 ? row[2] : nil)
            }
            runtime.cacheLookup(uuid, record)
            switch TenantResolver.finishLookup(binding, uuid: uuid, found: record) {
            case .bound(let bound):
                if let tenant = bound.tenant, runtime.isSuspended(tenant.id) {
                    return fail(.tenantNotActive(uuid))
                }
                bind(bound)
                if let tenant = bound.tenant?.id, tenantCounted == nil {
                    guard runtime.addTenantClient(tenant) else { return fail(.tenantTooManyClients) }
                    tenantCounted = tenant
                }
                // The lookup statements already set the context.
                connection?.context = wantedContext ?? ""
                if let member = pendingMembership {
                    return checkMembership(member)
                }
                if transactionPooling {
                    startupParameters = lane?.serverParameters ?? []
                    giveBack()
                }
                becomeReady()
            case .refused(let error):
                fail(error)
            case .lookup:
                fail(.lookupFailed)
            }
        }
    }

    // MARK: - Relaying client messages

    private func relayClientMessages(_ buffer: inout ByteBuffer) throws {
        if tokenExpired || runtime.isDraining, buffer.readableBytes > 0, endIfDue() { return }
        guard let upstream = connection else {
            // Transaction pooling between transactions: borrow for the next message, unless it
            // is the client leaving.
            guard transactionPooling, buffer.readableBytes > 0 else { return }
            if buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == FrontendMessageID.terminate.rawValue {
                clientTerminated = true
                close()
                return
            }
            if try answerPrepareLocally(&buffer) {
                guard buffer.readableBytes > 0 else { return }
                return try relayClientMessages(&buffer)
            }
            // Hold the bytes where resumeClient finds them; the pool may answer at once.
            clientPending = buffer
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            borrow(for: .transaction)
            return
        }
        if !transactionPooling, transactionStatus == .idle, !awaitingReply, buffer.readableBytes > 0, holdForPause(&buffer) {
            return
        }
        let original = buffer
        var runStart = buffer.readerIndex
        func emitRun(upTo end: Int) {
            if end > runStart, let slice = original.getSlice(at: runStart, length: end - runStart) {
                upstream.out.write(slice)
            }
        }
        while !clientPaused, phase == .relaying, connection != nil {
            let frameStart = buffer.readerIndex
            guard let part = try frontendDecoder.next(from: &buffer) else { break }
            guard case .frame(let frame) = part else {
                throw PGWireError(code: .unexpectedMessage, message: "startup packet after log-in")
            }
            switch handleClientFrame(frame) {
            case .forward:
                continue
            case .drop:
                emitRun(upTo: frameStart)
                runStart = buffer.readerIndex
            case .replace(let buffers):
                emitRun(upTo: frameStart)
                runStart = buffer.readerIndex
                for out in buffers { upstream.out.write(out) }
            case .rebind(let parse, let header, let restAt):
                emitRun(upTo: frameStart)
                runStart = frameStart + restAt
                if let parse { upstream.out.write(parse) }
                upstream.out.write(header)
            case .ahead(let bytes):
                emitRun(upTo: frameStart)
                runStart = frameStart
                upstream.out.write(bytes)
            case .pauseAfter:
                clientPaused = true
            case .closed:
                return
            }
        }
        emitRun(upTo: buffer.readerIndex)
    }

    /// Session mode between transactions: a paused tenant's next statement waits for RESUME
    /// (then runs, or ends the session when the tenant moved to another cluster meanwhile).
    private func holdForPause(_ buffer: inout ByteBuffer) -> Bool {
        guard runtime.holdIfPaused(tenant: tenantLease, cluster: cluster, session: self) else { return false }
        heldByPause = true
        clientPaused = true
        clientPending = buffer
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        setClientReading(false)
        return true
    }

    private enum FrameDecision {
        case forward
        case drop
        /// Send these bytes instead of the frame.
        case replace([ByteBuffer])
        /// A Bind under the statement's proxy name (the Parse that prepares it on this connection
        /// first, when needed): the common case of `replace`, without its arrays. `header` replaces
        /// the frame's first `restAt` bytes; the rest (the parameters) goes out with the frames
        /// after it, as one run of the client's bytes.
        case rebind(parse: ByteBuffer?, header: ByteBuffer, restAt: Int)
        /// Send these bytes, then the frame.
        case ahead(ByteBuffer)
        /// Forward it, then hold everything after it until the context is re-applied.
        case pauseAfter
        case closed
    }

    /// The proxy answers the client's Sync itself (with these messages, before its
    /// ReadyForQuery).
    private func answer(_ messages: [BackendMessage]) {
        answers.append(messages)
        replies.sent(.init(kind: .sync, note: .answered))
    }

    /// The proxy answers the client's Query or FunctionCall itself: a Sync goes upstream in its
    /// place, for the ReadyForQuery.
    private func answerInstead(_ messages: [BackendMessage]) -> FrameDecision {
        answer(messages)
        return .replace([syncFrame()])
    }

    private func syncFrame() -> ByteBuffer {
        var sync = client.allocator.buffer(capacity: 5)
        FrontendMessage.sync.encode(into: &sync)
        return sync
    }

    private func handleClientFrame(_ frame: PGFrame) -> FrameDecision {
        switch frame.type {
        case FrontendMessageID.query.rawValue:
            guard tenantStillActive() else { return .closed }
            // Inside a batch being discarded up to its Sync, a Query goes too.
            if discardingToSync { return .drop }
            // (A Query drops the unnamed statement, on PostgreSQL.)
            if unnamedParse != nil { unnamedParse = nil }
            // Text with nothing either guard acts on is not lexed (see GuardPrefilter).
            let guarded = withSQL(frame.payload, skippingName: false, GuardPrefilter.mayMatter)
            var verdict = guarded ? inspect(frame.payload, skippingName: false) : .allow
            var transactionVerdict = TransactionModeVerdict.allow
            if guarded, verdict.refusal == nil, transactionPooling {
                transactionVerdict = inspectForTransactionMode(frame.payload, skippingName: false)
                if let refusal = transactionVerdict.refusal {
                    countRefusal("session_state")
                    return answerInstead([.errorResponse(ProxyError.sessionStateRefused(refusal).errorResponse)])
                }
            }
            if let refusal = verdict.refusal {
                countRefusal("context")
                return answerInstead([.errorResponse(ProxyError.guardRefusal(refusal).errorResponse)])
            }
            if let deallocate = transactionVerdict.deallocate {
                // Protocol-level statements are the proxy's to manage: answer it here.
                switch deallocate {
                case .all:
                    prepared?.removeAll()
                case .named(let name):
                    guard prepared?[name] != nil else {
                        let error = ErrorResponse(sqlState: "26000", message: "prepared statement \"\(name)\" does not exist")
                        return answerInstead([.errorResponse(error)])
                    }
                    prepared?.remove(name)
                }
                let tag = deallocate == .all ? "DEALLOCATE ALL" : "DEALLOCATE"
                return answerInstead([.commandComplete(CommandComplete(tag: tag))])
            }
            if transactionVerdict.discardsPreparedStatements {
                prepared?.removeAll()
                connectionStatementsDropped()
            }
            if transactionVerdict.changesReadBackSetting { readBackSettingsLater() }
            noteSwitch(verdict)
            if verdict.reapplyContextAfter {
                verdict.reapplyContextAfter = false
                connectionContextReset()
                replies.sent(.init(kind: .query, note: .reapply))
                return .pauseAfter
            }
            replies.sent(.init(kind: .query, note: .plain))
            return .forward

        case FrontendMessageID.parse.rawValue:
            guard tenantStillActive() else { return .closed }
            if discardingToSync { return .drop }
            let wasOpen = extendedOpen
            extendedOpen = true
            let guarded = withSQL(frame.payload, skippingName: true, GuardPrefilter.mayMatter)
            let verdict = guarded ? inspect(frame.payload, skippingName: true) : .allow
            if let refusal = verdict.refusal {
                countRefusal("context")
                return refuseBatch(ProxyError.guardRefusal(refusal).errorResponse, wasOpen: wasOpen)
            }
            var effects: StatementEffects = []
            if guarded, transactionPooling {
                let transactionVerdict = inspectForTransactionMode(frame.payload, skippingName: true)
                if let refusal = transactionVerdict.refusal {
                    countRefusal("session_state")
                    return refuseBatch(ProxyError.sessionStateRefused(refusal).errorResponse, wasOpen: wasOpen)
                }
                if transactionVerdict.discardsPreparedStatements {
                    prepared?.removeAll()
                    connectionStatementsDropped()
                    effects.insert(.dropsStatements)
                }
                if transactionVerdict.changesReadBackSetting {
                    readBackSettingsLater()
                    effects.insert(.changesSettings)
                }
                if case .named(let name)? = transactionVerdict.deallocate {
                    return deallocateByParse(frame, name: name, wasOpen: wasOpen)
                }
            }
            noteSwitch(verdict)
            if verdict.reapplyContextAfter {
                reapplyAfterSync = true
                effects.insert(.resetsContext)
            }
            if !effects.isEmpty || !statementEffects.isEmpty {
                var payload = frame.payload
                let name = payload.readNullTerminatedString() ?? ""
                statementEffects[name] = effects.isEmpty ? nil : effects
            }
            return renameParse(frame)

        case FrontendMessageID.bind.rawValue:
            if discardingToSync { return .drop }
            let wasOpen = extendedOpen
            extendedOpen = true
            // Queues the Parse it may add, ahead of the Bind (or refuses the batch).
            let decision = renameBind(frame, wasOpen: wasOpen)
            if case .drop = decision { return decision }
            replies.sent(.init(kind: .bind))
            if !statementEffects.isEmpty { bound(frame.payload) }
            return decision

        case FrontendMessageID.describe.rawValue, FrontendMessageID.close.rawValue:
            if discardingToSync { return .drop }
            let wasOpen = extendedOpen
            extendedOpen = true
            return renameStatementTarget(frame, wasOpen: wasOpen)

        case FrontendMessageID.sync.rawValue:
            extendedOpen = false
            // A RESET ALL / DISCARD ALL of the batch went upstream before anything the proxy
            // refused: it runs (or the server skips it) whatever the refusal.
            let reapply = reapplyAfterSync
            if reapply {
                reapplyAfterSync = false
                connectionContextReset()
            }
            if let error = refusedBatch {
                refusedBatch = nil
                answers.append(refusedBatchSent ? [] : [.errorResponse(error)])
                refusedBatchSent = false
                replies.sent(.init(kind: .sync, note: reapply ? .answeredThenReapply : .answered))
                return reapply ? .pauseAfter : .forward
            }
            replies.sent(.init(kind: .sync, note: reapply ? .reapply : .plain))
            return reapply ? .pauseAfter : .forward

        case FrontendMessageID.functionCall.rawValue:
            guard tenantStillActive() else { return .closed }
            if discardingToSync { return .drop }
            if let guardian = statementGuard, let refusal = guardian.inspectFunctionCall().refusal {
                countRefusal("function_call")
                return answerInstead([.errorResponse(ProxyError.guardRefusal(refusal).errorResponse)])
            }
            replies.sent(.init(kind: .query, note: .plain))
            return .forward

        case FrontendMessageID.terminate.rawValue:
            clientTerminated = true
            if transactionPooling {
                // The connection is the pool's: never forward a Terminate to it.
                close()
                return .closed
            }
            return .forward

        case FrontendMessageID.execute.rawValue:
            if discardingToSync { return .drop }
            extendedOpen = true
            replies.sent(.init(kind: .execute))
            return .forward

        case FrontendMessageID.flush.rawValue:
            if refusedBatch != nil { return .drop }
            extendedOpen = true
            return .forward

        default:
            // Copy data and the like.
            return .forward
        }
    }

    private func countRefusal(_ kind: String) {
        tally?.guardRefusals += 1
        tally?.counters.errors += 1
        runtime.metrics.guardRefusal(tenant: binding?.tenant?.id, kind: kind)
    }

    private func refuseBatch(_ error: ErrorResponse, now: Bool) {
        refusedBatch = error
        refusedBatchSent = now
        if now { writeToClient([.errorResponse(error)], flush: true) }
    }

    /// Refuses the batch at a message that found it open or not (`wasOpen`): its error goes at
    /// once when nothing of it is pending upstream, else at its Sync. The message is dropped.
    private func refuseBatch(_ error: ErrorResponse, wasOpen: Bool) -> FrameDecision {
        refuseBatch(error, now: !wasOpen && replies.isEmpty && injection == nil)
        return .drop
    }

    /// RESET ALL / DISCARD ALL is to run on the connection: it will carry no context and none
    /// of the settings the proxy placed, until the context is re-applied.
    private func connectionContextReset() {
        connection?.context = "(reset)"
        connection?.applied.removeAll()
        connection?.appliedSettings = nil
        // A read-back setting changed in this batch may be set again after the reset.
        if settingsToReadBack { markReadBackUnknown() }
    }

    // MARK: - Prepared statements across borrowed connections

    /// Between transactions, a batch of named Parse messages ended by Sync (what PQprepare sends)
    /// needs no upstream connection: the proxy records the statements, answers ParseComplete and
    /// ReadyForQuery itself, and prepares each on whichever connection first runs it. This also
    /// keeps a client that prepares synchronously (pgbench -M prepared) from holding a pool slot.
    /// Returns false, consuming nothing, for anything else.
    private func answerPrepareLocally(_ buffer: inout ByteBuffer) throws -> Bool {
        // Only a batch that opens with a Parse qualifies: the first byte says so without copying
        // the decoder and decoding a frame (about 450 instructions per simple Query).
        guard prepared != nil, refusedBatch == nil,
              buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == FrontendMessageID.parse.rawValue
        else { return false }
        var probe = buffer
        var decoder = frontendDecoder
        var parses: [Parse] = []
        var unnamed: Parse?
        while let part = try decoder.next(from: &probe) {
            guard case .frame(let frame) = part else { return false }
            if frame.type == FrontendMessageID.sync.rawValue {
                guard !parses.isEmpty || unnamed != nil else { return false }
                for parse in parses { _ = prepared?.register(parse, allocator: client.allocator) }
                if let unnamed {
                    var parse = client.allocator.buffer(capacity: unnamed.query.utf8.count + 16)
                    FrontendMessage.parse(unnamed).encode(into: &parse)
                    unnamedParse = parse
                }
                buffer = probe
                frontendDecoder = decoder
                var messages = [BackendMessage](repeating: .parseComplete, count: parses.count + (unnamed == nil ? 0 : 1))
                messages.append(.readyForQuery(ReadyForQuery(status: .idle)))
                writeToClient(messages, flush: true)
                return true
            }
            // Only a Parse+Sync batch qualifies: decide that before reading the SQL (an unnamed
            // Parse, as in pgbench -M extended, goes upstream with its Bind in one batch).
            guard frame.type == FrontendMessageID.parse.rawValue else { return false }
            if !PreparedStatements.isNamed(parse: frame.payload) {
                // An unnamed one only right before the Sync, seen without decoding the Parse.
                let next = probe.getInteger(at: probe.readerIndex, as: UInt8.self)
                if next == FrontendMessageID.describe.rawValue, parses.isEmpty, unnamed == nil {
                    keepDescribedUnnamedParse(frame, rest: probe, decoder: decoder)
                    return false
                }
                guard unnamed == nil, next == FrontendMessageID.sync.rawValue else { return false }
            }
            var payload = frame.payload
            guard let parse = try? Parse.decode(payload: &payload), parse.name.isEmpty || prepared?[parse.name] == nil,
                  !parses.contains(where: { $0.name == parse.name }) else { return false }
            guard mayRunUnseen(frame.payload) else { return false }
            if parse.name.isEmpty { unnamed = parse } else { parses.append(parse) }
        }
        return false
    }

    /// A batch of exactly Parse, Describe of the unnamed statement and Sync between transactions
    /// goes upstream (the description is the server's), and the client may bind the statement
    /// on a later lend: its Parse is kept for that (see `unnamedParse`), when the guards would let
    /// it run again unseen.
    private func keepDescribedUnnamedParse(_ parse: PGFrame, rest: ByteBuffer, decoder: PGFrontendDecoder) {
        var rest = rest
        var decoder = decoder
        guard case .frame(let describe)? = try? decoder.next(from: &rest),
              describe.type == FrontendMessageID.describe.rawValue,
              describe.payload.readableBytes == 2,
              describe.payload.getInteger(at: describe.payload.readerIndex, as: UInt16.self) == UInt16(PGTargetKind.statement.rawValue) << 8,
              rest.getInteger(at: rest.readerIndex, as: UInt8.self) == FrontendMessageID.sync.rawValue
        else { return }
        guard mayRunUnseen(parse.payload) else { return }
        var kept = client.allocator.buffer(capacity: parse.payload.readableBytes + 5)
        parse.encode(into: &kept)
        unnamedParse = kept
    }

    /// A Parse the proxy keeps to send again later, where its handling by the guards (refusal,
    /// context re-application, session effects) would not be seen: only one neither guard acts on.
    private func mayRunUnseen(_ payload: ByteBuffer) -> Bool {
        let verdict = inspect(payload, skippingName: true)
        return verdict.isAllowed && !verdict.reapplyContextAfter
            && inspectForTransactionMode(payload, skippingName: true) == .allow
    }

    private func renameParse(_ frame: PGFrame) -> FrameDecision {
        // The unnamed statement lives and dies within the transaction: forwarded as is, without
        // decoding it.
        guard transactionPooling, var prepared, PreparedStatements.isNamed(parse: frame.payload) else {
            unnamedLend = lends
            // Kept only while the unnamed statement is that one (the same Parse again is).
            if let kept = unnamedParse, kept.getSlice(at: kept.readerIndex + 5, length: kept.readableBytes - 5) != frame.payload {
                unnamedParse = nil
            }
            replies.sent(.init(kind: .parse))
            return .forward
        }
        var payload = frame.payload
        guard let parse = try? Parse.decode(payload: &payload), !parse.name.isEmpty else {
            replies.sent(.init(kind: .parse))
            return .forward
        }
        if let existing = prepared[parse.name] {
            // While the Parse that took the name is unanswered (both in one pipeline), whether the
            // name is taken is the server's answer to give: this one goes under the same proxy name.
            if replies.hasPendingParse(of: existing.number),
               let contender = prepared.contend(parse, with: existing, allocator: client.allocator) {
                self.prepared = prepared
                replies.sent(.init(kind: .parse, statement: existing.number, contested: true))
                return .replace([contender.parse])
            }
            // As PostgreSQL: a name in use must be closed before it is prepared again.
            refuseBatch(ErrorResponse(sqlState: "42P05", message: "prepared statement \"\(parse.name)\" already exists"), now: false)
            return .drop
        }
        let statement = prepared.register(parse, allocator: client.allocator)
        self.prepared = prepared
        connection?.preparedStatements.insert(statement.number)
        replies.sent(.init(kind: .parse, statement: statement.number))
        return .replace([statement.parse])
    }

    /// The Parse that prepares the client's statement on this connection, to go before what uses
    /// it, when the connection does not have it yet (its ParseComplete is the proxy's, not sent on).
    private func parseIfMissing(_ statement: PreparedStatements.Statement, on connection: UpstreamConnection) -> ByteBuffer? {
        guard connection.preparedStatements.insert(statement.number).inserted else { return nil }
        replies.sent(.init(kind: .parse, added: true, statement: statement.number))
        return statement.parse
    }

    /// In transaction mode, a Bind of a statement the client has not prepared here refuses the
    /// batch (see `noSuchStatement`) and is dropped.
    private func renameBind(_ frame: PGFrame, wasOpen: Bool) -> FrameDecision {
        let payload = frame.payload
        guard transactionPooling, prepared != nil, let connection,
              let parts = PreparedStatements.bindParts(payload)
        else { return .forward }
        guard parts.nameLength > 0 else {
            if unnamedLend == lends { return .forward }
            return unnamedParseAhead() ?? refuseBatch(noSuchStatement(named: ""), wasOpen: wasOpen)
        }
        // The name and the portal are read in place: no String is made for a Bind of a statement
        // named recently (see PreparedStatements.statement(named:)).
        let found: PreparedStatements.Statement? = payload.withUnsafeReadableBytes { raw in
            guard let statement = prepared?.statement(named: UnsafeRawBufferPointer(rebasing: raw[parts.nameStart ..< parts.nameStart + parts.nameLength]))
            else { return nil }
            PreparedStatements.writeRenamedBindHeader(into: &connection.scratch, portal: UnsafeRawBufferPointer(rebasing: raw[0 ..< parts.nameStart]),
                                                      statement: statement.nameBytes, restLength: raw.count - parts.restStart)
            return statement
        }
        guard let statement = found else {
            return refuseBatch(noSuchStatement(named: Self.statementName(ofBind: payload)), wasOpen: wasOpen)
        }
        // The payload follows the frame's type byte and length.
        return .rebind(parse: parseIfMissing(statement, on: connection), header: connection.scratch, restAt: 5 + parts.restStart)
    }

    /// In transaction mode, a Describe of a statement the client does not have here refuses the
    /// batch (see `noSuchStatement`) and is dropped.
    private func renameStatementTarget(_ frame: PGFrame, wasOpen: Bool) -> FrameDecision {
        let isClose = frame.type == FrontendMessageID.close.rawValue
        var payload = frame.payload
        guard transactionPooling, let kind = payload.readInteger(as: UInt8.self), kind == PGTargetKind.statement.rawValue,
              let name = payload.readNullTerminatedString()
        else {
            replies.sent(.init(kind: isClose ? .close : .describe))
            return .forward
        }
        if isClose, !statementEffects.isEmpty { statementEffects[name] = nil }
        guard let statement = name.isEmpty ? nil : prepared?[name] else {
            if name.isEmpty ? unnamedLend == lends || isClose : prepared == nil {
                if isClose, name.isEmpty { unnamedParse = nil }
                replies.sent(.init(kind: isClose ? .close : .describe))
                return .forward
            }
            guard isClose else {
                if name.isEmpty, let ahead = unnamedParseAhead() {
                    replies.sent(.init(kind: .describe))
                    return ahead
                }
                return refuseBatch(noSuchStatement(named: name), wasOpen: wasOpen)
            }
            // Closing a name it does not have is no error (as on PostgreSQL), and must not close
            // what an earlier borrower left under that name: a name no statement ever has.
            replies.sent(.init(kind: .close))
            var buffer = client.allocator.buffer(capacity: 16)
            FrontendMessage.close(Close(kind: .statement, name: Self.neverPrepared)).encode(into: &buffer)
            return .replace([buffer])
        }
        if isClose {
            prepared?.remove(name)
            // Should the server skip this Close (an earlier message of the batch failed), the
            // statement stays prepared on the connection: ReplyQueue gives the number back.
            let closing = connection?.preparedStatements.remove(statement.number) != nil
            replies.sent(.init(kind: .close, statement: closing ? statement.number : 0))
            var buffer = client.allocator.buffer(capacity: 32)
            FrontendMessage.close(Close(kind: .statement, name: statement.proxyName)).encode(into: &buffer)
            return .replace([buffer])
        }
        guard let connection else {
            replies.sent(.init(kind: .describe))
            return .forward
        }
        let parse = parseIfMissing(statement, on: connection)
        replies.sent(.init(kind: .describe))
        var buffer = client.allocator.buffer(capacity: 32)
        FrontendMessage.describe(Describe(kind: .statement, name: statement.proxyName)).encode(into: &buffer)
        return .replace((parse.map { [$0] } ?? []) + [buffer])
    }

    /// A Parse of `DEALLOCATE name` (psycopg's pipeline mode sends its cache evictions so): the
    /// client's statement is upstream under its proxy name, so the SQL names that; a name the
    /// client has not prepared is its error (forwarded, it could have dropped another client's
    /// statement, named by its proxy name). The connection keeps the number in its set whether
    /// the DEALLOCATE runs or not: nothing binds that number again.
    private func deallocateByParse(_ frame: PGFrame, name: String, wasOpen: Bool) -> FrameDecision {
        guard let statement = prepared?[name] else {
            return refuseBatch(noSuchStatement(named: name), wasOpen: wasOpen)
        }
        var payload = frame.payload
        guard var parse = try? Parse.decode(payload: &payload) else { return renameParse(frame) }
        prepared?.remove(name)
        parse.query = "DEALLOCATE " + ContextInjector.identifier(statement.proxyName)
        var encoded = client.allocator.buffer(capacity: parse.query.utf8.count + parse.name.utf8.count + 16)
        FrontendMessage.parse(parse).encode(into: &encoded)
        let decision = renameParse(PGFrame(type: frame.type, payload: encoded.getSlice(at: encoded.readerIndex + 5, length: encoded.readableBytes - 5)!))
        // An unnamed Parse is forwarded as it came: the rewritten bytes go instead.
        if case .forward = decision { return .replace([encoded]) }
        return decision
    }

    /// The client's unnamed statement, answered by the proxy when parsed, prepared on this lent
    /// connection ahead of the message that uses it (its ParseComplete is the proxy's); nil
    /// when the client has none.
    private func unnamedParseAhead() -> FrameDecision? {
        guard let parse = unnamedParse else { return nil }
        unnamedLend = lends
        replies.sent(.init(kind: .parse, added: true))
        return .ahead(parse)
    }

    /// A statement name no proxy statement has (theirs are `tp<session>_<n>`, n from 1) and no
    /// client's statement has on the wire (each is renamed so).
    private static let neverPrepared = "tp_0"

    /// Transaction mode: a Bind or Describe of a statement the client has not prepared (on this
    /// lent connection, for the unnamed one) is answered as PostgreSQL would answer it on a
    /// connection of the client's own; forwarded, it would run or describe whatever an earlier
    /// borrower left there under that name (a proxy name, or its unnamed statement).
    private func noSuchStatement(named name: String) -> ErrorResponse {
        ErrorResponse(sqlState: "26000", message: name.isEmpty ? "unnamed prepared statement does not exist"
                                                               : "prepared statement \"\(name)\" does not exist",
                      hint: name.isEmpty ? "In transaction pooling mode the unnamed statement lasts for one transaction: "
                          + "send its Parse in the same transaction as its Bind, or use a named statement." : nil)
    }

    /// The statement name a Bind payload carries ("" for the unnamed one, or a malformed Bind).
    private static func statementName(ofBind payload: ByteBuffer) -> String {
        guard let parts = PreparedStatements.bindParts(payload) else { return "" }
        return payload.getString(at: payload.readerIndex + parts.nameStart, length: parts.nameLength) ?? ""
    }

    /// A Bind of a statement with effects (RESET ALL, DISCARD ALL, DEALLOCATE ALL, a SET of a
    /// read-back setting) runs them again.
    private func bound(_ payload: ByteBuffer) {
        guard let effects = statementEffects[Self.statementName(ofBind: payload)] else { return }
        if effects.contains(.resetsContext) { reapplyAfterSync = true }
        if effects.contains(.changesSettings) { readBackSettingsLater() }
        if effects.contains(.dropsStatements) {
            prepared?.removeAll()
            connectionStatementsDropped()
            statementEffects = statementEffects.filter { $0.key.isEmpty }
        }
    }

    /// A client's DISCARD ALL or DEALLOCATE ALL went upstream: its statements are gone for the
    /// client (as on PostgreSQL, should it run), and the connection's are made so by the next
    /// prelude (see UpstreamConnection.preparedStatementsUncertain).
    private func connectionStatementsDropped() {
        connection?.preparedStatements.removeAll()
        connection?.preparedStatementsUncertain = true
    }

    /// A statement may change a read-back setting (`pool.track_extra_parameters`), whose new
    /// value the server does not report: the proxy asks for the values once the transaction is
    /// over (`readBackSettings`). Until then the connection's record of them is unknown, so
    /// should it go back to the pool unread (the client left), its next lend sets or resets
    /// each of them, whoever borrows it.
    private func readBackSettingsLater() {
        settingsToReadBack = true
        markReadBackUnknown()
    }

    private func markReadBackUnknown() {
        guard let connection else { return }
        for name in transactionGuard.readBack { connection.applied[name] = UpstreamConnection.unknownContext }
        connection.appliedSettings = nil
    }

    /// The read-back settings as the transaction left them, each with the value RESET would give
    /// it on this connection (the pool's connections start with none of the client's).
    private func readBackSettings() {
        let names = transactionGuard.readBack.sorted().map(ContextInjector.literal).joined(separator: ", ")
        inject(["SELECT name, setting, reset_val FROM pg_catalog.pg_settings WHERE name IN (\(names))"], purpose: .readBack)
    }

    /// The read-back values are the client's from now on (restored on every lend): a value equal
    /// to the reset value is no setting of the client's.
    private func readBackFinished(_ rows: [[String?]]) {
        guard let connection else { return }
        var desired = desiredSettings.values
        for name in transactionGuard.readBack {
            desired.removeValue(forKey: name)
            connection.applied.removeValue(forKey: name)
        }
        for row in rows where row.count == 3 {
            guard let name = row[0], let value = row[1], transactionGuard.readBack.contains(name), value != row[2] else { continue }
            desired[name] = value
            connection.applied[name] = value
        }
        desiredSettings = runtime.settingsInterner.intern(desired)
        if connection.applied == desired { connection.appliedSettings = desiredSettings }
        // A statement sent behind the read-back changed them again: unknown until the next one.
        if settingsToReadBack { markReadBackUnknown() }
    }

    // MARK: - Guard

    /// The guard's verdict on a Query's or Parse's SQL, with switch users' tenant changes checked.
    private func inspect(_ payload: ByteBuffer, skippingName: Bool) -> GuardVerdict {
        guard let statementGuard else { return .allow }
        var verdict = withSQL(payload, skippingName: skippingName) { statementGuard.inspect(utf8: $0) }
        if verdict.refusal == nil, isSwitchUser {
            for change in verdict.tenantSettingChanges where change.name == runtime.injector.tenantSetting {
                if let value = change.value, !switchAllowed(to: value) {
                    verdict.refusal = ProxyError.switchRefused(value).message
                }
            }
        }
        return verdict
    }

    private func inspectForTransactionMode(_ payload: ByteBuffer, skippingName: Bool) -> TransactionModeVerdict {
        withSQL(payload, skippingName: skippingName) { transactionGuard.inspect(utf8: $0) }
    }

    private func withSQL<T>(_ payload: ByteBuffer, skippingName: Bool, _ body: (UnsafeRawBufferPointer) -> T) -> T {
        // The NUL terminators are found with memchr on the bytes in place (searching the
        // ByteBufferView cost about ten instructions a byte).
        payload.withUnsafeReadableBytes { raw in
            func terminator(from start: Int) -> Int {
                guard start < raw.count, let base = raw.baseAddress,
                      let found = memchr(base + start, 0, raw.count - start) else { return raw.count }
                return base.distance(to: UnsafeRawPointer(found))
            }
            let sqlStart = skippingName ? min(terminator(from: 0) + 1, raw.count) : 0
            return body(UnsafeRawBufferPointer(rebasing: raw[sqlStart..<terminator(from: sqlStart)]))
        }
    }

    /// A switch user's accepted session-level SET of the tenant becomes its context, so the proxy
    /// restores it on every connection it borrows later. What the connection carries is not
    /// known until its transaction ends, and then not seen: a rollback (ROLLBACK, an error, an
    /// implicit transaction of several statements failing) puts the previous context back. Taken
    /// as the new one, the connection went to the next borrower of that context (a pinned
    /// client of the tenant) with the previous one: another tenant's. So it is marked unknown,
    /// and its next lend sets the borrower's context whatever it carries.
    private func noteSwitch(_ verdict: GuardVerdict) {
        guard isSwitchUser else { return }
        for change in verdict.tenantSettingChanges where change.name == runtime.injector.tenantSetting && !change.isLocal {
            if let value = change.value {
                binding?.tenant = runtime.map.tenant(named: value) ?? Tenant(name: value, id: value)
            } else {
                binding?.tenant = nil
            }
            connection?.context = UpstreamConnection.unknownContext
        }
    }

    /// A switch user may set the tenant to the id of an active tenant it may use.
    private func switchAllowed(to value: String) -> Bool {
        let map = runtime.map
        guard let user = binding.flatMap({ map[user: $0.user] }) else { return false }
        if let tenant = map.tenant(named: value) {
            return tenant.id == value && tenant.status == .active && map.user(user, mayUse: tenant)
        }
        guard TenantIdentifier.isUUID(value), runtime.config.tenancy.lookupUpstream else { return false }
        let uuid = value.lowercased()
        guard user.mayUseAnyTenant || user.tenants.contains(where: { $0.lowercased() == uuid }) else { return false }
        if case .hit(let record?) = runtime.cachedLookup(uuid) {
            return record.status == .active && !record.deleted
        }
        return false
    }

    /// After a reload or SUSPEND, a session whose tenant was suspended, removed or moved ends at
    /// its next statement outside a transaction: a transaction under way finishes first (KILL
    /// is the way to end it at once).
    private func tenantStillActive() -> Bool {
        let generation = runtime.mapGeneration
        guard generation != seenMapGeneration else { return true }
        guard transactionStatus == .idle else { return true }
        seenMapGeneration = generation
        guard let tenant = binding?.tenant else { return true }
        if runtime.isSuspended(tenant.id) {
            logger.info("tenant suspended from the console; ending session")
            fail(.tenantNotActive(tenant.name))
            return false
        }
        let map = runtime.map
        if let current = map.tenants[tenant.name], current.id == tenant.id {
            if current.status == .active {
                // A new placement: borrowed from next time, or (session mode) the session ends.
                refreshPlacement()
                return phase != .closed
            }
        } else if map.tenant(named: tenant.id) == nil, TenantIdentifier.isUUID(tenant.id) {
            // Found in the upstream's tenants table, not in the map: a reload does not concern it.
            return true
        }
        logger.info("tenant no longer active; ending session")
        fail(.tenantNotActive(tenant.name))
        return false
    }

    // MARK: - Upstream events

    func upstreamRead(_ data: ByteBuffer) {
        guard phase != .closed else { return }
        tally?.counters.bytesSent += data.readableBytes
        var buffer = ByteBuffer.joining(data, after: &upstreamPending)
        do {
            if phase == .connectingUpstream, upstreamMachine != nil {
                try processUpstreamStartup(&buffer)
            }
            if phase == .connectingUpstream || phase == .relaying {
                try relayUpstreamMessages(&buffer)
            }
        } catch {
            logger.warning("upstream sent an unreadable message", metadata: ["error": "\(error)"])
            connection?.broken = true
            fail(.upstreamProtocol("unreadable message"))
            return
        }
        if buffer.readableBytes > 0, phase != .closed, connection != nil {
            upstreamPending = buffer
        }
    }

    func upstreamReadComplete() {
        clientOut.flush()
    }

    func upstreamClosed() {
        guard phase != .closed else { return }
        connection?.broken = true
        if clientTerminated {
            close()
        } else if phase == .connectingUpstream {
            fail(.upstreamUnavailable)
        } else {
            logger.warning("upstream connection lost")
            fail(.upstreamLost)
        }
    }

    func upstreamWritabilityChanged() {
        guard let upstream, phase == .relaying, !clientPaused else { return }
        setClientReading(upstream.isWritable)
    }

    private func relayUpstreamMessages(_ buffer: inout ByteBuffer) throws {
        let original = buffer
        var runStart = buffer.readerIndex
        func emitRun(upTo end: Int) {
            if end > runStart, let slice = original.getSlice(at: runStart, length: end - runStart) {
                clientOut.write(slice)
            }
        }
        while phase != .closed, connection != nil, let (type, size) = try backendDecoder.peekHeader(in: buffer) {
            let frameStart = buffer.readerIndex
            let frameEnd = frameStart + size
            if injection == nil, phase == .relaying {
                // Most replies (rows, completions, ReadyForQuery) need no more than their header:
                // skipped over without a slice of each (a retain and release per message).
                switch type {
                case BackendMessageID.readyForQuery.rawValue:
                    let status = size > 5 ? buffer.getInteger(at: frameStart + 5, as: UInt8.self) : nil
                    buffer.moveReaderIndex(to: frameEnd)
                    let note = readyForQuery(status: status)
                    switch note {
                    case .plain:
                        break
                    case .answered, .answeredThenReapply:
                        // The proxy's own answer goes just before this ReadyForQuery.
                        emitRun(upTo: frameStart)
                        runStart = frameStart
                        // (Each `.answered` cycle was queued with its answer, and neither is
                        // ever dropped alone; an empty list would be a bug, not a reason to trap.)
                        writeToClient(answers.isEmpty ? [] : answers.removeFirst(), flush: false)
                        if case .answeredThenReapply = note {
                            emitRun(upTo: frameEnd)
                            runStart = frameEnd
                            reapplyContext()
                        }
                    case .reapply:
                        emitRun(upTo: frameEnd)
                        runStart = frameEnd
                        reapplyContext()
                    }
                    continue
                case BackendMessageID.errorResponse.rawValue:
                    tally?.counters.errors += 1
                    buffer.moveReaderIndex(to: frameEnd)
                    let undone = replies.failed()
                    let renamed = prepared != nil ? clientFacingError(original, at: frameStart, size: size) : nil
                    if !undone.isEmpty || renamed != nil {
                        emitRun(upTo: renamed == nil ? frameEnd : frameStart)
                        if let renamed { clientOut.write(renamed) }
                        runStart = frameEnd
                        undo(undone)
                    }
                    continue
                case BackendMessageID.parseComplete.rawValue:
                    buffer.moveReaderIndex(to: frameEnd)
                    if let number = replies.firstContestedParse, prepared?.contenderPrepared(number) == true {
                        // The earlier Parse of the name failed (its undo took the number off).
                        connection?.preparedStatements.insert(number)
                    }
                    if replies.parseComplete() {
                        // Reply to a Parse the proxy added to re-prepare a statement: not the client's.
                        emitRun(upTo: frameStart)
                        runStart = frameEnd
                    }
                    continue
                case BackendMessageID.parameterStatus.rawValue where transactionPooling:
                    break
                case BackendMessageID.bindComplete.rawValue:
                    replies.completed(by: .bind)
                    buffer.moveReaderIndex(to: frameEnd)
                    continue
                case BackendMessageID.closeComplete.rawValue:
                    replies.completed(by: .close)
                    buffer.moveReaderIndex(to: frameEnd)
                    continue
                case BackendMessageID.noData.rawValue, BackendMessageID.rowDescription.rawValue:
                    replies.completed(by: .describe)
                    buffer.moveReaderIndex(to: frameEnd)
                    continue
                case BackendMessageID.commandComplete.rawValue, BackendMessageID.emptyQueryResponse.rawValue,
                     BackendMessageID.portalSuspended.rawValue:
                    replies.completed(by: .execute)
                    buffer.moveReaderIndex(to: frameEnd)
                    continue
                default:
                    buffer.moveReaderIndex(to: frameEnd)
                    continue
                }
            }
            guard let frame = try backendDecoder.next(from: &buffer) else { break }
            if injection != nil {
                try consumeInjected(frame)
                runStart = frameEnd
                continue
            }
            guard phase == .relaying else { continue }
            switch frame.type {
            case BackendMessageID.parameterStatus.rawValue where transactionPooling:
                var payload = frame.payload
                if let status = try? ParameterStatus.decode(payload: &payload) {
                    connection?.parameters[status.name] = status.value
                    let name = status.name.lowercased()
                    if Self.trackedParameters.contains(name), desiredSettings[name] != status.value {
                        var changed = desiredSettings.values
                        changed[name] = status.value
                        desiredSettings = runtime.settingsInterner.intern(changed)
                        // The connection had this client's settings (restored when lent), and now this one too
                        // (unless a read-back setting's value is unknown: then each lend compares).
                        connection?.applied[name] = status.value
                        connection?.appliedSettings = connection?.applied == changed ? desiredSettings : nil
                    }
                }
            default:
                continue
            }
        }
        if phase == .relaying {
            emitRun(upTo: buffer.readerIndex)
        }
        if transactionPooling, phase == .relaying, connection != nil, transactionStatus == .idle, !awaitingReply,
           buffer.readableBytes == 0 {
            // The read-complete event goes to the connection's next owner: flush our part now.
            clientOut.flush()
            if settingsToReadBack {
                // One more round trip, after the client has its answer; the connection goes
                // back when it is answered.
                settingsToReadBack = false
                readBackSettings()
                return
            }
            giveBack()
            upstreamPending = nil
            if clientPending != nil { resumeClient() }
        }
        if phase == .relaying, transactionStatus == .idle, !awaitingReply, runtime.isDraining || tokenExpired {
            // Between transactions: a draining proxy or an expired token ends the session here.
            endAtBoundary()
        }
    }

    /// An upstream error naming one of the client's statements by its proxy name (a Bind
    /// pipelined behind a batch whose Parse of the statement the server skipped), re-encoded
    /// with the client's name; nil for any other error (nearly all: one scan of its bytes).
    private func clientFacingError(_ buffer: ByteBuffer, at start: Int, size: Int) -> ByteBuffer? {
        guard let prepared else { return nil }
        let prefix = prepared.proxyPrefix
        let found = buffer.withUnsafeReadableBytes { raw -> Bool in
            let offset = start - buffer.readerIndex
            return UnsafeRawBufferPointer(rebasing: raw[offset ..< offset + size]).firstRange(of: prefix.utf8) != nil
        }
        guard found, var payload = buffer.getSlice(at: start + 5, length: size - 5),
              var error = try? ErrorResponse.decode(payload: &payload) else { return nil }
        var changed = false
        for index in error.fields.indices {
            if let text = prepared.clientFacing(error.fields[index].value) {
                error.fields[index].value = text
                changed = true
            }
        }
        guard changed else { return nil }
        var out = client.allocator.buffer(capacity: size + 16)
        error.encode(into: &out)
        return out
    }

    /// What PostgreSQL discarded after an extended message failed (see ReplyQueue). A Parse
    /// prepared nothing: the connection does not have the statement, and a client's own Parse
    /// made no statement of its own either. A Close closed nothing. A Query or FunctionCall gets
    /// no ReadyForQuery; a RESET ALL among them did not run, so the client, held until its
    /// context was re-applied, goes on (once what is being relayed is written).
    private func undo(_ undone: [ReplyQueue<CycleNote>.Item]) {
        var resume = false
        for item in undone {
            switch item.kind {
            case .parse where item.contested:
                prepared?.contenderFailed(item.statement)
            case .parse where item.statement != 0:
                connection?.preparedStatements.remove(item.statement)
                if !item.added { prepared?.remove(number: item.statement) }
            case .parse where !item.added:
                // The client's unnamed statement was refused or skipped: none to send ahead.
                unnamedParse = nil
            case .close where item.statement != 0:
                connection?.preparedStatements.insert(item.statement)
            case .query:
                if case .reapply? = item.note { resume = true }
            default:
                break
            }
        }
        if resume {
            clientOut.flush()
            resumeClient()
        }
    }

    /// Records a ReadyForQuery's transaction status and returns what the proxy owes the client there.
    private func readyForQuery(status byte: UInt8?) -> CycleNote {
        let status = byte.flatMap(TransactionStatus.init(rawValue:)) ?? .idle
        transactionStatus = status
        cycles &+= 1
        if status != .idle, !inTransactionWatch { joinTransactionWatch() }
        // One note outstanding is the usual case: removeLast takes it without removeFirst's
        // shifting (Array.replaceSubrange, ~150 instructions a transaction).
        let note = replies.readyForQuery() ?? .plain
        if let tally {
            tally.counters.queries += 1
            // Answered by the proxy (a refusal, DEALLOCATE): no transaction ran upstream.
            switch note {
            case .answered, .answeredThenReapply:
                break
            case .plain, .reapply:
                if status == .idle { tally.counters.transactions += 1 }
            }
        }
        return note
    }

    /// After RESET ALL / DISCARD ALL ran: the context (and in transaction mode the settings) again,
    /// before the client's next message. In a failed transaction the reset is rolled back with it,
    /// to what the connection carried when the transaction began: not necessarily this client's
    /// context (a switch user's SET in the same transaction), so the next lend sets it anew.
    private func reapplyContext() {
        guard transactionStatus != .failed, let connection else {
            connection?.context = UpstreamConnection.unknownContext
            resumeClient()
            return
        }
        let prelude = transactionPooling ? preludeQueries(for: connection, keepingUnknown: true) : contextQueries(for: connection)
        if prelude.isEmpty {
            resumeClient()
        } else {
            inject(prelude, purpose: .reapply)
        }
    }

    /// Session mode after RESET ALL / DISCARD ALL: the context again.
    private func contextQueries(for connection: UpstreamConnection) -> [String] {
        guard let statements = wantedContext else { return [] }
        connection.context = statements
        return [statements]
    }

    // MARK: - Cancel

    private func forwardCancel(_ request: CancelRequest) {
        phase = .closed
        let known = CancelSender.sendToHolder(request, runtime: runtime, on: client.eventLoop, logger: logger)
        client.close(promise: nil)
        guard !known else { return }
        // A key another instance issued (its id is in the process id): pass it on as is.
        let config = runtime.config
        let instance = SessionRegistry.instance(of: request.processID)
        if instance != 0, instance != config.server.instanceID, let peer = config.peers.first(where: { $0.instanceID == instance }) {
            logger.debug("cancel request forwarded to peer", metadata: ["peer": "\(peer.instanceID)"])
            runtime.metrics.cancelRequest(outcome: .peer)
            CancelSender.send(request, host: peer.host, port: peer.port, on: client.eventLoop,
                              timeoutSeconds: config.upstream.connectTimeoutSeconds, logger: logger, what: "peer")
            return
        }
        logger.info("cancel request with unknown key ignored")
        runtime.metrics.cancelRequest(outcome: .unknownKey)
    }

    // MARK: - Shutdown

    /// Called on the session's loop when the proxy drains. Sessions keep working; each ends with
    /// FATAL 57P01 at its next transaction boundary (see endAtBoundary), never inside a
    /// transaction. A session still logging in is refused.
    func drain() {
        guard phase != .closed else { return }
        if phase == .startup {
            fail(.notAcceptingConnections)
        } else if phase == .admin {
            fail(.shuttingDown)
        } else if phase == .relaying, transactionStatus == .idle, !awaitingReply, connection == nil || !transactionPooling,
                  clientPending == nil {
            // Idle between transactions: nothing is lost by ending now.
            endAtBoundary()
        }
    }

    /// KILL from the admin console, on this session's loop: ends the session at once if it
    /// belongs to `tenantID`, even inside a transaction (its upstream connection is then
    /// discarded, never lent again). True when it did.
    func kill(ifTenant tenantID: String) -> Bool {
        guard phase == .relaying || phase == .connectingUpstream, binding?.tenant?.id == tenantID else { return false }
        fail(.killedByAdmin)
        return true
    }

    /// Ends the session at once (drain timeout).
    func terminate() {
        fail(.shuttingDown)
    }

    /// Out of line: the relay's ReadyForQuery path stays small enough to be inlined.
    @inline(never)
    private func joinTransactionWatch() {
        guard let watch = runtime.transactionWatch(for: client.eventLoop) else { return }
        inTransactionWatch = watch.join(self)
    }

    /// The loop's IdleTransactionWatch let this session go (its transaction ended, or the
    /// timeout was turned off).
    func leftTransactionWatch() {
        inTransactionWatch = false
    }

    /// Idle inside a transaction for `[pool] idle_transaction_timeout_seconds`: FATAL 25P03, as
    /// PostgreSQL's idle_in_transaction_session_timeout. The upstream connection is closed with
    /// the transaction open (never lent again), so the server rolls it back.
    func idleTransactionTimedOut(seconds: Int) {
        inTransactionWatch = false
        let activity = transactionActivity
        guard activity.inTransaction, !activity.busy else { return }
        logger.info("ended client idle in transaction", metadata: ["timeout_seconds": "\(seconds)"])
        runtime.metrics.idleTransactionTimeout(tenant: binding?.tenant?.id)
        fail(.idleTransactionTimeout(seconds: seconds))
    }

    // MARK: - Admin console

    private func startAdminConsole(user: String) {
        guard runtime.config.admin.users.contains(user) else {
            logger.info("refused client: not an admin user")
            return refuseLogin(.adminOnly, count: false)
        }
        if runtime.isDraining { return fail(.notAcceptingConnections) }
        guard let key = runtime.registry.register(self) else { return fail(.tooManyClients) }
        proxyKey = key
        runtime.countLogIn(false)  // the registry counts it now (see `phase`)
        logger.info("admin console session")
        phase = .admin
        let console = AdminConsole(runtime: runtime, channel: client, user: user, maxMessageBytes: runtime.config.server.maxMessageBytes) {
            [weak self] in self?.close()
        }
        admin = console
        var messages: [BackendMessage] = [.authentication(.ok)]
        messages += AdminConsole.parameters.map { .parameterStatus($0) }
        messages.append(.backendKeyData(key))
        messages.append(.readyForQuery(ReadyForQuery(status: .idle)))
        writeToClient(messages, flush: true)
        if var held = clientPending {
            clientPending = nil
            console.read(held)
            held.clear()
        }
    }

    /// SHOW CLIENTS; on this session's loop. Nil while it logs in.
    func clientView() -> ClientView? {
        guard let proxyKey, phase != .closed else { return nil }
        let state: String
        if phase == .admin {
            state = "active"
        } else if phase == .connectingUpstream {
            state = "login"
        } else if heldByPause {
            state = "paused"
        } else if waiterID != nil {
            state = "waiting"
        } else if transactionStatus != .idle || awaitingReply {
            state = "active"
        } else {
            state = "idle"
        }
        let address = client.remoteAddress
        return ClientView(processID: proxyKey.processID, kind: phase == .admin ? "admin" : "client", user: userName, database: databaseName,
                          tenantID: binding?.tenant?.id ?? "", tenantName: binding?.tenant?.name ?? "", state: state,
                          address: address?.ipAddress ?? "", port: address?.port ?? 0, connectedAt: connectedAt, tls: tlsActive,
                          poolMode: transactionPooling ? "transaction" : "session", cluster: phase == .admin ? "" : cluster,
                          poolKey: poolKey, hasConnection: connection != nil)
    }

    /// SHOW SERVERS: the upstream connection this session holds, if any.
    func serverView() -> ServerView? {
        guard let connection, phase == .relaying else { return nil }
        return ServerView(key: connection.key, state: "active", tenantID: binding?.tenant?.id ?? "", host: connection.cancelHost,
                          port: connection.cancelPort, backendPID: connection.backendKey?.processID ?? 0, connectedAt: connection.openedAt,
                          clientProcessID: proxyKey?.processID)
    }

    /// PAUSE waits while this is true: the session has work in flight upstream for the target.
    func isBusy(for target: PauseTarget) -> Bool {
        guard phase == .relaying || phase == .connectingUpstream else { return false }
        switch target {
        case .all: break
        case .tenant(let id): guard binding?.tenant?.id == id else { return false }
        case .cluster(let name): guard cluster == name else { return false }
        }
        if transactionPooling { return connection != nil }
        return transactionStatus != .idle || awaitingReply
    }

    // MARK: - Helpers

    private func writeToClient(_ messages: [BackendMessage], flush: Bool) {
        guard !messages.isEmpty else { return }
        var buffer = client.allocator.buffer(capacity: 256)
        for message in messages {
            message.encode(into: &buffer)
        }
        clientOut.write(buffer)
        if flush { clientOut.flush() }
    }

    private func failRelayingServerError(_ error: ErrorResponse) {
        guard phase != .closed else { return }
        writeToClient([.errorResponse(error)], flush: true)
        close()
    }

    /// How long a session that must end at a transaction boundary (expired token, drain) waits
    /// for the client's next message before it ends unasked.
    static let boundaryEndDelay: TimeAmount = .milliseconds(100)

    /// Ends the session between transactions (an expired token, a draining proxy) with its FATAL
    /// error as the answer to the client's next message, or after `boundaryEndDelay` if none
    /// comes. Not at once: an error written right behind the ReadyForQuery just relayed is read
    /// in the same pass, while libpq is idle, and libpq takes it for a notice; the application
    /// then sees only "connection closed" on its next query, with no SQLSTATE.
    private func endAtBoundary() {
        tokenTimer?.cancel()
        tokenTimer = client.eventLoop.scheduleTask(in: Self.boundaryEndDelay) { [weak self] in
            _ = self?.endIfDue()
        }
    }

    /// Ends the session if it is between transactions and must end there; true when it did.
    private func endIfDue() -> Bool {
        guard phase == .relaying, transactionStatus == .idle, !awaitingReply else { return false }
        if runtime.isDraining {
            fail(.shuttingDown)
        } else if tokenExpired {
            fail(.tokenExpired)
        } else {
            return false
        }
        return true
    }

    /// Sends the error to the client and closes both connections.
    private func fail(_ error: ProxyError) {
        guard phase != .closed else { return }
        writeToClient([.errorResponse(error.errorResponse)], flush: true)
        close()
    }

    private func close() {
        guard phase != .closed else { return }
        phase = .closed
        clientPending = nil
        upstreamPending = nil
        if let proxyKey {
            runtime.registry.unregister(proxyKey.processID)
        }
        if let tenantCounted {
            runtime.removeTenantClient(tenantCounted)
            self.tenantCounted = nil
        }
        if let pool { runtime.poolBudget.clientLeft(pool) }
        tokenTimer?.cancel()
        if let waiterID {
            pool?.cancelWait(waiterID)
            self.waiterID = nil
        }
        if heldByPause {
            heldByPause = false
            runtime.cancelPauseHold(self)
        }
        loginHandler?.loginOwner = nil
        loginHandler = nil
        admin?.close()
        if let connection {
            self.connection = nil
            if transactionPooling, let pool {
                // Mid-transaction state cannot be handed to another client: only an idle,
                // fully answered connection goes back.
                if transactionStatus != .idle || awaitingReply || connection.broken {
                    pool.discard(connection)
                    if let tenant = tenantLease { runtime.releaseTenantLease(tenant) }
                } else {
                    pool.release(connection, tenant: tenantLease)
                }
            } else {
                connection.owner = nil
                // What the client sent before leaving goes first (the writer holds small writes
                // until a flush), then Terminate, so the server does not log an unexpected EOF.
                connection.out.flush()
                let channel = connection.channel
                var terminate = channel.allocator.buffer(capacity: 5)
                FrontendMessage.terminate.encode(into: &terminate)
                channel.writeAndFlush(terminate).whenComplete { _ in channel.close(promise: nil) }
            }
        }
        client.close(promise: nil)
    }
}

extension ClientSession: IdleTransactionMember {
    var transactionActivity: TransactionActivity {
        TransactionActivity(inTransaction: phase == .relaying && transactionStatus != .idle,
                            busy: awaitingReply || clientPending != nil, cycles: cycles)
    }
}
