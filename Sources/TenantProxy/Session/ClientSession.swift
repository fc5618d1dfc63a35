import Logging
import NIOCore
import NIOPosix
import PGWire

/// One client connection and the upstream connection that serves it (session pooling: one upstream
/// connection per client for its life). Both channels live on the same EventLoop, so this class is
/// only ever touched from that loop and needs no lock.
///
/// Start-up and authentication are decided by `ClientStartupMachine` and `UpstreamStartupMachine`,
/// the tenant by `TenantResolver`. Before the client sees ReadyForQuery, the upstream connection
/// carries the tenant context (`ContextInjector`); after that, client messages pass the guard
/// and frames are relayed as slices of the bytes read, without re-encoding.
final class ClientSession {
    private enum Phase {
        case startup
        case connectingUpstream
        case relaying
        case closed
    }

    /// What the proxy owes the client when the upstream's next ReadyForQuery arrives: one entry
    /// per message that ends a query cycle (Query, Sync, FunctionCall), in order.
    private enum CycleNote {
        case plain
        /// The client's message was refused and replaced by a Sync: send this error before the RFQ.
        case refused(ErrorResponse)
        /// The cycle ran RESET ALL / DISCARD ALL: re-apply the context before anything else runs.
        case reapply
    }

    /// A query of the proxy's own on the upstream connection, whose replies the client never sees.
    private struct Injection {
        enum Purpose {
            case connectContext
            case lookup(uuid: String)
            case reapply
        }

        var purpose: Purpose
        var rows: [[String?]] = []
        var error: ErrorResponse?
    }

    let client: Channel
    private let runtime: ProxyRuntime
    private var logger: Logger
    private var phase: Phase = .startup

    private var frontendDecoder: PGFrontendDecoder
    private var backendDecoder: PGBackendDecoder
    private var startupMachine: ClientStartupMachine
    private var upstreamMachine: UpstreamStartupMachine?

    private var upstream: Channel?
    /// Client bytes not yet relayed: an incomplete message, or whole ones held while paused.
    private var clientPending: ByteBuffer?
    /// Upstream bytes not yet forming a whole message.
    private var upstreamPending: ByteBuffer?

    private var userNameTenant: String?
    private var binding: SessionBinding?
    private var statementGuard: StatementGuard?
    private var seenMapGeneration = 0
    private var pendingLookup: String?
    private(set) var proxyKey: BackendKeyData?

    /// Client messages are not relayed while the proxy runs its own query upstream.
    private var clientPaused = false
    private var injection: Injection?
    private var cycleNotes = CircularBuffer<CycleNote>(initialCapacity: 4)
    /// A Parse was refused: drop the client's messages up to its Sync, then answer with the error.
    private var refusedBatch: ErrorResponse?
    /// A Parse of this batch resets the context: re-apply after the batch's Sync.
    private var reapplyAfterSync = false

    /// Status of the last ReadyForQuery relayed: shutdown closes idle sessions at a boundary.
    private var transactionStatus: TransactionStatus = .idle
    /// The client said goodbye: the upstream closing next is expected, not an error.
    private var clientTerminated = false

    init(client: Channel, runtime: ProxyRuntime) {
        self.client = client
        self.runtime = runtime
        self.logger = runtime.logger
        let maxMessage = runtime.config.server.maxMessageBytes
        self.frontendDecoder = PGFrontendDecoder(maxMessageLength: maxMessage)
        self.backendDecoder = PGBackendDecoder(maxMessageLength: maxMessage)
        let trust = runtime.config.auth.trustLoopback && Self.isLoopback(client.remoteAddress)
        self.startupMachine = ClientStartupMachine(trust: trust, mockSecret: runtime.mockSecret)
        if let address = client.remoteAddress {
            logger[metadataKey: "client"] = "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        }
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

    private var awaitingReply: Bool { !cycleNotes.isEmpty || injection != nil }

    // MARK: - Client side events

    func clientRead(_ data: ByteBuffer) {
        guard phase != .closed else { return }
        var buffer = Self.append(data, to: &clientPending)
        processClientBytes(&buffer)
    }

    private func processClientBytes(_ buffer: inout ByteBuffer) {
        do {
            switch phase {
            case .startup:
                try processStartup(&buffer)
            case .relaying where !clientPaused:
                try relayClientMessages(&buffer)
            case .connectingUpstream, .relaying, .closed:
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
            if phase != .relaying || clientPaused {
                // Held bytes stay bounded: stop reading until they can go.
                client.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
            }
        }
    }

    /// Relays what was held while the proxy ran its own query or connected upstream.
    private func resumeClient() {
        guard phase == .relaying else { return }
        clientPaused = false
        client.setOption(ChannelOptions.autoRead, value: upstream?.isWritable ?? true).whenFailure { _ in }
        if var held = clientPending {
            clientPending = nil
            processClientBytes(&held)
            upstream?.flush()
        }
    }

    func clientReadComplete() {
        upstream?.flush()
    }

    func clientClosed() {
        guard phase != .closed else { return }
        logger.debug("client disconnected")
        close()
    }

    func clientWritabilityChanged() {
        // Backpressure: stop reading the upstream while the client cannot take more bytes.
        upstream?.setOption(ChannelOptions.autoRead, value: client.isWritable).whenFailure { _ in }
    }

    // MARK: - Start-up

    private func processStartup(_ buffer: inout ByteBuffer) throws {
        while phase == .startup, let part = try frontendDecoder.next(from: &buffer) {
            let action: ClientStartupMachine.Action
            switch part {
            case .startup(let packet):
                if case .startup(let startup) = packet, let name = startup.user {
                    let split = runtime.resolver().splitUserName(name)
                    userNameTenant = split.tenant
                    action = startupMachine.receive(packet, user: split.user, verifier: runtime.map[user: split.user]?.verifier)
                } else {
                    action = startupMachine.receive(packet, user: nil, verifier: nil)
                }
            case .frame(let frame):
                action = startupMachine.receive(frame)
            }
            run(action, remaining: &buffer)
        }
    }

    private func run(_ action: ClientStartupMachine.Action, remaining buffer: inout ByteBuffer) {
        switch action {
        case .refuseEncryption:
            // Bytes after an SSLRequest before our answer would be a TLS ClientHello sent blind.
            guard buffer.readableBytes == 0 else {
                fail(.protocolViolation("data sent before the encryption answer"))
                return
            }
            var answer = client.allocator.buffer(capacity: 1)
            answer.writeInteger(UInt8(ascii: "N"))
            client.writeAndFlush(answer, promise: nil)

        case .send(let messages):
            writeToClient(messages, flush: true)

        case .cancel(let request):
            forwardCancel(request)

        case .fail(let error):
            logger.info("refused client", metadata: ["sqlstate": "\(error.sqlState)", "reason": "\(error.message)"])
            fail(error)

        case .authenticated(let user, let startup, let messages):
            logger[metadataKey: "user"] = "\(user)"
            writeToClient(messages, flush: true)
            if runtime.isDraining {
                fail(.notAcceptingConnections)
                return
            }
            seenMapGeneration = runtime.mapGeneration
            let decision = runtime.resolver().resolve(startup: startup, user: user, userNameTenant: userNameTenant)
            let binding: SessionBinding
            switch decision {
            case .refused(let error):
                logger.info("refused client", metadata: ["sqlstate": "\(error.sqlState)", "reason": "\(error.message)"])
                fail(error)
                return
            case .bound(let bound):
                binding = bound
            case .lookup(let uuid, let bound):
                switch runtime.cachedLookup(uuid) {
                case .hit(let record):
                    guard case .bound(let found) = TenantResolver.finishLookup(bound, uuid: uuid, found: record) else {
                        fail(TenantResolver.finishLookup(bound, uuid: uuid, found: record).refusal ?? .tenantNotFound(uuid))
                        return
                    }
                    binding = found
                case .miss:
                    binding = bound
                    pendingLookup = uuid
                }
            }
            guard let key = runtime.registry.register(self) else {
                fail(.tooManyClients)
                return
            }
            bind(binding)
            proxyKey = key
            logger[metadataKey: "session"] = "\(key.processID)"
            phase = .connectingUpstream
            connectUpstream()
        }
    }

    private func bind(_ binding: SessionBinding) {
        self.binding = binding
        if let tenant = binding.tenant {
            logger[metadataKey: "tenant"] = "\(tenant.name)"
        }
        let mode: GuardPolicy.Mode
        switch binding.mode {
        case .pinned: mode = .pinned
        case .switch: mode = .switchTenant
        case .global: mode = .global
        }
        let settings: Set<String> = [runtime.config.tenancy.tenantSetting, runtime.config.tenancy.userSetting]
        statementGuard = mode == .global ? nil : StatementGuard(policy: GuardPolicy(tenantSettings: settings, mode: mode))
    }

    // MARK: - Upstream connection

    private func connectUpstream() {
        guard let binding else { return }
        let config = runtime.config.upstream
        let global = binding.mode == .global && config.globalUser != nil
        let user = global ? config.globalUser! : config.user
        let password = global ? config.globalPassword : config.password
        var parameters = binding.upstreamParameters
        parameters["user"] = user
        parameters["database"] = binding.upstreamDatabase
        parameters.removeValue(forKey: "replication")
        for key in parameters.keys where key.hasPrefix("_pq_.") {
            parameters.removeValue(forKey: key)
        }
        upstreamMachine = UpstreamStartupMachine(user: user, password: password)
        let upstreamStartup = StartupMessage(parameters: parameters)

        let bootstrap = ClientBootstrap(group: client.eventLoop)
            .channelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(Int64(config.connectTimeoutSeconds)))
            .channelInitializer { [self] channel in
                channel.pipeline.addHandler(UpstreamChannelHandler(session: self))
            }
        bootstrap.connect(host: config.host, port: config.port).whenComplete { [self] result in
            switch result {
            case .success(let channel):
                guard phase == .connectingUpstream else {
                    channel.close(promise: nil)
                    return
                }
                upstream = channel
                var buffer = channel.allocator.buffer(capacity: 256)
                upstreamStartup.encode(into: &buffer)
                channel.writeAndFlush(buffer, promise: nil)
            case .failure(let error):
                logger.warning("upstream connect failed", metadata: ["error": "\(error)"])
                fail(.upstreamUnavailable)
            }
        }
    }

    func upstreamRead(_ data: ByteBuffer) {
        guard phase != .closed else { return }
        var buffer = Self.append(data, to: &upstreamPending)
        do {
            if phase == .connectingUpstream, injection == nil {
                try processUpstreamStartup(&buffer)
            }
            if phase == .connectingUpstream || phase == .relaying {
                try relayUpstreamMessages(&buffer)
            }
        } catch {
            logger.warning("upstream sent an unreadable message", metadata: ["error": "\(error)"])
            fail(.upstreamProtocol("unreadable message"))
            return
        }
        if buffer.readableBytes > 0, phase != .closed {
            upstreamPending = buffer
        }
    }

    func upstreamReadComplete() {
        client.flush()
    }

    func upstreamClosed() {
        guard phase != .closed else { return }
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
        client.setOption(ChannelOptions.autoRead, value: upstream.isWritable).whenFailure { _ in }
    }

    private func processUpstreamStartup(_ buffer: inout ByteBuffer) throws {
        while phase == .connectingUpstream, injection == nil, let frame = try backendDecoder.next(from: &buffer) {
            let message = try BackendMessage.decode(frame)
            guard let action = upstreamMachine?.receive(message) else { return }
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
                upstreamReady(parameters: parameters, upstreamKey: key)
            }
        }
    }

    private var startupParameters: [ParameterStatus] = []

    private func upstreamReady(parameters: [ParameterStatus], upstreamKey: BackendKeyData?) {
        guard let proxyKey, let binding else { return }
        startupParameters = parameters
        if let upstreamKey {
            let config = runtime.config.upstream
            runtime.registry.setCancelTarget(
                .init(key: upstreamKey, host: config.host, port: config.port), for: proxyKey.processID)
        }
        if let uuid = pendingLookup {
            inject(runtime.injector.lookupStatements(uuid: uuid, userID: binding.userID), purpose: .lookup(uuid: uuid))
        } else if let statements = runtime.injector.statements(tenant: binding.tenant, userID: binding.userID) {
            inject(statements, purpose: .connectContext)
        } else {
            becomeReady()
        }
    }

    /// The upstream carries the context: the client gets its log-in replies and may start.
    private func becomeReady() {
        guard let proxyKey else { return }
        phase = .relaying
        var messages: [BackendMessage] = [.authentication(.ok)]
        messages += startupParameters.map { .parameterStatus($0) }
        messages.append(.backendKeyData(proxyKey))
        messages.append(.readyForQuery(ReadyForQuery(status: .idle)))
        startupParameters = []
        writeToClient(messages, flush: true)
        logger.debug("session ready")
        resumeClient()
    }

    // MARK: - Injected queries

    private func inject(_ sql: String, purpose: Injection.Purpose) {
        guard let upstream else { return }
        injection = Injection(purpose: purpose)
        var buffer = upstream.allocator.buffer(capacity: sql.utf8.count + 8)
        FrontendMessage.query(Query(query: sql)).encode(into: &buffer)
        upstream.writeAndFlush(buffer, promise: nil)
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
        case BackendMessageID.readyForQuery.rawValue:
            guard let finished = injection else { return }
            injection = nil
            finishInjection(finished)
        default:
            break  // RowDescription, CommandComplete, notices: the client never asked.
        }
    }

    private func finishInjection(_ finished: Injection) {
        if let error = finished.error {
            logger.error("tenant context query failed upstream", metadata: [
                "sqlstate": "\(error.sqlState ?? "?")", "message": "\(error.message ?? "")",
            ])
        }
        switch finished.purpose {
        case .connectContext:
            guard finished.error == nil else { return fail(.contextNotApplied) }
            becomeReady()
        case .reapply:
            guard finished.error == nil else { return fail(.contextNotApplied) }
            resumeClient()
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
                bind(bound)
                becomeReady()  // the lookup statements already set the context
            case .refused(let error):
                fail(error)
            case .lookup:
                fail(.lookupFailed)
            }
        }
    }

    // MARK: - Relaying

    private func relayClientMessages(_ buffer: inout ByteBuffer) throws {
        guard let upstream else { return }
        let original = buffer
        var runStart = buffer.readerIndex
        func emitRun(upTo end: Int) {
            if end > runStart, let slice = original.getSlice(at: runStart, length: end - runStart) {
                upstream.write(slice, promise: nil)
            }
        }
        while !clientPaused, phase == .relaying {
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
            case .replaceWithSync:
                emitRun(upTo: frameStart)
                runStart = buffer.readerIndex
                var sync = upstream.allocator.buffer(capacity: 5)
                FrontendMessage.sync.encode(into: &sync)
                upstream.write(sync, promise: nil)
            case .pauseAfter:
                clientPaused = true
            case .closed:
                return
            }
        }
        emitRun(upTo: buffer.readerIndex)
    }

    private enum FrameDecision {
        case forward
        case drop
        case replaceWithSync
        /// Forward it, then hold everything after it until the context is re-applied.
        case pauseAfter
        case closed
    }

    private func handleClientFrame(_ frame: PGFrame) -> FrameDecision {
        switch frame.type {
        case FrontendMessageID.query.rawValue:
            guard tenantStillActive() else { return .closed }
            let verdict = inspect(frame.payload, skippingName: false)
            if let refusal = verdict.refusal {
                cycleNotes.append(.refused(ProxyError.guardRefusal(refusal).errorResponse))
                return .replaceWithSync
            }
            if verdict.reapplyContextAfter {
                cycleNotes.append(.reapply)
                return .pauseAfter
            }
            cycleNotes.append(.plain)
            return .forward

        case FrontendMessageID.parse.rawValue:
            guard tenantStillActive() else { return .closed }
            if refusedBatch != nil { return .drop }
            let verdict = inspect(frame.payload, skippingName: true)
            if let refusal = verdict.refusal {
                refusedBatch = ProxyError.guardRefusal(refusal).errorResponse
                return .drop
            }
            if verdict.reapplyContextAfter { reapplyAfterSync = true }
            return .forward

        case FrontendMessageID.sync.rawValue:
            if let error = refusedBatch {
                refusedBatch = nil
                cycleNotes.append(.refused(error))
                return .forward
            }
            if reapplyAfterSync {
                reapplyAfterSync = false
                cycleNotes.append(.reapply)
                return .pauseAfter
            }
            cycleNotes.append(.plain)
            return .forward

        case FrontendMessageID.functionCall.rawValue:
            guard tenantStillActive() else { return .closed }
            if let guardian = statementGuard, let refusal = guardian.inspectFunctionCall().refusal {
                cycleNotes.append(.refused(ProxyError.guardRefusal(refusal).errorResponse))
                return .replaceWithSync
            }
            cycleNotes.append(.plain)
            return .forward

        case FrontendMessageID.terminate.rawValue:
            clientTerminated = true
            return .forward

        default:
            // Bind, Describe, Execute, Close, Flush, Copy*: part of a batch; dropped with a refused Parse.
            return refusedBatch == nil ? .forward : .drop
        }
    }

    /// The guard's verdict on a Query's or Parse's SQL, with switch users' tenant changes checked.
    private func inspect(_ payload: ByteBuffer, skippingName: Bool) -> GuardVerdict {
        guard let statementGuard else { return .allow }
        var sqlStart = payload.readerIndex
        if skippingName {
            guard let nameEnd = payload.readableBytesView.firstIndex(of: 0) else { return .allow }
            sqlStart = nameEnd + 1
        }
        let end = payload.readableBytesView[sqlStart...].firstIndex(of: 0) ?? payload.writerIndex
        var verdict = payload.withUnsafeReadableBytes { raw in
            statementGuard.inspect(utf8: UnsafeRawBufferPointer(rebasing: raw[(sqlStart - payload.readerIndex)..<(end - payload.readerIndex)]))
        }
        if verdict.refusal == nil, binding?.mode == .switch {
            for change in verdict.tenantSettingChanges where change.name == runtime.config.tenancy.tenantSetting {
                if let value = change.value, !switchAllowed(to: value) {
                    verdict.refusal = ProxyError.switchRefused(value).message
                }
            }
        }
        return verdict
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

    /// After a reload, a session whose tenant was suspended or removed ends at its next statement.
    private func tenantStillActive() -> Bool {
        let generation = runtime.mapGeneration
        guard generation != seenMapGeneration else { return true }
        seenMapGeneration = generation
        guard let tenant = binding?.tenant else { return true }
        let map = runtime.map
        if let current = map.tenants[tenant.name], current.id == tenant.id {
            if current.status == .active { return true }
        } else if map.tenant(named: tenant.id) == nil, pendingLookupWasUsed(tenant) {
            return true
        }
        logger.info("tenant no longer active; ending session")
        fail(.tenantNotActive(tenant.name))
        return false
    }

    /// Tenants found in the upstream table are not in the map; a reload does not concern them.
    private func pendingLookupWasUsed(_ tenant: Tenant) -> Bool {
        TenantIdentifier.isUUID(tenant.id) && runtime.map.tenants[tenant.name] == nil
    }

    private func relayUpstreamMessages(_ buffer: inout ByteBuffer) throws {
        let original = buffer
        var runStart = buffer.readerIndex
        func emitRun(upTo end: Int) {
            if end > runStart, let slice = original.getSlice(at: runStart, length: end - runStart) {
                client.write(slice, promise: nil)
            }
        }
        while phase != .closed, let frame = try backendDecoder.next(from: &buffer) {
            if injection != nil {
                try consumeInjected(frame)
                runStart = buffer.readerIndex
                continue
            }
            guard phase == .relaying else { continue }
            guard frame.type == BackendMessageID.readyForQuery.rawValue else { continue }
            let status = frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt8.self)
                .flatMap(TransactionStatus.init(rawValue:)) ?? .idle
            transactionStatus = status
            switch cycleNotes.popFirst() ?? .plain {
            case .plain:
                break
            case .refused(let error):
                let frameStart = buffer.readerIndex - frame.payload.readableBytes - 5
                emitRun(upTo: frameStart)
                runStart = frameStart
                writeToClient([.errorResponse(error)], flush: false)
            case .reapply:
                emitRun(upTo: buffer.readerIndex)
                runStart = buffer.readerIndex
                // In a failed transaction the reset is rolled back with it; nothing to re-apply.
                if status != .failed, let binding,
                   let statements = runtime.injector.statements(tenant: binding.tenant, userID: binding.userID) {
                    inject(statements, purpose: .reapply)
                } else {
                    resumeClient()
                }
            }
        }
        if phase == .relaying {
            emitRun(upTo: buffer.readerIndex)
        }
        if runtime.isDraining, phase == .relaying, transactionStatus == .idle, !awaitingReply {
            // A session that is between transactions when the proxy drains ends cleanly here.
            fail(.shuttingDown)
        }
    }

    // MARK: - Cancel

    private func forwardCancel(_ request: CancelRequest) {
        phase = .closed
        let target = runtime.registry.cancelTarget(for: request)
        client.close(promise: nil)
        guard let target else {
            logger.info("cancel request with unknown key ignored")
            return
        }
        let logger = self.logger
        ClientBootstrap(group: client.eventLoop)
            .connectTimeout(.seconds(Int64(runtime.config.upstream.connectTimeoutSeconds)))
            .connect(host: target.host, port: target.port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    var buffer = channel.allocator.buffer(capacity: 16)
                    CancelRequest(processID: target.key.processID, secretKey: target.key.secretKey).encode(into: &buffer)
                    channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
                case .failure(let error):
                    logger.warning("could not forward cancel request", metadata: ["error": "\(error)"])
                }
            }
    }

    // MARK: - Shutdown

    /// Called on the session's loop when the proxy drains: an idle session ends now, a busy one
    /// at its next transaction boundary.
    func drain() {
        guard phase != .closed else { return }
        if phase == .relaying, transactionStatus == .idle, !awaitingReply {
            fail(.shuttingDown)
        } else if phase == .startup {
            fail(.notAcceptingConnections)
        }
    }

    /// Ends the session at once (drain timeout).
    func terminate() {
        fail(.shuttingDown)
    }

    // MARK: - Helpers

    private func writeToClient(_ messages: [BackendMessage], flush: Bool) {
        guard !messages.isEmpty else { return }
        var buffer = client.allocator.buffer(capacity: 256)
        for message in messages {
            message.encode(into: &buffer)
        }
        if flush {
            client.writeAndFlush(buffer, promise: nil)
        } else {
            client.write(buffer, promise: nil)
        }
    }

    private func failRelayingServerError(_ error: ErrorResponse) {
        guard phase != .closed else { return }
        writeToClient([.errorResponse(error)], flush: true)
        close()
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
        if let upstream {
            // Tell the server we are leaving so it does not log an unexpected EOF.
            var terminate = upstream.allocator.buffer(capacity: 5)
            FrontendMessage.terminate.encode(into: &terminate)
            upstream.writeAndFlush(terminate).whenComplete { _ in upstream.close(promise: nil) }
        }
        upstream = nil
        client.close(promise: nil)
    }

    /// Joins newly read bytes to what is left of earlier reads, copying only when something is left.
    private static func append(_ data: ByteBuffer, to pending: inout ByteBuffer?) -> ByteBuffer {
        guard var existing = pending else { return data }
        pending = nil
        existing.discardReadBytes()
        var incoming = data
        existing.writeBuffer(&incoming)
        return existing
    }
}

extension TenantResolver.Decision {
    var refusal: ProxyError? {
        if case .refused(let error) = self { return error }
        return nil
    }
}
