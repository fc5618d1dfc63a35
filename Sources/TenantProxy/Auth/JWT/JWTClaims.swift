import Foundation

/// A JSON value as found in a JWT payload. Numbers keep a canonical text form so that numeric
/// claims (tenant ids, user ids) convert to strings without a trailing ".0".
enum JWTJSONValue: Decodable, Equatable, Sendable {
    case string(String)
    case number(Double, text: String)
    case bool(Bool)
    case null
    case array([JWTJSONValue])
    case object([String: JWTJSONValue])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .number(Double(value), text: String(value))
        } else if let value = try? container.decode(UInt64.self) {
            self = .number(Double(value), text: String(value))
        } else if let value = try? container.decode(Double.self) {
            self = .number(value, text: JWTJSONValue.text(of: value))
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JWTJSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JWTJSONValue].self))
        }
    }

    private static func text(of value: Double) -> String {
        if value.isFinite, value == value.rounded(), abs(value) < 9_007_199_254_740_992 {
            return String(Int64(value))
        }
        return String(value)
    }

    /// The value as a claim string: strings as they are, numbers in their text form, nothing else.
    var claimString: String? {
        switch self {
        case .string(let s): return s
        case .number(_, let text): return text
        default: return nil
        }
    }

    var numberValue: Double? {
        if case .number(let value, _) = self { return value }
        return nil
    }
}

enum JWTClaimPath {
    /// Finds a claim by name. An exact top-level key wins; otherwise the name is split on '.', and at
    /// every level the longest run of segments that names an existing key is tried first, so both
    /// "org.tenant" and "https://example.com/claims.tenant" resolve.
    static func lookup(_ name: String, in object: [String: JWTJSONValue]) -> JWTJSONValue? {
        if let value = object[name] { return value }
        let segments = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard segments.count > 1, segments.count <= 64 else { return nil }
        return resolve(segments[...], in: object)
    }

    private static func resolve(_ segments: ArraySlice<String>, in object: [String: JWTJSONValue]) -> JWTJSONValue? {
        var end = segments.endIndex
        while end > segments.startIndex {
            let key = segments[segments.startIndex..<end].joined(separator: ".")
            if let value = object[key] {
                if end == segments.endIndex { return value }
                if case .object(let nested) = value, let found = resolve(segments[end...], in: nested) {
                    return found
                }
            }
            end -= 1
        }
        return nil
    }
}

enum Base64URL {
    /// Decodes unpadded base64url (RFC 7515 §2). Rejects padding, whitespace and other alphabets.
    static func decode<S: StringProtocol>(_ text: S) -> [UInt8]? {
        var output: [UInt8] = []
        output.reserveCapacity(text.utf8.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        for byte in text.utf8 {
            let value: UInt32
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(byte - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt32(byte - UInt8(ascii: "a")) + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt32(byte - UInt8(ascii: "0")) + 52
            case UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "_"): value = 63
            default: return nil
            }
            accumulator = (accumulator << 6) | value
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
                accumulator &= (1 << UInt32(bits)) - 1
            }
        }
        // A single leftover character (6 bits) cannot encode a byte; leftover bits must be zero.
        if bits >= 6 || accumulator != 0 { return nil }
        return output
    }

    static func encode<D: Sequence>(_ bytes: D) -> String where D.Element == UInt8 {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
