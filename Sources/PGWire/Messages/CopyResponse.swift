import NIOCore

/// CopyInResponse ('G'), CopyOutResponse ('H') and CopyBothResponse ('W') share this payload.
public struct CopyResponse: Equatable, Sendable {
    /// Which of the three messages carries the payload.
    public enum Kind: UInt8, Sendable, CaseIterable {
        /// ascii: G - CopyInResponse.
        case copyIn = 71
        /// ascii: H - CopyOutResponse.
        case copyOut = 72
        /// ascii: W - CopyBothResponse.
        case copyBoth = 87
    }

    /// The overall format: 0 textual, 1 binary.
    public var format: Int8
    /// Per-column format codes.
    public var columnFormats: [Int16]

    /// Creates a copy response payload.
    public init(format: Int8, columnFormats: [Int16]) {
        self.format = format
        self.columnFormats = columnFormats
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> CopyResponse {
        let format = try payload.pgwireReadInteger(as: Int8.self, "CopyResponse")
        let columnFormats = try payload.pgwireReadInt16Array("CopyResponse column formats")
        try payload.pgwireExpectEnd("CopyResponse")
        return CopyResponse(format: format, columnFormats: columnFormats)
    }

    /// Writes the full frame including identifier and length; `kind` selects the identifier.
    public func encode(into buffer: inout ByteBuffer, kind: Kind) {
        buffer.pgwireWriteFrame(kind.rawValue) { buffer in
            buffer.writeInteger(self.format)
            buffer.pgwireWriteInt16Array(self.columnFormats)
        }
    }
}
