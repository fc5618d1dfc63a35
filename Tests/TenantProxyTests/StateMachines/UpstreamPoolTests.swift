import NIOCore
import NIOEmbedded
import XCTest

@testable import TenantProxy

/// Which idle connection a lend takes (tenant affinity), on an EmbeddedEventLoop: no sockets,
/// connections over EmbeddedChannels put in the pool by hand as if returned by borrowers.
final class UpstreamPoolTests: XCTestCase {
    private var loop: EmbeddedEventLoop!
    private var runtime: ProxyRuntime!
    private var pool: UpstreamPool!
    private var lane: UpstreamPool.Lane!
    private var channels: [EmbeddedChannel] = []

    override func setUp() {
        loop = EmbeddedEventLoop()
        runtime = ProxyRuntime(config: ProxyConfig(), map: TenantMap(), logger: ProxyLogging.makeLogger(level: "critical"))
        pool = UpstreamPool(eventLoop: loop, runtime: runtime)
        lane = pool.lane(PoolKey(user: "proxy", database: "app"))
    }

    override func tearDown() {
        for channel in channels { _ = try? channel.finish(acceptAlreadyClosed: true) }
        channels = []
        pool = nil
        lane = nil
        runtime = nil
        try? loop.syncShutdownGracefully()
    }

    /// A connection carrying `context`, returned to the pool (idle), in call order.
    @discardableResult
    private func returned(_ context: String) -> UpstreamConnection {
        let channel = EmbeddedChannel(loop: loop)
        channels.append(channel)
        let connection = UpstreamConnection(channel: channel, key: lane.key, lane: lane)
        connection.context = context
        pool.release(connection, tenant: nil)
        return connection
    }

    func testALendPrefersTheMostRecentConnectionWithItsContext() throws {
        returned("tenant a")
        let olderB = returned("tenant b")
        returned("tenant c")
        let newerB = returned("tenant b")
        XCTAssertTrue(pool.lendNow(lane, context: ContextKey("tenant b"), tenant: nil) === newerB)
        XCTAssertTrue(pool.lendNow(lane, context: ContextKey("tenant b"), tenant: nil) === olderB)
    }

    /// Without a connection of its own context, a lend takes the one idle longest: the most
    /// recent one most likely belongs to a tenant about to come back for it.
    func testWithoutItsContextALendTakesTheLeastRecentlyReturned() throws {
        let oldest = returned("tenant a")
        returned("tenant b")
        let newest = returned("tenant c")
        XCTAssertTrue(pool.lendNow(lane, context: ContextKey("tenant d"), tenant: nil) === oldest)
        // Tenant c comes back and still finds its own connection.
        XCTAssertTrue(pool.lendNow(lane, context: ContextKey("tenant c"), tenant: nil) === newest)
    }

    // MARK: - Waiters (a pool without room: waiters wait until a connection comes back)

    private func fullPool() {
        var config = ProxyConfig()
        config.pool.size = 1
        runtime = ProxyRuntime(config: config, map: TenantMap(), logger: ProxyLogging.makeLogger(level: "critical"))
        pool = UpstreamPool(eventLoop: loop, runtime: runtime)
        lane = pool.lane(PoolKey(user: "proxy", database: "app"))
        // The one slot is taken (by a connection out on loan, say): nobody opens another.
        guard case .taken = runtime.poolBudget.take(lane.key, for: pool) else { return XCTFail("the budget has room for one") }
    }

    /// Waiters for `contexts`, in order; `served` gets each one's name and its connection's context
    /// as it is served.
    private func wait(_ contexts: [String], served: @escaping (String, String) -> Void) -> [Int] {
        contexts.enumerated().map { index, context in
            pool.acquire(lane, context: ContextKey(context), tenant: nil) { result in
                guard case .success(let connection) = result else { return XCTFail("waiter \(index) failed: \(result)") }
                served("w\(index)", connection.context)
            }
        }
    }

    private var waiting: Int { pool.poolRows().first?.waiting ?? 0 }

    /// A returned connection goes to a waiter near the front that wants its context; the first in
    /// line is overtaken at most `maxOvertaken` times, then served whatever the context.
    func testWaitersGetTheirOwnContextAndTheFirstIsOvertakenBoundedly() throws {
        fullPool()
        var order: [String] = []
        let others = Array(repeating: "tenant b", count: UpstreamPool.maxOvertaken + 2)
        _ = wait(["tenant a"] + others) { order.append("\($0):\($1)") }
        XCTAssertEqual(waiting, others.count + 1)
        for _ in 0..<UpstreamPool.maxOvertaken { returned("tenant b") }
        XCTAssertEqual(order, (1...UpstreamPool.maxOvertaken).map { "w\($0):tenant b" }, "affinity: b's waiters overtake a")
        returned("tenant b")
        XCTAssertEqual(order.last, "w0:tenant b", "overtaken \(UpstreamPool.maxOvertaken) times, the first waiter goes next")
        returned("tenant b")
        XCTAssertEqual(order.last, "w\(UpstreamPool.maxOvertaken + 1):tenant b")
        XCTAssertEqual(waiting, 1)
        returned("tenant a")
        XCTAssertEqual(order.count, others.count + 1)
        XCTAssertEqual(waiting, 0)
        XCTAssertEqual(pool.idleConnections.count, 0, "every returned connection was lent")
    }

    /// A cancelled waiter is skipped (also when it was overtaken and sits in the middle), and a
    /// connection with no waiter left stays idle; the waiting count follows.
    func testCancelledWaitersAreSkipped() throws {
        fullPool()
        var order: [String] = []
        let ids = wait(["tenant a", "tenant b", "tenant c", "tenant d"]) { name, _ in order.append(name) }
        returned("tenant c")  // w2 by affinity: w0 and w1 remain ahead of w3.
        pool.cancelWait(ids[0])
        pool.cancelWait(ids[0])  // Twice: nothing more happens.
        XCTAssertEqual(waiting, 2)
        returned("tenant z")
        XCTAssertEqual(order, ["w2", "w1"])
        pool.cancelWait(ids[3])
        XCTAssertEqual(waiting, 0)
        returned("tenant d")
        XCTAssertEqual(order, ["w2", "w1"])
        XCTAssertNotNil(pool.lendNow(lane, context: ContextKey("tenant d"), tenant: nil), "no waiter: the connection stayed idle")
    }

    /// Thousands of waiters served out of arrival order leave no trace behind: served ones
    /// are dropped from the queue, and lending without waiters works again.
    func testManyAffinityLendsKeepTheQueueExact() throws {
        fullPool()
        var served = 0
        _ = wait((0..<2_000).map { "tenant \($0 % 10)" }) { _, _ in served += 1 }
        for round in 0..<2_000 { returned("tenant \((round * 7) % 10)") }
        XCTAssertEqual(served, 2_000)
        XCTAssertEqual(waiting, 0)
        XCTAssertEqual(pool.idleConnections.count, 0)
        returned("tenant 1")
        XCTAssertNotNil(pool.lendNow(lane, context: ContextKey("tenant 1"), tenant: nil))
    }

    func testBrokenIdleConnectionsAreNeverLent() throws {
        let broken = returned("tenant a")
        let healthy = returned("tenant b")
        broken.broken = true
        XCTAssertTrue(pool.lendNow(lane, context: ContextKey("tenant a"), tenant: nil) === healthy)
        XCTAssertNil(pool.lendNow(lane, context: ContextKey("tenant a"), tenant: nil))
    }
}
