/// Reads the `[jwt]` section into `JWTSettings`; nil when the section is absent.
enum JWTConfigReader {
    static func read(reader: inout TOMLSectionReader, baseDirectory: String, environment: [String: String]) -> JWTSettings? {
        guard reader.hasSection("jwt") else { return nil }
        var settings = JWTSettings()
        if let file = reader.optionalString("jwt", "jwks_file"), !file.isEmpty {
            settings.jwksFile = ProxyConfig.resolve(file, against: baseDirectory)
        }
        if let url = reader.optionalString("jwt", "jwks_url"), !url.isEmpty {
            settings.jwksURL = url
        }
        settings.jwksRefreshSeconds = reader.int("jwt", "jwks_refresh_seconds", default: 300, range: 0...86_400)
        settings.unknownKidRefetchMinimumSeconds = reader.int("jwt", "unknown_kid_refetch_seconds", default: 30, range: 0...86_400)
        if let secret = SecretSource.read(section: "jwt", key: "hs256_secret", reader: &reader, baseDirectory: baseDirectory,
                                          environment: environment), !secret.isEmpty {
            if secret.utf8.count < 32 {
                reader.problem("jwt.hs256_secret", "is shorter than 32 bytes", fix: "use a random secret of at least 32 bytes")
            }
            settings.hs256Secret = Array(secret.utf8)
        }
        settings.issuer = reader.optionalString("jwt", "issuer").flatMap { $0.isEmpty ? nil : $0 }
        settings.audience = reader.optionalString("jwt", "audience").flatMap { $0.isEmpty ? nil : $0 }
        settings.leewaySeconds = reader.int("jwt", "leeway_seconds", default: 30, range: 0...3600)
        settings.tenantClaim = reader.string("jwt", "tenant_claim", default: "tenant_id")
        settings.userClaim = reader.string("jwt", "user_claim", default: "sub")
        if settings.jwksFile == nil, settings.jwksURL == nil, settings.hs256Secret == nil {
            reader.problem("jwt", "no keys configured", fix: "set jwks_file, jwks_url or hs256_secret(_file/_env)")
        }
        return settings
    }
}
