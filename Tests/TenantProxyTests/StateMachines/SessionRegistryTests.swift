import NIOCore
import NIOEmbedded
import PGWire
import XCTest

@testable import TenantProxy

final class SessionRegistryTests: XCTestCase {
    private var runtime: ProxyRuntime!
    private var channels: [EmbeddedChannel] = []

    override func setUp() {
        runtime = ProxyRuntime(config: ProxyConfig(), map: TenantMap(), logger: ProxyLogging.makeLogger(level: "critical"))
    }

    override func tearDown() {
        for channel in channels {
            _ = try? channel.finish()
        }
        channels = []
        runtime = nil
    }

    private func makeSession() -> ClientSession {
        let channel = EmbeddedChannel()
        channels.append(channel)
        return ClientSession(client: channel, runtime: runtime)
    }

    // MARK: - Registration

    func testRegisterReturnsDistinctPositiveKeys() throws {
        let registry = SessionRegistry(maxSessions: 1_000)
        var processIDs = Set<Int32>()
        for _ in 0..<200 {
            let key = try XCTUnwrap(registry.register(makeSession()))
            XCTAssertGreaterThan(key.processID, 0)
            processIDs.insert(key.processID)
        }
        XCTAssertEqual(processIDs.count, 200)
        XCTAssertEqual(registry.count, 200)
    }

    func testMaxSessionsIsEnforcedAndFreedSlotsAreReused() throws {
        let registry = SessionRegistry(maxSessions: 2)
        let first = try XCTUnwrap(registry.register(makeSession()))
        XCTAssertNotNil(registry.register(makeSession()))
        XCTAssertNil(registry.register(makeSession()), "a third session exceeds the limit")
        XCTAssertEqual(registry.count, 2)
        registry.unregister(first.processID)
        XCTAssertNotNil(registry.register(makeSession()), "a freed slot is available again")
        XCTAssertNil(registry.register(makeSession()))
    }

    func testAllSessionsListsTheRegisteredSessions() throws {
        let registry = SessionRegistry(maxSessions: 10)
        let a = makeSession()
        let b = makeSession()
        let keyA = try XCTUnwrap(registry.register(a))
        _ = try XCTUnwrap(registry.register(b))
        XCTAssertEqual(Set(registry.allSessions.map(ObjectIdentifier.init)), [ObjectIdentifier(a), ObjectIdentifier(b)])
        registry.unregister(keyA.processID)
        XCTAssertEqual(registry.allSessions.map(ObjectIdentifier.init), [ObjectIdentifier(b)])
    }

    // MARK: - Cancel routing

    private func request(_ key: BackendKeyData) -> CancelRequest {
        CancelRequest(processID: key.processID, secretKey: key.secretKey)
    }

    func testTheSessionIsFoundOnlyWithTheMatchingSecret() throws {
        let registry = SessionRegistry(maxSessions: 10)
        let session = makeSession()
        let key = try XCTUnwrap(registry.register(session))
        XCTAssertTrue(registry.session(for: request(key)) === session)
        for wrong in [key.secretKey &+ 1, key.secretKey ^ Int32.min, ~key.secretKey] {
            XCTAssertNil(registry.session(for: CancelRequest(processID: key.processID, secretKey: wrong)))
            XCTAssertNil(registry.cancelTarget(for: CancelRequest(processID: key.processID, secretKey: wrong)))
        }
        // The upstream's own key must not work against the proxy either.
        XCTAssertNil(registry.session(for: CancelRequest(processID: 777, secretKey: 888)))
    }

    func testUnknownProcessIDFindsNoSession() throws {
        let registry = SessionRegistry(maxSessions: 10)
        let key = try XCTUnwrap(registry.register(makeSession()))
        let otherID = key.processID == Int32.max ? 1 : key.processID + 1
        XCTAssertNil(registry.session(for: CancelRequest(processID: otherID, secretKey: key.secretKey)))
    }

    /// The target is asked of the session on its loop: with no upstream connection (logging in,
    /// or between transactions in transaction mode) there is nothing to cancel.
    func testASessionHoldingNoUpstreamConnectionGivesNoTarget() throws {
        let registry = SessionRegistry(maxSessions: 10)
        let session = makeSession()
        let key = try XCTUnwrap(registry.register(session))
        let future = try XCTUnwrap(registry.cancelTarget(for: request(key)))
        var answer: SessionRegistry.CancelTarget?? = .none
        future.whenSuccess { answer = .some($0) }
        (session.eventLoop as! EmbeddedEventLoop).run()
        XCTAssertEqual(answer, .some(nil))
    }

    func testUnregisterRemovesTheSession() throws {
        let registry = SessionRegistry(maxSessions: 10)
        let key = try XCTUnwrap(registry.register(makeSession()))
        registry.unregister(key.processID)
        XCTAssertEqual(registry.count, 0)
        XCTAssertNil(registry.session(for: request(key)))
        XCTAssertNil(registry.cancelTarget(for: request(key)))
    }

    // MARK: - Draining

    func testWhenEmptyFiresOnceWhenTheLastSessionLeaves() throws {
        let registry = SessionRegistry(maxSessions: 10)
        let a = try XCTUnwrap(registry.register(makeSession()))
        let b = try XCTUnwrap(registry.register(makeSession()))
        var fired = 0
        registry.whenEmpty { fired += 1 }
        XCTAssertEqual(fired, 0)
        registry.unregister(a.processID)
        XCTAssertEqual(fired, 0, "one session is still live")
        registry.unregister(b.processID)
        XCTAssertEqual(fired, 1)
        registry.unregister(b.processID)
        let c = try XCTUnwrap(registry.register(makeSession()))
        registry.unregister(c.processID)
        XCTAssertEqual(fired, 1, "the callback runs once")
    }

    func testWhenEmptyFiresAtOnceWithoutSessions() {
        let registry = SessionRegistry(maxSessions: 10)
        var fired = 0
        registry.whenEmpty { fired += 1 }
        XCTAssertEqual(fired, 1)
    }

    func testUnregisteringAnUnknownIDDoesNotFireWhileSessionsRemain() throws {
        let registry = SessionRegistry(maxSessions: 10)
        let key = try XCTUnwrap(registry.register(makeSession()))
        var fired = 0
        registry.whenEmpty { fired += 1 }
        registry.unregister(key.processID == 1 ? 2 : 1)
        XCTAssertEqual(fired, 0)
        XCTAssertEqual(registry.count, 1)
    }

    // MARK: - Instance ids in cancel keys

    func testInstanceIDIsWrittenIntoEveryProcessID() throws {
        let registry = SessionRegistry(maxSessions: 1_000, instanceID: 7)
        for _ in 0..<100 {
            let key = try XCTUnwrap(registry.register(makeSession()))
            XCTAssertGreaterThan(key.processID, 0)
            XCTAssertEqual(SessionRegistry.instance(of: key.processID), 7)
        }
    }

    func testWithoutAnInstanceIDKeysNameNoInstance() throws {
        let registry = SessionRegistry(maxSessions: 1_000)
        for _ in 0..<100 {
            let key = try XCTUnwrap(registry.register(makeSession()))
            XCTAssertEqual(SessionRegistry.instance(of: key.processID), 0)
        }
        XCTAssertEqual(SessionRegistry.instance(of: Int32(255 << 23) | 12345), 255)
    }
}
