/// An error thrown while decoding PostgreSQL wire-protocol data.
///
/// Errors never contain raw payload bytes or secrets; ``message`` is a short,
/// human readable explanation suitable for logs.
public struct PGWireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The category of a decoding failure.
    public enum Code: Equatable, Sendable {
        /// A length field exceeds the configured maximum.
        case messageTooLarge
        /// A length field is negative or smaller than the minimum for its message.
        case invalidLength
        /// A NUL-terminated string or list is missing its terminator.
        case missingTerminator
        /// A correctly framed payload ends before all its declared content was read.
        case truncated
        /// A startup packet carries a protocol code this library does not know.
        case unknownStartupCode
        /// A message identifier was not expected here.
        case unexpectedMessage
        /// A field holds a value that is not allowed (bad enum value, invalid UTF-8, ...).
        case invalidValue
        /// A payload has bytes left over after all its fields were read.
        case trailingBytes
    }

    /// The category of the failure.
    public let code: Code
    /// A human readable description (never contains secrets).
    public let message: String

    /// Creates an error with the given code and description.
    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    /// `PGWireError(<code>): <message>`.
    public var description: String {
        "PGWireError(\(self.code)): \(self.message)"
    }
}

extension PGWireError {
    static func messageTooLarge(_ message: String) -> PGWireError { .init(code: .messageTooLarge, message: message) }
    static func invalidLength(_ message: String) -> PGWireError { .init(code: .invalidLength, message: message) }
    static func missingTerminator(_ message: String) -> PGWireError { .init(code: .missingTerminator, message: message) }
    static func truncated(_ message: String) -> PGWireError { .init(code: .truncated, message: message) }
    static func unknownStartupCode(_ message: String) -> PGWireError { .init(code: .unknownStartupCode, message: message) }
    static func unexpectedMessage(_ message: String) -> PGWireError { .init(code: .unexpectedMessage, message: message) }
    static func invalidValue(_ message: String) -> PGWireError { .init(code: .invalidValue, message: message) }
    static func trailingBytes(_ message: String) -> PGWireError { .init(code: .trailingBytes, message: message) }
}
