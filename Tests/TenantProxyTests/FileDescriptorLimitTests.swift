import XCTest

@testable import TenantProxy

final class FileDescriptorLimitTests: XCTestCase {
    func testTwoDescriptorsPerClientAndAReserve() {
        XCTAssertEqual(FileDescriptorLimit.needed(maxClients: 10_000), 20_128)
        XCTAssertEqual(FileDescriptorLimit.needed(maxClients: 1), 130)
    }

    func testTheSoftLimitRisesToTheNeedWithinTheHardLimitAndNeverFalls() {
        // A shell's 1024 under a generous hard limit: up to the need.
        XCTAssertEqual(FileDescriptorLimit.target(current: 1024, hard: 1_048_576, needed: 20_128), 20_128)
        // A low hard limit: as far as it goes.
        XCTAssertEqual(FileDescriptorLimit.target(current: 1024, hard: 4096, needed: 20_128), 4096)
        // Already enough (systemd's LimitNOFILE=65536): left alone.
        XCTAssertEqual(FileDescriptorLimit.target(current: 65_536, hard: 65_536, needed: 20_128), 65_536)
        XCTAssertEqual(FileDescriptorLimit.target(current: 1024, hard: Int.max, needed: 20_128), 20_128)
    }

    func testClientsAllowedByALimitShortOfTheNeed() {
        let outcome = FileDescriptorLimit.Outcome(before: 1024, after: 4096, needed: 20_128)
        XCTAssertEqual(outcome.clientsAllowed, (4096 - 128) / 2)
    }
}
