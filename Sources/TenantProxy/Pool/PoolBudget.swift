import Atomics
import NIOConcurrencyHelpers
import NIOCore

/// How many upstream connections each pool key has open (or opening) on each event loop,
/// against `[pool] size` for all loops together.
///
/// Each event loop has its own pool, so a client and its lent connection share a thread. With
/// the size split evenly between the loops instead, a loop that was handed more clients than
/// its half (13 or 12 of 20 pgbench clients in the benchmark: each loop accepts on its own socket
/// and the kernel spreads connections over them by address, not evenly) kept lending its 10 connections from tenant to
/// tenant (a RESET and a SET upstream each time: 9 to 30% of transactions at 20 clients over 10
/// tenants) while the other loop had some to spare. Now a loop opens connections while all
/// loops together are under the size. When the size is reached, a loop with fewer connections than clients waits for room,
/// and a loop holding more than it keeps gives some back: its longest idle connection of that
/// key closes (`shed`) and its next freed ones retire instead of going idle. A loop keeps its
/// fair share (size / loops, rounded down), or as many as it has clients if that is fewer.
///
/// What a loop keeps is measured by the most clients it had at once in the last second
/// (`clientHold`), not by how many it has this instant: clients that open a connection per
/// transaction (pgbench -C, serverless functions) come and go many times a second, and a loop
/// whose count dipped for a moment gave a connection to the other loop, which gave one back at
/// its own next dip: with 20 such clients on a size of 6, 4.5 new server connections (a backend
/// and a log-in each) per 1000 transactions, where PgBouncer opened none.
///
/// Its lock is taken when a connection opens or closes and when a loop first finds no room, not
/// per transaction: a loop waiting for room is told when there is some (`roomFreed`), and the
/// per-return question "must this loop give a connection back?" is its pool's `mustShed` flag,
/// an atomic kept up to date here.
final class PoolBudget: @unchecked Sendable {
    private let lock = NIOLock()
    private var size: Int
    private var loops = 1
    /// Open connections by key, then by pool.
    private var open: [PoolKey: [ObjectIdentifier: Int]] = [:]
    /// Transaction-mode client sessions by pool: the most connections a loop can use at once.
    private var clients: [ObjectIdentifier: Int] = [:]
    /// The most clients each pool had at once since `at`, refreshed whenever its count reaches
    /// it again; it stops counting `clientHold` after that (see the type's comment).
    private var peaks: [ObjectIdentifier: (count: Int, at: NIODeadline)] = [:]
    static let clientHold: TimeAmount = .seconds(1)
    private let now: () -> NIODeadline
    /// Pools with fewer connections than clients that found no room, by key (told when a
    /// connection closes).
    private var blocked: [PoolKey: [ObjectIdentifier: UpstreamPool]] = [:]
    private var pools: [UpstreamPool] = []

    enum Take {
        case taken
        /// No room. `waiting`: the pool is recorded and will be told (`roomFreed`) when there is.
        case full(waiting: Bool)
    }

    /// `now`: the clock for `clientHold` (tests pass their own).
    init(size: Int, now: @escaping () -> NIODeadline = NIODeadline.now) {
        self.size = max(1, size)
        self.now = now
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
        let waiting: [(PoolKey, UpstreamPool)] = lock.withLock {
            self.size = max(1, size)
            let waiting = blocked.flatMap { key, pools in pools.values.map { (key, $0) } }
            blocked.removeAll()
            updateShedding()
            return waiting
        }
        for (key, pool) in waiting {
            pool.eventLoop.execute { pool.roomFreed(key) }
        }
    }

    /// A transaction-mode client session started on `pool`'s loop.
    func clientArrived(_ pool: UpstreamPool) {
        lock.withLock {
            let id = ObjectIdentifier(pool)
            let count = clients[id, default: 0] + 1
            clients[id] = count
            let time = now()
            if heldPeak(id, at: time) <= count { peaks[id] = (count, time) }
            updateShedding()
        }
    }

    func clientLeft(_ pool: UpstreamPool) {
        lock.withLock {
            clients[ObjectIdentifier(pool), default: 1] -= 1
            updateShedding()
        }
    }

    /// Sets each pool's `mustShed`: it holds more of a key than it keeps while another loop
    /// waits for room for that key. Under the lock, after every change that can move it.
    private func updateShedding() {
        for pool in pools {
            let id = ObjectIdentifier(pool)
            let must = blocked.keys.contains { mustShed(id, key: $0) }
            if pool.mustShed.load(ordering: .relaxed) != must { pool.mustShed.store(must, ordering: .relaxed) }
        }
    }

    /// Whether the pool `id` holds more of `key` than it keeps while another loop waits for room
    /// for it. Under the lock.
    private func mustShed(_ id: ObjectIdentifier, key: PoolKey) -> Bool {
        guard let waiting = blocked[key], waiting.keys.contains(where: { $0 != id }) else { return false }
        return open[key]?[id, default: 0] ?? 0 > keeps(id)
    }

    /// Open connections of `key` on all loops. Under the lock.
    private func total(_ key: PoolKey) -> Int {
        open[key]?.values.reduce(0, +) ?? 0
    }

    /// What a loop keeps of a key when others wait: its fair share, or the most clients it had
    /// at once in the last `clientHold` if fewer. Either may be 0: a loop whose clients have all
    /// left keeps none once the hold is over, and with a size below the number of loops (size 1
    /// on two loops) no loop has a share, so a connection goes where it is waited for instead of
    /// sitting idle on one loop while the other loop's clients time out.
    private func keeps(_ id: ObjectIdentifier) -> Int {
        min(size / loops, max(clients[id, default: 0], heldPeak(id, at: now())))
    }

    /// The pool's peak of clients while its `clientHold` lasts, else 0.
    private func heldPeak(_ id: ObjectIdentifier, at time: NIODeadline) -> Int {
        guard let peak = peaks[id], time - peak.at < Self.clientHold else { return 0 }
        return peak.count
    }

    /// Counts one more connection of `key` on `pool` if all loops together are under the size.
    /// Otherwise, if `pool` has fewer connections than clients, records it as waiting for room
    /// and asks the loops holding more than they keep to free some.
    func take(_ key: PoolKey, for pool: UpstreamPool) -> Take {
        let id = ObjectIdentifier(pool)
        let (result, over): (Take, [UpstreamPool]) = lock.withLock {
            let counts = open[key] ?? [:]
            if total(key) < size {
                open[key, default: [:]][id, default: 0] += 1
                return (.taken, [])
            }
            if blocked[key]?[id] != nil { return (.full(waiting: true), []) }
            guard counts[id, default: 0] < clients[id, default: 0] else { return (.full(waiting: false), []) }
            blocked[key, default: [:]][id] = pool
            updateShedding()
            return (.full(waiting: true), pools.filter { $0.mustShed.load(ordering: .relaxed) })
        }
        for other in over {
            other.eventLoop.execute { other.shed(key) }
        }
        return result
    }

    /// Asks the loops that hold more than they keep while another waits to free some. A loop's
    /// hold on its recent clients runs out with no event of its own, so each pool calls this
    /// once a second while one of its lanes waits for room.
    func refresh() {
        let over: [(UpstreamPool, PoolKey)] = lock.withLock {
            updateShedding()
            return blocked.keys.flatMap { key in
                pools.filter { mustShed(ObjectIdentifier($0), key: key) }.map { ($0, key) }
            }
        }
        for (pool, key) in over {
            pool.eventLoop.execute { pool.shed(key) }
        }
    }

    /// Connections of `key` on `pool` closed (or failed to open): room for loops that wait.
    func give(_ key: PoolKey, for pool: UpstreamPool, count: Int = 1) {
        let id = ObjectIdentifier(pool)
        let waiting: [UpstreamPool] = lock.withLock {
            open[key, default: [:]][id, default: count] -= count
            if open[key]![id]! <= 0 { open[key]!.removeValue(forKey: id) }
            if open[key]!.isEmpty { open.removeValue(forKey: key) }
            let waiting = blocked.removeValue(forKey: key).map { Array($0.values) } ?? []
            updateShedding()
            return waiting
        }
        for pool in waiting {
            pool.eventLoop.execute { pool.roomFreed(key) }
        }
    }

    /// Whether `pool` holds more of `key` than it keeps while another loop waits for room: a
    /// connection `pool` frees then closes instead of going idle. `key` is read only when the
    /// pool's flag is set: a lane's key is three strings, copied (retained and released, about
    /// 260 instructions) on every return otherwise.
    func isWanted(_ key: @autoclosure () -> PoolKey, from pool: UpstreamPool) -> Bool {
        guard pool.mustShed.load(ordering: .relaxed) else { return false }
        let key = key()
        return lock.withLock { mustShed(ObjectIdentifier(pool), key: key) }
    }

    /// Connections of `key` over the size (after a reload that lowered it).
    func surplus(_ key: PoolKey) -> Int {
        lock.withLock { max(0, total(key) - size) }
    }

    /// Open connections of `key`, all loops.
    func count(_ key: PoolKey) -> Int {
        lock.withLock { total(key) }
    }
}
