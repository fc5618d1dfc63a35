import NIOCore
import NIOEmbedded
import XCTest

@testable import TenantProxy

/// [pool] size across the loops' pools: a loop may use what the others leave, and always gets
/// its share back (size / loops).
final class PoolBudgetTests: XCTestCase {
    private var runtime: ProxyRuntime!
    private var loops: [EmbeddedEventLoop] = []
    private var a: UpstreamPool!
    private var b: UpstreamPool!
    private var budget: PoolBudget!
    private let key = PoolKey(user: "proxy", database: "app")

    override func setUp() {
        runtime = ProxyRuntime(config: ProxyConfig(), map: TenantMap(), logger: ProxyLogging.makeLogger(level: "critical"))
        loops = [EmbeddedEventLoop(), EmbeddedEventLoop()]
        a = UpstreamPool(eventLoop: loops[0], runtime: runtime)
        b = UpstreamPool(eventLoop: loops[1], runtime: runtime)
        budget = PoolBudget(size: 4)
        budget.attach([a, b])
    }

    override func tearDown() {
        a = nil
        b = nil
        runtime = nil
        for loop in loops { try? loop.syncShutdownGracefully() }
        loops = []
    }

    func testOneLoopMayUseTheWholeSizeButNoMore() {
        for _ in 0..<4 { XCTAssertTrue(budget.take(key, for: a)) }
        XCTAssertFalse(budget.take(key, for: a))
        XCTAssertEqual(budget.count(key), 4)
        // Over its share, but nobody below theirs waits: it keeps what it frees.
        XCTAssertFalse(budget.isWanted(key, from: a))
    }

    func testALoopBelowItsShareGetsRoomFromOneAboveIt() {
        for _ in 0..<4 { XCTAssertTrue(budget.take(key, for: a)) }
        XCTAssertFalse(budget.take(key, for: b))
        XCTAssertTrue(budget.isWanted(key, from: a), "a is over its share of 2 while b waits")
        XCTAssertFalse(budget.isWanted(key, from: b))
        budget.give(key, for: a)
        XCTAssertFalse(budget.isWanted(key, from: a), "b was told; nobody waits now")
        XCTAssertTrue(budget.take(key, for: b))
        XCTAssertEqual(budget.count(key), 4)
    }

    func testALoopAtItsShareWaitsForItsOwnConnections() {
        for _ in 0..<2 { XCTAssertTrue(budget.take(key, for: a)) }
        for _ in 0..<2 { XCTAssertTrue(budget.take(key, for: b)) }
        XCTAssertFalse(budget.take(key, for: b))
        XCTAssertFalse(budget.isWanted(key, from: a), "b has its share: a keeps its connections")
    }

    func testKeysAndResizeAreSeparate() {
        let other = PoolKey(cluster: "second", user: "proxy", database: "app")
        for _ in 0..<4 { XCTAssertTrue(budget.take(key, for: a)) }
        XCTAssertTrue(budget.take(other, for: a))
        budget.resize(2)
        XCTAssertEqual(budget.surplus(key), 2)
        XCTAssertEqual(budget.surplus(other), 0)
        budget.give(key, for: a, count: 2)
        XCTAssertEqual(budget.surplus(key), 0)
        XCTAssertFalse(budget.take(key, for: a))
    }
}
