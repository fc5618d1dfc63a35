import Foundation
import JWTKit

/// Algorithms this proxy accepts. Each asymmetric key is pinned to exactly one of them by its own
/// `kty`/`crv`/`alg`; HS256 exists only for the configured shared secret.
enum PinnedAlgorithm: String, Sendable, CaseIterable {
    case rs256 = "RS256"
    case es256 = "ES256"
    case eddsa = "EdDSA"
    case hs256 = "HS256"

    /// Maps a token header `alg` to an algorithm; "Ed25519" (RFC 9864) is the same as EdDSA on an
    /// Ed25519 key, which is the only OKP curve accepted.
    init?(headerAlg: String) {
        switch headerAlg {
        case "RS256": self = .rs256
        case "ES256": self = .es256
        case "EdDSA", "Ed25519": self = .eddsa
        case "HS256": self = .hs256
        default: return nil
        }
    }
}

/// One verification key from a JWKS, pinned to one algorithm. Holds public key material only.
struct PinnedKey: Sendable {
    var kid: String?
    var algorithm: PinnedAlgorithm
    var verifier: any JWTAlgorithm
}

/// The keys in force: looked up by `kid`.
struct JWKSKeySet: Sendable {
    private(set) var keys: [PinnedKey] = []
    private var byKid: [String: [PinnedKey]] = [:]

    init(_ keys: [PinnedKey] = []) {
        self.keys = keys
        for key in keys {
            if let kid = key.kid { byKid[kid, default: []].append(key) }
        }
    }

    var isEmpty: Bool { keys.isEmpty }
    var count: Int { keys.count }

    func keys(forKid kid: String) -> [PinnedKey]? { byKid[kid] }

    static func + (lhs: JWKSKeySet, rhs: JWKSKeySet) -> JWKSKeySet { JWKSKeySet(lhs.keys + rhs.keys) }
}

/// Parses a JWKS document into pinned keys, with jwt-kit doing the cryptography.
enum JWKSParser {
    static let maximumDocumentBytes = 1 << 20
    static let minimumRSAModulusBits = 2048

    /// The JWK members this proxy reads. Private members (`d`, `p`, `q`, ...) are never read.
    private struct RawJWKS: Decodable { var keys: [RawJWK] }
    private struct RawJWK: Decodable {
        var kty: String?
        var kid: String?
        var alg: String?
        var use: String?
        var crv: String?
        var n: String?
        var e: String?
        var x: String?
        var y: String?
    }

    struct Result: Sendable {
        var keySet: JWKSKeySet
        var skipped: Int
    }

    /// Parses `data`. Keys of another type, curve or algorithm, encryption keys and symmetric keys
    /// are skipped (counted in `skipped`). Throws a reason string (no key material) when the
    /// document is unusable or holds no usable key.
    static func parse(_ data: Data) async throws(JWKSParseError) -> Result {
        guard data.count <= maximumDocumentBytes else { throw JWKSParseError("document too large") }
        let document: RawJWKS
        do {
            document = try JSONDecoder().decode(RawJWKS.self, from: data)
        } catch {
            throw JWKSParseError("not a JWKS JSON document")
        }

        let collection = JWTKeyCollection()
        var pending: [(kid: String?, internalKid: JWKIdentifier, algorithm: PinnedAlgorithm)] = []
        var skipped = 0
        for (index, jwk) in document.keys.enumerated() {
            if let use = jwk.use, use != "sig" { skipped += 1; continue }
            let internalKid = JWKIdentifier(string: "jwks-key-\(index)")
            do {
                switch jwk.kty {
                case "RSA":
                    guard jwk.alg == nil || jwk.alg == "RS256",
                          let n = jwk.n, let e = jwk.e,
                          let modulus = Base64URL.decode(n), Base64URL.decode(e) != nil
                    else { skipped += 1; continue }
                    let significant = modulus.drop(while: { $0 == 0 })
                    guard significant.count * 8 >= minimumRSAModulusBits else { skipped += 1; continue }
                    let key = try Insecure.RSA.PublicKey(modulus: n, exponent: e)
                    await collection.add(rsa: key, digestAlgorithm: .sha256, kid: internalKid)
                    pending.append((jwk.kid, internalKid, .rs256))
                case "EC":
                    guard jwk.crv == "P-256", jwk.alg == nil || jwk.alg == "ES256",
                          let x = jwk.x, let y = jwk.y,
                          Base64URL.decode(x)?.count == 32, Base64URL.decode(y)?.count == 32
                    else { skipped += 1; continue }
                    let key = try ES256PublicKey(parameters: (x: x, y: y))
                    await collection.add(ecdsa: key, kid: internalKid)
                    pending.append((jwk.kid, internalKid, .es256))
                case "OKP":
                    guard jwk.crv == "Ed25519", jwk.alg == nil || jwk.alg == "EdDSA" || jwk.alg == "Ed25519",
                          let x = jwk.x, Base64URL.decode(x)?.count == 32
                    else { skipped += 1; continue }
                    let key = try EdDSA.PublicKey(x: x, curve: .ed25519)
                    await collection.add(eddsa: key, kid: internalKid)
                    pending.append((jwk.kid, internalKid, .eddsa))
                default:
                    // "oct" (symmetric) keys are never taken from a JWKS: HS256 uses only the configured secret.
                    skipped += 1
                }
            } catch {
                skipped += 1
            }
        }

        var keys: [PinnedKey] = []
        for entry in pending {
            guard let verifier = try? await collection.getKey(for: entry.internalKid),
                  verifier.name == entry.algorithm.rawValue
            else { skipped += 1; continue }
            keys.append(PinnedKey(kid: entry.kid, algorithm: entry.algorithm, verifier: verifier))
        }
        guard !keys.isEmpty else { throw JWKSParseError("no usable key (RS256, ES256 on P-256, EdDSA on Ed25519)") }
        return Result(keySet: JWKSKeySet(keys), skipped: skipped)
    }
}

struct JWKSParseError: Error, CustomStringConvertible {
    var reason: String
    init(_ reason: String) { self.reason = reason }
    var description: String { reason }
}
