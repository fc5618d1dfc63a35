import XCTest
@testable import PGWire

/// RFC 7677 section 3 test vector.
enum RFC7677 {
    static let user = "user"
    static let password = "pencil"
    static let clientNonce = "rOprNGfwEbeRWgbNEkqO"
    static let serverNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    static let saltBase64 = "W22ZaJ0SNY7soEsUEjb6gQ=="
    static let iterations = 4096
    static let clientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    static let serverFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    static let clientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    /// As printed in RFC 7677 and recomputed independently with Python's hashlib/hmac.
    /// (A value "v=6rriTRBi23WpRR/wt40R2Ppa5OXOfe9ZHJJSVcq4CVU=" that circulates is a corrupted copy.)
    static let serverFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    /// Computed with Python's hashlib.pbkdf2_hmac / hmac the way PostgreSQL's scram_build_secret does.
    static let verifierText = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

    static var salt: [UInt8] { SCRAMBase64.decode(saltBase64)! }

    static var verifier: SCRAMVerifier {
        SCRAMVerifier.make(password: password, salt: salt, iterations: iterations)
    }

    /// A server that has answered the RFC client-first.
    static func serverAfterFirst() throws -> SCRAMServerExchange {
        var server = SCRAMServerExchange(verifier: verifier, serverNonce: serverNonce)
        _ = try server.receiveClientFirst(scramBytes(clientFirst))
        return server
    }
}

func scramBytes(_ text: String) -> [UInt8] { Array(text.utf8) }
func scramText(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

/// Asserts that `body` throws a `SCRAMError` with `code`.
func assertSCRAMError<T>(
    _ code: SCRAMError.Code, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> T
) {
    do {
        _ = try body()
        XCTFail("expected SCRAMError.\(code), got success", file: file, line: line)
    } catch let error as SCRAMError {
        XCTAssertEqual(error.code, code, "\(error)", file: file, line: line)
    } catch {
        XCTFail("expected SCRAMError.\(code), got \(error)", file: file, line: line)
    }
}
