import Foundation

/// A fresh folder of one test's own under the system's temporary directory (config files, maps,
/// certificates a parse must find); `remove()` in tearDown.
struct ScratchFolder {
    let path: String

    init(_ prefix: String) throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// Writes `contents` to `name` in the folder; returns the file's path.
    @discardableResult
    func write(_ name: String, _ contents: String = "") throws -> String {
        let file = (path as NSString).appendingPathComponent(name)
        try contents.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}
