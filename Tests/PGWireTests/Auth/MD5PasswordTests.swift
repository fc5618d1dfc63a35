import XCTest
@testable import PGWire

final class MD5PasswordTests: XCTestCase {
    // Expected values computed with Python's hashlib:
    //   inner = md5(b"postgrespostgres").hexdigest()
    //   "md5" + md5(inner.encode() + scramBytes([1, 2, 3, 4])).hexdigest()
    let salt: [UInt8] = [0x01, 0x02, 0x03, 0x04]

    func testStoredHashKnownVector() {
        XCTAssertEqual(MD5Password.storedHash(user: "postgres", password: "postgres"),
                       "md53175bce1d3201d16594cebf9d7eb3f9d")
    }

    func testResponseKnownVector() {
        XCTAssertEqual(MD5Password.response(user: "postgres", password: "postgres", salt: salt),
                       "md568be9ed08db75f318087ab337aaea044")
    }

    func testVerify() {
        let stored = MD5Password.storedHash(user: "postgres", password: "postgres")
        XCTAssertTrue(MD5Password.verify(response: "md568be9ed08db75f318087ab337aaea044", storedHash: stored, salt: salt))
        XCTAssertTrue(MD5Password.verify(response: "md568be9ed08db75f318087ab337aaea044",
                                         storedHash: stored.uppercased().scramReplacing("MD5", in: "md5"), salt: salt))
        // Wrong password, wrong user, wrong salt, tampered or malformed response.
        XCTAssertFalse(MD5Password.verify(
            response: MD5Password.response(user: "postgres", password: "wrong", salt: salt), storedHash: stored, salt: salt))
        XCTAssertFalse(MD5Password.verify(
            response: MD5Password.response(user: "other", password: "postgres", salt: salt), storedHash: stored, salt: salt))
        XCTAssertFalse(MD5Password.verify(response: "md568be9ed08db75f318087ab337aaea044", storedHash: stored, salt: [1, 2, 3, 5]))
        XCTAssertFalse(MD5Password.verify(response: "md568be9ed08db75f318087ab337aaea045", storedHash: stored, salt: salt))
        XCTAssertFalse(MD5Password.verify(response: "", storedHash: stored, salt: salt))
        XCTAssertFalse(MD5Password.verify(response: "md568BE9ED08DB75F318087AB337AAEA044", storedHash: stored, salt: salt))
        // Malformed stored forms never verify.
        for badStored in ["", "md5", "3175bce1d3201d16594cebf9d7eb3f9d", "md53175bce1d3201d16594cebf9d7eb3f9",
                          "md53175bce1d3201d16594cebf9d7eb3f9dX", "md53175bce1d3201d16594cebf9d7eb3f9g",
                          "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=="] {
            XCTAssertFalse(MD5Password.verify(response: "md568be9ed08db75f318087ab337aaea044", storedHash: badStored, salt: salt), badStored)
        }
    }

    func testRoundTripWithRandomSalt() {
        for (user, password) in [("alice", "s3cret"), ("bob", ""), ("ünïcode", "pässwörd")] {
            let salt = SCRAMPrimitives.randomBytes(4)
            let stored = MD5Password.storedHash(user: user, password: password)
            XCTAssertTrue(MD5Password.verify(
                response: MD5Password.response(user: user, password: password, salt: salt), storedHash: stored, salt: salt))
        }
    }
}
