import Atomics
import NIOConcurrencyHelpers

/// How many upstream connections each pool key has open (or opening) on each event loop,
/// against `[pool] size` for all loops together.
///
/// Each event loop has its own pool, so a client and its lent connection share a thread. With
/// the size split evenly between the loops instead, a loop that was handed more clients than
/// its half kept lending its few connections from tenant to tenant (a RESET and a SET upstream
/// each time: 16% of transactions at 20 clients over 10 tenants) while part of the other
/// loop's half was never opened. Now a loop opens connections while all loops together are
/// under the size. Each loop keeps a fair share (size / loops) whatever the others do: when one
/// below its share finds no room, the loops above theirs close an idle connection of that key
/// (`shed`) and retire their next freed ones instead of keeping them, until it has its share.
///
/// Taken only when a connection opens or closes, never per transaction; the per-return question
/// "does another loop need room?" is one relaxed atomic load while none does.
final class PoolBudget: @unchecked Sendable {
    private let lock = NIOLock()
    private var size: Int
    private var loops = 1
    /// Open connections by key, then by pool.
    private var open: [PoolKey: [ObjectIdentifier: Int]] = [:]
    /// Pools below their share that found no room, by key (told when a connection closes).
    private var blocked: [PoolKey: [ObjectIdentifier: UpstreamPool]] = [:]
    private let anyBlocked = ManagedAtomic<Bool>(false)
    private var pools: [UpstreamPool] = []

    init(size: Int) {
        self.size = max(1, size)
    }

    /// Every loop's pool (once, before the listener starts).
    func attach(_ pools: [UpstreamPool]) {
        lock.withLock {
            self.pools = pools
            self.loops = max(1, pools.count)
        }
    }

    /// A reloaded `[pool] size`; connections over it close as they come back idle.
    func resize(_ size: Int) {
        lock.withLock { self.size = max(1, size) }
    }

    /// What each loop keeps whatever the others do.
    private var share: Int { max(1, size / loops) }

    /// Counts one more connection of `key` on `pool` if all loops together are under the size.
    /// Otherwise, if `pool` is below its share, records it as waiting for room and asks the
    /// loops above theirs to free some.
    func take(_ key: PoolKey, for pool: UpstreamPool) -> Bool {
        let id = ObjectIdentifier(pool)
        let (taken, over): (Bool, [UpstreamPool]) = lock.withLock {
            let counts = open[key] ?? [:]
            if counts.values.reduce(0, +) < size {
                open[key, default: [:]][id, default: 0] += 1
                return (true, [])
            }
            guard counts[id, default: 0] < share, blocked[key]?[id] == nil else { return (false, []) }
            blocked[key, default: [:]][id] = pool
            anyBlocked.store(true, ordering: .relaxed)
            return (false, pools.filter { counts[ObjectIdentifier($0), default: 0] > share })
        }
        for other in over {
            other.eventLoop.execute { other.shed(key) }
        }
        return taken
    }

    /// Connections of `key` on `pool` closed (or failed to open): room for loops that wait.
    func give(_ key: PoolKey, for pool: UpstreamPool, count: Int = 1) {
        let id = ObjectIdentifier(pool)
        let waiting: [UpstreamPool] = lock.withLock {
            open[key, default: [:]][id, default: count] -= count
            if open[key]![id]! <= 0 { open[key]!.removeValue(forKey: id) }
            if open[key]!.isEmpty { open.removeValue(forKey: key) }
            guard let pools = blocked.removeValue(forKey: key) else { return [] }
            if blocked.isEmpty { anyBlocked.store(false, ordering: .relaxed) }
            return Array(pools.values)
        }
        for pool in waiting {
            pool.eventLoop.execute { pool.serveWaiters() }
        }
    }

    /// Whether `pool` is above its share of `key` while a loop below its own waits for room: a
    /// connection `pool` frees then closes instead of going idle.
    func isWanted(_ key: PoolKey, from pool: UpstreamPool) -> Bool {
        guard anyBlocked.load(ordering: .relaxed) else { return false }
        return lock.withLock {
            guard let waiting = blocked[key], !waiting.isEmpty else { return false }
            return open[key]?[ObjectIdentifier(pool), default: 0] ?? 0 > share
        }
    }


    /// Connections of `key` over the size (after a reload that lowered it).
    func surplus(_ key: PoolKey) -> Int {
        lock.withLock { max(0, (open[key]?.values.reduce(0, +) ?? 0) - size) }
    }

    /// Open connections of `key`, all loops.
    func count(_ key: PoolKey) -> Int {
        lock.withLock { open[key]?.values.reduce(0, +) ?? 0 }
    }
}
