import Crypto

/// PostgreSQL's legacy MD5 password authentication (AuthenticationMD5Password).
///
/// Passwords are used as raw UTF-8 bytes (PostgreSQL applies no normalization for MD5).
public enum MD5Password {
    /// A fresh four-byte salt for AuthenticationMD5Password (one draw from the system's CSPRNG).
    public static func randomSalt() -> [UInt8] {
        SCRAMPrimitives.randomBytes(4)
    }

    /// "md5" + md5hex(md5hex(password + user) + salt), as PostgreSQL's MD5 auth expects from a client.
    public static func response(user: String, password: String, salt: [UInt8]) -> String {
        let inner = md5Hex(Array(password.utf8) + Array(user.utf8))
        return "md5" + md5Hex(Array(inner.utf8) + salt)
    }

    /// "md5" + md5hex(password + user): the stored form (pg_authid) also accepted in a users file.
    public static func storedHash(user: String, password: String) -> String {
        "md5" + md5Hex(Array(password.utf8) + Array(user.utf8))
    }

    /// Server-side check of a client's response against the stored form.
    ///
    /// Returns false when `storedHash` is not "md5" followed by 32 hex digits. The comparison of
    /// the response with the expected value runs in constant time.
    public static func verify(response: String, storedHash: String, salt: [UInt8]) -> Bool {
        let stored = Array(storedHash.utf8)
        guard stored.count == 35, storedHash.hasPrefix("md5"),
              stored[3...].allSatisfy({ isHexDigit($0) }) else {
            return false
        }
        // PostgreSQL stores lowercase hex; accept an uppercase users-file entry too.
        let inner = stored[3...].map { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "F") ? $0 | 0x20 : $0 }
        let expected = "md5" + md5Hex(inner + salt)
        return constantTimeEquals(Array(response.utf8), Array(expected.utf8))
    }

    private static func isHexDigit(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9"))
            || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "f"))
            || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "F"))
    }

    private static func md5Hex(_ bytes: [UInt8]) -> String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(32)
        for byte in Insecure.MD5.hash(data: bytes) {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
