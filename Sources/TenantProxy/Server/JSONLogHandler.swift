import Foundation
import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A `LogHandler` that writes one JSON object per line, for log collectors that parse lines.
///
/// Keys: `ts` (ISO 8601 UTC with milliseconds), `level`, `msg`, `logger` (the label), `error` when
/// the event carries one, then the metadata sorted by key. Metadata is merged as swift-log's
/// `StreamLogHandler` does: the handler's, then the metadata provider's, then the call's, a later
/// one winning. A metadata key that would repeat one of the fixed keys is written as `meta_KEY`.
struct JSONLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    let label: String
    private let sink: Sink
    private let now: @Sendable () -> Date

    /// A handler writing to `write`, called once per line (newline included) and never twice at once.
    init(
        label: String,
        metadataProvider: Logger.MetadataProvider? = nil,
        now: @escaping @Sendable () -> Date = { Date() },
        write: @escaping @Sendable (String) -> Void
    ) {
        self.init(label: label, metadataProvider: metadataProvider, now: now, sink: Sink(write))
    }

    private init(
        label: String,
        metadataProvider: Logger.MetadataProvider?,
        now: @escaping @Sendable () -> Date,
        sink: Sink
    ) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.now = now
        self.sink = sink
    }

    /// A handler writing to the process' standard error, with the bootstrapped metadata provider.
    static func standardError(
        label: String,
        metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider
    ) -> JSONLogHandler {
        JSONLogHandler(label: label, metadataProvider: metadataProvider, now: { Date() }, sink: .standardError)
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty {
            merged.merge(provided) { _, provided in provided }
        }
        if let explicit = event.metadata, !explicit.isEmpty {
            merged.merge(explicit) { _, explicit in explicit }
        }

        var line = JSONLine()
        line.field("ts", Self.timestamp(now()))
        line.field("level", event.level.rawValue)
        line.field("msg", event.message.description)
        line.field("logger", label)
        if let error = event.error {
            line.field("error", String(describing: error))
        }
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            line.field(Self.reservedKeys.contains(key) ? "meta_" + key : key, value)
        }
        sink.write(line.finish())
    }

    private static let reservedKeys: Set<String> = ["ts", "level", "msg", "logger", "error"]

    // MARK: - Timestamp

    /// `2024-05-06T07:08:09.123Z`: UTC, milliseconds truncated (never rounded into the next second).
    static func timestamp(_ date: Date) -> String {
        let milliseconds = (date.timeIntervalSince1970 * 1000).rounded(.down)
        guard milliseconds.isFinite, abs(milliseconds) < 1e17 else { return "invalid-date" }
        return timestamp(millisecondsSince1970: Int64(milliseconds))
    }

    static func timestamp(millisecondsSince1970 milliseconds: Int64) -> String {
        let (days, millisecondOfDay) = floorDivision(milliseconds, 86_400_000)
        let (year, month, day) = civilDate(daysSince1970: days)
        let hour = millisecondOfDay / 3_600_000
        let minute = millisecondOfDay / 60_000 % 60
        let second = millisecondOfDay / 1000 % 60
        let millisecond = millisecondOfDay % 1000
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(hour, 2)):\(pad(minute, 2)):\(pad(second, 2))"
            + ".\(pad(millisecond, 3))Z"
    }

    private static func floorDivision(_ value: Int64, _ divisor: Int64) -> (Int64, Int64) {
        let remainder = value % divisor
        return remainder < 0 ? (value / divisor - 1, remainder + divisor) : (value / divisor, remainder)
    }

    /// Proleptic Gregorian date of a day count (Howard Hinnant's `civil_from_days`), so that
    /// formatting needs neither a shared `DateFormatter` nor the C library's time zone state.
    private static func civilDate(daysSince1970 days: Int64) -> (Int64, Int64, Int64) {
        let shifted = days + 719_468
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        return (year, month, day)
    }

    private static func pad(_ value: Int64, _ width: Int) -> String {
        let digits = String(abs(value))
        let padded = digits.count < width ? String(repeating: "0", count: width - digits.count) + digits : digits
        return value < 0 ? "-" + padded : padded
    }

    // MARK: - Output

    /// Serialises writes, so that lines from several threads never interleave.
    private final class Sink: Sendable {
        private let lock = NIOLock()
        private let writeLine: @Sendable (String) -> Void

        init(_ writeLine: @escaping @Sendable (String) -> Void) {
            self.writeLine = writeLine
        }

        func write(_ line: String) {
            lock.withLock { writeLine(line) }
        }

        /// Shared by every handler on stderr: the lock must be one per file descriptor.
        static let standardError = Sink { writeToStandardError($0) }
    }
}

/// One line to fd 2 with as few `write`s as the kernel allows (one, but for a partial write).
private func writeToStandardError(_ line: String) {
    var line = line
    line.withUTF8 { bytes in
        guard var next = bytes.baseAddress else { return }
        var left = bytes.count
        while left > 0 {
            let written = write(STDERR_FILENO, next, left)
            if written > 0 {
                next += written
                left -= written
            } else if written < 0 && errno == EINTR {
                continue
            } else {
                return  // Nowhere left to report a failing stderr.
            }
        }
    }
}

// MARK: - JSON

/// Builds one JSON object as UTF-8 bytes: strings escaped per RFC 8259, non-ASCII passed as is.
private struct JSONLine {
    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    private var bytes: [UInt8] = [UInt8(ascii: "{")]
    private var empty = true

    init() {
        bytes.reserveCapacity(256)
    }

    mutating func field(_ key: String, _ value: String) {
        separate(key)
        appendString(value)
    }

    mutating func field(_ key: String, _ value: Logger.Metadata.Value) {
        separate(key)
        appendValue(value)
    }

    /// The object closed and followed by a newline.
    mutating func finish() -> String {
        bytes.append(UInt8(ascii: "}"))
        bytes.append(UInt8(ascii: "\n"))
        return String(decoding: bytes, as: UTF8.self)
    }

    private mutating func separate(_ key: String) {
        if !empty { bytes.append(UInt8(ascii: ",")) }
        empty = false
        appendString(key)
        bytes.append(UInt8(ascii: ":"))
    }

    private mutating func appendValue(_ value: Logger.Metadata.Value) {
        switch value {
        case .string(let string):
            appendString(string)
        case .stringConvertible(let convertible):
            appendString(convertible.description)
        case .dictionary(let dictionary):
            bytes.append(UInt8(ascii: "{"))
            for (index, (key, nested)) in dictionary.sorted(by: { $0.key < $1.key }).enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                appendString(key)
                bytes.append(UInt8(ascii: ":"))
                appendValue(nested)
            }
            bytes.append(UInt8(ascii: "}"))
        case .array(let array):
            bytes.append(UInt8(ascii: "["))
            for (index, nested) in array.enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                appendValue(nested)
            }
            bytes.append(UInt8(ascii: "]"))
        }
    }

    private mutating func appendString(_ string: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in string.utf8 {
            switch byte {
            case UInt8(ascii: "\""):
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"):
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case UInt8(ascii: "\n"):
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case UInt8(ascii: "\r"):
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case UInt8(ascii: "\t"):
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x00..<0x20, 0x7F:
                // The other control characters (and DEL, which terminals act on) as \u00XX.
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                bytes.append(Self.hexDigits[Int(byte >> 4)])
                bytes.append(Self.hexDigits[Int(byte & 0x0F)])
            default:
                bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
