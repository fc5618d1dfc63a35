import NIOCore
import XCTest

@testable import TenantProxy

final class IdleTransactionWatchTests: XCTestCase {
    private final class Member: IdleTransactionMember {
        let name: String
        var transactionActivity = TransactionActivity(inTransaction: true, busy: false, cycles: 1)
        init(_ name: String) { self.name = name }

        /// The client ran a statement, answered now.
        func ran() { transactionActivity.cycles += 1 }
    }

    private let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    private func at(_ seconds: Int64) -> NIODeadline { start + .seconds(seconds) }

    func testAnIdleMemberExpiresOnceItsTimeoutHasPassedSinceASweepFirstSawItIdle() {
        let watch = IdleTransactionWatch<Member>(timeoutSeconds: 5)
        let idle = Member("idle")
        XCTAssertTrue(watch.join(idle))
        XCTAssertEqual(watch.sweep(now: at(1)).expired.map(\.name), [], "first seen idle here")
        XCTAssertEqual(watch.sweep(now: at(5)).expired.map(\.name), [])
        XCTAssertEqual(watch.sweep(now: at(6)).expired.map(\.name), ["idle"])
        XCTAssertEqual(watch.count, 0, "handed out once")
        XCTAssertEqual(watch.sweep(now: at(20)).expired.map(\.name), [])
    }

    func testEachStatementStartsTheIdleTimeAgain() {
        let watch = IdleTransactionWatch<Member>(timeoutSeconds: 5)
        let member = Member("working")
        XCTAssertTrue(watch.join(member))
        _ = watch.sweep(now: at(1))
        member.ran()
        XCTAssertEqual(watch.sweep(now: at(4)).expired.map(\.name), [], "ran a statement since the last sweep")
        XCTAssertEqual(watch.sweep(now: at(8)).expired.map(\.name), [])
        XCTAssertEqual(watch.sweep(now: at(9)).expired.map(\.name), ["working"], "idle since the sweep at 4")
    }

    func testABusyMemberNeverExpiresAndIsTimedFromTheSweepAfterItsAnswer() {
        let watch = IdleTransactionWatch<Member>(timeoutSeconds: 2)
        let member = Member("long query")
        XCTAssertTrue(watch.join(member))
        member.transactionActivity.busy = true
        for second in 1...30 {
            XCTAssertEqual(watch.sweep(now: at(Int64(second))).expired.map(\.name), [], "a statement is running")
        }
        member.transactionActivity.busy = false
        member.ran()
        XCTAssertEqual(watch.sweep(now: at(31)).expired.map(\.name), [])
        XCTAssertEqual(watch.sweep(now: at(32)).expired.map(\.name), [])
        XCTAssertEqual(watch.sweep(now: at(33)).expired.map(\.name), ["long query"])
    }

    func testAMemberThatEndedItsTransactionLeavesAndIsNotKept() {
        let watch = IdleTransactionWatch<Member>(timeoutSeconds: 1)
        var committed: Member? = Member("committed")
        weak var gone = committed
        XCTAssertTrue(watch.join(committed!))
        committed!.transactionActivity.inTransaction = false
        do {
            let (left, expired) = watch.sweep(now: at(10))
            XCTAssertEqual(left.map(\.name), ["committed"])
            XCTAssertEqual(expired.map(\.name), [])
        }
        XCTAssertEqual(watch.count, 0)
        committed = nil
        XCTAssertNil(gone, "the watch holds no member that left")
    }

    func testOffMeansNobodyJoinsAndTurningItOffLetsEveryoneGo() {
        let watch = IdleTransactionWatch<Member>(timeoutSeconds: 0)
        XCTAssertFalse(watch.join(Member("unwatched")))
        XCTAssertEqual(watch.count, 0)
        watch.timeoutSeconds = 3
        let member = Member("watched")
        XCTAssertTrue(watch.join(member))
        _ = watch.sweep(now: at(1))
        watch.timeoutSeconds = 0
        let (left, expired) = watch.sweep(now: at(100))
        XCTAssertEqual(left.map(\.name), ["watched"], "the member forgets it joined")
        XCTAssertEqual(expired.map(\.name), [])
    }
}
