import XCTest

@testable import TenantProxy

/// The replies PostgreSQL sends are simulated by the calls: `extendedAnswered()` for each
/// ParseComplete, BindComplete, CommandComplete and the like, `failed()` for an ErrorResponse,
/// `popFirst()` for a ReadyForQuery.
final class CycleQueueTests: XCTestCase {
    func testAnExtendedBatchThenItsSyncIsOneCycle() {
        var queue = CycleQueue<String>()
        queue.extendedSent(3)               // Parse, Bind, Execute
        queue.append("sync", sync: true)
        queue.extendedAnswered()            // ParseComplete
        queue.extendedAnswered()            // BindComplete
        queue.extendedAnswered()            // CommandComplete
        XCTAssertEqual(queue.failed(), [], "an error after the batch answered is the Sync's (a failed commit)")
        XCTAssertEqual(queue.popFirst(), "sync")
        XCTAssertTrue(queue.isEmpty)
        XCTAssertNil(queue.popFirst())
    }

    func testAQueryInsideAFailedBatchGetsNoReadyForQuery() {
        // Parse (fails), Query, Sync: PostgreSQL discards the Query, answers the Sync.
        var queue = CycleQueue<String>()
        queue.extendedSent()
        queue.append("query", sync: false)
        queue.append("sync", sync: true)
        XCTAssertEqual(queue.failed(), ["query"])
        XCTAssertFalse(queue.skippingUntilSync, "the Sync was already sent")
        XCTAssertEqual(queue.popFirst(), "sync")
        XCTAssertTrue(queue.isEmpty)
    }

    func testAnErrorOfTheQueryItselfKeepsItsCycle() {
        // Parse, Bind, Execute (all answered), then the Query fails: its ReadyForQuery comes.
        var queue = CycleQueue<String>()
        queue.extendedSent(3)
        queue.append("query", sync: false)
        queue.append("sync", sync: true)
        for _ in 0 ..< 3 { queue.extendedAnswered() }
        queue.extendedAnswered()            // the Query's own RowDescription: not counted
        XCTAssertEqual(queue.failed(), [])
        XCTAssertEqual(queue.popFirst(), "query")
        XCTAssertEqual(queue.popFirst(), "sync")
    }

    func testAFailureBeforeAnySyncSkipsUntilTheClientSendsOne() {
        var queue = CycleQueue<String>()
        queue.extendedSent(2)               // Bind (fails), Execute
        queue.append("query", sync: false)
        XCTAssertEqual(queue.failed(), ["query"])
        XCTAssertTrue(queue.skippingUntilSync)
        queue.extendedSent()                // discarded by the server: not counted
        queue.append("sync", sync: true)
        XCTAssertFalse(queue.skippingUntilSync)
        XCTAssertEqual(queue.failed(), [], "nothing unanswered ahead of the Sync")
        XCTAssertEqual(queue.popFirst(), "sync")
    }

    func testAFailureBeforeTheFirstCycleIsSentStartsSkipping() {
        var queue = CycleQueue<String>()
        queue.extendedSent()
        XCTAssertEqual(queue.failed(), [])
        XCTAssertTrue(queue.skippingUntilSync)
        queue.append("sync", sync: true)
        XCTAssertEqual(queue.popFirst(), "sync")
        XCTAssertFalse(queue.skippingUntilSync)
    }

    func testCyclesAfterTheSyncAreUntouched() {
        // Parse (fails), Query, Sync, then a pipelined Parse, Query: the second batch runs.
        var queue = CycleQueue<String>()
        queue.extendedSent()
        queue.append("q1", sync: false)
        queue.append("s1", sync: true)
        queue.extendedSent()
        queue.append("q2", sync: false)
        XCTAssertEqual(queue.failed(), ["q1"])
        XCTAssertEqual(queue.popFirst(), "s1")
        queue.extendedAnswered()            // the second Parse
        XCTAssertEqual(queue.failed(), [], "q2's own error")
        XCTAssertEqual(queue.popFirst(), "q2")
        XCTAssertTrue(queue.isEmpty)
    }

    func testSimpleQueriesCountNothing() {
        var queue = CycleQueue<String>()
        queue.append("q1", sync: false)
        queue.append("q2", sync: false)
        queue.extendedAnswered()            // q1's RowDescription and CommandComplete
        queue.extendedAnswered()
        XCTAssertEqual(queue.failed(), [], "q1 failed: its ReadyForQuery comes")
        XCTAssertEqual(queue.popFirst(), "q1")
        XCTAssertEqual(queue.popFirst(), "q2")
    }
}
