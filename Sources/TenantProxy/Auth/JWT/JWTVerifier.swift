import Crypto
import Foundation
import JWTKit
import Logging

/// Verifies JWTs given as passwords. Thread-safe: `verifySync` and `verify` may be called from any
/// event loop concurrently; the key set is an immutable snapshot swapped under a lock.
///
/// Rules:
/// - The key is chosen by `kid` from the JWKS; the key's own type pins the algorithm (RSA: RS256,
///   EC P-256: ES256, OKP Ed25519: EdDSA). A header `alg` that differs from the key's is refused.
/// - HS256 is accepted only when a shared secret is configured, and is verified only with that
///   secret, never with JWKS key bytes. `alg: none` and every other algorithm are refused.
/// - The signature is checked before any claim is looked at; then exp/nbf (with leeway), iss, aud.
final class JWTVerifier: @unchecked Sendable {
    static let minimumHS256SecretBytes = 32

    let settings: JWTSettings
    private let fetcher: (any JWKSFetcher)?
    private let clock: @Sendable () -> Date
    private let logger: Logger
    private let hmacKey: SymmetricKey?

    private let lock = NSLock()
    // Guarded by `lock`.
    private var fileKeys = JWKSKeySet()
    private var urlKeys = JWKSKeySet()
    private var currentKeys = JWKSKeySet()
    private var lastUnknownKidRefetch: Date?
    private var loadGeneration: UInt64 = 0
    private var appliedFileGeneration: UInt64 = 0
    private var appliedURLGeneration: UInt64 = 0
    private var initialLoad: Task<Void, Never>?
    private var initialLoadFinished = false
    private var backgroundRefresh: Task<Void, Never>?
    private var isShutDown = false

    /// Creates the verifier and, when a JWKS source is configured, starts loading it at once and then
    /// every `jwksRefreshSeconds` in the background (until `shutdown()`).
    /// `httpFetcher` nil with a `jwksURL` uses `URLSessionJWKSFetcher`.
    init(
        settings: JWTSettings,
        httpFetcher: (any JWKSFetcher)?,
        clock: @escaping @Sendable () -> Date = { Date() },
        logger: Logger = Logger(label: "tenant-proxy.jwt")
    ) throws {
        if let secret = settings.hs256Secret {
            guard secret.count >= Self.minimumHS256SecretBytes else {
                throw JWTConfigurationError.secretTooShort(minimumBytes: Self.minimumHS256SecretBytes)
            }
            self.hmacKey = SymmetricKey(data: secret)
        } else {
            self.hmacKey = nil
        }
        if let url = settings.jwksURL, !JWKSURLRule.isAcceptable(url) {
            throw JWTConfigurationError.invalidJWKSURL
        }
        if settings.jwksFile == nil, settings.jwksURL == nil, settings.hs256Secret == nil {
            throw JWTConfigurationError.noKeySource
        }
        guard settings.leewaySeconds >= 0, settings.leewaySeconds <= 3600 else {
            throw JWTConfigurationError.invalidSetting("leeway_seconds")
        }
        guard settings.unknownKidRefetchMinimumSeconds >= 0 else {
            throw JWTConfigurationError.invalidSetting("unknown_kid_refetch_minimum_seconds")
        }
        guard !settings.tenantClaim.isEmpty else { throw JWTConfigurationError.invalidSetting("tenant_claim") }
        guard !settings.userClaim.isEmpty else { throw JWTConfigurationError.invalidSetting("user_claim") }

        self.settings = settings
        self.fetcher = settings.jwksURL == nil ? nil : (httpFetcher ?? URLSessionJWKSFetcher())
        self.clock = clock
        self.logger = logger

        if hasJWKSSource {
            let initial = Task { [weak self] in
                guard let self else { return }
                do { try await self.refreshNow() } catch { /* logged in refreshNow */ }
                self.lock.withLock { self.initialLoadFinished = true }
            }
            let period = settings.jwksRefreshSeconds
            let loop: Task<Void, Never>? = period > 0 ? Task { [weak self] in
                _ = await initial.value
                while !Task.isCancelled {
                    do { try await Task.sleep(nanoseconds: UInt64(period) * 1_000_000_000) } catch { return }
                    guard let self else { return }
                    do { try await self.refreshNow() } catch { /* logged in refreshNow */ }
                }
            } : nil
            lock.withLock {
                initialLoad = initial
                backgroundRefresh = loop
            }
        }
    }

    deinit {
        backgroundRefresh?.cancel()
    }

    private var hasJWKSSource: Bool { settings.jwksFile != nil || settings.jwksURL != nil }

    /// Stops the background refresh. Verification keeps working with the keys loaded so far.
    func shutdown() {
        let task: Task<Void, Never>? = lock.withLock {
            isShutDown = true
            let task = backgroundRefresh
            backgroundRefresh = nil
            return task
        }
        task?.cancel()
    }

    /// Whether the background refresh loop is running (for tests and status).
    var isRefreshingInBackground: Bool { lock.withLock { backgroundRefresh != nil } }

    /// Number of JWKS keys in force.
    var keyCount: Int { lock.withLock { currentKeys.count } }

    /// Waits until the first load of the JWKS sources has finished (successfully or not).
    func waitUntilReady() async {
        let task = lock.withLock { initialLoad }
        await task?.value
    }

    /// Reloads the JWKS file and fetches the JWKS URL now. A source that fails keeps its previous keys;
    /// the first failure is thrown after the other source was applied.
    func refreshNow() async throws {
        let generation: UInt64 = lock.withLock {
            loadGeneration += 1
            return loadGeneration
        }
        var failure: JWKSLoadError?

        if let path = settings.jwksFile {
            do {
                let data: Data
                do {
                    data = try Data(contentsOf: URL(fileURLWithPath: path))
                } catch {
                    throw JWKSParseError("could not read the file")
                }
                let result = try await JWKSParser.parse(data)
                apply(result.keySet, to: .file, generation: generation)
                logger.debug("JWKS loaded", metadata: [
                    "source": "jwks_file", "keys": "\(result.keySet.count)", "skipped": "\(result.skipped)",
                ])
            } catch {
                let reason = (error as? JWKSParseError)?.reason ?? "unusable document"
                failure = failure ?? JWKSLoadError(source: .file, reason: reason)
                logger.warning("JWKS not loaded; previous keys stay in use", metadata: [
                    "source": "jwks_file", "reason": "\(reason)",
                ])
            }
        }

        if let url = settings.jwksURL, let fetcher {
            do {
                let data: Data
                do {
                    data = try await fetcher.fetch(url: url)
                } catch let error as JWKSFetchError {
                    throw JWKSParseError(error.description)
                } catch {
                    throw JWKSParseError("fetch failed")
                }
                let result = try await JWKSParser.parse(data)
                apply(result.keySet, to: .url, generation: generation)
                logger.debug("JWKS loaded", metadata: [
                    "source": "jwks_url", "keys": "\(result.keySet.count)", "skipped": "\(result.skipped)",
                ])
            } catch {
                let reason = (error as? JWKSParseError)?.reason ?? "unusable document"
                failure = failure ?? JWKSLoadError(source: .url, reason: reason)
                logger.warning("JWKS not loaded; previous keys stay in use", metadata: [
                    "source": "jwks_url", "reason": "\(reason)",
                ])
            }
        }

        if let failure { throw failure }
    }

    private func apply(_ keys: JWKSKeySet, to source: JWKSLoadError.Source, generation: UInt64) {
        lock.withLock {
            switch source {
            case .file:
                guard generation >= appliedFileGeneration else { return }
                appliedFileGeneration = generation
                fileKeys = keys
            case .url:
                guard generation >= appliedURLGeneration else { return }
                appliedURLGeneration = generation
                urlKeys = keys
            }
            currentKeys = fileKeys + urlKeys
        }
    }

    // MARK: - Verification

    /// Verifies a token with the keys in force; on an unknown `kid` refetches the JWKS (at most once
    /// per `unknownKidRefetchMinimumSeconds`) and tries again.
    func verify(_ token: String) async throws -> VerifiedToken {
        let pending = lock.withLock { initialLoadFinished ? nil : initialLoad }
        await pending?.value
        switch try verifyCore(token, keys: lock.withLock { currentKeys }) {
        case .verified(let result):
            return result
        case .unknownKid:
            guard claimUnknownKidRefetch() else { throw JWTFailure.unknownKey }
            do { try await refreshNow() } catch { /* keep the keys we have */ }
            switch try verifyCore(token, keys: lock.withLock { currentKeys }) {
            case .verified(let result): return result
            case .unknownKid: throw JWTFailure.unknownKey
            }
        }
    }

    /// Verifies a token synchronously with the keys in force (for use directly on an event loop).
    /// On an unknown `kid` it throws `unknownKey` and starts a rate-limited refetch in the background,
    /// so a retry after a key rotation succeeds.
    func verifySync(_ token: String) throws -> VerifiedToken {
        switch try verifyCore(token, keys: lock.withLock { currentKeys }) {
        case .verified(let result):
            return result
        case .unknownKid:
            if claimUnknownKidRefetch() {
                Task { [weak self] in try? await self?.refreshNow() }
            }
            throw JWTFailure.unknownKey
        }
    }

    /// Takes the refetch slot if the rate limit allows it.
    private func claimUnknownKidRefetch() -> Bool {
        guard hasJWKSSource else { return false }
        let now = clock()
        return lock.withLock {
            if isShutDown { return false }
            if let last = lastUnknownKidRefetch,
               now.timeIntervalSince(last) < Double(settings.unknownKidRefetchMinimumSeconds),
               now >= last {
                return false
            }
            lastUnknownKidRefetch = now
            return true
        }
    }

    private enum Outcome {
        case verified(VerifiedToken)
        case unknownKid
    }

    private struct Header: Decodable {
        var alg: String?
        var kid: String?
        var crit: [String]?
    }

    private func verifyCore(_ token: String, keys: JWKSKeySet) throws -> Outcome {
        let bytes = Array(token.utf8)
        guard !bytes.isEmpty, bytes.count <= settings.maximumTokenBytes else { throw JWTFailure.malformed }
        guard let firstDot = bytes.firstIndex(of: UInt8(ascii: ".")),
              let secondDot = bytes[(firstDot + 1)...].firstIndex(of: UInt8(ascii: ".")),
              !bytes[(secondDot + 1)...].contains(UInt8(ascii: "."))
        else { throw JWTFailure.malformed }
        let headerPart = bytes[..<firstDot]
        let payloadPart = bytes[(firstDot + 1)..<secondDot]
        let signaturePart = bytes[(secondDot + 1)...]
        let signingInput = bytes[..<secondDot]

        guard let headerBytes = Base64URL.decode(String(decoding: headerPart, as: UTF8.self)),
              let header = try? JSONDecoder().decode(Header.self, from: Data(headerBytes)),
              let alg = header.alg
        else { throw JWTFailure.malformed }
        // Critical header extensions are not understood: RFC 7515 §4.1.11 requires refusing them.
        guard header.crit == nil else { throw JWTFailure.malformed }

        guard let algorithm = PinnedAlgorithm(headerAlg: alg) else {
            throw JWTFailure.unsupportedAlgorithm(JWTFailure.sanitizedAlgorithm(alg))
        }
        guard let signature = Base64URL.decode(String(decoding: signaturePart, as: UTF8.self)),
              !signature.isEmpty
        else { throw JWTFailure.malformed }

        switch algorithm {
        case .hs256:
            guard let hmacKey else { throw JWTFailure.unsupportedAlgorithm(alg) }
            // A kid naming a JWKS key pins that key's algorithm: HS256 against it is refused.
            if let kid = header.kid, keys.keys(forKid: kid) != nil {
                throw JWTFailure.unsupportedAlgorithm(alg)
            }
            guard HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: Array(signingInput), using: hmacKey)
            else { throw JWTFailure.badSignature }

        case .rs256, .es256, .eddsa:
            let candidates: [PinnedKey]
            if let kid = header.kid {
                guard let found = keys.keys(forKid: kid) else { return .unknownKid }
                candidates = found.filter { $0.algorithm == algorithm }
                guard !candidates.isEmpty else { throw JWTFailure.unsupportedAlgorithm(alg) }
            } else {
                // No kid: only keys pinned to the header's algorithm are tried.
                candidates = keys.keys.filter { $0.algorithm == algorithm }
                guard !candidates.isEmpty else { return .unknownKid }
            }
            let input = Array(signingInput)
            let valid = candidates.contains { key in
                (try? key.verifier.verify(signature, signs: input)) == true
            }
            guard valid else { throw JWTFailure.badSignature }
        }

        guard let payloadBytes = Base64URL.decode(String(decoding: payloadPart, as: UTF8.self)),
              let claims = try? JSONDecoder().decode([String: JWTJSONValue].self, from: Data(payloadBytes))
        else { throw JWTFailure.malformed }
        return .verified(try checkClaims(claims))
    }

    private func checkClaims(_ claims: [String: JWTJSONValue]) throws -> VerifiedToken {
        let now = clock().timeIntervalSince1970
        let leeway = Double(settings.leewaySeconds)

        var expiresAt: Date?
        if let exp = claims["exp"] {
            guard let value = exp.numberValue, value.isFinite else { throw JWTFailure.malformed }
            guard now < value + leeway else { throw JWTFailure.expired }
            expiresAt = Date(timeIntervalSince1970: value)
        } else if settings.requireExpiration {
            throw JWTFailure.missingClaim("exp")
        }
        if let nbf = claims["nbf"] {
            guard let value = nbf.numberValue, value.isFinite else { throw JWTFailure.malformed }
            guard now + leeway >= value else { throw JWTFailure.notYetValid }
        }
        if let issuer = settings.issuer {
            guard case .string(let iss)? = claims["iss"], iss == issuer else { throw JWTFailure.wrongIssuer }
        }
        if let audience = settings.audience {
            switch claims["aud"] {
            case .string(let aud)? where aud == audience:
                break
            case .array(let values)? where values.contains(.string(audience)):
                break
            default:
                throw JWTFailure.wrongAudience
            }
        }

        let tenant = claimString(settings.tenantClaim, in: claims)
        if tenant == nil, settings.requireTenantClaim { throw JWTFailure.missingClaim(settings.tenantClaim) }
        let user = claimString(settings.userClaim, in: claims)
        if user == nil, settings.requireUserClaim { throw JWTFailure.missingClaim(settings.userClaim) }
        var subject: String?
        if case .string(let sub)? = claims["sub"] { subject = sub }

        return VerifiedToken(tenant: tenant, user: user, expiresAt: expiresAt, subject: subject)
    }

    private func claimString(_ name: String, in claims: [String: JWTJSONValue]) -> String? {
        guard let value = JWTClaimPath.lookup(name, in: claims)?.claimString, !value.isEmpty else { return nil }
        return value
    }
}
