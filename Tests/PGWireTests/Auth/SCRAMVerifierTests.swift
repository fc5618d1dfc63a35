import XCTest
@testable import PGWire

final class SCRAMVerifierTests: XCTestCase {
    func testMakeMatchesRFC7677Keys() {
        XCTAssertEqual(RFC7677.verifier.stringValue, RFC7677.verifierText)
    }

    /// Expected values computed with Python the way PostgreSQL builds a secret:
    /// salted = hashlib.pbkdf2_hmac('sha256', pw, salt, i); StoredKey = sha256(hmac(salted, "Client Key"));
    /// ServerKey = hmac(salted, "Server Key").
    func testMakeMatchesPostgresStyleVerifiers() {
        XCTAssertEqual(
            SCRAMVerifier.make(password: "secret-Passw0rd", salt: Array(0..<16), iterations: 4096).stringValue,
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$b9vynEowz6k9HtnEFMwxUNEcBWFSsN3Y2K8zV6gnSPI=:zXpgarrj3FNLFQsrs2MHMBBGTjolUFLB0RxVlhDzgso=")
        // Non-ASCII: raw UTF-8 bytes (PostgreSQL's SASLprep leaves this NFKC password unchanged).
        XCTAssertEqual(
            SCRAMVerifier.make(password: "pässwörd", salt: Array(100..<116), iterations: 4096).stringValue,
            "SCRAM-SHA-256$4096:ZGVmZ2hpamtsbW5vcHFycw==$wTKwIdfRpqqAdsbnFNcDmJAqGsDptS51UhNcdfvr8b8=:NsxywG9iE+4sI4Rn8Jk+ouItGGaiJup/Bs5vtvqpCkk=")
        XCTAssertEqual(
            SCRAMVerifier.make(password: "pencil", salt: Array("0123456789abcdef".utf8), iterations: 1).stringValue,
            "SCRAM-SHA-256$1:MDEyMzQ1Njc4OWFiY2RlZg==$6E6za7g9nQj7bvJ78b+hKOVaeRanit38xaWlCSvoB4Y=:+Xl/1j60mYw7IUJQ7cmQYlUgCDB0vLsvuw4MqpuAMaQ=")
    }

    func testParseRoundTrip() throws {
        let parsed = try SCRAMVerifier(parsing: RFC7677.verifierText)
        XCTAssertEqual(parsed.iterations, 4096)
        XCTAssertEqual(parsed.salt, RFC7677.salt)
        XCTAssertEqual(parsed.storedKey.count, 32)
        XCTAssertEqual(parsed.serverKey.count, 32)
        XCTAssertEqual(parsed, RFC7677.verifier)
        XCTAssertEqual(parsed.stringValue, RFC7677.verifierText)

        let generated = SCRAMVerifier.make(password: "hunter2", iterations: 16)
        XCTAssertEqual(generated.salt.count, 16)
        XCTAssertEqual(try SCRAMVerifier(parsing: generated.stringValue), generated)
    }

    func testRandomSaltsDiffer() {
        let a = SCRAMVerifier.make(password: "x", iterations: 1)
        let b = SCRAMVerifier.make(password: "x", iterations: 1)
        XCTAssertNotEqual(a.salt, b.salt)
        XCTAssertNotEqual(a, b)
    }

    func testBadVerifiersRejected() {
        let key = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
        let bad = [
            "",
            "md53175bce1d3201d16594cebf9d7eb3f9d",
            "SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key)",
            "scram-sha-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key)",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\(key)",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key)$extra",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key):\(key)",
            "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key)",
            "SCRAM-SHA-256$-1:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key)",
            "SCRAM-SHA-256$+4096:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key)",
            "SCRAM-SHA-256$abc:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key)",
            "SCRAM-SHA-256$99999999999999999999999:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key)",
            "SCRAM-SHA-256$:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key)",
            "SCRAM-SHA-256$4096:$\(key):\(key)",
            "SCRAM-SHA-256$4096:not*base64$\(key):\(key)",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=$\(key):\(key)",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$:\(key)",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$W22ZaJ0SNY7soEsUEjb6gQ==:\(key)",  // 16-byte key
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\(key):\(key) ",
        ]
        for text in bad {
            assertSCRAMError(.invalidVerifier) { try SCRAMVerifier(parsing: text) }
        }
    }

    func testErrorDescriptionHasNoSecrets() {
        do {
            _ = try SCRAMVerifier(parsing: "SCRAM-SHA-256$4096:c2FsdA==$c2VjcmV0:c2VjcmV0")
            XCTFail("expected failure")
        } catch let error as SCRAMError {
            XCTAssertFalse(error.description.contains("c2VjcmV0"))
        } catch {
            XCTFail("\(error)")
        }
    }
}

final class SCRAMKeyedMACsTests: XCTestCase {
    /// The pre-keyed SHA-256 states give swift-crypto's HMAC for every key length (empty, SCRAM's
    /// 32 bytes, one block, longer than a block: hashed first) and message length.
    func testMatchesSwiftCryptoHMAC() {
        for keyLength in [0, 1, 32, 63, 64, 65, 100] {
            let key = (0..<keyLength).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let keyed = SCRAMKeyedMACs.Keyed(key: key)
            for messageLength in [0, 1, 55, 56, 64, 150, 1000] {
                let message = (0..<messageLength).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ keyLength) }
                let expected = SCRAMPrimitives.hmac(key: key, message)
                XCTAssertEqual(keyed.code(message), expected, "key \(keyLength) bytes, message \(messageLength) bytes")
                // A keyed state is copied per message, never consumed.
                XCTAssertEqual(keyed.code(message), expected)
            }
        }
    }

    /// RFC 4231 test case 2 (key "Jefe").
    func testRFC4231Vector() {
        let keyed = SCRAMKeyedMACs.Keyed(key: Array("Jefe".utf8))
        let code = keyed.code(Array("what do ya want for nothing?".utf8))
        XCTAssertEqual(code.map { String(format: "%02x", $0) }.joined(),
                       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    func testVerifierSignaturesUseItsKeys() {
        let verifier = RFC7677.verifier
        let message = Array("n=user,r=abc,r=abcdef,s=c2FsdA==,i=4096,c=biws,r=abcdef".utf8)
        XCTAssertEqual(verifier.macs.clientSignature(message), SCRAMPrimitives.hmac(key: verifier.storedKey, message))
        XCTAssertEqual(verifier.macs.serverSignature(message), SCRAMPrimitives.hmac(key: verifier.serverKey, message))
    }
}

final class SCRAMBase64Tests: XCTestCase {
    func testRoundTrip() {
        for length in 0..<40 {
            let data = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            let encoded = SCRAMBase64.encode(data)
            XCTAssertEqual(SCRAMBase64.decode(encoded), data)
        }
        XCTAssertEqual(SCRAMBase64.encode(Array("n,,".utf8)), "biws")
        XCTAssertEqual(SCRAMBase64.encode(Array("y,,".utf8)), "eSws")
        XCTAssertEqual(SCRAMBase64.encode(Array("f".utf8)), "Zg==")
        XCTAssertEqual(SCRAMBase64.encode(Array("fo".utf8)), "Zm8=")
    }

    func testRejectsInvalid() {
        for bad in ["Z", "Zg", "Zg=", "Z===", "=Zg=", "Zg==Zg==", "Zm9v!", "Zh==", "Zm9=", "Zm 9v", "Zm9v\n"] {
            XCTAssertNil(SCRAMBase64.decode(bad), bad)
        }
    }
}
