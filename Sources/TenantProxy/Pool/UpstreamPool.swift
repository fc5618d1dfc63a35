import Atomics
import Foundation
import Logging
import NIOCore
import NIOPosix
import PGWire

/// The upstream connections of one EventLoop (transaction pooling). Each loop has its own pool so a
/// client and the connection lent to it share a thread and no lock is taken per transaction; the
/// configured size counts the connections of all loops (PoolBudget).
///
/// Lending prefers an idle connection that already carries the borrower's tenant context
/// (tenant affinity). Broken connections are closed and replaced, never lent.
final class UpstreamPool {
    typealias Completion = (Result<UpstreamConnection, ProxyError>) -> Void

    /// A class, not a struct: the queue is scanned (affinity) and shifted (a waiter leaving
    /// from its middle) on nearly every lend when clients outnumber connections, and each copy
    /// of a struct waiter retained and released its context, tenant and completion (about 3,000
    /// instructions per transaction at 100 clients on 20 connections).
    fileprivate final class Waiter {
        let id: Int
        let context: ContextKey
        let tenant: String?
        let completion: Completion
        let since: NIODeadline = .now()
        /// How often a waiter behind this one went first (tenant affinity); bounded for fairness.
        var overtaken = 0
        /// Served, cancelled or expired: left in the queue until it reaches the front.
        var gone = false

        init(id: Int, context: ContextKey, tenant: String?, completion: @escaping Completion) {
            self.id = id
            self.context = context
            self.tenant = tenant
            self.completion = completion
        }
    }

    /// Clients waiting for a connection, first come first served. One that leaves from the middle
    /// (served by tenant affinity, cancelled, expired) is marked gone and stays until it reaches
    /// the front: removing it from the ring shifted the waiters around it, on nearly every lend
    /// at 100 clients on 20 connections (~1,500 instructions a transaction).
    fileprivate struct WaiterQueue {
        /// Gone waiters before `start`, then waiting and gone ones in arrival order (an array
        /// and an offset: cheaper to scan than a ring's indices).
        private var line: [Waiter] = []
        private var start = 0
        /// How many are still waiting.
        private(set) var count = 0
        var isEmpty: Bool { count == 0 }
        /// Slots from the front, gone waiters included: bounds for `slot(_:)`, which scans may
        /// use while a callback appends (nothing moves until `compact`).
        var slots: Int { line.count - start }

        func slot(_ offset: Int) -> Waiter { line[start + offset] }

        /// The first one still waiting.
        var head: Waiter? {
            for index in start..<line.count where !line[index].gone { return line[index] }
            return nil
        }

        var waiting: [Waiter] { line[start...].filter { !$0.gone } }

        mutating func append(_ waiter: Waiter) {
            line.append(waiter)
            count += 1
        }

        /// Marks a waiting `waiter` gone; `compact` drops it once nothing before it waits.
        mutating func leave(_ waiter: Waiter) {
            precondition(!waiter.gone, "a waiter leaves the queue once")
            waiter.gone = true
            count -= 1
        }

        /// Drops gone waiters from the front, and all of them once they outnumber the waiting
        /// (a first waiter held by its tenant's limit while others pass). Not while slots are
        /// being scanned.
        mutating func compact() {
            while start < line.count, line[start].gone { start += 1 }
            if start == line.count {
                line.removeAll(keepingCapacity: true)
                start = 0
            } else if line.count - start > 2 * count + 32 {
                line = line[start...].filter { !$0.gone }
                start = 0
            } else if start > 64, start * 2 > line.count {
                line.removeFirst(start)
                start = 0
            }
        }
    }

    /// The connections of one key (cluster, role, database) on this loop. A session keeps its
    /// lane, so lending and returning look nothing up by key (hashing three strings, comparing
    /// them) on every transaction.
    final class Lane {
        let key: PoolKey
        fileprivate var idle: [UpstreamConnection] = []
        /// Open plus connecting, on this loop. Each one less goes back to the budget.
        fileprivate var count = 0 {
            didSet {
                if count < oldValue { pool.budget.give(key, for: pool, count: oldValue - count) }
            }
        }
        /// Unowned: pools live as long as the process.
        private unowned let pool: UpstreamPool
        /// No room under the size: the budget says when there is (no lock per waiter meanwhile).
        fileprivate var awaitingRoom = false
        /// Clients waiting for a connection, first come first served: a release serves the queue
        /// from the front and stops at the first that cannot go.
        fileprivate var waiters = WaiterQueue()
        /// Server parameters of the first connection, for clients that log in while no
        /// connection is lent to them.
        fileprivate(set) var serverParameters: [ParameterStatus]?
        /// ParameterStatus messages for clients of one settings object, encoded once: a log-in
        /// copies them (encoding them, with the client's values looked up, cost about 40,000
        /// instructions). The settings are held, so their identifier stays theirs.
        private var greetings: [ObjectIdentifier: (settings: SessionSettings, bytes: ByteBuffer)] = [:]
        static let greetingLimit = 64

        fileprivate init(key: PoolKey, pool: UpstreamPool) {
            self.key = key
            self.pool = pool
        }

        /// The server's parameters as a client of `settings` sees them (its own values where it
        /// set them), as ParameterStatus messages; nil before the lane's first connection.
        func parameterStatuses(for settings: SessionSettings, allocator: ByteBufferAllocator) -> ByteBuffer? {
            guard let serverParameters else { return nil }
            let id = ObjectIdentifier(settings)
            if let known = greetings[id] { return known.bytes }
            var bytes = allocator.buffer(capacity: 512)
            ParameterStatus.encode(serverParameters, as: settings, into: &bytes)
            if greetings.count < Self.greetingLimit { greetings[id] = (settings, bytes) }
            return bytes
        }
    }

    /// How far down the queue a freed connection looks for a waiter of its own tenant, and how
    /// often the first in line may be overtaken that way before it is served regardless.
    static let affinityWindow = 32
    static let maxOvertaken = 4

    /// Whether a waiter can have a connection now (`hand` gives it; no closure is made per lend).
    private enum Service {
        /// This idle connection (taken from the idle list).
        case lend(UpstreamConnection)
        /// Room for a new connection (counted in the lane): open one for the waiter.
        case open
        /// No idle connection and no room to open one: nobody behind it (same key) can go either.
        case noConnection
        /// Its tenant is at tenant_max_connections: others behind it may go.
        case tenantBlocked

        var goes: Bool {
            switch self {
            case .lend, .open: return true
            case .noConnection, .tenantBlocked: return false
            }
        }
    }

    let eventLoop: EventLoop
    private let runtime: ProxyRuntime
    fileprivate let budget: PoolBudget
    /// Set by the budget: this loop holds more connections than it keeps while another waits.
    let mustShed = ManagedAtomic<Bool>(false)
    private var maxClientWaitSeconds: Int
    /// `[pool] server_lifetime_seconds` in nanoseconds (0: no limit).
    private var serverLifetime: Int64
    /// Lanes live as long as the pool (one per key ever used on this loop: a handful).
    private var lanes: [PoolKey: Lane] = [:]
    private var nextWaiterID = 0
    /// How long clients of this loop waited (the borrowers record it; scrapes sum the loops).
    var waits = WaitHistogram()
    private var logins: [ObjectIdentifier: PoolLogin] = [:]
    private var servingWaiters = false

    init(eventLoop: EventLoop, runtime: ProxyRuntime) {
        self.eventLoop = eventLoop
        self.runtime = runtime
        self.budget = runtime.poolBudget
        let config = runtime.config.pool
        self.maxClientWaitSeconds = config.maxClientWaitSeconds
        self.serverLifetime = Self.nanoseconds(config.serverLifetimeSeconds)
        let idleTimeout = Int64(config.idleTimeoutSeconds)
        eventLoop.scheduleRepeatedTask(initialDelay: .seconds(min(idleTimeout, 10)), delay: .seconds(min(idleTimeout, 10))) {
            [weak self] _ in
            self?.closeIdle(olderThan: .seconds(idleTimeout))
        }
        // One sweep a second ends waits over max_client_wait_seconds (rather than a timer per
        // waiter, scheduled and cancelled on every wait), and while a lane waits for room, asks
        // the budget again (another loop's hold on its recent clients may have run out).
        eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [weak self] _ in
            guard let self else { return }
            expireWaiters()
            if lanes.values.contains(where: { $0.awaitingRoom }) { budget.refresh() }
        }
    }

    /// The lane of `key` (made on first use).
    func lane(_ key: PoolKey) -> Lane {
        eventLoop.preconditionInEventLoop()
        if let lane = lanes[key] { return lane }
        let lane = Lane(key: key, pool: self)
        lanes[key] = lane
        return lane
    }

    /// A reloaded [pool] section: new size and wait limit (connections over a smaller size close
    /// as they come back idle).
    func configure(_ config: ProxyConfig.Pool) {
        budget.resize(config.size)
        maxClientWaitSeconds = config.maxClientWaitSeconds
        serverLifetime = Self.nanoseconds(config.serverLifetimeSeconds)
        for lane in lanes.values {
            let surplus = min(lane.idle.count, budget.surplus(lane.key))
            for connection in lane.idle.prefix(surplus) { discard(connection) }
        }
        serveWaiters()
    }

    // MARK: - Lending

    /// Lends a connection of `lane`, preferring one that carries `context`; calls back on this
    /// loop, at once or when one frees up, or with 53300 after `max_client_wait_seconds`.
    /// Returns an id that `cancelWait` takes when the client leaves first.
    @discardableResult
    func acquire(_ lane: Lane, context: ContextKey, tenant: String?, completion: @escaping Completion) -> Int {
        eventLoop.preconditionInEventLoop()
        nextWaiterID += 1
        let waiter = Waiter(id: nextWaiterID, context: context, tenant: tenant, completion: completion)
        if lane.waiters.isEmpty {
            let service = serve(waiter, in: lane)
            if service.goes {
                hand(service, to: waiter, in: lane)
                return waiter.id
            }
        }
        if !servingWaiters { lane.waiters.compact() }
        lane.waiters.append(waiter)
        // Waiters ahead may be blocked only by their tenant's limit: serve whoever can go now.
        serveWaiters(lane)
        return waiter.id
    }

    /// An idle connection of `lane` right now (none waiting before this client, the tenant's
    /// lease granted), or nil: then `acquire` queues the client.
    func lendNow(_ lane: Lane, context: ContextKey, tenant: String?) -> UpstreamConnection? {
        guard !lane.idle.isEmpty, lane.waiters.isEmpty else { return nil }
        if let tenant, !runtime.takeTenantLease(tenant, pool: self) { return nil }
        guard let connection = takeIdle(lane, context: context) else {
            if let tenant { runtime.releaseTenantLease(tenant) }
            return nil
        }
        return connection
    }

    func cancelWait(_ id: Int) {
        for lane in lanes.values where !lane.waiters.isEmpty {
            for offset in 0..<lane.waiters.slots {
                let waiter = lane.waiters.slot(offset)
                guard waiter.id == id, !waiter.gone else { continue }
                lane.waiters.leave(waiter)
                if !servingWaiters { lane.waiters.compact() }
                return
            }
        }
    }

    /// Gives a connection back after a transaction; `tenant` is the borrower's tenant lease.
    /// Its connection's own handler marks it broken when the channel closes (no atomic load of
    /// the channel's state per return).
    func release(_ connection: UpstreamConnection, tenant: String?) {
        connection.owner = nil
        connection.lastReleased = .now()
        // Nothing a borrower wrote may wait in the writer for the next one (a no-op normally).
        connection.out.flush()
        if let tenant { runtime.releaseTenantLease(tenant) }
        if connection.broken {
            discard(connection)
            return
        }
        if !connection.reading {
            // Paused by a slow reader: an idle connection must read, or its close goes unseen.
            connection.reading = true
            connection.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
        guard let lane = connection.lane else { return connection.channel.close(promise: nil) }
        if serverLifetime > 0, connection.outlived(serverLifetime, at: connection.lastReleased) {
            // Old enough (server_lifetime_seconds): closed between transactions, never in one; a
            // client waiting meanwhile gets a new connection.
            retire(connection, from: lane)
            if !lane.waiters.isEmpty { serveWaiters(lane) }
            return
        }
        if budget.isWanted(lane.key, from: self) {
            // This loop holds more connections than it keeps, and another loop waits for room.
            return retire(connection, from: lane)
        }
        lane.idle.append(connection)
        if !lane.waiters.isEmpty { serveWaiters(lane) }
    }

    private static func nanoseconds(_ seconds: Int) -> Int64 {
        TimeAmount.seconds(Int64(seconds)).nanoseconds
    }

    /// Room for one more connection of `lane` under the size (false: none now).
    private func reserve(in lane: Lane) -> Bool {
        switch budget.take(lane.key, for: self) {
        case .taken:
            return true
        case .full(let waiting):
            lane.awaitingRoom = waiting
            return false
        }
    }

    /// A connection of `key` closed somewhere: this loop may open one again.
    func roomFreed(_ key: PoolKey) {
        lanes[key]?.awaitingRoom = false
        serveWaiters()
    }

    /// A loop with fewer connections than clients found no room for `key`: close the longest idle
    /// connection of it here while this loop holds more than it keeps.
    func shed(_ key: PoolKey) {
        guard let lane = lanes[key], !lane.idle.isEmpty, budget.isWanted(key, from: self) else { return }
        retire(lane.idle.removeFirst(), from: lane)
    }

    /// Ends a healthy connection that is not in the idle list (Terminate, then close); its slot
    /// goes back to the budget.
    private func retire(_ connection: UpstreamConnection, from lane: Lane) {
        lane.count -= 1
        connection.broken = true
        var terminate = connection.channel.allocator.buffer(capacity: 5)
        FrontendMessage.terminate.encode(into: &terminate)
        connection.channel.writeAndFlush(terminate).whenComplete { _ in connection.channel.close(promise: nil) }
    }

    /// Closes a connection that must not be lent again.
    func discard(_ connection: UpstreamConnection) {
        connection.broken = true
        connection.owner = nil
        connection.channel.close(promise: nil)
        guard let lane = connection.lane else { return }
        lane.count -= 1
        if let index = lane.idle.firstIndex(where: { $0 === connection }) {
            lane.idle.remove(at: index)
        }
        serveWaiters(lane)
    }

    /// Retries waiters in order, in every lane (after a reload, a failed open, or a tenant lease
    /// freed on another loop).
    func serveWaiters() {
        for lane in lanes.values where !lane.waiters.isEmpty {
            serveWaiters(lane)
        }
    }

    /// Retries a lane's waiters in order. Each waiter leaves the queue before it is called back,
    /// so a callback that gives a connection straight back cannot serve the same waiter again.
    private func serveWaiters(_ lane: Lane) {
        guard !servingWaiters else { return }
        servingWaiters = true
        defer { servingWaiters = false }
        serveByAffinity(lane)
        var offset = 0
        serving: while offset < lane.waiters.slots {
            let waiter = lane.waiters.slot(offset)
            offset += 1
            guard !waiter.gone else { continue }
            let service = serve(waiter, in: lane)
            switch service {
            case .lend, .open:
                lane.waiters.leave(waiter)
                hand(service, to: waiter, in: lane)
            case .noConnection:
                break serving
            case .tenantBlocked:
                continue
            }
        }
        lane.waiters.compact()
    }

    /// Idle connections go first to a waiter near the front that wants the context they carry:
    /// with many tenants and few connections, FIFO alone would RESET and SET the tenant context
    /// on almost every lend (two more statements upstream per transaction).
    private func serveByAffinity(_ lane: Lane) {
        while let (head, waiter) = affinityCandidate(lane) {
            let service = serve(waiter, in: lane)
            guard service.goes else { return }
            lane.waiters.leave(waiter)
            head.overtaken += 1
            hand(service, to: waiter, in: lane)
        }
    }

    /// A waiter behind the first one that wants the context of an idle connection, when the first
    /// one wants none of theirs and has not been overtaken too often.
    private func affinityCandidate(_ lane: Lane) -> (head: Waiter, candidate: Waiter)? {
        guard !lane.idle.isEmpty, lane.waiters.count > 1, let head = lane.waiters.head,
              head.overtaken < Self.maxOvertaken, !lane.idle.contains(where: { $0.contextKey == head.context }) else { return nil }
        var looked = 1
        for offset in 0..<lane.waiters.slots {
            let waiter = lane.waiters.slot(offset)
            guard !waiter.gone, waiter !== head else { continue }
            // ContextKey's == compares hashes first: a string only when they match.
            if lane.idle.contains(where: { $0.contextKey == waiter.context }) { return (head, waiter) }
            looked += 1
            if looked == Self.affinityWindow { break }
        }
        return nil
    }

    /// Ends the waits that have lasted max_client_wait_seconds (53300).
    private func expireWaiters() {
        let seconds = maxClientWaitSeconds
        let cutoff = NIODeadline.now() - .seconds(Int64(seconds))
        for lane in lanes.values where !lane.waiters.isEmpty {
            let expired = lane.waiters.waiting.filter { $0.since <= cutoff }
            guard !expired.isEmpty else { continue }
            for waiter in expired { lane.waiters.leave(waiter) }
            lane.waiters.compact()
            for waiter in expired { waiter.completion(.failure(.poolTimeout(seconds: seconds))) }
        }
    }

    /// What lending to `waiter` takes, if a connection and the tenant's lease allow it now. The
    /// caller takes the waiter out of the queue, then runs the result.
    private func serve(_ waiter: Waiter, in lane: Lane) -> Service {
        let available = !lane.idle.isEmpty
        // Without an idle connection, room for a new one under the size of all loops together
        // (if there is none, the budget calls back when there is).
        var reserved = false
        if !available {
            guard !lane.awaitingRoom, reserve(in: lane) else { return .noConnection }
            reserved = true
        }
        if let tenant = waiter.tenant, !runtime.takeTenantLease(tenant, pool: self) {
            if reserved { budget.give(lane.key, for: self) }
            return .tenantBlocked
        }
        if available, let connection = takeIdle(lane, context: waiter.context) {
            return .lend(connection)
        }
        // Every idle connection had broken (each freeing its slot): open one.
        if !reserved, !reserve(in: lane) {
            if let tenant = waiter.tenant { runtime.releaseTenantLease(tenant) }
            return .noConnection
        }
        lane.count += 1
        return .open
    }

    /// Gives `waiter` what `serve` found (the caller has taken it out of the queue).
    private func hand(_ service: Service, to waiter: Waiter, in lane: Lane) {
        switch service {
        case .lend(let connection):
            waiter.completion(.success(connection))
        case .open:
            open(lane) { [self] result in
                if case .failure = result {
                    if let tenant = waiter.tenant { runtime.releaseTenantLease(tenant) }
                    // Room freed: the next waiter tries (and fails fast while the server is down).
                    eventLoop.execute { self.serveWaiters(lane) }
                }
                waiter.completion(result)
            }
        case .noConnection, .tenantBlocked:
            break
        }
    }

    /// An idle connection, preferring `context`; idle connections that broke meanwhile (closed by
    /// the server) are dropped on the way, freeing their slots.
    private func takeIdle(_ lane: Lane, context: ContextKey) -> UpstreamConnection? {
        // Tenant affinity: the most recently used connection with this context, else the least
        // recently used of all. Taking the most recent one there stole, most often, the only
        // connection of a tenant about to come back for it, which then stole another's: a chain
        // of context switches (RESET and SET upstream) on 8% of lends at 20 clients over 10
        // tenants. A tenant's spare connections drift to the front (its own lends take the most
        // recent), so the least recent is usually one nobody misses.
        while !lane.idle.isEmpty {
            let index = lane.idle.lastIndex(where: { $0.contextKey == context }) ?? 0
            let connection = lane.idle.remove(at: index)
            if connection.broken {
                lane.count -= 1
                connection.channel.close(promise: nil)
                continue
            }
            return connection
        }
        return nil
    }

    /// Closes idle connections unused for `age`, or past server_lifetime_seconds.
    private func closeIdle(olderThan age: TimeAmount) {
        let now = NIODeadline.now()
        let cutoff = now - age
        let lifetime = serverLifetime
        func expired(_ connection: UpstreamConnection) -> Bool {
            connection.lastReleased < cutoff || (lifetime > 0 && connection.outlived(lifetime, at: now))
        }
        for lane in lanes.values {
            let old = lane.idle.filter(expired)
            guard !old.isEmpty else { continue }
            lane.idle.removeAll(where: expired)
            for connection in old { retire(connection, from: lane) }
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
        return lanes.values.filter { $0.count > 0 || !$0.waiters.isEmpty }.map { lane in
            let oldest = lane.waiters.waiting.map(\.since).min().map { Double((now - $0).nanoseconds) / 1e9 } ?? 0
            return PoolRow(key: lane.key, open: lane.count, idle: lane.idle.count, waiting: lane.waiters.count,
                           oldestWaitSeconds: oldest)
        }
    }

    var idleConnections: [UpstreamConnection] { lanes.values.flatMap(\.idle) }

    // MARK: - Opening connections

    /// Logs a new connection in for `lane` (already counted by the caller).
    private func open(_ lane: Lane, completion: @escaping Completion) {
        let key = lane.key
        let config = runtime.config.cluster(key.cluster)
        let password = key.user == config.user ? config.password : config.globalPassword
        var machine = UpstreamStartupMachine(user: key.user, password: password)
        machine.keyCache = runtime.scramKeys
        let login = PoolLogin(lane: lane, machine: machine, address: (config.host, config.port))
        let loginID = ObjectIdentifier(login)
        logins[loginID] = login
        login.completion = { [self] result in
            logins[loginID] = nil
            switch result {
            case .success(let connection):
                if lane.serverParameters == nil {
                    lane.serverParameters = login.parameters
                }
                completion(.success(connection))
            case .failure(let error):
                lane.count -= 1
                completion(.failure(error))
            }
        }
        let handler = UpstreamConnectionHandler()
        handler.loginOwner = login
        UpstreamConnector.connect(on: eventLoop, config: config, keepalive: runtime.config.server.keepalive, tls: runtime.tls.upstream, handler: handler)
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
    let lane: UpstreamPool.Lane
    var key: PoolKey { lane.key }
    var machine: UpstreamStartupMachine
    var completion: UpstreamPool.Completion?
    var parameters: [ParameterStatus] = []
    private let address: (host: String, port: Int)
    private var channel: Channel?
    private var handler: UpstreamConnectionHandler?
    private var decoder = PGBackendDecoder()
    private var pending: ByteBuffer?

    init(lane: UpstreamPool.Lane, machine: UpstreamStartupMachine, address: (host: String, port: Int)) {
        self.lane = lane
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
                    let connection = UpstreamConnection(channel: channel, key: lane.key, lane: lane)
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
