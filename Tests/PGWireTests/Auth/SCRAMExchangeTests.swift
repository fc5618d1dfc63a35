import XCTest
@testable import PGWire

final class SCRAMServerExchangeTests: XCTestCase {
    func testRFC7677ServerSide() throws {
        var server = SCRAMServerExchange(verifier: RFC7677.verifier, serverNonce: RFC7677.serverNonce)
        let serverFirst = try server.receiveClientFirst(scramBytes(RFC7677.clientFirst))
        XCTAssertEqual(scramText(serverFirst), RFC7677.serverFirst)
        XCTAssertEqual(server.channelBindingFlag, "n")
        XCTAssertEqual(server.gs2Header, "n,,")
        XCTAssertNil(server.channelBindingType)
        let serverFinal = try server.receiveClientFinal(scramBytes(RFC7677.clientFinal))
        XCTAssertEqual(scramText(serverFinal), RFC7677.serverFinal)
    }

    func testServerFromParsedVerifier() throws {
        var server = SCRAMServerExchange(
            verifier: try SCRAMVerifier(parsing: RFC7677.verifierText), serverNonce: RFC7677.serverNonce)
        _ = try server.receiveClientFirst(scramBytes(RFC7677.clientFirst))
        XCTAssertEqual(scramText(try server.receiveClientFinal(scramBytes(RFC7677.clientFinal))), RFC7677.serverFinal)
    }

    func testRandomServerNonce() throws {
        var a = SCRAMServerExchange(verifier: RFC7677.verifier)
        var b = SCRAMServerExchange(verifier: RFC7677.verifier)
        let firstA = scramText(try a.receiveClientFirst(scramBytes(RFC7677.clientFirst)))
        let firstB = scramText(try b.receiveClientFirst(scramBytes(RFC7677.clientFirst)))
        XCTAssertNotEqual(firstA, firstB)
        // r=<client nonce><24 base64 chars>
        let nonce = firstA.split(separator: ",")[0].dropFirst(2)
        XCTAssertTrue(nonce.hasPrefix(RFC7677.clientNonce))
        XCTAssertEqual(nonce.count, RFC7677.clientNonce.count + 24)
    }

    func testRandomBytesHaveTheAskedLengthAndUseEveryByteOfADraw() {
        for count in 0...20 {
            XCTAssertEqual(SCRAMPrimitives.randomBytes(count).count, count)
        }
        // Eight bytes per draw: each must come from its own part of the word. Equal neighbours
        // happen about once in 256 pairs (~16 here); a byte repeated across a draw would make
        // seven in eight pairs equal.
        let bytes = SCRAMPrimitives.randomBytes(4096)
        let equalNeighbours = zip(bytes, bytes.dropFirst()).filter { $0 == $1 }.count
        XCTAssertLessThan(equalNeighbours, 200)
        XCTAssertNotEqual(SCRAMPrimitives.randomBytes(18), SCRAMPrimitives.randomBytes(18))
    }

    func testWrongPasswordRejected() throws {
        var server = SCRAMServerExchange(
            verifier: SCRAMVerifier.make(password: "not-pencil", salt: RFC7677.salt), serverNonce: RFC7677.serverNonce)
        _ = try server.receiveClientFirst(scramBytes(RFC7677.clientFirst))
        assertSCRAMError(.invalidProof) { try server.receiveClientFinal(scramBytes(RFC7677.clientFinal)) }
    }

    func testTamperedProofRejected() throws {
        var server = try RFC7677.serverAfterFirst()
        let tampered = RFC7677.clientFinal.scramReplacing("p=dHzb", in: "p=dHzc")
        assertSCRAMError(.invalidProof) { try server.receiveClientFinal(scramBytes(tampered)) }
    }

    func testTamperedNonceRejected() throws {
        var server = try RFC7677.serverAfterFirst()
        let tampered = RFC7677.clientFinal.scramReplacing("hNlF$k0", in: "hNlF$k1")
        assertSCRAMError(.nonceMismatch) { try server.receiveClientFinal(scramBytes(tampered)) }

        var server2 = try RFC7677.serverAfterFirst()
        let truncated = RFC7677.clientFinal.scramReplacing(",r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", in: ",r=rOprNGfwEbeRWgbNEkqO")
        assertSCRAMError(.nonceMismatch) { try server2.receiveClientFinal(scramBytes(truncated)) }
    }

    func testWrongChannelBindingEchoRejected() throws {
        for echo in ["c=eSws", "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws", "c=", "c=biws=", "c=Ymlud3M="] {
            var server = try RFC7677.serverAfterFirst()
            let message = RFC7677.clientFinal.scramReplacing("c=biws", in: echo)
            assertSCRAMError(.malformedMessage) { try server.receiveClientFinal(scramBytes(message)) }
        }
    }

    func testYFlagRequiresEswsEcho() throws {
        let password = "pw"
        let verifier = SCRAMVerifier.make(password: password, iterations: 8)
        // Build a client-final by hand for gs2 "y,,": the echo must be base64("y,,") = "eSws".
        var server = SCRAMServerExchange(verifier: verifier, serverNonce: "SERVER")
        let clientFirstBare = "n=,r=CLIENT"
        let serverFirst = scramText(try server.receiveClientFirst(scramBytes("y,," + clientFirstBare)))
        XCTAssertEqual(server.channelBindingFlag, "y")
        XCTAssertEqual(server.gs2Header, "y,,")
        let withoutProof = "c=eSws,r=CLIENTSERVER"
        let proof = Self.proof(password: password, verifier: verifier,
                               authMessage: "\(clientFirstBare),\(serverFirst),\(withoutProof)")
        let final = scramText(try server.receiveClientFinal(scramBytes("\(withoutProof),p=\(proof)")))
        XCTAssertTrue(final.hasPrefix("v="))

        // Same exchange with c=biws fails even with an otherwise correct proof.
        var server2 = SCRAMServerExchange(verifier: verifier, serverNonce: "SERVER")
        let serverFirst2 = scramText(try server2.receiveClientFirst(scramBytes("y,," + clientFirstBare)))
        let wrong = "c=biws,r=CLIENTSERVER"
        let proof2 = Self.proof(password: password, verifier: verifier,
                                authMessage: "\(clientFirstBare),\(serverFirst2),\(wrong)")
        assertSCRAMError(.malformedMessage) { try server2.receiveClientFinal(scramBytes("\(wrong),p=\(proof2)")) }
    }

    func testChannelBindingRequiredIsUnsupported() {
        var server = SCRAMServerExchange(verifier: RFC7677.verifier)
        assertSCRAMError(.unsupportedChannelBinding) {
            try server.receiveClientFirst(scramBytes("p=tls-server-end-point,,n=,r=abc"))
        }
        XCTAssertEqual(server.channelBindingFlag, "p")
        XCTAssertEqual(server.channelBindingType, "tls-server-end-point")
        XCTAssertEqual(server.gs2Header, "p=tls-server-end-point,,")
    }

    func testMalformedClientFirstRejected() {
        let bad: [[UInt8]] = [
            [],
            [0],
            [0xFF, 0xFE],
            scramBytes("n"),
            scramBytes("n,"),
            scramBytes("n,,"),
            scramBytes("x,,n=,r=abc"),
            scramBytes("n,n=,r=abc"),
            scramBytes("nn,,n=,r=abc"),
            scramBytes("p,,n=,r=abc"),
            scramBytes("p=,,n=,r=abc"),
            scramBytes("n,a=admin,n=,r=abc"),
            scramBytes("n,,m=ext,n=,r=abc"),
            scramBytes("n,,n=user"),
            scramBytes("n,,r=abc"),
            scramBytes("n,,n=,r="),
            scramBytes("n,,n=,r=ab,c"),
            scramBytes("n,,n=,x=abc"),
            scramBytes("n,,n=,r=ab c"),
            scramBytes("n,,n=,r=ab\u{7F}"),
            scramBytes("n,,n=,r=abc,"),
            scramBytes("n,,n=,r=abc,garbage"),
            scramBytes("n,,n=,r=abc\u{0}"),
        ]
        for message in bad {
            var server = SCRAMServerExchange(verifier: RFC7677.verifier)
            assertSCRAMError(.malformedMessage) { try server.receiveClientFirst(message) }
        }
    }

    func testClientFirstExtensionsAccepted() throws {
        var server = SCRAMServerExchange(verifier: RFC7677.verifier, serverNonce: "S")
        XCTAssertEqual(scramText(try server.receiveClientFirst(scramBytes("n,,n=any=2Cname,r=abc,x=ext"))).prefix(7), "r=abcS,")
    }

    func testNonASCIIUTF8IsReadByCharactersAndSplitOnlyAtCommas() throws {
        // Multi-byte names and extension values (é, 日本, an emoji): valid UTF-8 passes, and the
        // parts are cut at commas only, never inside a character.
        var server = SCRAMServerExchange(verifier: RFC7677.verifier, serverNonce: "S")
        XCTAssertEqual(scramText(try server.receiveClientFirst(scramBytes("n,,n=jérôme日本,r=abc,x=🦆,y=é"))).prefix(7), "r=abcS,")
        XCTAssertEqual(SCRAMMessage.parts("a=é,,b=日本,🦆"), ["a=é", "", "b=日本", "🦆"])
        XCTAssertEqual(SCRAMMessage.parts(""), [""])
        XCTAssertEqual(SCRAMMessage.parts(","), ["", ""])
        XCTAssertEqual(SCRAMMessage.parts("x=1,é"[...].dropFirst(2)), ["1", "é"])
        XCTAssertEqual(try SCRAMMessage.text(Array("ünï".utf8), what: "m"), "ünï")
        XCTAssertThrowsError(try SCRAMMessage.text([0x61, 0xE6, 0x97], what: "m"))  // truncated sequence
        XCTAssertThrowsError(try SCRAMMessage.text([0x61, 0x00, 0x62], what: "m"))
    }

    func testMalformedClientFinalRejected() throws {
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        let bad: [[UInt8]] = [
            [],
            [0xC3],
            scramBytes("c=biws"),
            scramBytes("c=biws,r=\(nonce)"),
            scramBytes("r=\(nonce),p=\(proof)"),
            scramBytes("c=biws,p=\(proof)"),
            scramBytes("c=biws,r=\(nonce),p="),
            scramBytes("c=biws,r=\(nonce),p=not*base64"),
            scramBytes("c=biws,r=\(nonce),p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ"),
            scramBytes("c=biws,r=\(nonce),p=dHzbZapWIk4jUhN+Ute9yQ=="),  // wrong length
            scramBytes("c=biws,r=\(nonce),p=\(proof),x=trailing"),
            scramBytes("c=biws,r=\(nonce),garbage,p=\(proof)"),
            scramBytes("c=biws,,r=\(nonce),p=\(proof)"),
            scramBytes("c=biws,r=\(nonce),p=\(proof),"),
            scramBytes("c=b!ws,r=\(nonce),p=\(proof)"),
        ]
        for message in bad {
            var server = try RFC7677.serverAfterFirst()
            assertSCRAMError(.malformedMessage) { try server.receiveClientFinal(message) }
        }
    }

    func testClientFinalExtensionIsPartOfAuthMessage() throws {
        // An extension between r= and p= changes the AuthMessage, so the RFC proof no longer matches.
        var server = try RFC7677.serverAfterFirst()
        let message = RFC7677.clientFinal.scramReplacing(",p=", in: ",x=1,p=")
        assertSCRAMError(.invalidProof) { try server.receiveClientFinal(scramBytes(message)) }
    }

    func testOutOfOrderMessagesRejected() throws {
        var fresh = SCRAMServerExchange(verifier: RFC7677.verifier)
        assertSCRAMError(.malformedMessage) { try fresh.receiveClientFinal(scramBytes(RFC7677.clientFinal)) }

        var twice = try RFC7677.serverAfterFirst()
        assertSCRAMError(.malformedMessage) { try twice.receiveClientFirst(scramBytes(RFC7677.clientFirst)) }

        var done = try RFC7677.serverAfterFirst()
        _ = try done.receiveClientFinal(scramBytes(RFC7677.clientFinal))
        assertSCRAMError(.malformedMessage) { try done.receiveClientFinal(scramBytes(RFC7677.clientFinal)) }

        // After a failure, a retry with the right proof is not accepted.
        var failed = try RFC7677.serverAfterFirst()
        assertSCRAMError(.malformedMessage) { try failed.receiveClientFinal(scramBytes("c=biws")) }
        assertSCRAMError(.malformedMessage) { try failed.receiveClientFinal(scramBytes(RFC7677.clientFinal)) }
    }

    func testMockExchangeFailsTheProof() throws {
        let secret = Array("proxy-mock-secret".utf8)
        var mock = SCRAMServerExchange.mock(username: "nobody", secret: secret)
        var client = SCRAMClientExchange(password: "guess")
        let serverFirst = try mock.receiveClientFirst(client.clientFirstMessage())
        let fields = scramText(serverFirst).split(separator: ",")
        XCTAssertEqual(fields.count, 3)
        XCTAssertTrue(fields[1].hasPrefix("s="))
        XCTAssertEqual(SCRAMBase64.decode(fields[1].dropFirst(2))?.count, 16)
        XCTAssertEqual(fields[2], "i=4096")
        let clientFinal = try client.receiveServerFirst(serverFirst)
        assertSCRAMError(.invalidProof) { try mock.receiveClientFinal(clientFinal) }
    }

    func testMockIsDeterministicPerUser() throws {
        let secret = Array("proxy-mock-secret".utf8)
        func salt(_ user: String, _ secret: [UInt8]) throws -> Substring {
            var mock = SCRAMServerExchange.mock(username: user, secret: secret)
            let first = scramText(try mock.receiveClientFirst(scramBytes("n,,n=,r=abc")))
            return first.split(separator: ",")[1]
        }
        XCTAssertEqual(try salt("nobody", secret), try salt("nobody", secret))
        XCTAssertNotEqual(try salt("nobody", secret), try salt("somebody", secret))
        XCTAssertNotEqual(try salt("nobody", secret), try salt("nobody", Array("other".utf8)))
    }

    func testMockFailsEvenForAProofMadeFromItsOwnSalt() throws {
        // Even a client that somehow matched the fake keys must not get in: the mock is doomed.
        let secret = Array("s".utf8)
        var mock = SCRAMServerExchange.mock(username: "u", secret: secret)
        var client = SCRAMClientExchange(password: "")
        let first = try mock.receiveClientFirst(client.clientFirstMessage())
        assertSCRAMError(.invalidProof) { try mock.receiveClientFinal(try client.receiveServerFirst(first)) }
    }

    /// ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage), computed from the password.
    static func proof(password: String, verifier: SCRAMVerifier, authMessage: String) -> String {
        let salted = SCRAMPrimitives.saltedPassword(Array(password.utf8), salt: verifier.salt, iterations: verifier.iterations)
        let clientKey = SCRAMPrimitives.clientKey(saltedPassword: salted)
        let signature = SCRAMPrimitives.hmac(key: verifier.storedKey, Array(authMessage.utf8))
        return SCRAMBase64.encode(SCRAMPrimitives.xor(clientKey, signature))
    }
}

final class SCRAMClientExchangeTests: XCTestCase {
    func testRFC7677ClientSide() throws {
        var client = SCRAMClientExchange(username: RFC7677.user, password: RFC7677.password, clientNonce: RFC7677.clientNonce)
        XCTAssertEqual(scramText(client.clientFirstMessage()), RFC7677.clientFirst)
        XCTAssertEqual(scramText(try client.receiveServerFirst(scramBytes(RFC7677.serverFirst))), RFC7677.clientFinal)
        XCTAssertNoThrow(try client.receiveServerFinal(scramBytes(RFC7677.serverFinal)))
    }

    func testPublicInitSendsEmptyUsername() {
        var client = SCRAMClientExchange(password: "pencil", clientNonce: "abc")
        XCTAssertEqual(scramText(client.clientFirstMessage()), "n,,n=,r=abc")

        var random = SCRAMClientExchange(password: "pencil")
        let first = scramText(random.clientFirstMessage())
        XCTAssertTrue(first.hasPrefix("n,,n=,r="))
        XCTAssertEqual(first.count, "n,,n=,r=".count + 24)
    }

    func testUsernameIsEscaped() {
        var client = SCRAMClientExchange(username: "a,b=c", password: "x", clientNonce: "n")
        XCTAssertEqual(scramText(client.clientFirstMessage()), "n,,n=a=2Cb=3Dc,r=n")
    }

    func testBadServerSignatureRejected() throws {
        var client = SCRAMClientExchange(username: RFC7677.user, password: RFC7677.password, clientNonce: RFC7677.clientNonce)
        _ = client.clientFirstMessage()
        _ = try client.receiveServerFirst(scramBytes(RFC7677.serverFirst))
        assertSCRAMError(.invalidServerSignature) {
            try client.receiveServerFinal(scramBytes("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G8="))
        }
        assertSCRAMError(.invalidServerSignature) { try client.receiveServerFinal(scramBytes("v=AAAA")) }
        assertSCRAMError(.invalidServerSignature) { try client.receiveServerFinal(scramBytes("v=")) }
        for bad in ["", "x=abc", "v=not*base64", "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="] {
            assertSCRAMError(.malformedMessage) { try client.receiveServerFinal(scramBytes(bad)) }
        }
    }

    func testServerErrorReported() throws {
        var client = SCRAMClientExchange(username: RFC7677.user, password: RFC7677.password, clientNonce: RFC7677.clientNonce)
        _ = try client.receiveServerFirst(scramBytes(RFC7677.serverFirst))
        do {
            try client.receiveServerFinal(scramBytes("e=invalid-proof"))
            XCTFail("expected an error")
        } catch let error as SCRAMError {
            XCTAssertEqual(error.code, .serverError)
            XCTAssertTrue(error.message.contains("invalid-proof"))
        }
        var early = SCRAMClientExchange(password: "x", clientNonce: "abc")
        assertSCRAMError(.serverError) { try early.receiveServerFirst(scramBytes("e=other-error")) }
    }

    func testServerFinalBeforeServerFirstRejected() {
        let client = SCRAMClientExchange(password: "x")
        assertSCRAMError(.malformedMessage) { try client.receiveServerFinal(scramBytes(RFC7677.serverFinal)) }
    }

    func testServerFirstTwiceRejected() throws {
        var client = SCRAMClientExchange(username: RFC7677.user, password: RFC7677.password, clientNonce: RFC7677.clientNonce)
        _ = try client.receiveServerFirst(scramBytes(RFC7677.serverFirst))
        assertSCRAMError(.malformedMessage) { try client.receiveServerFirst(scramBytes(RFC7677.serverFirst)) }
    }

    func testServerNonceMustExtendClientNonce() {
        let cases = [
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",              // equal, not extended
            "r=XOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",         // different prefix
            "r=rOprNGfwEbeRWgbN,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",                  // shorter
            "r=%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",    // server part only
        ]
        for serverFirst in cases {
            var client = SCRAMClientExchange(password: RFC7677.password, clientNonce: RFC7677.clientNonce)
            _ = client.clientFirstMessage()
            assertSCRAMError(.nonceMismatch) { try client.receiveServerFirst(scramBytes(serverFirst)) }
        }
    }

    func testAbsurdIterationCountsRejected() {
        let prefix = "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i="
        for iterations in ["0", "-1", "1000001", "2147483647", "99999999999999999999", "", "12a", " 4096", "+4096"] {
            var client = SCRAMClientExchange(password: RFC7677.password, clientNonce: RFC7677.clientNonce)
            assertSCRAMError(.malformedMessage) { try client.receiveServerFirst(scramBytes(prefix + iterations)) }
        }
        var ok = SCRAMClientExchange(password: RFC7677.password, clientNonce: RFC7677.clientNonce)
        XCTAssertNoThrow(try ok.receiveServerFirst(scramBytes(prefix + "1")))
    }

    func testMalformedServerFirstRejected() {
        let bad: [[UInt8]] = [
            [],
            [0xFF],
            scramBytes("r=rOprNGfwEbeRWgbNEkqOxyz"),
            scramBytes("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ=="),
            scramBytes("s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOxyz,i=4096"),
            scramBytes("r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096"),
            scramBytes("r=rOprNGfwEbeRWgbNEkqOxyz,s=not*base64,i=4096"),
            scramBytes("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ,i=4096"),
            scramBytes("m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            scramBytes("r=rOprNGfwEbeRWgbNEkqOx z,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            scramBytes("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,garbage"),
        ]
        for message in bad {
            var client = SCRAMClientExchange(password: RFC7677.password, clientNonce: RFC7677.clientNonce)
            assertSCRAMError(.malformedMessage) { try client.receiveServerFirst(message) }
        }
    }

    func testServerFirstExtensionsAccepted() throws {
        var client = SCRAMClientExchange(username: RFC7677.user, password: RFC7677.password, clientNonce: RFC7677.clientNonce)
        // Extensions are part of the AuthMessage, so the final differs from the RFC's but is produced.
        let final = scramText(try client.receiveServerFirst(scramBytes(RFC7677.serverFirst + ",x=1")))
        XCTAssertTrue(final.hasPrefix("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="))
        XCTAssertNotEqual(final, RFC7677.clientFinal)
    }
}

final class SCRAMInteropTests: XCTestCase {
    private func runExchange(clientPassword: String, verifier: SCRAMVerifier) throws {
        var server = SCRAMServerExchange(verifier: verifier)
        var client = SCRAMClientExchange(password: clientPassword)
        let serverFirst = try server.receiveClientFirst(client.clientFirstMessage())
        let clientFinal = try client.receiveServerFirst(serverFirst)
        let serverFinal = try server.receiveClientFinal(clientFinal)
        try client.receiveServerFinal(serverFinal)
    }

    func testClientAndServerInteroperate() throws {
        for password in ["pencil", "", "correct horse battery staple", "pässwörd", "密码🔑", "a,b=c$d:e"] {
            let verifier = SCRAMVerifier.make(password: password, iterations: 64)
            XCTAssertNoThrow(try runExchange(clientPassword: password, verifier: verifier), password)
            // And through the stored text form.
            let stored = try SCRAMVerifier(parsing: verifier.stringValue)
            XCTAssertNoThrow(try runExchange(clientPassword: password, verifier: stored), password)
        }
    }

    func testDefaultIterationsInteroperate() throws {
        try runExchange(clientPassword: "pencil", verifier: SCRAMVerifier.make(password: "pencil"))
    }

    func testWrongPasswordFailsEndToEnd() {
        let verifier = SCRAMVerifier.make(password: "right", iterations: 64)
        assertSCRAMError(.invalidProof) { try runExchange(clientPassword: "wrong", verifier: verifier) }
        assertSCRAMError(.invalidProof) { try runExchange(clientPassword: "Right", verifier: verifier) }
    }

    func testServerThatDoesNotKnowThePasswordIsDetected() throws {
        // A man in the middle that answers with a different verifier's signature is caught by the client.
        var honest = SCRAMServerExchange(verifier: SCRAMVerifier.make(password: "pw", iterations: 8), serverNonce: "S")
        var client = SCRAMClientExchange(password: "pw", clientNonce: "C")
        let serverFirst = try honest.receiveClientFirst(client.clientFirstMessage())
        _ = try client.receiveServerFirst(serverFirst)
        assertSCRAMError(.invalidServerSignature) {
            try client.receiveServerFinal(scramBytes("v=" + SCRAMBase64.encode([UInt8](repeating: 7, count: 32))))
        }
    }
}

final class SCRAMConstantTimeTests: XCTestCase {
    func testConstantTimeEquals() {
        XCTAssertTrue(constantTimeEquals([], []))
        XCTAssertTrue(constantTimeEquals([1, 2, 3], [1, 2, 3]))
        XCTAssertFalse(constantTimeEquals([1, 2, 3], [1, 2, 4]))
        XCTAssertFalse(constantTimeEquals([1, 2, 3], [1, 2]))
        XCTAssertFalse(constantTimeEquals([0x80], [0x00]))
    }
}

extension String {
    /// Replaces the first occurrence of `target` with `replacement` (test helper, Foundation-free).
    func scramReplacing(_ target: String, in replacement: String) -> String {
        guard let range = self.range(of: target) else {
            XCTFail("\(target) not found in \(self)")
            return self
        }
        return self.replacingCharacters(in: range, with: replacement)
    }
}
