import NIOCore
import XCTest

@testable import TenantProxy

final class LoginThrottleTests: XCTestCase {
    func testAnAddressIsLockedAfterTheLimitAndFreedAfterTheLockout() {
        let throttle = LoginThrottle(limit: 3, windowSeconds: 60, lockoutSeconds: 30)
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        var formatted = 0
        func address() -> String {
            formatted += 1
            return "10.0.0.1"
        }
        XCTAssertFalse(throttle.isLocked(address(), now: start))
        XCTAssertEqual(formatted, 0, "nobody locked out: the address is not even formatted")
        throttle.recordFailure("10.0.0.1", now: start)
        throttle.recordFailure("10.0.0.1", now: start + .seconds(1))
        XCTAssertFalse(throttle.isLocked(address(), now: start + .seconds(2)))
        throttle.recordFailure("10.0.0.1", now: start + .seconds(2))
        XCTAssertTrue(throttle.isLocked(address(), now: start + .seconds(3)))
        XCTAssertFalse(throttle.isLocked("10.0.0.2", now: start + .seconds(3)), "another address")
        XCTAssertGreaterThan(formatted, 0)
        XCTAssertFalse(throttle.isLocked(address(), now: start + .seconds(33)), "the lockout ended")
        formatted = 0
        XCTAssertFalse(throttle.isLocked(address(), now: start + .seconds(34)))
        XCTAssertEqual(formatted, 0, "the ended lockout was removed")
    }

    func testFailuresOutsideTheWindowDoNotCount() {
        let throttle = LoginThrottle(limit: 2, windowSeconds: 10, lockoutSeconds: 30)
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        throttle.recordFailure("10.0.0.1", now: start)
        throttle.recordFailure("10.0.0.1", now: start + .seconds(11))
        XCTAssertFalse(throttle.isLocked("10.0.0.1", now: start + .seconds(12)))
        throttle.recordFailure("10.0.0.1", now: start + .seconds(12))
        XCTAssertTrue(throttle.isLocked("10.0.0.1", now: start + .seconds(13)))
    }

    func testALimitOfZeroNeverLocks() {
        let throttle = LoginThrottle(limit: 0, windowSeconds: 10, lockoutSeconds: 30)
        for _ in 0..<10 { throttle.recordFailure("10.0.0.1") }
        XCTAssertFalse(throttle.isLocked("10.0.0.1"))
    }
}
