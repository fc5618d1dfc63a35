import Foundation
import Logging
import NIOCore
import NIOPosix
import PGWire

/// The upstream connections of one EventLoop (transaction pooling). Each loop has its own pool so a
/// client and the connection lent to it share a thread and no lock is taken per transaction; the
/// configured size is split between the loops.
///
/// Lending prefers an idle connection that already carries the borrower's tenant context
/// (tenant affinity). Broken connections are closed and replaced, never lent.
final class UpstreamPool {
    typealias Completion = (Result<UpstreamConnection, ProxyError>) -> Void

    private struct Waiter {
        var id: Int
        var key: PoolKey
        var context: String
        var tenant: String?
        var completion: Completion
        var since: NIODeadline = .now()
        /// How often a waiter behind this one went first (tenant affinity); bounded for fairness.
        var overtaken = 0
    }

    /// How far down the queue a freed connection looks for a waiter of its own tenant, and how
    /// often the first in line may be overtaken that way before it is served regardless.
    static let affinityWindow = 32
    static let maxOvertaken = 4

    /// Whether a waiter can have a connection now.
    private enum Service {
        case lend(() -> Void)
        /// No idle connection and no room to open one: nobody behind it (same key) can go either.
        case noConnection
        /// Its tenant is at tenant_max_connections: others behind it may go.
        case tenantBlocked
    }

    let eventLoop: EventLoop
    private let runtime: ProxyRuntime
    private let loops: Int
    private var sizePerLoop: Int
    private var maxClientWaitSeconds: Int
    private var idle: [PoolKey: [UpstreamConnection]] = [:]
    /// Open plus connecting, per key.
    private var counts: [PoolKey: Int] = [:]
    /// Clients waiting for a connection, first come first served, one queue per key: a release
    /// serves its key's queue from the front and stops at the first that cannot go.
    private var waiters: [PoolKey: CircularBuffer<Waiter>] = [:]
    private var nextWaiterID = 0
    /// Server parameters of the first connection of each key, for clients that log in while
    /// no connection is lent to them.
    private(set) var serverParameters: [PoolKey: [ParameterStatus]] = [:]
    private var logins: [ObjectIdentifier: PoolLogin] = [:]
    private var servingWaiters = false

    init(eventLoop: EventLoop, runtime: ProxyRuntime, loops: Int) {
        self.eventLoop = eventLoop
        self.runtime = runtime
        self.loops = loops
        let config = runtime.config.pool
        self.sizePerLoop = max(1, (config.size + loops - 1) / loops)
        self.maxClientWaitSeconds = config.maxClientWaitSeconds
        let idleTimeout = Int64(config.idleTimeoutSeconds)
        eventLoop.scheduleRepeatedTask(initialDelay: .seconds(min(idleTimeout, 10)), delay: .seconds(min(idleTimeout, 10))) {
            [weak self] _ in
            self?.closeIdle(olderThan: .seconds(idleTimeout))
        }
        // One sweep a second ends waits over max_client_wait_seconds (rather than a timer per
        // waiter, scheduled and cancelled on every wait).
        eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [weak self] _ in
            self?.expireWaiters()
        }
    }

    /// A reloaded [pool] section: new size and wait limit (connections over a smaller size close
    /// as they come back idle).
    func configure(_ config: ProxyConfig.Pool) {
        sizePerLoop = max(1, (config.size + loops - 1) / loops)
        maxClientWaitSeconds = config.maxClientWaitSeconds
        for (key, list) in idle where counts[key, default: 0] > sizePerLoop {
            let surplus = min(list.count, counts[key, default: 0] - sizePerLoop)
            for connection in list.suffix(surplus) { discard(connection) }
        }
        serveWaiters()
    }

    // MARK: - Lending

    /// Lends a connection for `key`, preferring one that carries `context`; calls back on this
    /// loop, at once or when one frees up, or with 53300 after `max_client_wait_seconds`.
    /// Returns an id that `cancelWait` takes when the client leaves first.
    @discardableResult
    func acquire(key: PoolKey, context: String, tenant: String?, completion: @escaping Completion) -> Int {
        eventLoop.preconditionInEventLoop()
        nextWaiterID += 1
        let waiter = Waiter(id: nextWaiterID, key: key, context: context, tenant: tenant, completion: completion)
        if waiters[key]?.isEmpty ?? true, case .lend(let lend) = serve(waiter) {
            lend()
            return waiter.id
        }
        waiters[key, default: CircularBuffer(initialCapacity: 16)].append(waiter)
        // Waiters ahead may be blocked only by their tenant's limit: serve whoever can go now.
        serveWaiters()
        return waiter.id
    }

    /// An idle connection for `key` right now (none waiting before this client, the tenant's
    /// lease granted), or nil: then `acquire` queues the client.
    func lendNow(key: PoolKey, context: String, tenant: String?) -> UpstreamConnection? {
        eventLoop.preconditionInEventLoop()
        guard idle[key]?.isEmpty == false, waiters[key]?.isEmpty ?? true else { return nil }
        pruneIdle(key: key)
        guard idle[key]?.isEmpty == false else { return nil }
        if let tenant, !runtime.takeTenantLease(tenant, pool: self) { return nil }
        guard let connection = takeIdle(key: key, context: context) else {
            if let tenant { runtime.releaseTenantLease(tenant) }
            return nil
        }
        return connection
    }

    func cancelWait(_ id: Int) {
        for (key, queue) in waiters {
            if let index = queue.firstIndex(where: { $0.id == id }) {
                waiters[key]!.remove(at: index)
                return
            }
        }
    }

    /// Gives a connection back after a transaction; `tenant` is the borrower's tenant lease.
    func release(_ connection: UpstreamConnection, tenant: String?) {
        eventLoop.preconditionInEventLoop()
        connection.owner = nil
        connection.lastReleased = .now()
        if let tenant { runtime.releaseTenantLease(tenant) }
        if connection.broken || !connection.channel.isActive {
            discard(connection)
            return
        }
        if !connection.reading {
            // Paused by a slow reader: an idle connection must read, or its close goes unseen.
            connection.reading = true
            connection.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
        idle[connection.key, default: []].append(connection)
        serveWaiters()
    }

    /// Closes a connection that must not be lent again.
    func discard(_ connection: UpstreamConnection) {
        connection.broken = true
        connection.owner = nil
        counts[connection.key, default: 1] -= 1
        if let list = idle[connection.key], let index = list.firstIndex(where: { $0 === connection }) {
            idle[connection.key]!.remove(at: index)
        }
        connection.channel.close(promise: nil)
        serveWaiters()
    }

    /// Retries waiters in order (after a release or discard here, a failed open, or a tenant
    /// lease freed on another loop). Each waiter leaves the queue before it is called back, so a
    /// callback that gives a connection straight back cannot serve the same waiter again.
    func serveWaiters() {
        guard !servingWaiters else { return }
        servingWaiters = true
        defer { servingWaiters = false }
        for key in Array(waiters.keys) {
            serveByAffinity(key)
            var offset = 0
            serving: while let position = waiters[key].flatMap({ queue in
                offset < queue.count ? queue.index(queue.startIndex, offsetBy: offset) : nil
            }) {
                switch serve(waiters[key]![position]) {
                case .lend(let lend):
                    waiters[key]!.remove(at: position)
                    lend()
                case .noConnection:
                    break serving
                case .tenantBlocked:
                    offset += 1
                }
            }
        }
    }

    /// Idle connections go first to a waiter near the front that wants the context they carry:
    /// with many tenants and few connections, FIFO alone would RESET and SET the tenant context
    /// on almost every lend (two more statements upstream per transaction).
    private func serveByAffinity(_ key: PoolKey) {
        while let offset = affinityCandidate(key), case .lend(let lend) = serve(waiters[key]![offset]) {
            waiters[key]!.remove(at: offset)
            waiters[key]![waiters[key]!.startIndex].overtaken += 1
            lend()
        }
    }

    /// A waiter behind the first one that wants the context of an idle connection, when the first
    /// one wants none of theirs and has not been overtaken too often. (No copy of the queue
    /// outlives this call, so removing from it afterwards does not copy it.)
    private func affinityCandidate(_ key: PoolKey) -> CircularBuffer<Waiter>.Index? {
        guard let idleList = idle[key], !idleList.isEmpty, let queue = waiters[key], queue.count > 1, let head = queue.first,
              head.overtaken < Self.maxOvertaken, !idleList.contains(where: { $0.context == head.context }) else { return nil }
        // Indices of this very buffer (a slice of a CircularBuffer is a new ring with other indices).
        for offset in 1..<min(queue.count, Self.affinityWindow) {
            let index = queue.index(queue.startIndex, offsetBy: offset)
            let wanted = queue[index].context
            if idleList.contains(where: { $0.context == wanted }) { return index }
        }
        return nil
    }

    /// Ends the waits that have lasted max_client_wait_seconds (53300).
    private func expireWaiters() {
        let seconds = maxClientWaitSeconds
        let cutoff = NIODeadline.now() - .seconds(Int64(seconds))
        for key in Array(waiters.keys) {
            guard var queue = waiters[key], queue.contains(where: { $0.since <= cutoff }) else { continue }
            let expired = queue.filter { $0.since <= cutoff }
            queue.removeAll(where: { $0.since <= cutoff })
            waiters[key] = queue
            for waiter in expired { waiter.completion(.failure(.poolTimeout(seconds: seconds))) }
        }
    }

    /// What lending to `waiter` takes, if a connection and the tenant's lease allow it now. The
    /// caller takes the waiter out of the queue, then runs the result.
    private func serve(_ waiter: Waiter) -> Service {
        pruneIdle(key: waiter.key)
        let available = idle[waiter.key]?.isEmpty == false
        let canOpen = counts[waiter.key, default: 0] < sizePerLoop
        guard available || canOpen else { return .noConnection }
        if let tenant = waiter.tenant, !runtime.takeTenantLease(tenant, pool: self) { return .tenantBlocked }
        if available, let connection = takeIdle(key: waiter.key, context: waiter.context) {
            return .lend { waiter.completion(.success(connection)) }
        }
        counts[waiter.key, default: 0] += 1
        return .lend { [self] in
            open(key: waiter.key) { [self] result in
                if case .failure = result {
                    if let tenant = waiter.tenant { runtime.releaseTenantLease(tenant) }
                    // Room freed: the next waiter tries (and fails fast while the server is down).
                    eventLoop.execute { self.serveWaiters() }
                }
                waiter.completion(result)
            }
        }
    }

    /// Drops idle connections that broke while idle (closed by the server), freeing their slots.
    private func pruneIdle(key: PoolKey) {
        guard let list = idle[key], list.contains(where: { $0.broken || !$0.channel.isActive }) else { return }
        idle[key] = list.filter { connection in
            guard connection.broken || !connection.channel.isActive else { return true }
            counts[key, default: 1] -= 1
            connection.channel.close(promise: nil)
            return false
        }
    }

    private func takeIdle(key: PoolKey, context: String) -> UpstreamConnection? {
        // Tenant affinity: the most recently used connection with this context, else the most
        // recently used of all (its caches are warm).
        func pick() -> Int? {
            guard let list = idle[key], !list.isEmpty else { return nil }
            return list.lastIndex(where: { $0.context == context }) ?? list.count - 1
        }
        while let index = pick() {
            // Removed in place: holding a copy of the array while removing would make it shared,
            // and the removal would copy it on every lend.
            let connection = idle[key]!.remove(at: index)
            if connection.broken || !connection.channel.isActive {
                counts[key, default: 1] -= 1
                connection.channel.close(promise: nil)
                continue
            }
            return connection
        }
        return nil
    }

    private func closeIdle(olderThan age: TimeAmount) {
        let cutoff = NIODeadline.now() - age
        for (key, list) in idle {
            let (old, fresh) = (list.filter { $0.lastReleased < cutoff }, list.filter { $0.lastReleased >= cutoff })
            idle[key] = fresh
            for connection in old {
                counts[key, default: 1] -= 1
                var terminate = connection.channel.allocator.buffer(capacity: 5)
                FrontendMessage.terminate.encode(into: &terminate)
                connection.channel.writeAndFlush(terminate).whenComplete { _ in connection.channel.close(promise: nil) }
            }
        }
    }

    // MARK: - Admin views (on this loop)

    struct PoolRow {
        var key: PoolKey
        var open: Int
        var idle: Int
        var waiting: Int
        var oldestWaitSeconds: Double
    }

    func poolRows() -> [PoolRow] {
        let now = NIODeadline.now()
        var keys = Set(counts.keys)
        keys.formUnion(waiters.keys)
        return keys.map { key in
            let waiting = Array(waiters[key] ?? [])
            let oldest = waiting.map(\.since).min().map { Double((now - $0).nanoseconds) / 1e9 } ?? 0
            return PoolRow(key: key, open: counts[key, default: 0], idle: idle[key]?.count ?? 0, waiting: waiting.count,
                           oldestWaitSeconds: oldest)
        }
    }

    var idleConnections: [UpstreamConnection] { idle.values.flatMap { $0 } }

    // MARK: - Opening connections

    /// Logs a new connection in for `key` (already counted by the caller).
    private func open(key: PoolKey, completion: @escaping Completion) {
        let config = runtime.config.cluster(key.cluster)
        let password = key.user == config.user ? config.password : config.globalPassword
        var machine = UpstreamStartupMachine(user: key.user, password: password)
        machine.keyCache = runtime.scramKeys
        let login = PoolLogin(key: key, machine: machine, address: (config.host, config.port))
        let loginID = ObjectIdentifier(login)
        logins[loginID] = login
        login.completion = { [self] result in
            logins[loginID] = nil
            switch result {
            case .success(let connection):
                if serverParameters[key] == nil {
                    serverParameters[key] = login.parameters
                }
                completion(.success(connection))
            case .failure(let error):
                counts[key, default: 1] -= 1
                completion(.failure(error))
            }
        }
        let handler = UpstreamConnectionHandler()
        handler.loginOwner = login
        UpstreamConnector.connect(on: eventLoop, config: config, tls: runtime.tls.upstream, handler: handler)
            .whenComplete { [runtime] result in
                switch result {
                case .success(let channel):
                    login.start(channel: channel, handler: handler)
                case .failure(let error):
                    runtime.logger.warning("upstream connect failed", metadata: ["error": "\(error)"])
                    login.finish(.failure(.upstreamUnavailable))
                }
            }
    }
}

/// Logs one pooled connection in: the proxy's own role and database, no client parameters (those
/// are restored per borrower).
private final class PoolLogin: UpstreamConnectionOwner {
    let key: PoolKey
    var machine: UpstreamStartupMachine
    var completion: UpstreamPool.Completion?
    var parameters: [ParameterStatus] = []
    private let address: (host: String, port: Int)
    private var channel: Channel?
    private var handler: UpstreamConnectionHandler?
    private var decoder = PGBackendDecoder()
    private var pending: ByteBuffer?

    init(key: PoolKey, machine: UpstreamStartupMachine, address: (host: String, port: Int)) {
        self.key = key
        self.machine = machine
        self.address = address
    }

    func start(channel: Channel, handler: UpstreamConnectionHandler) {
        self.channel = channel
        self.handler = handler
        var buffer = channel.allocator.buffer(capacity: 128)
        StartupMessage(parameters: ["user": key.user, "database": key.database]).encode(into: &buffer)
        channel.writeAndFlush(buffer, promise: nil)
    }

    func finish(_ result: Result<UpstreamConnection, ProxyError>) {
        guard let completion else { return }
        self.completion = nil
        handler?.loginOwner = nil
        if case .failure = result { channel?.close(promise: nil) }
        completion(result)
    }

    func upstreamRead(_ data: ByteBuffer) {
        guard completion != nil, let channel else { return }
        var buffer = ByteBuffer.joining(data, after: &pending)
        do {
            while completion != nil, let frame = try decoder.next(from: &buffer) {
                switch machine.receive(try BackendMessage.decode(frame)) {
                case .wait:
                    continue
                case .send(let reply):
                    var out = channel.allocator.buffer(capacity: 128)
                    reply.encode(into: &out)
                    channel.writeAndFlush(out, promise: nil)
                case .fail(let error, _):
                    finish(.failure(error))
                case .ready(let parameters, let key):
                    self.parameters = parameters
                    let connection = UpstreamConnection(channel: channel, key: self.key)
                    connection.backendKey = key
                    connection.cancelHost = address.host
                    connection.cancelPort = address.port
                    for parameter in parameters { connection.parameters[parameter.name] = parameter.value }
                    handler?.connection = connection
                    handler?.loginOwner = nil
                    finish(.success(connection))
                }
            }
        } catch {
            finish(.failure(.upstreamProtocol("unreadable message")))
        }
        if buffer.readableBytes > 0 { pending = buffer }
    }

    func upstreamReadComplete() {}

    func upstreamClosed() {
        finish(.failure(.upstreamUnavailable))
    }

    func upstreamWritabilityChanged() {}
}
