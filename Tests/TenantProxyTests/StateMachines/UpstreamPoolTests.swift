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

    func testBrokenIdleConnectionsAreNeverLent() throws {
        let broken = returned("tenant a")
        let healthy = returned("tenant b")
        broken.broken = true
        XCTAssertTrue(pool.lendNow(lane, context: ContextKey("tenant a"), tenant: nil) === healthy)
        XCTAssertNil(pool.lendNow(lane, context: ContextKey("tenant a"), tenant: nil))
    }
}
