import NIOCore
import XCTest

@testable import TenantProxy

final class LoginWatchTests: XCTestCase {
    private final class Member {
        let name: String
        init(_ name: String) { self.name = name }
    }

    func testMembersExpireAtTheirDeadlineOldestFirstAndOnlyOnce() {
        let watch = LoginWatch<Member>()
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        let (a, b, c) = (Member("a"), Member("b"), Member("c"))
        watch.watch(b, until: start + .seconds(61))
        watch.watch(a, until: start + .seconds(60))
        watch.watch(c, until: start + .seconds(90))
        XCTAssertEqual(watch.expire(now: start + .seconds(59)).map(\.name), [])
        XCTAssertEqual(watch.expire(now: start + .seconds(61)).map(\.name), ["a", "b"], "a deadline reached counts")
        XCTAssertEqual(watch.expire(now: start + .seconds(62)).map(\.name), [], "each is handed out once")
        XCTAssertEqual(watch.count, 1)
        XCTAssertEqual(watch.expire(now: start + .seconds(100)).map(\.name), ["c"])
        XCTAssertEqual(watch.count, 0)
    }

    func testAMemberThatFinishedNeverExpiresAndIsNotKept() {
        let watch = LoginWatch<Member>()
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        var finished: Member? = Member("logged in")
        weak var gone = finished
        let stalled = Member("stalled")
        watch.watch(finished!, until: start + .seconds(60))
        watch.watch(stalled, until: start + .seconds(60))
        watch.finish(finished!)
        watch.finish(finished!)  // a second finish (closed after ready) changes nothing
        finished = nil
        XCTAssertNil(gone, "the watch holds no reference to a member that finished")
        XCTAssertEqual(watch.expire(now: start + .seconds(60)).map(\.name), ["stalled"])
    }
}
