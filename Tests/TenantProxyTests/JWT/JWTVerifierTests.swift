import Crypto
import Foundation
import JWTKit
import XCTest

@testable import TenantProxy

/// Keys made once for the whole class (RSA generation is the slow part).
struct JWTFixtures: @unchecked Sendable {
    var rsa: JWTTestKey
    var rsaOther: JWTTestKey  // a different key, published under the same kid in the "wrong key" test
    var es256: JWTTestKey
    var eddsa: JWTTestKey
    var rsaRotated: JWTTestKey
    var secret: [UInt8]

    static let shared = Task<JWTFixtures, any Error> {
        JWTFixtures(
            rsa: try await JWTTestKeys.rsa(kid: "rsa-1"),
            rsaOther: try await JWTTestKeys.rsa(kid: "rsa-1"),
            es256: try await JWTTestKeys.es256(kid: "ec-1"),
            eddsa: try await JWTTestKeys.eddsa(kid: "ed-1"),
            rsaRotated: try await JWTTestKeys.rsa(kid: "rsa-2", includeAlg: false),
            secret: Array("a shared secret of at least thirty-two bytes!".utf8)
        )
    }

    var publishedKeys: [JWTTestKey] { [rsa, es256, eddsa] }
}

final class JWTVerifierTests: XCTestCase {
    let clock = JWTTestClock()
    var now: TimeInterval { clock.now.timeIntervalSince1970 }

    func claims(_ extra: [String: Any] = [:]) -> [String: Any] {
        var claims: [String: Any] = [
            "iss": "https://id.example.com", "aud": "tenant-proxy", "sub": "user-7",
            "tenant_id": "018f6a4e-0000-7000-8000-000000000001",
            "iat": Int(now), "exp": Int(now) + 600,
        ]
        for (key, value) in extra { claims[key] = value }
        return claims
    }

    /// A verifier on a mock JWKS URL with the fixtures' public keys, ready to verify.
    func makeVerifier(
        _ fixtures: JWTFixtures,
        keys: [JWTTestKey]? = nil,
        configure: (inout JWTSettings) -> Void = { _ in }
    ) async throws -> (JWTVerifier, CountingJWKSFetcher) {
        let fetcher = CountingJWKSFetcher(document: JWTTestKeys.jwks(keys ?? fixtures.publishedKeys))
        var settings = JWTSettings(
            jwksURL: "https://id.example.com/.well-known/jwks.json",
            issuer: "https://id.example.com", audience: "tenant-proxy"
        )
        configure(&settings)
        let verifier = try JWTVerifier(settings: settings, httpFetcher: fetcher, clock: clock.function)
        await verifier.waitUntilReady()
        addTeardownBlock { verifier.shutdown() }
        return (verifier, fetcher)
    }

    // MARK: - Valid tokens

    func testValidRS256() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        let token = try JWTTestTokens.signed(with: f.rsa, payload: claims())
        let result = try await verifier.verify(token)
        XCTAssertEqual(result.tenant, "018f6a4e-0000-7000-8000-000000000001")
        XCTAssertEqual(result.user, "user-7")
        XCTAssertEqual(result.subject, "user-7")
        XCTAssertEqual(result.expiresAt, Date(timeIntervalSince1970: TimeInterval(Int(now) + 600)))
        XCTAssertEqual(try verifier.verifySync(token), result)
    }

    func testValidES256() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        let result = try await verifier.verify(try JWTTestTokens.signed(with: f.es256, payload: claims()))
        XCTAssertEqual(result.user, "user-7")
    }

    func testValidEdDSA() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        let result = try await verifier.verify(try JWTTestTokens.signed(with: f.eddsa, payload: claims()))
        XCTAssertEqual(result.tenant, "018f6a4e-0000-7000-8000-000000000001")
    }

    func testValidHS256WithConfiguredSecret() async throws {
        let f = try await JWTFixtures.shared.value
        let settings = JWTSettings(hs256Secret: f.secret, issuer: "https://id.example.com", audience: "tenant-proxy")
        let verifier = try JWTVerifier(settings: settings, httpFetcher: nil, clock: clock.function)
        let token = JWTTestTokens.hs256(secret: f.secret, payload: claims())
        let result = try verifier.verifySync(token)
        XCTAssertEqual(result.user, "user-7")
        let asyncResult = try await verifier.verify(token)
        XCTAssertEqual(asyncResult, result)
        XCTAssertFalse(verifier.isRefreshingInBackground, "no JWKS source: nothing to refresh")

        let otherSecret = Array("another shared secret, also long enough....".utf8)
        await assertJWTFailure(.badSignature) {
            try await verifier.verify(JWTTestTokens.hs256(secret: otherSecret, payload: self.claims()))
        }
    }

    func testHS256RefusedWithoutConfiguredSecret() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        await assertJWTFailure(.unsupportedAlgorithm("HS256")) {
            try await verifier.verify(JWTTestTokens.hs256(secret: f.secret, payload: self.claims()))
        }
    }

    func testKeyWithoutAlgIsPinnedByItsType() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f, keys: [f.rsaRotated])  // JWK has no "alg"
        let result = try await verifier.verify(try JWTTestTokens.signed(with: f.rsaRotated, payload: claims()))
        XCTAssertEqual(result.user, "user-7")
        // The token cannot pick PS256 (or anything else) for that RSA key.
        await assertJWTFailure(.unsupportedAlgorithm("PS256")) {
            try await verifier.verify(try JWTTestTokens.signed(with: f.rsaRotated, payload: self.claims(), alg: "PS256"))
        }
    }

    // MARK: - Time

    func testExpired() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        let token = try JWTTestTokens.signed(with: f.rsa, payload: claims(["exp": Int(now) - 31]))
        await assertJWTFailure(.expired) { try await verifier.verify(token) }
        XCTAssertThrowsError(try verifier.verifySync(token)) { XCTAssertEqual($0 as? JWTFailure, .expired) }
    }

    func testNotYetValid() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        let token = try JWTTestTokens.signed(with: f.es256, payload: claims(["nbf": Int(now) + 31]))
        await assertJWTFailure(.notYetValid) { try await verifier.verify(token) }
    }

    func testWithinLeewayAccepted() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        let expiredJustNow = try JWTTestTokens.signed(with: f.rsa, payload: claims(["exp": Int(now) - 29]))
        let validSoon = try JWTTestTokens.signed(with: f.eddsa, payload: claims(["nbf": Int(now) + 29]))
        _ = try await verifier.verify(expiredJustNow)
        _ = try await verifier.verify(validSoon)

        // Leeway is configurable: with 0, the same tokens are refused.
        let (strict, _) = try await makeVerifier(f) { $0.leewaySeconds = 0 }
        await assertJWTFailure(.expired) { try await strict.verify(expiredJustNow) }
        await assertJWTFailure(.notYetValid) { try await strict.verify(validSoon) }
    }

    func testMissingExpirationRefused() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        var payload = claims()
        payload["exp"] = nil
        let token = try JWTTestTokens.signed(with: f.rsa, payload: payload)
        await assertJWTFailure(.missingClaim("exp")) { try await verifier.verify(token) }
        await assertJWTFailure(.malformed) {
            try await verifier.verify(try JWTTestTokens.signed(with: f.rsa, payload: self.claims(["exp": "tomorrow"])))
        }
    }

    // MARK: - Issuer and audience

    func testWrongIssuer() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        await assertJWTFailure(.wrongIssuer) {
            try await verifier.verify(try JWTTestTokens.signed(with: f.rsa, payload: self.claims(["iss": "https://evil.example.com"])))
        }
        var noIssuer = claims()
        noIssuer["iss"] = nil
        await assertJWTFailure(.wrongIssuer) {
            try await verifier.verify(try JWTTestTokens.signed(with: f.rsa, payload: noIssuer))
        }
    }

    func testWrongAudience() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        await assertJWTFailure(.wrongAudience) {
            try await verifier.verify(try JWTTestTokens.signed(with: f.rsa, payload: self.claims(["aud": "another-app"])))
        }
        await assertJWTFailure(.wrongAudience) {
            try await verifier.verify(try JWTTestTokens.signed(with: f.rsa, payload: self.claims(["aud": ["a", "b"]])))
        }
        // An array that names us is fine.
        let ok = try JWTTestTokens.signed(with: f.rsa, payload: claims(["aud": ["another-app", "tenant-proxy"]]))
        _ = try await verifier.verify(ok)
    }

    // MARK: - Hostile tokens

    func testWrongKeyWithSameKid() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        XCTAssertEqual(f.rsaOther.kid, f.rsa.kid)
        let token = try JWTTestTokens.signed(with: f.rsaOther, payload: claims())
        await assertJWTFailure(.badSignature) { try await verifier.verify(token) }
    }

    func testAlgNoneRefused() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, fetcher) = try await makeVerifier(f)
        for alg in ["none", "None", "NONE"] {
            for kid in [nil, f.rsa.kid] as [String?] {
                var header: [String: Any] = ["typ": "JWT", "alg": alg]
                header["kid"] = kid
                let unsigned = JWTTestTokens.make(header: header, payload: claims(), sign: nil)
                XCTAssertTrue(unsigned.hasSuffix("."))
                await assertJWTFailure(.unsupportedAlgorithm(alg)) { try await verifier.verify(unsigned) }
                // Even with some signature bytes appended.
                let withSignature = unsigned + "c2lnbmF0dXJl"
                await assertJWTFailure(.unsupportedAlgorithm(alg)) { try await verifier.verify(withSignature) }
            }
        }
        // No alg at all.
        let noAlg = try JWTTestTokens.make(header: ["typ": "JWT", "kid": f.rsa.kid], payload: claims(), sign: f.rsa.sign)
        await assertJWTFailure(.malformed) { try await verifier.verify(noAlg) }
        XCTAssertEqual(fetcher.calls, 1, "refused tokens never trigger a JWKS fetch")
    }

    func testHS256SignedWithRSAPublicKeyIsRefused() async throws {
        let f = try await JWTFixtures.shared.value
        let pem = Array(f.rsa.publicPEM!.utf8)
        let der = Array(f.rsa.publicDER!)
        let jwkJSON = Array(try JSONSerialization.data(withJSONObject: f.rsa.jwk, options: [.sortedKeys]))
        let forgeries: [[UInt8]] = [pem, Array((f.rsa.publicPEM! + "\n").utf8), der, jwkJSON]

        // 1. No shared secret configured: HS256 is not an accepted algorithm at all.
        let (jwksOnly, _) = try await makeVerifier(f)
        for secret in forgeries {
            for kid in [f.rsa.kid, nil] as [String?] {
                let token = JWTTestTokens.hs256(secret: secret, payload: claims(), kid: kid)
                await assertJWTFailure(.unsupportedAlgorithm("HS256")) { try await jwksOnly.verify(token) }
            }
        }

        // 2. A shared secret is configured too: the RSA key's bytes are still never an HMAC secret.
        let (mixed, _) = try await makeVerifier(f) { $0.hs256Secret = f.secret }
        for secret in forgeries {
            // kid of the RSA key: that key is pinned to RS256.
            await assertJWTFailure(.unsupportedAlgorithm("HS256")) {
                try await mixed.verify(JWTTestTokens.hs256(secret: secret, payload: self.claims(), kid: f.rsa.kid))
            }
            // No kid: only the configured secret is tried.
            await assertJWTFailure(.badSignature) {
                try await mixed.verify(JWTTestTokens.hs256(secret: secret, payload: self.claims()))
            }
        }
        // The configured secret still works there.
        _ = try await mixed.verify(JWTTestTokens.hs256(secret: f.secret, payload: claims()))
    }

    func testHeaderAlgMustMatchTheKeysAlgorithm() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        // ES256 signature, but the kid names the RSA key.
        let token = try JWTTestTokens.signed(with: f.es256, payload: claims(), kid: f.rsa.kid)
        await assertJWTFailure(.unsupportedAlgorithm("ES256")) { try await verifier.verify(token) }
        // RS256 header claimed on the EdDSA key's kid, signed by the RSA key.
        let token2 = try JWTTestTokens.signed(with: f.rsa, payload: claims(), kid: f.eddsa.kid)
        await assertJWTFailure(.unsupportedAlgorithm("RS256")) { try await verifier.verify(token2) }
        // Other algorithms are refused by name, and odd names are not echoed.
        let rs512 = try JWTTestTokens.signed(with: f.rsa, payload: claims(), alg: "RS512")
        await assertJWTFailure(.unsupportedAlgorithm("RS512")) { try await verifier.verify(rs512) }
        let odd = try JWTTestTokens.signed(with: f.rsa, payload: claims(), alg: "eyJhbGciOi\"<script>")
        await assertJWTFailure(.unsupportedAlgorithm("(invalid)")) { try await verifier.verify(odd) }
    }

    func testTamperedPayload() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        for key in f.publishedKeys {
            let token = try JWTTestTokens.signed(with: key, payload: claims())
            var parts = token.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            var payload = Array(parts[1])
            let index = payload.count / 2
            payload[index] = payload[index] == "A" ? "B" : "A"
            parts[1] = String(payload)
            let tampered = parts.joined(separator: ".")
            XCTAssertNotEqual(tampered, token)
            await assertJWTFailure(.badSignature) { try await verifier.verify(tampered) }

            // A payload swapped for another tenant's, with the original signature.
            parts = token.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            parts[1] = JWTTestTokens.segment(claims(["tenant_id": "another-tenant"]))
            await assertJWTFailure(.badSignature) { try await verifier.verify(parts.joined(separator: ".")) }
        }
    }

    func testMalformedTokens() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        let valid = try JWTTestTokens.signed(with: f.rsa, payload: claims())
        let parts = valid.split(separator: ".").map(String.init)
        let cases = [
            "", "abc", "a.b", "a.b.c.d", "...", valid + ".x",
            "!!!." + parts[1] + "." + parts[2],
            parts[0] + "." + parts[1] + ".",  // empty signature
            parts[0] + "." + parts[1] + "." + parts[2] + "=",  // padding is not base64url
            JWTTestTokens.segment(["alg": "RS256", "kid": f.rsa.kid, "crit": ["exp"]]) + "." + parts[1] + "." + parts[2],
            String(repeating: "a", count: 20_000) + "." + parts[1] + "." + parts[2],
        ]
        for token in cases {
            await assertJWTFailure(.malformed) { try await verifier.verify(token) }
        }
        // Signed, but the payload is not a JSON object.
        let header = JWTTestTokens.segment(["alg": "RS256", "kid": f.rsa.kid])
        let body = Base64URL.encode(Array("[1,2,3]".utf8))
        let signature = try f.rsa.sign(Array((header + "." + body).utf8))
        await assertJWTFailure(.malformed) {
            try await verifier.verify(header + "." + body + "." + Base64URL.encode(signature))
        }
    }

    // MARK: - Keys: refetch and reload

    func testUnknownKidTriggersOneRateLimitedRefetch() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, fetcher) = try await makeVerifier(f) { $0.jwksRefreshSeconds = 0 }
        XCTAssertEqual(fetcher.calls, 1, "initial load")
        XCTAssertFalse(verifier.isRefreshingInBackground)

        // The identity provider rotated in a new key: the unknown kid makes one refetch, which finds it.
        fetcher.setDocument(JWTTestKeys.jwks(f.publishedKeys + [f.rsaRotated]))
        let rotated = try JWTTestTokens.signed(with: f.rsaRotated, payload: claims())
        _ = try await verifier.verify(rotated)
        XCTAssertEqual(fetcher.calls, 2)
        _ = try await verifier.verify(rotated)
        XCTAssertEqual(fetcher.calls, 2, "known now: no further fetch")

        // Another unknown kid within the rate-limit window: refused without a fetch.
        let ghost = try JWTTestTokens.signed(with: f.rsaOther, payload: claims(), kid: "ghost")
        await assertJWTFailure(.unknownKey) { try await verifier.verify(ghost) }
        let ghost2 = try JWTTestTokens.signed(with: f.rsaOther, payload: claims(), kid: "ghost-2")
        await assertJWTFailure(.unknownKey) { try await verifier.verify(ghost2) }
        XCTAssertEqual(fetcher.calls, 2)

        // After the window, one more refetch is allowed (and the kid is still unknown).
        clock.advance(31)
        let later = try JWTTestTokens.signed(with: f.rsaOther, payload: claims(), kid: "ghost")
        await assertJWTFailure(.unknownKey) { try await verifier.verify(later) }
        XCTAssertEqual(fetcher.calls, 3)
        await assertJWTFailure(.unknownKey) { try await verifier.verify(later) }
        XCTAssertEqual(fetcher.calls, 3)
    }

    func testUnknownKidRefetchIsRateLimitedUnderConcurrency() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, fetcher) = try await makeVerifier(f) { $0.jwksRefreshSeconds = 0 }
        let ghosts = try (0..<20).map { try JWTTestTokens.signed(with: f.rsaOther, payload: self.claims(), kid: "ghost-\($0)") }
        let valid = try JWTTestTokens.signed(with: f.es256, payload: claims())
        let outcomes = await withTaskGroup(of: Bool.self) { group -> [Bool] in
            for ghost in ghosts {
                group.addTask { (try? await verifier.verify(ghost)) != nil }
                group.addTask { (try? await verifier.verify(valid)) != nil }
            }
            var results: [Bool] = []
            for await result in group { results.append(result) }
            return results
        }
        XCTAssertEqual(outcomes.filter { $0 }.count, 20, "every valid token verified, no ghost did")
        XCTAssertEqual(fetcher.calls, 2, "initial load + one refetch")
    }

    func testVerifySyncUnknownKidStartsBackgroundRefetch() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, fetcher) = try await makeVerifier(f) { $0.jwksRefreshSeconds = 0 }
        fetcher.setDocument(JWTTestKeys.jwks(f.publishedKeys + [f.rsaRotated]))
        let rotated = try JWTTestTokens.signed(with: f.rsaRotated, payload: claims())
        XCTAssertThrowsError(try verifier.verifySync(rotated)) { XCTAssertEqual($0 as? JWTFailure, .unknownKey) }
        // The background refetch lands shortly; a retry then succeeds.
        var verified = false
        for _ in 0..<200 where !verified {
            try await Task.sleep(nanoseconds: 10_000_000)
            verified = (try? verifier.verifySync(rotated)) != nil
        }
        XCTAssertTrue(verified)
        XCTAssertEqual(fetcher.calls, 2)
    }

    func testJWKSFileReload() async throws {
        let f = try await JWTFixtures.shared.value
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jwt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("jwks.json")
        try JWTTestKeys.jwks([f.rsa]).write(to: file)

        var settings = JWTSettings(jwksFile: file.path, jwksRefreshSeconds: 0, unknownKidRefetchMinimumSeconds: 3600)
        settings.requireTenantClaim = true
        let verifier = try JWTVerifier(settings: settings, httpFetcher: nil, clock: clock.function)
        await verifier.waitUntilReady()
        XCTAssertEqual(verifier.keyCount, 1)
        let first = try JWTTestTokens.signed(with: f.rsa, payload: claims())
        _ = try await verifier.verify(first)

        // The operator replaces the key: after a reload the new key verifies and the old one is gone.
        try JWTTestKeys.jwks([f.eddsa]).write(to: file)
        try await verifier.refreshNow()
        _ = try await verifier.verify(try JWTTestTokens.signed(with: f.eddsa, payload: claims()))
        await assertJWTFailure(.unknownKey) { try await verifier.verify(first) }

        // A broken file keeps the keys in force and reports the failure without its content.
        try Data("{\"keys\": [ not json".utf8).write(to: file)
        do {
            try await verifier.refreshNow()
            XCTFail("a broken JWKS file must be reported")
        } catch let error as JWKSLoadError {
            XCTAssertEqual(error.source, .file)
            XCTAssertFalse(String(describing: error).contains("not json"))
        }
        _ = try await verifier.verify(try JWTTestTokens.signed(with: f.eddsa, payload: claims()))

        // A file with no usable key (symmetric, wrong curve) is refused too.
        let unusable: [String: Any] = ["keys": [
            ["kty": "oct", "kid": "sym", "k": Base64URL.encode(f.secret)],
            ["kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"],
        ]]
        try JSONSerialization.data(withJSONObject: unusable).write(to: file)
        do {
            try await verifier.refreshNow()
            XCTFail("a JWKS without usable keys must be reported")
        } catch let error as JWKSLoadError {
            XCTAssertFalse(String(describing: error).contains(Base64URL.encode(f.secret)))
        }
        XCTAssertEqual(verifier.keyCount, 1)
    }

    func testBackgroundRefreshAndShutdown() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, fetcher) = try await makeVerifier(f, keys: [f.rsa]) {
            $0.jwksRefreshSeconds = 1
            $0.unknownKidRefetchMinimumSeconds = 3600
        }
        XCTAssertTrue(verifier.isRefreshingInBackground)
        fetcher.setDocument(JWTTestKeys.jwks([f.rsa, f.es256]))
        let ecToken = try JWTTestTokens.signed(with: f.es256, payload: claims())
        var verified = false
        for _ in 0..<40 where !verified {
            try await Task.sleep(nanoseconds: 100_000_000)
            verified = (try? verifier.verifySync(ecToken)) != nil
        }
        XCTAssertTrue(verified, "the periodic refresh picked up the new key")
        XCTAssertGreaterThanOrEqual(fetcher.calls, 2)

        verifier.shutdown()
        XCTAssertFalse(verifier.isRefreshingInBackground)
        let callsAtShutdown = fetcher.calls
        try await Task.sleep(nanoseconds: 1_300_000_000)
        XCTAssertEqual(fetcher.calls, callsAtShutdown, "no fetch after shutdown")
        _ = try verifier.verifySync(ecToken)
    }

    // MARK: - Claims

    func testNestedTenantClaim() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f) {
            $0.tenantClaim = "org.tenant"
            $0.userClaim = "https://example.com/claims.user.id"
        }
        let token = try JWTTestTokens.signed(with: f.rsa, payload: claims([
            "org": ["tenant": "acme", "name": "Acme"],
            "https://example.com/claims": ["user": ["id": "u-42"]],
        ]))
        let result = try await verifier.verify(token)
        XCTAssertEqual(result.tenant, "acme")
        XCTAssertEqual(result.user, "u-42")
        XCTAssertEqual(result.subject, "user-7")

        // A top-level key that contains the dots wins.
        let flat = try JWTTestTokens.signed(with: f.rsa, payload: claims(["org.tenant": "flat", "org": ["tenant": "nested"]]))
        let flatResult = try await verifier.verify(flat)
        XCTAssertEqual(flatResult.tenant, "flat")

        // The nested object exists but not the leaf.
        let missingLeaf = try JWTTestTokens.signed(with: f.rsa, payload: claims(["org": ["name": "Acme"]]))
        await assertJWTFailure(.missingClaim("org.tenant")) { try await verifier.verify(missingLeaf) }
    }

    func testMissingTenantClaim() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f)
        var payload = claims()
        payload["tenant_id"] = nil
        await assertJWTFailure(.missingClaim("tenant_id")) {
            try await verifier.verify(try JWTTestTokens.signed(with: f.rsa, payload: payload))
        }
        // Wrong types and empty strings count as missing.
        for bad in [true, "", ["a"], ["k": "v"]] as [Any] {
            await assertJWTFailure(.missingClaim("tenant_id")) {
                try await verifier.verify(try JWTTestTokens.signed(with: f.rsa, payload: self.claims(["tenant_id": bad])))
            }
        }
        // When the tenant is optional (global users), the token verifies without it.
        let (optional, _) = try await makeVerifier(f) { $0.requireTenantClaim = false }
        let result = try await optional.verify(try JWTTestTokens.signed(with: f.rsa, payload: payload))
        XCTAssertNil(result.tenant)
        XCTAssertEqual(result.user, "user-7")
    }

    func testNumericClaims() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f) { $0.userClaim = "uid" }
        let token = try JWTTestTokens.signed(with: f.es256, payload: claims(["tenant_id": 42, "uid": 9_007_199_254_740_993 as Int64]))
        let result = try await verifier.verify(token)
        XCTAssertEqual(result.tenant, "42")
        XCTAssertEqual(result.user, "9007199254740993")
        let fractional = try JWTTestTokens.signed(with: f.es256, payload: claims(["tenant_id": 1.5]))
        let fractionalResult = try await verifier.verify(fractional)
        XCTAssertEqual(fractionalResult.tenant, "1.5")
    }

    func testRequiredUserClaim() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f) {
            $0.userClaim = "email"
            $0.requireUserClaim = true
        }
        await assertJWTFailure(.missingClaim("email")) {
            try await verifier.verify(try JWTTestTokens.signed(with: f.rsa, payload: self.claims()))
        }
        let result = try await verifier.verify(try JWTTestTokens.signed(with: f.rsa, payload: claims(["email": "a@example.com"])))
        XCTAssertEqual(result.user, "a@example.com")
    }

    // MARK: - Configuration and secrecy

    func testConfigurationErrors() throws {
        XCTAssertThrowsError(try JWTVerifier(settings: JWTSettings(), httpFetcher: nil)) {
            XCTAssertEqual($0 as? JWTConfigurationError, .noKeySource)
        }
        XCTAssertThrowsError(try JWTVerifier(settings: JWTSettings(hs256Secret: Array("short".utf8)), httpFetcher: nil)) {
            XCTAssertEqual($0 as? JWTConfigurationError, .secretTooShort(minimumBytes: 32))
            XCTAssertFalse(String(describing: $0).contains("short\""))
        }
        for url in ["http://id.example.com/jwks.json", "ftp://id.example.com/jwks", "not a url", "https://user:pw@id.example.com/jwks"] {
            XCTAssertThrowsError(try JWTVerifier(settings: JWTSettings(jwksURL: url), httpFetcher: nil), url) {
                XCTAssertEqual($0 as? JWTConfigurationError, .invalidJWKSURL)
            }
        }
        let loopback = try JWTVerifier(
            settings: JWTSettings(jwksURL: "http://127.0.0.1:1/jwks.json", jwksRefreshSeconds: 0),
            httpFetcher: CountingJWKSFetcher(document: Data())
        )
        loopback.shutdown()
    }

    func testDescriptionsNeverContainTokenOrKeyMaterial() async throws {
        let f = try await JWTFixtures.shared.value
        let (verifier, _) = try await makeVerifier(f) { $0.hs256Secret = f.secret }
        let secretText = String(decoding: f.secret, as: UTF8.self)
        let tokens = [
            try JWTTestTokens.signed(with: f.rsa, payload: claims(["exp": Int(now) - 100])),
            try JWTTestTokens.signed(with: f.rsaOther, payload: claims()),
            try JWTTestTokens.signed(with: f.rsa, payload: claims(["iss": "x"])),
            try JWTTestTokens.signed(with: f.rsa, payload: claims(["aud": "x"])),
            try JWTTestTokens.signed(with: f.rsa, payload: claims(["tenant_id": NSNull()])),
            JWTTestTokens.hs256(secret: Array(f.rsa.publicPEM!.utf8), payload: claims()),
            JWTTestTokens.make(header: ["alg": "none"], payload: claims(), sign: nil),
        ]
        var seen = 0
        for token in tokens {
            do {
                _ = try await verifier.verify(token)
                XCTFail("should be refused")
            } catch {
                seen += 1
                let text = String(describing: error) + " " + String(reflecting: error) + " " + error.localizedDescription
                let segments = token.split(separator: ".").map(String.init)
                for segment in segments where segment.count > 8 {
                    XCTAssertFalse(text.contains(segment), "error text contains a token segment: \(text)")
                }
                XCTAssertFalse(text.contains(secretText))
                XCTAssertFalse(text.contains("user-7"))
                XCTAssertFalse(text.contains(f.rsa.jwk["n"]!.prefix(16)))
            }
        }
        XCTAssertEqual(seen, tokens.count)
        for failure in [JWTFailure.malformed, .unknownKey, .badSignature, .expired, .notYetValid, .wrongIssuer, .wrongAudience] {
            XCTAssertFalse(failure.description.isEmpty)
        }
    }

    // MARK: - Helpers

    func testBase64URL() {
        XCTAssertEqual(Base64URL.decode("aGVsbG8"), Array("hello".utf8))
        XCTAssertEqual(Base64URL.decode(""), [])
        XCTAssertNil(Base64URL.decode("aGVsbG8="))
        XCTAssertNil(Base64URL.decode("a"))
        XCTAssertNil(Base64URL.decode("aGVsbG+"))
        XCTAssertNil(Base64URL.decode("aGVsbG9"), "non-zero trailing bits")
        for length in 0..<40 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            XCTAssertEqual(Base64URL.decode(Base64URL.encode(bytes)), bytes)
        }
    }

    func testClaimPathLookup() throws {
        let json = #"{"a":{"b":{"c":7}},"x.y":"flat","https://e.com/c":{"t":"ns"},"n":{"deep.key":{"v":"dotted"}}}"#
        let object = try JSONDecoder().decode([String: JWTJSONValue].self, from: Data(json.utf8))
        XCTAssertEqual(JWTClaimPath.lookup("a.b.c", in: object)?.claimString, "7")
        XCTAssertEqual(JWTClaimPath.lookup("x.y", in: object)?.claimString, "flat")
        XCTAssertEqual(JWTClaimPath.lookup("https://e.com/c.t", in: object)?.claimString, "ns")
        XCTAssertEqual(JWTClaimPath.lookup("n.deep.key.v", in: object)?.claimString, "dotted")
        XCTAssertNil(JWTClaimPath.lookup("a.b", in: object)?.claimString)
        XCTAssertNil(JWTClaimPath.lookup("a.b.c.d", in: object))
        XCTAssertNil(JWTClaimPath.lookup("missing", in: object))
    }
}
