import XCTest
@testable import PGWire

/// SCRAM-SHA-256-PLUS with tls-server-end-point (RFC 5802 section 6, RFC 5929), with
/// PostgreSQL's negotiation rules (auth-scram.c).
final class SCRAMChannelBindingTests: XCTestCase {
    static let password = "correct horse"
    static let verifier = SCRAMVerifier.make(password: password, iterations: 16)
    /// A certificate hash as TLSChannelBinding.serverEndPoint would give (SHA-256 size).
    static let binding = SCRAMChannelBinding.tlsServerEndPoint(certificateHash: (0..<32).map { UInt8($0 &* 7 &+ 3) })
    static let plus = SCRAMMechanism.scramSHA256Plus
    static let plain = SCRAMMechanism.scramSHA256

    // MARK: - Full exchanges

    func testPlusExchangeSucceedsOnBothSides() throws {
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        var client = SCRAMClientExchange(password: Self.password, channelBinding: Self.binding)
        XCTAssertEqual(client.mechanism, "SCRAM-SHA-256-PLUS")
        let first = client.clientFirstMessage()
        XCTAssertTrue(scramText(first).hasPrefix("p=tls-server-end-point,,n=,r="), scramText(first))
        let serverFirst = try server.receiveClientFirst(first, mechanism: client.mechanism)
        XCTAssertEqual(server.channelBindingFlag, "p")
        XCTAssertEqual(server.channelBindingType, "tls-server-end-point")
        XCTAssertEqual(server.gs2Header, "p=tls-server-end-point,,")

        let clientFinal = try client.receiveServerFirst(serverFirst)
        let expectedC = "c=" + SCRAMBase64.encode(Array("p=tls-server-end-point,,".utf8) + Self.binding.data)
        XCTAssertTrue(scramText(clientFinal).hasPrefix(expectedC + ",r="), scramText(clientFinal))

        let serverFinal = try server.receiveClientFinal(clientFinal)
        XCTAssertNoThrow(try client.receiveServerFinal(serverFinal))
    }

    func testPlusExchangeWithSHA384SizedBinding() throws {
        let binding = SCRAMChannelBinding.tlsServerEndPoint(certificateHash: [UInt8](repeating: 0xA5, count: 48))
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: binding)
        var client = SCRAMClientExchange(password: Self.password, channelBinding: binding)
        let serverFirst = try server.receiveClientFirst(client.clientFirstMessage(), mechanism: client.mechanism)
        let serverFinal = try server.receiveClientFinal(try client.receiveServerFirst(serverFirst))
        XCTAssertNoThrow(try client.receiveServerFinal(serverFinal))
    }

    func testClientWithoutBindingOnPlusServerSucceeds() throws {
        // "n,,": the client does not support channel binding; PostgreSQL lets it go.
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        var client = SCRAMClientExchange(password: Self.password)
        XCTAssertEqual(client.mechanism, "SCRAM-SHA-256")
        let serverFirst = try server.receiveClientFirst(client.clientFirstMessage(), mechanism: client.mechanism)
        XCTAssertEqual(server.channelBindingFlag, "n")
        let serverFinal = try server.receiveClientFinal(try client.receiveServerFirst(serverFirst))
        XCTAssertNoThrow(try client.receiveServerFinal(serverFinal))

        // The old entry point is "SCRAM-SHA-256" and behaves the same.
        var server2 = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        var client2 = SCRAMClientExchange(password: Self.password)
        let serverFirst2 = try server2.receiveClientFirst(client2.clientFirstMessage())
        let clientFinal2 = try client2.receiveServerFirst(serverFirst2)
        let serverFinal2 = try server2.receiveClientFinal(clientFinal2)
        XCTAssertNoThrow(try client2.receiveServerFinal(serverFinal2))
    }

    func testNilBindingClientIsPlainSCRAM() {
        var client = SCRAMClientExchange(password: "x", clientNonce: "abc", channelBinding: nil)
        XCTAssertEqual(client.mechanism, "SCRAM-SHA-256")
        XCTAssertEqual(scramText(client.clientFirstMessage()), "n,,n=,r=abc")
    }

    func testOfferedMechanisms() {
        XCTAssertEqual(SCRAMMechanism.offered(channelBinding: Self.binding), ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
        XCTAssertEqual(SCRAMMechanism.offered(channelBinding: nil), ["SCRAM-SHA-256"])
    }

    // MARK: - Binding data

    func testMismatchedBindingDataFails() throws {
        // A man in the middle terminates TLS with its own certificate: the client hashes that one.
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        var other = Self.binding
        other.data[0] ^= 0x01
        var client = SCRAMClientExchange(password: Self.password, channelBinding: other)
        let serverFirst = try server.receiveClientFirst(client.clientFirstMessage(), mechanism: client.mechanism)
        let clientFinal = try client.receiveServerFirst(serverFirst)
        assertSCRAMError(.channelBindingMismatch) { try server.receiveClientFinal(clientFinal) }
        // The exchange is over.
        assertSCRAMError(.malformedMessage) { try server.receiveClientFinal(clientFinal) }
    }

    func testBindingDataOfAnotherLengthFails() throws {
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        let shorter = SCRAMChannelBinding.tlsServerEndPoint(certificateHash: Array(Self.binding.data.prefix(20)))
        var client = SCRAMClientExchange(password: Self.password, channelBinding: shorter)
        let serverFirst = try server.receiveClientFirst(client.clientFirstMessage(), mechanism: client.mechanism)
        assertSCRAMError(.channelBindingMismatch) { try server.receiveClientFinal(try client.receiveServerFirst(serverFirst)) }
    }

    func testBindingDataMissingFromFinalFails() throws {
        // gs2 "p=..." but c= carries only the header (or "biws"): the proof is otherwise right.
        for cValue in [SCRAMBase64.encode(Array("p=tls-server-end-point,,".utf8)), "biws", "eSws"] {
            var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding, serverNonce: "SERVER")
            let bare = "n=,r=CLIENT"
            let serverFirst = scramText(try server.receiveClientFirst(scramBytes("p=tls-server-end-point,," + bare), mechanism: Self.plus))
            let withoutProof = "c=\(cValue),r=CLIENTSERVER"
            let proof = SCRAMServerExchangeTests.proof(password: Self.password, verifier: Self.verifier,
                                                       authMessage: "\(bare),\(serverFirst),\(withoutProof)")
            assertSCRAMError(.channelBindingMismatch) { try server.receiveClientFinal(scramBytes("\(withoutProof),p=\(proof)")) }
        }
    }

    func testHandBuiltPlusFinalVerifies() throws {
        // The same as the client does, built by hand: c = base64("p=tls-server-end-point,," + data).
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding, serverNonce: "SERVER")
        let bare = "n=,r=CLIENT"
        let serverFirst = scramText(try server.receiveClientFirst(scramBytes("p=tls-server-end-point,," + bare), mechanism: Self.plus))
        let cValue = SCRAMBase64.encode(Array("p=tls-server-end-point,,".utf8) + Self.binding.data)
        let withoutProof = "c=\(cValue),r=CLIENTSERVER"
        let proof = SCRAMServerExchangeTests.proof(password: Self.password, verifier: Self.verifier,
                                                   authMessage: "\(bare),\(serverFirst),\(withoutProof)")
        XCTAssertTrue(scramText(try server.receiveClientFinal(scramBytes("\(withoutProof),p=\(proof)"))).hasPrefix("v="))
    }

    func testNoBindingClientMustEchoItsOwnFlag() throws {
        // On a -PLUS server a "n,," client must still send c=biws, not the binding data.
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding, serverNonce: "SERVER")
        let bare = "n=,r=CLIENT"
        let serverFirst = scramText(try server.receiveClientFirst(scramBytes("n,," + bare), mechanism: Self.plain))
        let cValue = SCRAMBase64.encode(Array("p=tls-server-end-point,,".utf8) + Self.binding.data)
        let withoutProof = "c=\(cValue),r=CLIENTSERVER"
        let proof = SCRAMServerExchangeTests.proof(password: Self.password, verifier: Self.verifier,
                                                   authMessage: "\(bare),\(serverFirst),\(withoutProof)")
        assertSCRAMError(.malformedMessage) { try server.receiveClientFinal(scramBytes("\(withoutProof),p=\(proof)")) }
    }

    // MARK: - Negotiation

    func testYFlagRejectedWhenServerOfferedPlus() {
        // The client supports binding but thinks the server does not: -PLUS was stripped (downgrade).
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        assertSCRAMError(.channelBindingMismatch) {
            try server.receiveClientFirst(scramBytes("y,,n=,r=abc"), mechanism: Self.plain)
        }
        var server2 = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        assertSCRAMError(.channelBindingMismatch) { try server2.receiveClientFirst(scramBytes("y,,n=,r=abc")) }
    }

    func testYFlagStillAcceptedWithoutBinding() throws {
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: nil)
        XCTAssertNoThrow(try server.receiveClientFirst(scramBytes("y,,n=,r=abc"), mechanism: Self.plain))
    }

    func testPFlagRejectedOnServerWithoutBinding() {
        for mechanism in [Self.plain, Self.plus] {
            var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: nil)
            assertSCRAMError(.unsupportedChannelBinding) {
                try server.receiveClientFirst(scramBytes("p=tls-server-end-point,,n=,r=abc"), mechanism: mechanism)
            }
        }
        // A real -PLUS client against a plain server.
        var server = SCRAMServerExchange(verifier: Self.verifier)
        var client = SCRAMClientExchange(password: Self.password, channelBinding: Self.binding)
        assertSCRAMError(.unsupportedChannelBinding) {
            try server.receiveClientFirst(client.clientFirstMessage(), mechanism: client.mechanism)
        }
    }

    func testPlusMechanismNotOfferedWithoutBinding() {
        var server = SCRAMServerExchange(verifier: Self.verifier)
        assertSCRAMError(.unsupportedChannelBinding) {
            try server.receiveClientFirst(scramBytes("n,,n=,r=abc"), mechanism: Self.plus)
        }
    }

    func testOtherBindingTypeIsUnsupported() {
        for header in ["p=tls-unique,,", "p=tls-exporter,,", "p=TLS-SERVER-END-POINT,,"] {
            var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
            assertSCRAMError(.unsupportedChannelBinding) {
                try server.receiveClientFirst(scramBytes(header + "n=,r=abc"), mechanism: Self.plus)
            }
        }
    }

    func testMechanismAndGS2FlagMustAgree() {
        // SCRAM-SHA-256-PLUS without channel binding data.
        for first in ["n,,n=,r=abc", "y,,n=,r=abc"] {
            var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
            assertSCRAMError(.malformedMessage) { try server.receiveClientFirst(scramBytes(first), mechanism: Self.plus) }
        }
        // SCRAM-SHA-256 with channel binding data.
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        assertSCRAMError(.malformedMessage) {
            try server.receiveClientFirst(scramBytes("p=tls-server-end-point,,n=,r=abc"), mechanism: Self.plain)
        }
        var server2 = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        assertSCRAMError(.malformedMessage) {
            try server2.receiveClientFirst(scramBytes("p=tls-server-end-point,,n=,r=abc"))
        }
        // A -PLUS client whose SASLInitialResponse names the plain mechanism.
        var server3 = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        var client = SCRAMClientExchange(password: Self.password, channelBinding: Self.binding)
        assertSCRAMError(.malformedMessage) { try server3.receiveClientFirst(client.clientFirstMessage(), mechanism: Self.plain) }
    }

    func testUnknownMechanismRejected() {
        for mechanism in ["SCRAM-SHA-1", "SCRAM-SHA-256-plus", "", "SCRAM-SHA-512-PLUS"] {
            var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
            assertSCRAMError(.malformedMessage) { try server.receiveClientFirst(scramBytes("n,,n=,r=abc"), mechanism: mechanism) }
        }
    }

    func testAuthorizationIdentityStillRejectedWithPlus() {
        var server = SCRAMServerExchange(verifier: Self.verifier, channelBinding: Self.binding)
        assertSCRAMError(.malformedMessage) {
            try server.receiveClientFirst(scramBytes("p=tls-server-end-point,a=bob,n=,r=abc"), mechanism: Self.plus)
        }
    }

    // MARK: - Mock exchanges

    func testMockWithBindingStillFailsTheProof() throws {
        let secret = Array("proxy-mock-secret".utf8)
        var mock = SCRAMServerExchange.mock(username: "nobody", secret: secret, channelBinding: Self.binding)
        var client = SCRAMClientExchange(password: "guess", channelBinding: Self.binding)
        let serverFirst = try mock.receiveClientFirst(client.clientFirstMessage(), mechanism: client.mechanism)
        XCTAssertEqual(scramText(serverFirst).split(separator: ",").count, 3)
        let clientFinal = try client.receiveServerFirst(serverFirst)
        assertSCRAMError(.invalidProof) { try mock.receiveClientFinal(clientFinal) }
    }

    func testMockWithBindingLooksLikeARealExchange() throws {
        // Same salt with and without binding, same negotiation errors as a known user.
        let secret = Array("s".utf8)
        var plainMock = SCRAMServerExchange.mock(username: "nobody", secret: secret)
        var plusMock = SCRAMServerExchange.mock(username: "nobody", secret: secret, channelBinding: Self.binding)
        let plainSalt = scramText(try plainMock.receiveClientFirst(scramBytes("n,,n=,r=abc"))).split(separator: ",")[1]
        let plusSalt = scramText(try plusMock.receiveClientFirst(scramBytes("p=tls-server-end-point,,n=,r=abc"), mechanism: Self.plus))
            .split(separator: ",")[1]
        XCTAssertEqual(plainSalt, plusSalt)

        var downgraded = SCRAMServerExchange.mock(username: "nobody", secret: secret, channelBinding: Self.binding)
        assertSCRAMError(.channelBindingMismatch) { try downgraded.receiveClientFirst(scramBytes("y,,n=,r=abc")) }
        var unbound = SCRAMServerExchange.mock(username: "nobody", secret: secret, channelBinding: nil)
        assertSCRAMError(.unsupportedChannelBinding) {
            try unbound.receiveClientFirst(scramBytes("p=tls-server-end-point,,n=,r=abc"), mechanism: Self.plus)
        }

        var mismatched = SCRAMServerExchange.mock(username: "nobody", secret: secret, channelBinding: Self.binding)
        var client = SCRAMClientExchange(password: "guess", channelBinding: SCRAMChannelBinding.tlsServerEndPoint(certificateHash: [1, 2, 3]))
        let first = try mismatched.receiveClientFirst(client.clientFirstMessage(), mechanism: client.mechanism)
        assertSCRAMError(.channelBindingMismatch) { try mismatched.receiveClientFinal(try client.receiveServerFirst(first)) }
    }

    // MARK: - Client side against a PostgreSQL-style server

    func testClientDetectsServerWithoutPassword() throws {
        var server = SCRAMServerExchange(verifier: SCRAMVerifier.make(password: "other", iterations: 16), channelBinding: Self.binding)
        var client = SCRAMClientExchange(password: Self.password, channelBinding: Self.binding)
        let serverFirst = try server.receiveClientFirst(client.clientFirstMessage(), mechanism: client.mechanism)
        _ = try client.receiveServerFirst(serverFirst)
        // A forged server-final from a server that does not know the password.
        assertSCRAMError(.invalidServerSignature) {
            try client.receiveServerFinal(scramBytes("v=" + SCRAMBase64.encode([UInt8](repeating: 0, count: 32))))
        }
    }
}
