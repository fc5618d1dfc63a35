import Crypto

/// PostgreSQL's stored verifier: "SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>"
///
/// This is the form found in `pg_authid.rolpassword` and accepted in the proxy's users file.
/// It lets a server verify a client's proof without knowing the password.
public struct SCRAMVerifier: Equatable, Sendable {
    /// PBKDF2 iteration count (PostgreSQL's default is 4096).
    public var iterations: Int
    /// The salt used to derive SaltedPassword.
    public var salt: [UInt8]
    /// StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key")), 32 bytes.
    public let storedKey: [UInt8]
    /// ServerKey = HMAC(SaltedPassword, "Server Key"), 32 bytes.
    public let serverKey: [UInt8]
    /// HMAC-SHA256 keyed with each key, made once with the verifier: a log-in copies them
    /// instead of keying two HMACs (their key pads hashed again, about 30,000 instructions).
    let macs: SCRAMKeyedMACs

    /// The scheme prefix of the stored form.
    static let prefix = "SCRAM-SHA-256$"

    /// Creates a verifier from its parts.
    public init(iterations: Int, salt: [UInt8], storedKey: [UInt8], serverKey: [UInt8]) {
        self.iterations = iterations
        self.salt = salt
        self.storedKey = storedKey
        self.serverKey = serverKey
        self.macs = SCRAMKeyedMACs(storedKey: storedKey, serverKey: serverKey)
    }

    public static func == (a: SCRAMVerifier, b: SCRAMVerifier) -> Bool {
        a.iterations == b.iterations && a.salt == b.salt && a.storedKey == b.storedKey && a.serverKey == b.serverKey
    }

    /// Parses PostgreSQL's stored form.
    ///
    /// - Throws: `SCRAMError` with code `.invalidVerifier` when the prefix is wrong, the iteration
    ///   count is not a positive decimal integer, the salt is empty or not base64, or either key
    ///   is not 32 bytes of base64.
    public init(parsing text: String) throws {
        func invalid(_ why: String) -> SCRAMError {
            SCRAMError(.invalidVerifier, "invalid SCRAM-SHA-256 verifier: \(why)")
        }
        guard text.hasPrefix(Self.prefix) else {
            throw invalid("missing \"SCRAM-SHA-256$\" prefix")
        }
        let body = text.dropFirst(Self.prefix.count)
        let sections = body.split(separator: "$", omittingEmptySubsequences: false)
        guard sections.count == 2 else {
            throw invalid("expected \"<iterations>:<salt>$<StoredKey>:<ServerKey>\"")
        }
        let parameters = sections[0].split(separator: ":", omittingEmptySubsequences: false)
        let keys = sections[1].split(separator: ":", omittingEmptySubsequences: false)
        guard parameters.count == 2, keys.count == 2 else {
            throw invalid("expected \"<iterations>:<salt>$<StoredKey>:<ServerKey>\"")
        }
        let iterationText = parameters[0]
        guard !iterationText.isEmpty, iterationText.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let iterations = Int(iterationText), iterations >= 1, iterations <= Int(Int32.max) else {
            throw invalid("iteration count must be a positive integer")
        }
        guard let salt = SCRAMBase64.decode(parameters[1]), !salt.isEmpty else {
            throw invalid("salt is not valid base64")
        }
        guard let storedKey = SCRAMBase64.decode(keys[0]), storedKey.count == SCRAMPrimitives.keyLength else {
            throw invalid("StoredKey is not 32 bytes of base64")
        }
        guard let serverKey = SCRAMBase64.decode(keys[1]), serverKey.count == SCRAMPrimitives.keyLength else {
            throw invalid("ServerKey is not 32 bytes of base64")
        }
        self.init(iterations: iterations, salt: salt, storedKey: storedKey, serverKey: serverKey)
    }

    /// Derives a verifier from a password, as PostgreSQL's `scram_build_secret` does.
    ///
    /// The password is prepared as described on PostgreSQL's SASLprep handling: ASCII as is,
    /// anything else as raw UTF-8 bytes (see `SCRAMPrimitives.normalize(password:)`).
    /// - Parameters:
    ///   - password: the clear-text password.
    ///   - salt: the salt; 16 random bytes when nil.
    ///   - iterations: PBKDF2 iteration count, at least 1.
    public static func make(password: String, salt: [UInt8]? = nil, iterations: Int = 4096) -> SCRAMVerifier {
        let salt = salt ?? SCRAMPrimitives.randomBytes(SCRAMPrimitives.defaultSaltLength)
        let salted = SCRAMPrimitives.saltedPassword(
            SCRAMPrimitives.normalize(password: password), salt: salt, iterations: iterations)
        let clientKey = SCRAMPrimitives.clientKey(saltedPassword: salted)
        return SCRAMVerifier(
            iterations: iterations,
            salt: salt,
            storedKey: SCRAMPrimitives.sha256(clientKey),
            serverKey: SCRAMPrimitives.serverKey(saltedPassword: salted))
    }

    /// The stored form, "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>".
    public var stringValue: String {
        "\(Self.prefix)\(iterations):\(SCRAMBase64.encode(salt))$\(SCRAMBase64.encode(storedKey)):\(SCRAMBase64.encode(serverKey))"
    }
}

/// HMAC-SHA256 keyed with a verifier's StoredKey and ServerKey, not yet fed: each copy authenticates
/// one message.
///
/// Kept as the two SHA-256 states of each HMAC (after the key XOR ipad and the key XOR opad blocks)
/// and fed through `SHA256.update(bufferPointer:)`: swift-crypto's `HMAC` takes its input through
/// an unspecialised `DataProtocol` generic whose region walk and run-time metadata lookups cost
/// more than the two hashes themselves (perf of `pgbench -C`: 19 µs of CPU per log-in for the
/// two MACs through `HMAC`, 6 µs this way).
struct SCRAMKeyedMACs: Sendable {
    struct Keyed: Sendable {
        let inner: SHA256
        let outer: SHA256

        /// RFC 2104 with a key of at most one block (SCRAM's keys are 32 bytes; a longer key
        /// would first be hashed).
        init(key: [UInt8]) {
            var block = key.count > 64 ? SCRAMPrimitives.sha256(key) : key
            block += [UInt8](repeating: 0, count: 64 - block.count)
            var inner = SHA256()
            var outer = SHA256()
            (block.map { $0 ^ 0x36 }).withUnsafeBytes { inner.update(bufferPointer: $0) }
            (block.map { $0 ^ 0x5c }).withUnsafeBytes { outer.update(bufferPointer: $0) }
            self.inner = inner
            self.outer = outer
        }

        /// HMAC(key, message).
        func code(_ message: [UInt8]) -> [UInt8] {
            var inner = self.inner
            message.withUnsafeBytes { inner.update(bufferPointer: $0) }
            var outer = self.outer
            inner.finalize().withUnsafeBytes { outer.update(bufferPointer: $0) }
            return SCRAMPrimitives.bytes(outer.finalize())
        }
    }

    let stored: Keyed
    let server: Keyed

    init(storedKey: [UInt8], serverKey: [UInt8]) {
        stored = Keyed(key: storedKey)
        server = Keyed(key: serverKey)
    }

    /// HMAC(StoredKey, message): the ClientSignature of an AuthMessage.
    func clientSignature(_ message: [UInt8]) -> [UInt8] { stored.code(message) }

    /// HMAC(ServerKey, message): the ServerSignature of an AuthMessage.
    func serverSignature(_ message: [UInt8]) -> [UInt8] { server.code(message) }
}
