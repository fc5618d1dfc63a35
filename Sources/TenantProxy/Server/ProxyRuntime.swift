import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// What every session shares: configuration, the tenant map (replaced whole on reload), the cache
/// of tenants looked up upstream, the session registry and the logger.
final class ProxyRuntime: @unchecked Sendable {
    let config: ProxyConfig
    let registry: SessionRegistry
    let logger: Logger
    let injector: ContextInjector
    /// Per-process secret for the fake SCRAM exchange of unknown users.
    let mockSecret: [UInt8]

    let throttle: LoginThrottle
    let scramKeys = SCRAMKeyCache()
    /// Set once at start, before the listener accepts anyone.
    private(set) var jwtVerifier: JWTVerifier?

    private let lock = NIOLock()
    private var _tls = TLSContexts()
    private var _map: TenantMap
    private var _mapGeneration = 0
    private var _mapModified: Date?
    private var _draining = false
    private var lookupCache: [String: (record: UpstreamTenantRecord?, expires: NIODeadline)] = [:]
    private var tenantLeases: [String: Int] = [:]
    private var tenantClients: [String: Int] = [:]
    private var poolsBlockedOnTenants: [ObjectIdentifier: UpstreamPool] = [:]
    /// One pool per event loop; filled before the listener starts, read-only afterwards.
    private(set) var pools: [ObjectIdentifier: UpstreamPool] = [:]

    init(config: ProxyConfig, map: TenantMap, logger: Logger) {
        self.config = config
        self._map = map
        self.logger = logger
        self.registry = SessionRegistry(maxSessions: config.server.maxClientConnections)
        self.throttle = LoginThrottle(limit: config.auth.lockoutFailures, windowSeconds: config.auth.lockoutWindowSeconds,
                                      lockoutSeconds: config.auth.lockoutSeconds)
        self.injector = ContextInjector(tenantSetting: config.tenancy.tenantSetting, userSetting: config.tenancy.userSetting)
        self._mapModified = Self.modificationDate(config.tenancy.mapFile)
        var generator = SystemRandomNumberGenerator()
        self.mockSecret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    var map: TenantMap { lock.withLock { _map } }

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
    var mapGeneration: Int { lock.withLock { _mapGeneration } }

    var isDraining: Bool { lock.withLock { _draining } }

    func startDraining() {
        lock.withLock { _draining = true }
    }

    func resolver() -> TenantResolver {
        TenantResolver(map: map, settings: config.tenancy, upstreamDatabase: config.upstream.database)
    }

    // MARK: - Pools and tenant limits

    func makePools(for group: EventLoopGroup) {
        let loops = Array(group.makeIterator())
        for loop in loops {
            pools[ObjectIdentifier(loop)] = UpstreamPool(eventLoop: loop, runtime: self, loops: loops.count)
        }
    }

    func pool(for loop: EventLoop) -> UpstreamPool? {
        pools[ObjectIdentifier(loop)]
    }

    /// Counts one more upstream connection lent to `tenant`; false when at its limit (the pool
    /// is told when one frees up).
    func takeTenantLease(_ tenant: String, pool: UpstreamPool) -> Bool {
        let limit = config.pool.tenantMaxConnections
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
        guard config.pool.tenantMaxConnections > 0 else { return }
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

    /// Loads the tenant map again; a bad file is reported and the previous map stays in force.
    /// Sessions are never dropped by a reload; they re-check their tenant at their next statement.
    @discardableResult
    func reloadTenantMap() -> Bool {
        let path = config.tenancy.mapFile
        let modified = Self.modificationDate(path)
        do {
            let map = try TenantMap.load(path: path)
            lock.withLock {
                _map = map
                _mapGeneration += 1
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

    /// Reloads when the file's modification time changed since the last load.
    func reloadIfFileChanged() {
        let modified = Self.modificationDate(config.tenancy.mapFile)
        let changed = lock.withLock { modified != nil && modified != _mapModified }
        if changed { reloadTenantMap() }
    }

    private static func modificationDate(_ path: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
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
