import Atomics
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PGWire

/// What every session shares: configuration and tenant map (each replaced whole on reload), the
/// cache of tenants looked up upstream, the session registry, pauses and suspensions set from the
/// admin console, and the logger.
final class ProxyRuntime: @unchecked Sendable {
    /// The file RELOAD reads again (nil when the runtime was built from a config in memory).
    let configPath: String?
    let registry: SessionRegistry
    let logger: Logger
    /// Also where the tenant and user setting names are read on the hot path: they only change
    /// with a restart, so no lock is taken for them.
    let injector: ContextInjector
    /// The guards a log-in starts with, per user mode, built once from the injector's setting
    /// names (each log-in built its policy's sets again): global users have no statement guard;
    /// a switch user's tenant SET is tracked as its context.
    let pinnedStatementGuard: StatementGuard
    let switchStatementGuard: StatementGuard
    let transactionGuard: TransactionModeGuard
    let switchTransactionGuard: TransactionModeGuard
    /// Per-process secret for the fake SCRAM exchange of unknown users.
    let mockSecret: [UInt8]

    let throttle: LoginThrottle
    /// Prometheus series (scraped from the metrics endpoint when one is configured).
    let metrics: ProxyMetrics
    let scramKeys = SCRAMKeyCache()
    /// Clients' session settings, one shared object per distinct set (transaction mode).
    let settingsInterner = Interner.settings()
    /// Tenant context statements, one shared string per distinct context: an idle client holds
    /// no copy of its own, and comparing a connection's context with a client's is mostly a
    /// comparison of the same storage.
    let contextInterner = Interner<String, String> { $0 }
    /// Set once at start, before the listener accepts anyone.
    private(set) var jwtVerifier: JWTVerifier?

    private let lock = NIOLock()
    private var _config: ProxyConfig
    private var _tls = TLSContexts()
    private var _map: TenantMap
    /// Bumped (after the change, under the lock) by every reload, SUSPEND and ACTIVATE; read
    /// without a lock by sessions on each statement.
    private let _mapGeneration = ManagedAtomic<Int>(0)
    /// True while any PAUSE is in force: borrows look no further (no lock) while it is false.
    private let _anyPaused = ManagedAtomic<Bool>(false)
    /// Client connections accepted that have not finished logging in, on every loop.
    private let _loggingIn = ManagedAtomic<Int>(0)
    private var _mapModified: FileStamp?
    /// Read at the end of every transaction: an atomic, not the lock.
    private let _draining = ManagedAtomic<Bool>(false)
    /// [pool] tenant_max_connections (0 = no limit), checked on every lend and return: a copy of
    /// the config under the lock there cost a lock and a dozen retains per transaction.
    private let _tenantLeaseLimit = ManagedAtomic<Int>(0)
    private var lookupCache: [String: (record: UpstreamTenantRecord?, expires: NIODeadline)] = [:]
    private var tenantLeases: [String: Int] = [:]
    private var tenantClients: [String: Int] = [:]
    private var poolsBlockedOnTenants: [ObjectIdentifier: UpstreamPool] = [:]
    /// Tenant ids suspended from the admin console (on top of the map's own status).
    private var suspendedTenants: Set<String> = []
    private var pauses: Set<PauseTarget> = []
    private var pauseWaiters: [ObjectIdentifier: ClientSession] = [:]
    /// One pool per event loop; filled before the listener starts, read-only afterwards.
    private(set) var pools: [ObjectIdentifier: UpstreamPool] = [:]
    /// Traffic totals per event loop, by tenant; filled with the pools.
    private(set) var loopStats: [ObjectIdentifier: LoopStats] = [:]
    /// Sessions still logging in, per event loop; filled with the pools.
    private(set) var loginWatches: [ObjectIdentifier: LoginWatch<ClientSession>] = [:]
    /// Sessions inside a transaction, per event loop (idle_transaction_timeout_seconds); filled
    /// with the pools.
    private(set) var transactionWatches: [ObjectIdentifier: IdleTransactionWatch<ClientSession>] = [:]
    private(set) var loops: [EventLoop] = []
    /// [pool] size across all loops' pools.
    let poolBudget: PoolBudget
    /// Set by the server: what the admin console's SHUTDOWN and SIGTERM run.
    var shutdownHandler: (() -> Void)?
    let startedAt = Date()

    init(config: ProxyConfig, map: TenantMap, logger: Logger, configPath: String? = nil) {
        self._config = config
        self.configPath = configPath
        self._map = map
        self.logger = logger
        self.registry = SessionRegistry(maxSessions: config.server.maxClientConnections, instanceID: config.server.instanceID)
        self.metrics = ProxyMetrics(maxTenantLabels: config.metrics.maxTenantLabels)
        self.poolBudget = PoolBudget(size: config.pool.size)
        self.throttle = LoginThrottle(limit: config.auth.lockoutFailures, windowSeconds: config.auth.lockoutWindowSeconds,
                                      lockoutSeconds: config.auth.lockoutSeconds)
        self.injector = ContextInjector(tenantSetting: config.tenancy.tenantSetting, userSetting: config.tenancy.userSetting)
        let contextSettings: Set<String> = [injector.tenantSetting, injector.userSetting]
        self.pinnedStatementGuard = StatementGuard(policy: GuardPolicy(tenantSettings: contextSettings, mode: .pinned))
        self.switchStatementGuard = StatementGuard(policy: GuardPolicy(tenantSettings: contextSettings, mode: .switchTenant))
        let readBack = Set(config.pool.trackExtraParameters)
        self.transactionGuard = TransactionModeGuard(readBack: readBack)
        self.switchTransactionGuard = TransactionModeGuard(alsoTracked: [injector.tenantSetting], readBack: readBack)
        self._mapModified = FileStamp(of: config.tenancy.mapFile)
        self._tenantLeaseLimit.store(config.pool.tenantMaxConnections, ordering: .relaxed)
        self.mockSecret = SCRAMServerExchange.makeMockSecret()
    }

    var map: TenantMap { lock.withLock { _map } }

    /// The configuration in force; RELOAD replaces it whole (keys that need a restart keep
    /// their old values). Read it once per decision, not per message.
    var config: ProxyConfig { lock.withLock { _config } }

    var tls: TLSContexts { lock.withLock { _tls } }

    /// Loads certificates and keys (TLS both ways) and the JWT keys; throws with what is wrong.
    func prepareSecurity() throws {
        let contexts = try TLSContexts.make(config)
        lock.withLock { _tls = contexts }
        if let settings = config.jwt {
            jwtVerifier = try JWTVerifier(settings: settings, httpFetcher: nil, logger: logger)
        }
    }

    /// Reloads the certificate and key (SIGHUP); on error the previous ones stay.
    func reloadTLS() {
        do {
            let contexts = try TLSContexts.make(config)
            lock.withLock { _tls = contexts }
            if config.tls.enabled { logger.info("TLS certificate reloaded") }
        } catch {
            logger.error("TLS reload failed; the previous certificate stays in force", metadata: ["error": "\(error)"])
        }
    }

    /// Changes whenever a reload swaps the map; sessions compare it to re-check their tenant cheaply.
    var mapGeneration: Int { _mapGeneration.load(ordering: .acquiring) }

    var isDraining: Bool { _draining.load(ordering: .relaxed) }

    func startDraining() {
        _draining.store(true, ordering: .relaxed)
    }

    func resolver() -> TenantResolver {
        TenantResolver(map: map, settings: config.tenancy, upstreamDatabase: config.upstream.database)
    }

    // MARK: - Pools and tenant limits

    func makePools(for group: EventLoopGroup) {
        let loops = Array(group.makeIterator())
        self.loops = loops
        for loop in loops {
            pools[ObjectIdentifier(loop)] = UpstreamPool(eventLoop: loop, runtime: self)
            loopStats[ObjectIdentifier(loop)] = LoopStats()
            let watch = LoginWatch<ClientSession>()
            loginWatches[ObjectIdentifier(loop)] = watch
            let transactions = IdleTransactionWatch<ClientSession>(timeoutSeconds: config.pool.idleTransactionTimeoutSeconds)
            transactionWatches[ObjectIdentifier(loop)] = transactions
            loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
                let now = NIODeadline.now()
                for session in watch.expire(now: now) { session.loginTimedOut() }
                let (left, expired) = transactions.sweep(now: now)
                for session in left { session.leftTransactionWatch() }
                for session in expired { session.idleTransactionTimedOut(seconds: transactions.timeoutSeconds) }
            }
        }
        poolBudget.attach(Array(pools.values))
    }

    /// A connection was accepted (`true`) or left log-in (`false`: ready, refused or closed).
    func countLogIn(_ started: Bool) {
        if started {
            _loggingIn.wrappingIncrement(ordering: .relaxed)
        } else {
            _loggingIn.wrappingDecrement(ordering: .relaxed)
        }
    }

    /// Whether a connection still logging in (counted among them) may go on. A start-up message
    /// must fit in `max_client_connections` with the sessions and the other log-ins in progress,
    /// as a client does in PostgreSQL's max_connections and PgBouncer's max_client_conn. Before
    /// it (a CancelRequest, which must get through when the proxy is full, or TLS negotiation)
    /// twice that many are allowed, as PostgreSQL's postmaster allows twice max_connections
    /// children: beyond that a connection is refused as soon as it is accepted, so a flood of
    /// connections that never log in cannot use up the open-file limit (2 x the limit + 128).
    func admitsLogIn(startupMessage: Bool) -> Bool {
        let held = registry.count + _loggingIn.load(ordering: .relaxed)
        return held <= registry.maxSessions * (startupMessage ? 1 : 2)
    }

    func loginWatch(for loop: EventLoop) -> LoginWatch<ClientSession>? {
        loginWatches[ObjectIdentifier(loop)]
    }

    func transactionWatch(for loop: EventLoop) -> IdleTransactionWatch<ClientSession>? {
        transactionWatches[ObjectIdentifier(loop)]
    }

    func pool(for loop: EventLoop) -> UpstreamPool? {
        pools[ObjectIdentifier(loop)]
    }

    func stats(for loop: EventLoop) -> LoopStats? {
        loopStats[ObjectIdentifier(loop)]
    }

    /// Runs `body` on every event loop (where loop-confined state may be read) and collects the
    /// answers on `loop`, without blocking any loop.
    func gather<T>(on loop: EventLoop, _ body: @escaping (EventLoop) -> T) -> EventLoopFuture<[T]> {
        let futures = loops.map { other in other.submit { body(other) } }
        return EventLoopFuture.whenAllSucceed(futures, on: loop)
    }

    /// Every session, grouped by the loop it lives on.
    func sessionsByLoop() -> [ObjectIdentifier: [ClientSession]] {
        Dictionary(grouping: registry.allSessions) { ObjectIdentifier($0.client.eventLoop) }
    }

    /// Upstream clusters as configured, "default" included.
    func clusterNames() -> Set<String> {
        Set(config.clusters.keys)
    }

    /// Counts one more upstream connection lent to `tenant`; false when at its limit (the pool
    /// is told when one frees up).
    func takeTenantLease(_ tenant: String, pool: UpstreamPool) -> Bool {
        let limit = _tenantLeaseLimit.load(ordering: .relaxed)
        guard limit > 0 else { return true }
        return lock.withLock {
            guard tenantLeases[tenant, default: 0] < limit else {
                poolsBlockedOnTenants[ObjectIdentifier(pool)] = pool
                return false
            }
            tenantLeases[tenant, default: 0] += 1
            return true
        }
    }

    func releaseTenantLease(_ tenant: String) {
        guard _tenantLeaseLimit.load(ordering: .relaxed) > 0 else { return }
        let blocked: [UpstreamPool] = lock.withLock {
            tenantLeases[tenant, default: 1] -= 1
            if tenantLeases[tenant] == 0 { tenantLeases.removeValue(forKey: tenant) }
            let pools = Array(poolsBlockedOnTenants.values)
            poolsBlockedOnTenants.removeAll()
            return pools
        }
        for pool in blocked {
            pool.eventLoop.execute { pool.serveWaiters() }
        }
    }

    /// Counts a client of `tenant`; false when the tenant has `tenant_max_clients` already.
    func addTenantClient(_ tenant: String) -> Bool {
        let limit = config.pool.tenantMaxClients
        return lock.withLock {
            if limit > 0, tenantClients[tenant, default: 0] >= limit { return false }
            tenantClients[tenant, default: 0] += 1
            return true
        }
    }

    func removeTenantClient(_ tenant: String) {
        lock.withLock {
            tenantClients[tenant, default: 1] -= 1
            if tenantClients[tenant] == 0 { tenantClients.removeValue(forKey: tenant) }
        }
    }

    // MARK: - Reload

    /// Puts back into `fresh` the values of keys that only take effect after a restart, and names
    /// those that changed: one list says both which keys they are and how to keep them.
    static func keepRestartOnly(in fresh: inout ProxyConfig, from old: ProxyConfig) -> [String] {
        var kept: [String] = []
        func keep<T: Equatable>(_ path: WritableKeyPath<ProxyConfig, T>, _ key: String) {
            guard fresh[keyPath: path] != old[keyPath: path] else { return }
            fresh[keyPath: path] = old[keyPath: path]
            kept.append(key)
        }
        keep(\.server.listenHost, "server.listen_host")
        keep(\.server.listenPort, "server.listen_port")
        keep(\.server.eventLoopThreads, "server.event_loop_threads")
        keep(\.server.reusePort, "server.reuse_port")
        // Set on the listeners (which accepted sockets inherit) and on each upstream connect.
        keep(\.server.keepalive.enabled, "server.tcp_keepalive")
        keep(\.server.keepalive.idleSeconds, "server.tcp_keepalive_idle_seconds")
        keep(\.server.keepalive.intervalSeconds, "server.tcp_keepalive_interval_seconds")
        keep(\.server.keepalive.count, "server.tcp_keepalive_count")
        keep(\.server.instanceID, "server.instance_id")
        keep(\.server.cancelPort, "server.cancel_port")
        keep(\.server.maxClientConnections, "server.max_client_connections")
        // Each loop's pool schedules its idle sweep once, at start.
        keep(\.pool.idleTimeoutSeconds, "pool.idle_timeout_seconds")
        // The transaction-mode guards are made once, at start.
        keep(\.pool.trackExtraParameters, "pool.track_extra_parameters")
        // The login throttle is made once, at start.
        keep(\.auth.lockoutFailures, "auth.lockout_failures")
        keep(\.auth.lockoutWindowSeconds, "auth.lockout_window_seconds")
        keep(\.auth.lockoutSeconds, "auth.lockout_seconds")
        keep(\.tenancy.tenantSetting, "tenancy.tenant_setting")
        keep(\.tenancy.userSetting, "tenancy.user_setting")
        keep(\.tenancy.mapFile, "tenancy.map_file")
        keep(\.metrics.listenHost, "metrics.listen_host")
        keep(\.metrics.listenPort, "metrics.listen_port")
        keep(\.metrics.maxTenantLabels, "metrics.max_tenant_labels")
        keep(\.log.level, "log.level")
        keep(\.log.format, "log.format")
        // The verifier is made once, at start, from these settings (its key sources refresh on
        // their own): a changed [jwt] section would otherwise show in SHOW CONFIG unused.
        keep(\.jwt, "jwt")
        return kept
    }

    /// RELOAD and SIGHUP: proxy.conf (when the runtime came from a file), the tenant map and the
    /// TLS certificate. A bad file is reported and what is in force stays. Returns problems, if any.
    @discardableResult
    func reload() -> [String] {
        var problems: [String] = []
        if let configPath {
            do {
                var fresh = try ProxyConfig.load(path: configPath)
                let kept = Self.keepRestartOnly(in: &fresh, from: config)
                if !kept.isEmpty {
                    logger.warning("changed keys take effect after a restart", metadata: ["keys": "\(kept.joined(separator: ", "))"])
                }
                lock.withLock { _config = fresh }
                _tenantLeaseLimit.store(fresh.pool.tenantMaxConnections, ordering: .relaxed)
                for pool in pools.values {
                    pool.eventLoop.execute { pool.configure(fresh.pool) }
                }
                let idleTransactionTimeout = fresh.pool.idleTransactionTimeoutSeconds
                for loop in loops {
                    guard let watch = transactionWatch(for: loop) else { continue }
                    loop.execute { watch.timeoutSeconds = idleTransactionTimeout }
                }
                logger.info("configuration reloaded")
            } catch {
                logger.error("configuration reload failed; the previous configuration stays in force", metadata: ["error": "\(error)"])
                problems.append("\(error)")
            }
        }
        if !reloadTenantMap() { problems.append("tenant map reload failed (see the log)") }
        reloadTLS()
        return problems
    }

    /// Loads the tenant map again; a bad file is reported and the previous map stays in force.
    /// Sessions are never dropped by a reload; they re-check their tenant at their next statement.
    @discardableResult
    func reloadTenantMap() -> Bool {
        let path = config.tenancy.mapFile
        let modified = FileStamp(of: path)
        do {
            let map = try TenantMap.load(path: path, clusters: clusterNames())
            lock.withLock {
                _map = map
                _mapGeneration.wrappingIncrement(ordering: .releasing)
                _mapModified = modified
                lookupCache.removeAll()
            }
            logger.info("tenant map reloaded", metadata: ["tenants": "\(map.tenants.count)", "users": "\(map.users.count)"])
            return true
        } catch {
            lock.withLock { _mapModified = modified }
            logger.error("tenant map reload failed; the previous map stays in force", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Reloads when the file (its modification time, size or inode) changed since the last load.
    func reloadIfFileChanged() {
        let modified = FileStamp(of: config.tenancy.mapFile)
        let changed = lock.withLock { modified != nil && modified != _mapModified }
        if changed { reloadTenantMap() }
    }

    // MARK: - Admin: suspension and pauses

    func suspend(tenantID: String) {
        lock.withLock {
            suspendedTenants.insert(tenantID)
            _mapGeneration.wrappingIncrement(ordering: .releasing)
        }
    }

    /// False when the tenant was not suspended from the console.
    func activate(tenantID: String) -> Bool {
        lock.withLock {
            guard suspendedTenants.remove(tenantID) != nil else { return false }
            _mapGeneration.wrappingIncrement(ordering: .releasing)
            return true
        }
    }

    func isSuspended(_ tenantID: String) -> Bool {
        lock.withLock { suspendedTenants.contains(tenantID) }
    }

    var suspendedTenantIDs: Set<String> { lock.withLock { suspendedTenants } }

    var pausedTargets: Set<PauseTarget> { lock.withLock { pauses } }

    func pause(_ target: PauseTarget) {
        lock.withLock {
            pauses.insert(target)
            _anyPaused.store(true, ordering: .releasing)
        }
    }

    /// Lifts a pause; every client held by any pause tries again (those still paused by another
    /// target wait on). False when that target was not paused.
    @discardableResult
    func resume(_ target: PauseTarget) -> Bool {
        let (wasPaused, waiters) = lock.withLock { () -> (Bool, [ClientSession]) in
            var removed: Bool
            if target == .all {
                removed = !pauses.isEmpty
                pauses.removeAll()
            } else {
                removed = pauses.remove(target) != nil
            }
            _anyPaused.store(!pauses.isEmpty, ordering: .releasing)
            let waiting = Array(pauseWaiters.values)
            pauseWaiters.removeAll()
            return (removed, waiting)
        }
        for session in waiters { session.client.eventLoop.execute { session.pauseLifted() } }
        return wasPaused
    }

    private func pausedLocked(tenant: String?, cluster: String) -> Bool {
        guard !pauses.isEmpty else { return false }
        if pauses.contains(.all) || pauses.contains(.cluster(cluster)) { return true }
        if let tenant, pauses.contains(.tenant(tenant)) { return true }
        return false
    }

    func isPaused(tenant: String?, cluster: String) -> Bool {
        lock.withLock { pausedLocked(tenant: tenant, cluster: cluster) }
    }

    /// When the tenant or its cluster is paused, remembers the session (RESUME calls its
    /// `pauseLifted()` on its loop) and returns true; otherwise false and the caller goes on.
    /// `cluster` is read only when something is paused (a copy of the string per transaction
    /// otherwise).
    func holdIfPaused(tenant: String?, cluster: @autoclosure () -> String, session: ClientSession) -> Bool {
        guard _anyPaused.load(ordering: .acquiring) else { return false }
        let cluster = cluster()
        return lock.withLock {
            guard pausedLocked(tenant: tenant, cluster: cluster) else { return false }
            pauseWaiters[ObjectIdentifier(session)] = session
            return true
        }
    }

    func cancelPauseHold(_ session: ClientSession) {
        lock.withLock { _ = pauseWaiters.removeValue(forKey: ObjectIdentifier(session)) }
    }

    // MARK: - Upstream tenant cache

    enum CachedLookup: Equatable {
        case miss
        case hit(UpstreamTenantRecord?)
    }

    func cachedLookup(_ uuid: String) -> CachedLookup {
        lock.withLock {
            guard let entry = lookupCache[uuid], entry.expires > .now() else { return .miss }
            return .hit(entry.record)
        }
    }

    func cacheLookup(_ uuid: String, _ record: UpstreamTenantRecord?) {
        let ttl = config.tenancy.lookupCacheSeconds
        guard ttl > 0 else { return }
        lock.withLock {
            if lookupCache.count > 100_000 { lookupCache.removeAll() }
            lookupCache[uuid] = (record, .now() + .seconds(Int64(ttl)))
        }
    }
}

/// What PAUSE and RESUME act on.
enum PauseTarget: Hashable, Sendable, CustomStringConvertible {
    case all
    /// A tenant id.
    case tenant(String)
    /// An upstream cluster name.
    case cluster(String)

    var description: String {
        switch self {
        case .all: return "all"
        case .tenant(let id): return "tenant \(id)"
        case .cluster(let name): return "cluster \(name)"
        }
    }
}
