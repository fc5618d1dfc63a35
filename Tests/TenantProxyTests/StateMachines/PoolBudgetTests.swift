import NIOCore
import NIOEmbedded
import XCTest

@testable import TenantProxy

/// [pool] size across the loops' pools: a loop may use what the others leave; when the size is
/// reached, a loop with fewer connections than clients gets room from one holding more than it
/// keeps (its share, size / loops, or its clients if fewer).
final class PoolBudgetTests: XCTestCase {
    private var runtime: ProxyRuntime!
    private var loops: [EmbeddedEventLoop] = []
    private var a: UpstreamPool!
    private var b: UpstreamPool!
    private var budget: PoolBudget!
    private let key = PoolKey(user: "proxy", database: "app")
    /// The budget's clock: a loop keeps what its clients needed over the last `clientHold`.
    private var clock = NIODeadline.uptimeNanoseconds(1_000_000_000)

    override func setUp() {
        runtime = ProxyRuntime(config: ProxyConfig(), map: TenantMap(), logger: ProxyLogging.makeLogger(level: "critical"))
        loops = [EmbeddedEventLoop(), EmbeddedEventLoop()]
        a = UpstreamPool(eventLoop: loops[0], runtime: runtime)
        b = UpstreamPool(eventLoop: loops[1], runtime: runtime)
        budget = PoolBudget(size: 4, now: { [unowned self] in self.clock })
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
        for _ in 0..<4 { XCTAssertTrue(taken(key, for: a)) }
        XCTAssertFalse(taken(key, for: a))
        XCTAssertEqual(budget.count(key), 4)
        // Over its share, but nobody below theirs waits: it keeps what it frees.
        XCTAssertFalse(budget.isWanted(key, from: a))
    }

    private func taken(_ key: PoolKey, for pool: UpstreamPool) -> Bool {
        if case .taken = budget.take(key, for: pool) { return true }
        return false
    }

    private func clients(_ pool: UpstreamPool, _ count: Int) {
        for _ in 0..<count { budget.clientArrived(pool) }
    }

    func testALoopBelowItsShareGetsRoomFromOneAboveIt() {
        clients(b, 2)
        for _ in 0..<4 { XCTAssertTrue(taken(key, for: a)) }
        XCTAssertFalse(taken(key, for: b))
        XCTAssertTrue(budget.isWanted(key, from: a), "a is over its share of 2 while b waits")
        XCTAssertFalse(budget.isWanted(key, from: b))
        budget.give(key, for: a)
        XCTAssertFalse(budget.isWanted(key, from: a), "b was told; nobody waits now")
        XCTAssertTrue(taken(key, for: b))
        XCTAssertEqual(budget.count(key), 4)
    }

    func testALoopAtItsShareWaitsForItsOwnConnections() {
        clients(a, 2)
        clients(b, 3)
        for _ in 0..<2 { XCTAssertTrue(taken(key, for: a)) }
        for _ in 0..<2 { XCTAssertTrue(taken(key, for: b)) }
        XCTAssertFalse(taken(key, for: b))
        XCTAssertFalse(budget.isWanted(key, from: a), "b has its share: a keeps its connections")
    }

    /// 11 and 9 clients on a size of 20: the loop with 9 gives its tenth connection to the other.
    func testALoopWithMoreConnectionsThanClientsGivesTheRestToOneWithFewer() {
        clients(a, 3)
        clients(b, 1)
        for _ in 0..<2 { XCTAssertTrue(taken(key, for: a)) }
        for _ in 0..<2 { XCTAssertTrue(taken(key, for: b)) }
        XCTAssertFalse(budget.isWanted(key, from: b), "nobody waits yet")
        XCTAssertFalse(taken(key, for: a))
        XCTAssertTrue(budget.isWanted(key, from: b), "b keeps one connection for its one client")
        XCTAssertFalse(budget.isWanted(key, from: a))
        budget.give(key, for: b)
        XCTAssertTrue(taken(key, for: a))
        // A loop with as many connections as clients does not wait for more.
        XCTAssertFalse(taken(key, for: a))
        XCTAssertFalse(budget.isWanted(key, from: b))
        budget.clientLeft(a)
        XCTAssertEqual(budget.count(key), 4)
    }

    /// Size 1 on two loops: the one connection goes to whichever loop waits for it (it was kept
    /// by the loop that opened it, and the other loop's clients waited until 53300).
    func testASizeBelowTheLoopCountLetsTheConnectionMove() {
        budget.resize(1)
        clients(a, 1)
        clients(b, 1)
        XCTAssertTrue(taken(key, for: a))
        XCTAssertFalse(budget.isWanted(key, from: a), "nobody waits yet")
        XCTAssertFalse(taken(key, for: b))
        XCTAssertTrue(budget.isWanted(key, from: a), "a has no share to keep while b waits")
        budget.give(key, for: a)
        XCTAssertTrue(taken(key, for: b))
        XCTAssertFalse(taken(key, for: a))
        XCTAssertTrue(budget.isWanted(key, from: b), "and back when a waits")
    }

    /// A loop whose clients all left keeps nothing of a key another loop waits for, once the
    /// hold on its recent clients is over.
    func testALoopWithoutClientsGivesEverythingBack() {
        clients(a, 2)
        for _ in 0..<4 { XCTAssertTrue(taken(key, for: a)) }
        budget.clientLeft(a)
        budget.clientLeft(a)
        clients(b, 3)
        XCTAssertFalse(taken(key, for: b))
        XCTAssertTrue(budget.isWanted(key, from: a), "over its share of 2 even with its clients held")
        budget.give(key, for: a, count: 2)
        XCTAssertTrue(taken(key, for: b))
        XCTAssertTrue(taken(key, for: b))
        XCTAssertFalse(taken(key, for: b))
        XCTAssertFalse(budget.isWanted(key, from: a), "its two clients of a moment ago still count")
        clock = clock + PoolBudget.clientHold
        XCTAssertFalse(budget.isWanted(key, from: a), "no event has looked again yet")
        budget.refresh()   // each pool's one-second sweep while it waits for room
        XCTAssertTrue(budget.isWanted(key, from: a), "the hold is over: a keeps nothing")
        budget.give(key, for: a, count: 1)
        XCTAssertTrue(taken(key, for: b))
        XCTAssertFalse(taken(key, for: b), "b has a connection for each of its clients")
        XCTAssertFalse(budget.isWanted(key, from: a))
        // A fourth client on b: a's last connection (no client of a left) is wanted too.
        clients(b, 1)
        XCTAssertFalse(taken(key, for: b))
        XCTAssertTrue(budget.isWanted(key, from: a))
    }

    /// Clients that connect for each transaction: a loop's count dips between them. The dip does
    /// not make it give a connection to the other loop (which gave one back at its own next dip:
    /// a new server connection every few hundred transactions).
    func testAMomentaryDipInClientsKeepsTheShare() {
        clients(a, 2)
        clients(b, 2)
        for _ in 0..<2 { XCTAssertTrue(taken(key, for: a)) }
        for _ in 0..<2 { XCTAssertTrue(taken(key, for: b)) }
        budget.clientLeft(a)
        budget.clientLeft(a)
        clients(b, 1)
        XCTAssertFalse(taken(key, for: b), "the size is reached")
        XCTAssertFalse(budget.isWanted(key, from: a), "a had two clients a moment ago")
        clock = clock + .milliseconds(900)
        clients(a, 1)
        XCTAssertFalse(budget.isWanted(key, from: a))
        clock = clock + .milliseconds(200)
        budget.refresh()
        XCTAssertTrue(budget.isWanted(key, from: a), "a second without two clients: a keeps one")
        // A client arriving at the old peak holds it again.
        clients(a, 1)
        XCTAssertFalse(budget.isWanted(key, from: a))
    }

    func testKeysAndResizeAreSeparate() {
        let other = PoolKey(cluster: "second", user: "proxy", database: "app")
        for _ in 0..<4 { XCTAssertTrue(taken(key, for: a)) }
        XCTAssertTrue(taken(other, for: a))
        budget.resize(2)
        XCTAssertEqual(budget.surplus(key), 2)
        XCTAssertEqual(budget.surplus(other), 0)
        budget.give(key, for: a, count: 2)
        XCTAssertEqual(budget.surplus(key), 0)
        XCTAssertFalse(taken(key, for: a))
    }
}
