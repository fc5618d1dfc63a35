/// Strict standard base64 (RFC 4648 section 4, with padding), as SCRAM and
/// PostgreSQL's stored verifiers use. Kept internal and dependency-free.
enum SCRAMBase64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    private static let reverse: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, byte) in alphabet.enumerated() {
            table[Int(byte)] = UInt8(index)
        }
        return table
    }()

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out.append(alphabet[Int(n >> 18 & 0x3F)])
            out.append(alphabet[Int(n >> 12 & 0x3F)])
            out.append(alphabet[Int(n >> 6 & 0x3F)])
            out.append(alphabet[Int(n & 0x3F)])
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let n = UInt32(bytes[i]) << 16
            out.append(alphabet[Int(n >> 18 & 0x3F)])
            out.append(alphabet[Int(n >> 12 & 0x3F)])
            out.append(UInt8(ascii: "="))
            out.append(UInt8(ascii: "="))
        } else if rest == 2 {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out.append(alphabet[Int(n >> 18 & 0x3F)])
            out.append(alphabet[Int(n >> 12 & 0x3F)])
            out.append(alphabet[Int(n >> 6 & 0x3F)])
            out.append(UInt8(ascii: "="))
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes padded base64; returns nil on any invalid character, bad length,
    /// misplaced padding or non-zero trailing bits.
    static func decode(_ text: Substring) -> [UInt8]? {
        decode(Array(text.utf8))
    }

    static func decode(_ text: String) -> [UInt8]? {
        decode(Array(text.utf8))
    }

    static func decode(_ input: [UInt8]) -> [UInt8]? {
        guard input.count % 4 == 0 else { return nil }
        if input.isEmpty { return [] }
        let pad = UInt8(ascii: "=")
        var padding = 0
        if input[input.count - 1] == pad { padding += 1 }
        if input[input.count - 2] == pad { padding += 1 }
        if padding == 1 && input[input.count - 2] == pad { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(input.count / 4 * 3)
        var i = 0
        while i < input.count {
            let isLast = i + 4 == input.count
            var values: [UInt32] = [0, 0, 0, 0]
            for j in 0..<4 {
                let c = input[i + j]
                if c == pad {
                    // Padding only at the end of the final quantum.
                    guard isLast, j >= 4 - padding else { return nil }
                    values[j] = 0
                } else {
                    let v = reverse[Int(c)]
                    guard v != 0xFF else { return nil }
                    if isLast && j >= 4 - padding { return nil }
                    values[j] = UInt32(v)
                }
            }
            let n = values[0] << 18 | values[1] << 12 | values[2] << 6 | values[3]
            let produced = isLast ? 3 - padding : 3
            if isLast {
                // Reject non-canonical encodings (stray low bits before padding).
                if padding == 2 && (n & 0xFFFF) != 0 { return nil }
                if padding == 1 && (n & 0xFF) != 0 { return nil }
            }
            out.append(UInt8(n >> 16 & 0xFF))
            if produced > 1 { out.append(UInt8(n >> 8 & 0xFF)) }
            if produced > 2 { out.append(UInt8(n & 0xFF)) }
            i += 4
        }
        return out
    }
}
