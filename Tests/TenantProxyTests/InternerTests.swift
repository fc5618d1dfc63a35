import XCTest

@testable import TenantProxy

final class InternerTests: XCTestCase {
    func testEqualSettingsShareOneObjectAndOthersDoNot() {
        let interner = Interner.settings()
        let a = interner.intern(["application_name": "pgbench", "timezone": "UTC"])
        let b = interner.intern(["timezone": "UTC", "application_name": "pgbench"])
        let c = interner.intern(["application_name": "psql", "timezone": "UTC"])
        XCTAssertTrue(a === b)
        XCTAssertFalse(a === c)
        XCTAssertEqual(c["application_name"], "psql")
        XCTAssertTrue(interner.intern([:]) === interner.intern([:]))
        XCTAssertEqual(interner.intern([:]).values, [:])
    }

    func testPastCapacityValuesAreMadeButNotKept() {
        let interner = Interner.settings(capacity: 2)
        let first = interner.intern(["application_name": "1"])
        _ = interner.intern(["application_name": "2"])
        let overflow = interner.intern(["application_name": "3"])
        XCTAssertEqual(interner.count, 2)
        XCTAssertEqual(overflow["application_name"], "3")
        // Not kept: asking again makes another object with the same values (compared by value when lent).
        XCTAssertFalse(overflow === interner.intern(["application_name": "3"]))
        XCTAssertTrue(first === interner.intern(["application_name": "1"]))
    }

    func testStringsShareStorage() {
        let interner = Interner<String, String> { $0 }
        let built = ["SET nile.tenant_id = '", "acme", "'"].joined()
        let first = interner.intern(built)
        let again = interner.intern(["SET nile.tenant_id = '", "acme", "'"].joined())
        XCTAssertEqual(first, again)
        XCTAssertEqual(interner.count, 1)
    }
}
