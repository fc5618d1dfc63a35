import Foundation
import Logging

/// A swift-log handler that keeps every record (message and metadata, rendered to text), so a
/// test can look at what PostgresNIO saw on the wire. PostgresNIO keeps the ParameterStatus
/// values it receives to itself, but logs each backend message at trace level.
final class LogCapture: @unchecked Sendable {
    private let lock = NSLock()
    private var records: [String] = []

    func append(_ record: String) {
        lock.lock(); defer { lock.unlock() }
        records.append(record)
    }

    var lines: [String] {
        lock.lock(); defer { lock.unlock() }
        return records
    }

    func logger(label: String = "tenant-proxy.integration") -> Logger {
        var logger = Logger(label: label) { _ in CapturingLogHandler(capture: self) }
        logger.logLevel = .trace
        return logger
    }

    /// ParameterStatus messages seen: name -> last value. Parses PostgresNIO's rendering
    /// `.parameterStatus(parameter: "server_version", value: "15.18 (Debian ...)")`.
    func parameterStatuses() -> [String: String] {
        var result: [String: String] = [:]
        for line in lines {
            var rest = Substring(line)
            while let start = rest.range(of: "parameterStatus(parameter: \"") {
                rest = rest[start.upperBound...]
                guard let nameEnd = rest.range(of: "\", value: \"") else { break }
                let name = String(rest[..<nameEnd.lowerBound])
                rest = rest[nameEnd.upperBound...]
                guard let valueEnd = rest.range(of: "\")") else { break }
                result[name] = String(rest[..<valueEnd.lowerBound])
                rest = rest[valueEnd.upperBound...]
            }
        }
        return result
    }
}

struct CapturingLogHandler: LogHandler {
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = self.metadata.merging(event.metadata ?? [:]) { _, new in new }
        let rendered = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            .joined(separator: " ")
        capture.append("[\(event.level)] \(event.message) \(rendered)")
    }
}
