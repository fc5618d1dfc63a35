import Dispatch
import Foundation
import Logging
import XCTest

@testable import TenantProxy

final class JSONLogHandlerTests: XCTestCase {
    private static let fixedDate = Date(timeIntervalSince1970: 1_700_000_000.5)

    private func makeLogger(
        provider: Logger.MetadataProvider? = nil,
        level: Logger.Level = .info
    ) -> (Logger, LockedArray<String>) {
        let lines = LockedArray<String>()
        var logger = Logger(label: "tenant-proxy.test") { label in
            JSONLogHandler(
                label: label,
                metadataProvider: provider,
                now: { Self.fixedDate },
                write: { lines.append($0) }
            )
        }
        logger.logLevel = level
        return (logger, lines)
    }

    /// Each line must end in exactly one newline and hold exactly one JSON object.
    private func parse(
        _ line: String,
        file: StaticString = #filePath,
        lineNumber: UInt = #line
    ) throws -> [String: Any] {
        XCTAssertTrue(line.hasSuffix("\n"), "line not terminated", file: file, line: lineNumber)
        XCTAssertFalse(line.dropLast().contains("\n"), "raw newline inside a line", file: file, line: lineNumber)
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
        return try XCTUnwrap(object as? [String: Any], file: file, line: lineNumber)
    }

    // MARK: - Shape

    func testFixedKeysComeFirstInOrder() throws {
        let (logger, lines) = makeLogger()
        logger.info("listening", metadata: ["address": "127.0.0.1:6432"])

        XCTAssertEqual(lines.values.count, 1)
        let line = try XCTUnwrap(lines.values.first)
        XCTAssertTrue(
            line.hasPrefix(
                #"{"ts":"2023-11-14T22:13:20.500Z","level":"info","msg":"listening","logger":"tenant-proxy.test","#
            ),
            line
        )
        let object = try parse(line)
        XCTAssertEqual(object["address"] as? String, "127.0.0.1:6432")
        XCTAssertEqual(object.count, 5)
    }

    func testTimestampFormatting() {
        let cases: [(Int64, String)] = [
            (0, "1970-01-01T00:00:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (951_868_799_999, "2000-02-29T23:59:59.999Z"),
            (1_700_000_000_007, "2023-11-14T22:13:20.007Z"),
            (4_102_444_800_000, "2100-01-01T00:00:00.000Z"),
            (-62_135_596_800_000, "0001-01-01T00:00:00.000Z"),
        ]
        for (milliseconds, expected) in cases {
            XCTAssertEqual(JSONLogHandler.timestamp(millisecondsSince1970: milliseconds), expected, "\(milliseconds)")
        }
        // Truncated, never rounded up into the next second.
        XCTAssertEqual(
            JSONLogHandler.timestamp(Date(timeIntervalSince1970: 1_699_999_999.9999)),
            "2023-11-14T22:13:19.999Z"
        )
    }

    // MARK: - Escaping

    func testEscapingRoundTripsThroughJSONSerialization() throws {
        let (logger, lines) = makeLogger()
        let nasty = "say \"hi\" \\ path C:\\tmp\nnext line\r\ttab \u{01}\u{08}\u{0C}\u{1F}\u{7F} é 日本 🙂 \u{2028}"
        logger.warning("\(nasty)", metadata: ["query": "\(nasty)", "key \"quoted\"\n": "v"])

        let line = try XCTUnwrap(lines.values.first)
        let object = try parse(line)
        XCTAssertEqual(object["msg"] as? String, nasty)
        XCTAssertEqual(object["query"] as? String, nasty)
        XCTAssertEqual(object["key \"quoted\"\n"] as? String, "v")
        XCTAssertTrue(line.contains(#"\"hi\""#), line)
        XCTAssertTrue(line.contains(#"C:\\tmp\nnext line\r\ttab \u0001\u0008\u000c\u001f\u007f"#), line)
        XCTAssertTrue(line.contains("é 日本 🙂"), "non-ASCII must pass as UTF-8, not \\u escapes: \(line)")
    }

    // MARK: - Metadata

    func testMetadataMergeOrderCallBeatsProviderBeatsHandler() throws {
        let provider = Logger.MetadataProvider { ["b": "provider", "c": "provider", "d": "provider"] }
        var logger: Logger
        let lines: LockedArray<String>
        (logger, lines) = makeLogger(provider: provider)
        logger[metadataKey: "a"] = "handler"
        logger[metadataKey: "b"] = "handler"
        logger[metadataKey: "c"] = "handler"
        logger.info("merge", metadata: ["c": "call", "e": "call"])

        let object = try parse(try XCTUnwrap(lines.values.first))
        XCTAssertEqual(object["a"] as? String, "handler")
        XCTAssertEqual(object["b"] as? String, "provider")
        XCTAssertEqual(object["c"] as? String, "call")
        XCTAssertEqual(object["d"] as? String, "provider")
        XCTAssertEqual(object["e"] as? String, "call")
    }

    func testHandlerMetadataIsAValuePerLogger() throws {
        var logger: Logger
        let lines: LockedArray<String>
        (logger, lines) = makeLogger()
        var child = logger
        child[metadataKey: "tenant"] = "acme"
        logger.info("parent")
        child.info("child")
        logger[metadataKey: "client"] = "1"
        child.info("child again")

        let objects = try lines.values.map { try parse($0) }
        XCTAssertNil(objects[0]["tenant"])
        XCTAssertEqual(objects[1]["tenant"] as? String, "acme")
        XCTAssertNil(objects[2]["client"])
    }

    func testNestedValuesBecomeJSONObjectsAndArrays() throws {
        let (logger, lines) = makeLogger()
        logger.info(
            "nested",
            metadata: [
                "server": ["host": "db1", "ports": ["5432", .stringConvertible(6432)]],
                "count": .stringConvertible(42),
                "empty": [:],
            ]
        )
        let object = try parse(try XCTUnwrap(lines.values.first))
        let server = try XCTUnwrap(object["server"] as? [String: Any])
        XCTAssertEqual(server["host"] as? String, "db1")
        XCTAssertEqual(server["ports"] as? [String], ["5432", "6432"])
        XCTAssertEqual(object["count"] as? String, "42", "scalars are strings")
        XCTAssertEqual((object["empty"] as? [String: Any])?.count, 0)
    }

    func testMetadataCannotOverwriteFixedKeys() throws {
        let (logger, lines) = makeLogger()
        logger.info("real", metadata: ["msg": "fake", "level": "fake", "ts": "fake", "logger": "fake"])
        let line = try XCTUnwrap(lines.values.first)
        let object = try parse(line)
        XCTAssertEqual(object["msg"] as? String, "real")
        XCTAssertEqual(object["level"] as? String, "info")
        XCTAssertEqual(object["logger"] as? String, "tenant-proxy.test")
        XCTAssertEqual(object["meta_msg"] as? String, "fake")
        XCTAssertEqual(object["meta_ts"] as? String, "fake")
        XCTAssertEqual(line.components(separatedBy: #""msg":"#).count, 2, "one msg key only: \(line)")
    }

    func testErrorIsWritten() throws {
        struct Refused: Error, CustomStringConvertible {
            var description: String { "upstream refused" }
        }
        let (logger, lines) = makeLogger()
        logger.error("connect failed", error: Refused())
        let object = try parse(try XCTUnwrap(lines.values.first))
        XCTAssertEqual(object["error"] as? String, "upstream refused")
        XCTAssertEqual(object["level"] as? String, "error")
    }

    // MARK: - Levels and threads

    func testLevelFilteringFollowsLogLevel() throws {
        var logger: Logger
        let lines: LockedArray<String>
        (logger, lines) = makeLogger(level: .warning)
        logger.debug("no")
        logger.info("no")
        logger.notice("no")
        logger.warning("yes")
        logger.critical("yes")
        logger.logLevel = .trace
        logger.trace("yes")

        let levels = try lines.values.map { try parse($0)["level"] as? String }
        XCTAssertEqual(levels, ["warning", "critical", "trace"])
        XCTAssertEqual(try lines.values.map { try parse($0)["msg"] as? String }, ["yes", "yes", "yes"])
    }

    func testLinesFromManyThreadsAreWrittenOneAtATime() throws {
        let overlaps = LockedArray<Int>()
        let lines = LockedArray<String>()
        let inside = NSLock()
        let logger = Logger(label: "threads") { label in
            JSONLogHandler(label: label) { line in
                // If the handler let two writes run at once, the second would find the lock held.
                guard inside.try() else {
                    overlaps.append(1)
                    return
                }
                lines.append(line)
                inside.unlock()
            }
        }
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for index in 0..<200 {
                logger.info("line", metadata: ["thread": "\(thread)", "index": "\(index)"])
            }
        }
        XCTAssertEqual(overlaps.values.count, 0)
        XCTAssertEqual(lines.values.count, 1600)
        var seen = Set<String>()
        for line in lines.values {
            let object = try parse(line)
            seen.insert("\(object["thread"] as? String ?? "?")/\(object["index"] as? String ?? "?")")
        }
        XCTAssertEqual(seen.count, 1600)
    }

    func testStandardErrorHandlerWritesWholeLinesToFD2() throws {
        let path = NSTemporaryDirectory() + "json-log-\(UUID().uuidString)"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: nil))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try XCTUnwrap(FileHandle(forWritingAtPath: path))
        let savedStderr = dup(STDERR_FILENO)
        XCTAssertGreaterThanOrEqual(savedStderr, 0)
        dup2(file.fileDescriptor, STDERR_FILENO)
        var logger = Logger(label: "stderr") { JSONLogHandler.standardError(label: $0, metadataProvider: nil) }
        logger.logLevel = .debug
        logger.debug("first", metadata: ["big": "\(String(repeating: "x", count: 100_000))"])
        logger.notice("second")
        dup2(savedStderr, STDERR_FILENO)
        close(savedStderr)
        try file.close()

        let written = try String(contentsOfFile: path, encoding: .utf8)
        let lines = written.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.count, 3, "two lines and the empty rest after the last newline")
        let first = try parse(String(lines[0]) + "\n")
        XCTAssertEqual((first["big"] as? String)?.count, 100_000)
        XCTAssertEqual(try parse(String(lines[1]) + "\n")["msg"] as? String, "second")
    }

    // MARK: - ProxyLogging

    func testMakeLoggerPicksTheHandlerByFormat() {
        XCTAssertTrue(ProxyLogging.makeLogger(level: "debug", format: "json").handler is JSONLogHandler)
        XCTAssertTrue(ProxyLogging.makeLogger(level: "debug", format: "JSON").handler is JSONLogHandler)
        XCTAssertTrue(ProxyLogging.makeLogger(level: "debug", format: "text").handler is StreamLogHandler)
        XCTAssertTrue(ProxyLogging.makeLogger(level: "debug").handler is StreamLogHandler)
        XCTAssertEqual(ProxyLogging.makeLogger(level: "debug", format: "json").logLevel, .debug)
        XCTAssertEqual(ProxyLogging.makeLogger(level: "bogus", format: "json").logLevel, .info)
    }
}
