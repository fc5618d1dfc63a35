import XCTest

@testable import TenantProxy

/// PostgreSQL's replies are simulated by the calls: `parseComplete()`, `completed(by:)` for
/// BindComplete, CommandComplete and the like, `failed()` for an ErrorResponse and
/// `readyForQuery()` for a ReadyForQuery.
final class ReplyQueueTests: XCTestCase {
    typealias Queue = ReplyQueue<String>

    private func kinds(_ items: [Queue.Item]) -> [Queue.Kind] { items.map(\.kind) }

    func testAnExtendedBatchThenItsSync() {
        var queue = Queue()
        queue.sent(.init(kind: .parse))
        queue.sent(.init(kind: .bind))
        queue.sent(.init(kind: .describe))
        queue.sent(.init(kind: .execute))
        queue.sent(.init(kind: .sync, note: "sync"))
        XCTAssertFalse(queue.parseComplete(), "the client's Parse: its ParseComplete goes on")
        queue.completed(by: .bind)
        queue.completed(by: .describe)      // RowDescription
        queue.completed(by: .execute)       // CommandComplete
        XCTAssertEqual(kinds(queue.failed()), [], "an error now is the Sync's (a failed commit)")
        XCTAssertEqual(queue.readyForQuery(), "sync")
        XCTAssertTrue(queue.isEmpty)
        XCTAssertNil(queue.readyForQuery())
    }

    func testAPendingParseAndItsContender() {
        var queue = Queue()
        queue.sent(.init(kind: .parse, added: true, statement: 7))    // the proxy's: not pending for the client
        XCTAssertFalse(queue.hasPendingParse(of: 7))
        queue.sent(.init(kind: .parse, statement: 9))
        queue.sent(.init(kind: .sync, note: "first"))
        XCTAssertTrue(queue.hasPendingParse(of: 9))
        queue.sent(.init(kind: .parse, statement: 9, contested: true))
        queue.sent(.init(kind: .sync, note: "second"))
        XCTAssertNil(queue.firstContestedParse)
        XCTAssertTrue(queue.parseComplete())
        XCTAssertEqual(queue.failed().map(\.statement), [9], "the first Parse of 9 refused")
        XCTAssertEqual(queue.readyForQuery(), "first")
        XCTAssertEqual(queue.firstContestedParse, 9)
        XCTAssertFalse(queue.parseComplete(), "the contender's ParseComplete is the client's")
        XCTAssertFalse(queue.hasPendingParse(of: 9))
        XCTAssertEqual(queue.readyForQuery(), "second")
    }

    func testTheProxysOwnParseIsSwallowed() {
        var queue = Queue()
        queue.sent(.init(kind: .parse, added: true, statement: 7))
        queue.sent(.init(kind: .bind))
        XCTAssertTrue(queue.parseComplete())
        XCTAssertFalse(queue.parseComplete(), "a ParseComplete with no Parse first in line is not swallowed")
    }

    func testPipelinedBatchesKeepTheirOwnParses() {
        // Bind, Execute, Sync, then a Parse the proxy added, Bind, Execute, Sync in one write:
        // the first ReadyForQuery must not forget the second batch's Parse.
        var queue = Queue()
        queue.sent(.init(kind: .bind))
        queue.sent(.init(kind: .execute))
        queue.sent(.init(kind: .sync, note: "s1"))
        queue.sent(.init(kind: .parse, added: true, statement: 2))
        queue.sent(.init(kind: .bind))
        queue.sent(.init(kind: .execute))
        queue.sent(.init(kind: .sync, note: "s2"))
        queue.completed(by: .bind)
        queue.completed(by: .execute)
        XCTAssertEqual(queue.readyForQuery(), "s1")
        XCTAssertTrue(queue.parseComplete(), "the second batch's added Parse")
        queue.completed(by: .bind)
        queue.completed(by: .execute)
        XCTAssertEqual(queue.readyForQuery(), "s2")
    }

    func testAFailureUndoesEverythingUpToTheSync() {
        // Bind (fails), Execute, an added Parse, Bind, a Query inside the batch, Close, Sync.
        var queue = Queue()
        queue.sent(.init(kind: .bind))
        queue.sent(.init(kind: .execute))
        queue.sent(.init(kind: .parse, added: true, statement: 4))
        queue.sent(.init(kind: .bind))
        queue.sent(.init(kind: .query, note: "query"))
        queue.sent(.init(kind: .close, statement: 3))
        queue.sent(.init(kind: .sync, note: "sync"))
        let undone = queue.failed()
        XCTAssertEqual(kinds(undone), [.bind, .execute, .parse, .bind, .query, .close])
        XCTAssertEqual(undone.compactMap(\.note), ["query"])
        XCTAssertEqual(undone.map(\.statement), [0, 0, 4, 0, 0, 3])
        XCTAssertFalse(queue.skippingUntilSync, "the Sync was already sent")
        XCTAssertEqual(queue.readyForQuery(), "sync")
        XCTAssertTrue(queue.isEmpty)
    }

    func testAnErrorOfAQueryUndoesNothing() {
        var queue = Queue()
        queue.sent(.init(kind: .parse))
        queue.sent(.init(kind: .query, note: "query"))
        queue.sent(.init(kind: .sync, note: "sync"))
        XCTAssertFalse(queue.parseComplete())
        queue.completed(by: .execute)       // the Query's own CommandComplete: not an Execute's
        XCTAssertEqual(kinds(queue.failed()), [], "the Query failed: its ReadyForQuery comes")
        XCTAssertEqual(queue.readyForQuery(), "query")
        XCTAssertEqual(queue.readyForQuery(), "sync")
    }

    func testAFailureBeforeTheSyncIsSentSkipsUntilItIs() {
        var queue = Queue()
        queue.sent(.init(kind: .parse, statement: 9))
        queue.sent(.init(kind: .query, note: "query"))
        XCTAssertEqual(kinds(queue.failed()), [.parse, .query])
        XCTAssertTrue(queue.skippingUntilSync)
        XCTAssertTrue(queue.isEmpty)
        queue.sent(.init(kind: .sync, note: "sync"))
        XCTAssertFalse(queue.skippingUntilSync)
        XCTAssertEqual(queue.readyForQuery(), "sync")
    }

    func testBatchesAfterTheSyncAreUntouched() {
        var queue = Queue()
        queue.sent(.init(kind: .parse))
        queue.sent(.init(kind: .sync, note: "s1"))
        queue.sent(.init(kind: .parse, statement: 5))
        queue.sent(.init(kind: .sync, note: "s2"))
        XCTAssertEqual(kinds(queue.failed()), [.parse])
        XCTAssertEqual(queue.readyForQuery(), "s1")
        XCTAssertFalse(queue.parseComplete())
        XCTAssertEqual(queue.readyForQuery(), "s2")
    }

    func testSimpleQueriesAlone() {
        var queue = Queue()
        queue.sent(.init(kind: .query, note: "q1"))
        queue.sent(.init(kind: .query, note: "q2"))
        queue.completed(by: .describe)      // q1's RowDescription
        queue.completed(by: .execute)       // and its CommandComplete
        XCTAssertEqual(kinds(queue.failed()), [])
        XCTAssertEqual(queue.readyForQuery(), "q1")
        XCTAssertEqual(queue.readyForQuery(), "q2")
        XCTAssertTrue(queue.isEmpty)
    }

    func testALongPipelineIsServedInOrder() {
        var queue = Queue()
        for n in 0 ..< 100 {
            queue.sent(.init(kind: .bind))
            queue.sent(.init(kind: .execute))
            queue.sent(.init(kind: .sync, note: "s\(n)"))
        }
        for n in 0 ..< 100 {
            queue.completed(by: .bind)
            queue.completed(by: .execute)
            XCTAssertEqual(queue.readyForQuery(), "s\(n)")
        }
        XCTAssertTrue(queue.isEmpty)
    }

    func testTheRingWrapsAndGrowsInOrder() {
        var queue = Queue()
        for n in 0 ..< 6 { queue.sent(.init(kind: .query, note: "a\(n)")) }
        for n in 0 ..< 5 { XCTAssertEqual(queue.readyForQuery(), "a\(n)") }
        // the next ones wrap around the end of the first storage, then outgrow it
        for n in 0 ..< 12 { queue.sent(.init(kind: .query, note: "b\(n)")) }
        XCTAssertEqual(queue.readyForQuery(), "a5")
        for n in 0 ..< 12 { XCTAssertEqual(queue.readyForQuery(), "b\(n)") }
        XCTAssertTrue(queue.isEmpty)
        XCTAssertNil(queue.readyForQuery())
    }
}
