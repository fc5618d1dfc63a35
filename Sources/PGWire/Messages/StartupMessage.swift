import NIOCore

/// The untyped StartupMessage a client sends to open a session.
///
/// Wire format: `Int32 length`, `Int32 protocolVersion`, then pairs of
/// NUL-terminated name / value strings, terminated by a single NUL byte.
public struct StartupMessage: Equatable, Sendable {
    /// The protocol version 3.0 (`3 << 16`).
    public static let protocolVersion3: UInt32 = 196_608

    /// The requested protocol version; major version in the high 16 bits (196608 = 3.0).
    public var protocolVersion: UInt32
    /// The startup parameters (`user`, `database`, `options`, GUCs, ...).
    public var parameters: [String: String]

    /// Creates a startup message.
    public init(protocolVersion: UInt32 = 196_608, parameters: [String: String]) {
        self.protocolVersion = protocolVersion
        self.parameters = parameters
    }

    /// The `user` parameter.
    public var user: String? { self.parameters["user"] }

    /// The `database` parameter; like Postgres, falls back to ``user`` when absent or empty.
    public var database: String? {
        if let database = self.parameters["database"], !database.isEmpty {
            return database
        }
        return self.user
    }

    /// The `options` parameter (command-line options for the backend).
    public var options: String? { self.parameters["options"] }

    /// The major protocol version (high 16 bits).
    public var majorVersion: UInt16 { UInt16(truncatingIfNeeded: self.protocolVersion >> 16) }
    /// The minor protocol version (low 16 bits).
    public var minorVersion: UInt16 { UInt16(truncatingIfNeeded: self.protocolVersion) }

    /// Writes the complete packet including its length. Parameters are written in
    /// sorted key order so the output is deterministic.
    public func encode(into buffer: inout ByteBuffer) {
        let lengthIndex = buffer.writerIndex
        buffer.writeInteger(Int32(0))
        buffer.writeInteger(self.protocolVersion)
        for key in self.parameters.keys.sorted() {
            buffer.pgwireWriteString(key)
            buffer.pgwireWriteString(self.parameters[key]!)
        }
        buffer.writeInteger(UInt8(0))
        buffer.setInteger(Int32(truncatingIfNeeded: buffer.writerIndex - lengthIndex), at: lengthIndex)
    }

    /// Decodes the body of a startup packet: everything after the length and protocol version.
    ///
    /// Duplicate parameter names are rejected with `.invalidValue`, so a proxy and the
    /// server can never disagree about which value counts.
    public static func decode(protocolVersion: UInt32, body: inout ByteBuffer) throws -> StartupMessage {
        var parameters: [String: String] = [:]
        while true {
            guard body.readableBytes > 0 else {
                throw PGWireError.missingTerminator("StartupMessage: parameter list is missing its terminating NUL")
            }
            let name = try body.pgwireReadString("StartupMessage parameter name")
            if name.isEmpty { break }
            let value = try body.pgwireReadString("StartupMessage parameter value")
            guard parameters.updateValue(value, forKey: name) == nil else {
                throw PGWireError.invalidValue("StartupMessage: duplicate parameter \"\(name.prefix(64))\"")
            }
        }
        try body.pgwireExpectEnd("StartupMessage")
        return StartupMessage(protocolVersion: protocolVersion, parameters: parameters)
    }
}
