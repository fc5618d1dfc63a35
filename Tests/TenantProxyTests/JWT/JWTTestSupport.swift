import Crypto
import CryptoExtras
import Foundation
import JWTKit
import XCTest

@testable import TenantProxy

/// A clock the tests move by hand.
final class JWTTestClock: @unchecked Sendable {
    private let lock = NSLock()
    private var current: Date

    init(_ start: Date = Date(timeIntervalSince1970: 1_800_000_000)) { current = start }

    var now: Date { lock.withLock { current } }
    func advance(_ seconds: TimeInterval) { lock.withLock { current += seconds } }
    var function: @Sendable () -> Date { { [self] in self.now } }
}

/// A JWKS "server" that counts fetches and serves whatever document the test sets.
final class CountingJWKSFetcher: JWKSFetcher, @unchecked Sendable {
    private let lock = NSLock()
    private var document: Data
    private var count = 0
    private var urls: [String] = []

    init(document: Data) { self.document = document }

    var calls: Int { lock.withLock { count } }
    func setDocument(_ data: Data) { lock.withLock { document = data } }

    func fetch(url: String) async throws -> Data {
        lock.withLock {
            count += 1
            urls.append(url)
            return document
        }
    }
}

/// A signing key made in the test, with its public JWK.
struct JWTTestKey: @unchecked Sendable {
    var kid: String
    var alg: String
    var jwk: [String: String]
    var signer: any JWTAlgorithm
    /// RSA only: the public key's PEM and DER, for the HS256 key-confusion attack.
    var publicPEM: String?
    var publicDER: Data?

    func sign(_ input: [UInt8]) throws -> [UInt8] { try signer.sign(input) }
}

enum JWTTestKeys {
    static func signer(_ add: (JWTKeyCollection) async -> Void) async throws -> any JWTAlgorithm {
        let collection = JWTKeyCollection()
        await add(collection)
        return try await collection.getKey(for: JWKIdentifier(string: "signing"))
    }

    static func rsa(kid: String, includeAlg: Bool = true) async throws -> JWTTestKey {
        let backing = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let privateKey = try Insecure.RSA.PrivateKey(backing: backing)
        let primitives = try privateKey.publicKey.getKeyPrimitives()
        var jwk = [
            "kty": "RSA", "kid": kid, "use": "sig",
            "n": Base64URL.encode(primitives.modulus), "e": Base64URL.encode(primitives.publicExponent),
        ]
        if includeAlg { jwk["alg"] = "RS256" }
        let signer = try await signer { await $0.add(rsa: privateKey, digestAlgorithm: .sha256, kid: "signing") }
        return JWTTestKey(
            kid: kid, alg: "RS256", jwk: jwk, signer: signer,
            publicPEM: privateKey.publicKey.pemRepresentation, publicDER: privateKey.publicKey.derRepresentation
        )
    }

    static func es256(kid: String) async throws -> JWTTestKey {
        let key = P256.Signing.PrivateKey()
        let point = Array(key.publicKey.x963Representation)  // 0x04 || x || y
        let jwk = [
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": Base64URL.encode(point[1..<33]), "y": Base64URL.encode(point[33..<65]),
        ]
        let privateKey = try ES256PrivateKey(backing: key)
        let signer = try await signer { await $0.add(ecdsa: privateKey, kid: "signing") }
        return JWTTestKey(kid: kid, alg: "ES256", jwk: jwk, signer: signer)
    }

    static func eddsa(kid: String) async throws -> JWTTestKey {
        let key = Curve25519.Signing.PrivateKey()
        let jwk = [
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": Base64URL.encode(key.publicKey.rawRepresentation),
        ]
        let privateKey = EdDSA.PrivateKey(backing: key)
        let signer = try await signer { await $0.add(eddsa: privateKey, kid: "signing") }
        return JWTTestKey(kid: kid, alg: "EdDSA", jwk: jwk, signer: signer)
    }

    static func jwks(_ keys: [JWTTestKey]) -> Data {
        try! JSONSerialization.data(withJSONObject: ["keys": keys.map(\.jwk)], options: [.sortedKeys])
    }
}

enum JWTTestTokens {
    static func segment(_ object: [String: Any]) -> String {
        Base64URL.encode(try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }

    /// Builds a compact JWS by hand: any header, any payload, signature by `sign` (nil: empty signature).
    static func make(
        header: [String: Any],
        payload: [String: Any],
        sign: (([UInt8]) throws -> [UInt8])?
    ) rethrows -> String {
        let input = segment(header) + "." + segment(payload)
        let signature = try sign?(Array(input.utf8)) ?? []
        return input + "." + Base64URL.encode(signature)
    }

    static func signed(
        with key: JWTTestKey,
        payload: [String: Any],
        kid: String? = nil,
        alg: String? = nil
    ) throws -> String {
        var header: [String: Any] = ["typ": "JWT", "alg": alg ?? key.alg]
        header["kid"] = kid ?? key.kid
        return try make(header: header, payload: payload, sign: key.sign)
    }

    static func hs256(secret: [UInt8], payload: [String: Any], kid: String? = nil) -> String {
        var header: [String: Any] = ["typ": "JWT", "alg": "HS256"]
        if let kid { header["kid"] = kid }
        return make(header: header, payload: payload) { input in
            Array(HMAC<SHA256>.authenticationCode(for: input, using: SymmetricKey(data: secret)))
        }
    }
}

/// XCTAssertThrowsError for async code, checking the JWTFailure.
func assertJWTFailure(
    _ expected: JWTFailure,
    file: StaticString = #filePath,
    line: UInt = #line,
    _ body: () async throws -> VerifiedToken
) async {
    do {
        let result = try await body()
        XCTFail("expected \(expected), got a verified token \(result)", file: file, line: line)
    } catch let failure as JWTFailure {
        XCTAssertEqual(failure, expected, file: file, line: line)
    } catch {
        XCTFail("expected \(expected), got \(error)", file: file, line: line)
    }
}
