import Foundation

/// Configuration of JWT verification (JWT given as the password).
///
/// Keys come from a JWKS file and/or a JWKS URL (asymmetric keys: RS256, ES256, EdDSA), and from a
/// shared secret (HS256 only, and only when `hs256Secret` is set). The algorithm is always decided by
/// the key, never by the token.
struct JWTSettings: Sendable, Equatable {
    /// Path to a JWKS JSON file. Re-read on every refresh and on `refreshNow()`.
    var jwksFile: String?
    /// https URL of a JWKS document (plain http is accepted only for loopback hosts, for tests).
    var jwksURL: String?
    /// Background refresh period of the JWKS sources; 0 or less disables the background refresh.
    var jwksRefreshSeconds: Int = 300
    /// A token whose `kid` is unknown triggers a refetch at most once per this many seconds.
    var unknownKidRefetchMinimumSeconds: Int = 30
    /// Shared secret for HS256 (at least 32 bytes). HS256 tokens are refused when it is nil.
    var hs256Secret: [UInt8]?
    /// Required `iss` when set.
    var issuer: String?
    /// Required `aud` when set (the claim may be a string or an array of strings).
    var audience: String?
    /// Leeway for `exp` and `nbf`.
    var leewaySeconds: Int = 30
    /// Claim holding the tenant. A dotted path reads nested objects ("org.tenant" reads
    /// {"org": {"tenant": ...}}); a key that itself contains dots ("https://example.com/tenant")
    /// is matched as a whole first (longest key wins at every level).
    var tenantClaim: String = "tenant_id"
    /// Claim holding the user (same path rules as `tenantClaim`).
    var userClaim: String = "sub"
    /// A token without the tenant claim is refused with `missingClaim(tenantClaim)`.
    var requireTenantClaim: Bool = true
    /// A token without the user claim is refused with `missingClaim(userClaim)`.
    var requireUserClaim: Bool = false
    /// A token without `exp` is refused with `missingClaim("exp")` (a session must not outlive its token).
    var requireExpiration: Bool = true
    /// Tokens longer than this are refused as malformed before any parsing.
    var maximumTokenBytes: Int = 16 * 1024

    init(
        jwksFile: String? = nil,
        jwksURL: String? = nil,
        jwksRefreshSeconds: Int = 300,
        unknownKidRefetchMinimumSeconds: Int = 30,
        hs256Secret: [UInt8]? = nil,
        issuer: String? = nil,
        audience: String? = nil,
        leewaySeconds: Int = 30,
        tenantClaim: String = "tenant_id",
        userClaim: String = "sub"
    ) {
        self.jwksFile = jwksFile
        self.jwksURL = jwksURL
        self.jwksRefreshSeconds = jwksRefreshSeconds
        self.unknownKidRefetchMinimumSeconds = unknownKidRefetchMinimumSeconds
        self.hs256Secret = hs256Secret
        self.issuer = issuer
        self.audience = audience
        self.leewaySeconds = leewaySeconds
        self.tenantClaim = tenantClaim
        self.userClaim = userClaim
    }
}

/// What a verified token says. Only built after the signature and the time/issuer/audience checks passed.
struct VerifiedToken: Equatable, Sendable {
    var tenant: String?
    var user: String?
    var expiresAt: Date?
    var subject: String?
}

/// Why a token was refused. Descriptions never contain the token, its claims' values or key material.
enum JWTFailure: Error, Equatable, CustomStringConvertible {
    case malformed
    case unsupportedAlgorithm(String)
    case unknownKey
    case badSignature
    case expired
    case notYetValid
    case wrongIssuer
    case wrongAudience
    case missingClaim(String)

    var description: String {
        switch self {
        case .malformed: return "malformed token"
        case .unsupportedAlgorithm(let alg): return "token algorithm \(alg) is not accepted"
        case .unknownKey: return "token signed by an unknown key"
        case .badSignature: return "token signature is not valid"
        case .expired: return "token has expired"
        case .notYetValid: return "token is not valid yet"
        case .wrongIssuer: return "token issuer is not accepted"
        case .wrongAudience: return "token audience is not accepted"
        case .missingClaim(let name): return "token lacks the required claim \(name)"
        }
    }

    /// Header `alg` values are attacker-controlled: keep short, plain names, replace anything else.
    static func sanitizedAlgorithm(_ alg: String) -> String {
        let allowed = alg.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == 0x2D || byte == 0x5F || byte == 0x2B
        }
        return allowed && !alg.isEmpty && alg.utf8.count <= 16 ? alg : "(invalid)"
    }
}

/// Configuration problems found when the verifier is created. No secret in any description.
enum JWTConfigurationError: Error, Equatable, CustomStringConvertible {
    case noKeySource
    case secretTooShort(minimumBytes: Int)
    case invalidJWKSURL
    case invalidSetting(String)

    var description: String {
        switch self {
        case .noKeySource:
            return "JWT authentication needs jwks_file, jwks_url or an HS256 secret"
        case .secretTooShort(let minimum):
            return "the HS256 secret must be at least \(minimum) bytes long"
        case .invalidJWKSURL:
            return "jwks_url must be an https URL (http only for a loopback host)"
        case .invalidSetting(let name):
            return "invalid JWT setting \(name)"
        }
    }
}

/// A JWKS source could not be loaded; the keys loaded before stay in use.
struct JWKSLoadError: Error, Equatable, CustomStringConvertible {
    enum Source: String, Sendable { case file = "jwks_file", url = "jwks_url" }
    var source: Source
    var reason: String

    var description: String { "could not load \(source.rawValue): \(reason)" }
}
