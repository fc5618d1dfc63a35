import Crypto

/// The cryptographic building blocks of SCRAM-SHA-256 (RFC 5802, RFC 7677).
enum SCRAMPrimitives {
    /// Length in bytes of SHA-256 output, and so of StoredKey, ServerKey, proofs and signatures.
    static let keyLength = 32
    /// Salt length PostgreSQL uses for new verifiers (SCRAM_DEFAULT_SALT_LEN).
    static let defaultSaltLength = 16
    /// Raw nonce length PostgreSQL uses before base64 (SCRAM_RAW_NONCE_LEN).
    static let rawNonceLength = 18
    /// PostgreSQL's default scram_iterations.
    static let defaultIterations = 4096

    /// Prepares a password the way PostgreSQL does before hashing it.
    ///
    /// PostgreSQL runs SASLprep (RFC 4013) on the password, but only when it is not
    /// pure ASCII: an ASCII password is used exactly as is. When SASLprep fails
    /// (invalid UTF-8, prohibited or unassigned code points, bidi violations)
    /// PostgreSQL falls back to the raw bytes, so that any password stays usable.
    /// We implement this "SASLprep-lite": ASCII passwords as is, every other password
    /// as its raw UTF-8 bytes. This matches PostgreSQL for ASCII passwords and for
    /// non-ASCII passwords that SASLprep leaves unchanged or rejects (most real ones,
    /// which are already in NFKC form); it differs only for non-ASCII passwords that
    /// SASLprep would rewrite (e.g. non-NFKC compositions, mapped-to-nothing or
    /// non-ASCII space characters).
    static func normalize(password: String) -> [UInt8] {
        Array(password.utf8)
    }

    static func hmac(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        bytes(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: key)))
    }

    /// A digest's or MAC's bytes, copied at once (`Array(digest)` iterates it byte by byte).
    static func bytes(_ digest: SHA256.Digest) -> [UInt8] {
        digest.withUnsafeBytes { Array($0) }
    }

    static func bytes(_ code: HashedAuthenticationCode<SHA256>) -> [UInt8] {
        code.withUnsafeBytes { Array($0) }
    }

    static func sha256(_ data: [UInt8]) -> [UInt8] {
        bytes(SHA256.hash(data: data))
    }

    /// PBKDF2-HMAC-SHA256 producing one 32-byte block: SCRAM's Hi(password, salt, i).
    static func saltedPassword(_ password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        precondition(iterations >= 1, "SCRAM iteration count must be at least 1")
        let key = SymmetricKey(data: password)
        var u = bytes(HMAC<SHA256>.authenticationCode(for: salt + [0, 0, 0, 1], using: key))
        var result = u
        var remaining = iterations - 1
        while remaining > 0 {
            u = bytes(HMAC<SHA256>.authenticationCode(for: u, using: key))
            for j in 0..<result.count {
                result[j] ^= u[j]
            }
            remaining -= 1
        }
        return result
    }

    static func clientKey(saltedPassword: [UInt8]) -> [UInt8] {
        hmac(key: saltedPassword, Array("Client Key".utf8))
    }

    static func serverKey(saltedPassword: [UInt8]) -> [UInt8] {
        hmac(key: saltedPassword, Array("Server Key".utf8))
    }

    static func xor(_ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        precondition(a.count == b.count)
        var out = a
        for i in 0..<out.count {
            out[i] ^= b[i]
        }
        return out
    }

    /// `count` bytes from the system's CSPRNG, eight per draw: `UInt8.random` costs a getrandom
    /// system call per byte (18 for a nonce, on every SCRAM log-in).
    static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        while bytes.count < count {
            var word: UInt64 = generator.next()
            for _ in 0..<min(8, count - bytes.count) {
                bytes.append(UInt8(truncatingIfNeeded: word))
                word >>= 8
            }
        }
        return bytes
    }

    /// A fresh nonce as PostgreSQL makes one: 18 random bytes, base64-encoded (24 printable characters).
    static func randomNonce() -> String {
        SCRAMBase64.encode(randomBytes(rawNonceLength))
    }

    /// A nonce is printable ASCII (0x21...0x7E) except ',' (RFC 5802 section 7).
    static func isValidNonce(_ nonce: Substring) -> Bool {
        !nonce.isEmpty && nonce.utf8.allSatisfy { $0 >= 0x21 && $0 <= 0x7E && $0 != UInt8(ascii: ",") }
    }
}

/// Helpers to split SCRAM messages into their "k=value" attributes.
enum SCRAMMessage {
    /// Decodes a message as UTF-8 text; rejects empty input, invalid UTF-8 and NUL bytes.
    static func text(_ bytes: [UInt8], what: String) throws -> String {
        guard !bytes.isEmpty else {
            throw SCRAMError(.malformedMessage, "\(what) is empty")
        }
        var ascii = true
        for byte in bytes {
            if byte == 0 { throw SCRAMError(.malformedMessage, "\(what) contains a NUL byte") }
            if byte >= 0x80 { ascii = false }
        }
        let string = String(decoding: bytes, as: UTF8.self)
        // ASCII is valid UTF-8 as it is (every message of a SCRAM log-in from libpq is): the
        // comparison below walked the string's UTF-8 view generically, ~6,000 instructions per
        // log-in. Other bytes must come back unchanged (no replacement characters).
        guard ascii || string.utf8.elementsEqual(bytes) else {
            throw SCRAMError(.malformedMessage, "\(what) is not valid UTF-8")
        }
        return string
    }

    /// Splits "a=1,b=2" into its comma-separated parts, keeping empty parts. By bytes, as RFC 5802
    /// and PostgreSQL read it (splitting by Characters cost tens of thousands of instructions
    /// per log-in), in the text's contiguous UTF-8 (stepping the UTF-8 view's indexes one by one
    /// cost ~5,000 more); a comma is never inside a multi-byte sequence, so every cut is on a
    /// character boundary.
    static func parts(_ text: Substring) -> [Substring] {
        var text = text
        let commas: [Int] = text.withUTF8 { bytes in
            var offsets: [Int] = []
            for offset in bytes.indices where bytes[offset] == UInt8(ascii: ",") { offsets.append(offset) }
            return offsets
        }
        var result: [Substring] = []
        result.reserveCapacity(commas.count + 1)
        let utf8 = text.utf8
        var start = text.startIndex
        for offset in commas {
            let comma = utf8.index(utf8.startIndex, offsetBy: offset)
            result.append(text[start..<comma])
            start = utf8.index(after: comma)
        }
        result.append(text[start..<text.endIndex])
        return result
    }

    /// Returns the value of an attribute part "k=value", checking that its key is `key`.
    static func value(of part: Substring, key: Character, what: String) throws -> Substring {
        let bytes = part.utf8
        guard bytes.count >= 2, let ascii = key.asciiValue, bytes.first == ascii,
              bytes[bytes.index(after: bytes.startIndex)] == UInt8(ascii: "=") else {
            throw SCRAMError(.malformedMessage, "expected attribute \"\(key)\" in \(what)")
        }
        return part[bytes.index(bytes.startIndex, offsetBy: 2)...]
    }

    /// Checks that a part is a syntactically valid attribute ("<letter>=<value>"), for extensions.
    static func isAttribute(_ part: Substring) -> Bool {
        let bytes = part.utf8
        guard bytes.count >= 2, let first = bytes.first,
              (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first | 0x20),
              bytes[bytes.index(after: bytes.startIndex)] == UInt8(ascii: "=") else { return false }
        return true
    }
}
