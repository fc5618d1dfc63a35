import Foundation
import XCTest

@testable import TenantProxy

final class FileStampTests: XCTestCase {
    private var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("filestamp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    private func write(_ name: String, _ text: String, modified: Date) throws -> String {
        let path = folder.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        try FileManager.default.setAttributes([.modificationDate: modified], ofItemAtPath: path)
        return path
    }

    func testAMissingFileHasNoStamp() {
        XCTAssertNil(FileStamp(of: folder.appendingPathComponent("absent.toml").path))
    }

    func testAnUnchangedFileKeepsItsStampAndAnEditChangesIt() throws {
        let when = Date(timeIntervalSince1970: 1_700_000_000)
        let path = try write("map.toml", "[users.a]\n", modified: when)
        let first = try XCTUnwrap(FileStamp(of: path))
        XCTAssertEqual(FileStamp(of: path), first)
        _ = try write("map.toml", "[users.b]\n", modified: when.addingTimeInterval(1))
        XCTAssertNotEqual(FileStamp(of: path), first, "new modification time")
        let second = try XCTUnwrap(FileStamp(of: path))
        _ = try write("map.toml", "[users.bb]\n", modified: when.addingTimeInterval(1))
        XCTAssertNotEqual(FileStamp(of: path), second, "same time, new size")
    }

    /// A ConfigMap update: the link is swapped to a file written earlier, with the same size and
    /// the same modification time as the old one. Only the inode tells them apart.
    func testASwappedSymlinkIsSeenEvenWithTheSameTimeAndSize() throws {
        let when = Date(timeIntervalSince1970: 1_700_000_000)
        let old = try write("v1.toml", "[users.a]\n", modified: when)
        let new = try write("v2.toml", "[users.b]\n", modified: when)
        let link = folder.appendingPathComponent("map.toml").path
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: old)
        let before = try XCTUnwrap(FileStamp(of: link))
        XCTAssertEqual(before, FileStamp(of: old), "the file the link ends at")
        try FileManager.default.removeItem(atPath: link)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: new)
        XCTAssertNotEqual(FileStamp(of: link), before)
        XCTAssertEqual(FileStamp(of: link), FileStamp(of: new))
    }
}
