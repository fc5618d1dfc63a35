import NIOCore
import PGWire
import XCTest

@testable import TenantProxy

final class ClientStartupMachineTests: XCTestCase {
    typealias Action = ClientStartupMachine.Action

    static let mockSecret: [UInt8] = Array(repeating: 7, count: 32)
    static let alicePassword = "correct horse battery staple"
    static let aliceVerifier = SCRAMVerifier.make(password: alicePassword, iterations: 4096)
    static let saslRequest: BackendMessage = .authentication(.sasl(mechanisms: ["SCRAM-SHA-256"]))

    /// Plays the session's part: looks the startup packet's user up and hands the machine its
    /// verifier (nil for an unknown user). The one place that knows how users reach the machine.
    private struct Harness {
        var machine: ClientStartupMachine
        var verifiers: [String: SCRAMVerifier]

        mutating func receive(_ packet: StartupPacket) -> Action {
            var user: String?
            if case .startup(let message) = packet { user = message.user }
            return machine.receive(packet, user: user, verifier: user.flatMap { verifiers[$0] })
        }

        mutating func receive(_ frame: PGFrame) -> Action {
            machine.receive(frame)
        }
    }

    private func makeMachine(
        trust: Bool = false,
        verifiers: [String: SCRAMVerifier] = ["alice": aliceVerifier]
    ) -> Harness {
        Harness(machine: ClientStartupMachine(trust: trust, mockSecret: Self.mockSecret), verifiers: verifiers)
    }

    private struct SCRAMRun {
        var serverFirst: String
        var final: Action
        var client: SCRAMClientExchange
        var clientNonce: String
    }

    /// Runs startup and a complete SCRAM exchange with PGWire's real client.
    private func runSCRAM(
        _ machine: inout Harness,
        user: String,
        password: String,
        file: StaticString = #filePath,
        line: UInt = #line
    ) throws -> SCRAMRun {
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": user]))), .send([Self.saslRequest]),
                       file: file, line: line)
        var client = SCRAMClientExchange(password: password)
        let first = client.clientFirstMessage()
        let clientNonce = String(utf8String(first).split(separator: "r=").last ?? "")
        let continueAction = machine.receive(
            makeFrame(.saslInitialResponse(SASLInitialResponse(mechanism: "SCRAM-SHA-256", initialResponse: first))))
        guard case .send(let messages) = continueAction, messages.count == 1,
              case .authentication(.saslContinue(let serverFirst)) = messages[0]
        else {
            XCTFail("expected one AuthenticationSASLContinue, got \(continueAction)", file: file, line: line)
            throw SkipRun()
        }
        let clientFinal = try client.receiveServerFirst(serverFirst)
        let final = machine.receive(makeFrame(.saslResponse(SASLResponse(data: clientFinal))))
        return SCRAMRun(serverFirst: utf8String(serverFirst), final: final, client: client, clientNonce: clientNonce)
    }

    private struct SkipRun: Error {}

    // MARK: - Encryption and cancel requests

    func testSSLRequestIsRefusedAndAStartupMessageMayFollow() {
        var machine = makeMachine()
        XCTAssertEqual(machine.receive(.sslRequest), .refuseEncryption)
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))), .send([Self.saslRequest]))
    }

    func testGSSENCRequestIsRefusedAndSSLRequestThenStartupMayFollow() {
        var machine = makeMachine()
        XCTAssertEqual(machine.receive(.gssencRequest), .refuseEncryption)
        XCTAssertEqual(machine.receive(.sslRequest), .refuseEncryption)
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))), .send([Self.saslRequest]))
    }

    func testCancelRequestIsForwardedAndEndsTheConversation() {
        var machine = makeMachine()
        let request = CancelRequest(processID: 42, secretKey: -7)
        XCTAssertEqual(machine.receive(.cancel(request)), .cancel(request))
        // Nothing may follow a cancel request, not even a startup packet.
        guard case .fail(let error) = machine.receive(.startup(makeStartup(["user": "alice"]))) else {
            return XCTFail("a startup packet after a cancel request must fail")
        }
        XCTAssertEqual(error.sqlState, "08P01")
    }

    // MARK: - Startup packet validation

    func testStartupWithoutUserFailsWith28000() {
        var machine = makeMachine()
        let action = machine.receive(.startup(makeStartup(["database": "app"])))
        XCTAssertEqual(action, .fail(.noUserName))
        guard case .fail(let error) = action else { return }
        XCTAssertEqual(error.sqlState, "28000")
        XCTAssertEqual(error.severity, .fatal)
    }

    func testStartupWithEmptyUserFailsWith28000() {
        var machine = makeMachine()
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": ""]))), .fail(.noUserName))
    }

    func testProtocolVersions2And4AreRejectedWith0A000() {
        for major: UInt32 in [2, 4] {
            var machine = makeMachine()
            let version = major << 16
            let action = machine.receive(.startup(makeStartup(["user": "alice"], version: version)))
            XCTAssertEqual(action, .fail(.unsupportedProtocol(version)), "protocol \(major).0")
            guard case .fail(let error) = action else { continue }
            XCTAssertEqual(error.sqlState, "0A000")
            XCTAssertTrue(error.message.contains("\(major).0"), error.message)
        }
    }

    func testProtocol3Point1GetsNegotiateProtocolVersionBeforeTheSASLRequest() {
        var machine = makeMachine()
        let action = machine.receive(.startup(makeStartup(["user": "alice"], version: 3 << 16 | 1)))
        XCTAssertEqual(action, .send([
            .negotiateProtocolVersion(NegotiateProtocolVersion(newestMinorVersion: 0, unrecognizedOptions: [])),
            Self.saslRequest,
        ]))
    }

    func testProtocolOptionsAreListedAsUnrecognizedInSortedOrder() {
        var machine = makeMachine()
        let action = machine.receive(.startup(makeStartup(["user": "alice", "_pq_.zeta": "1", "_pq_.alpha": "on"])))
        XCTAssertEqual(action, .send([
            .negotiateProtocolVersion(
                NegotiateProtocolVersion(newestMinorVersion: 0, unrecognizedOptions: ["_pq_.alpha", "_pq_.zeta"])),
            Self.saslRequest,
        ]))
    }

    func testPlainProtocol3Point0SendsNoNegotiateProtocolVersion() {
        var machine = makeMachine()
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice", "application_name": "psql"]))),
                       .send([Self.saslRequest]))
    }

    func testReplicationConnectionsAreRefused() {
        for value in ["true", "database", "on", "1", "yes"] {
            var machine = makeMachine()
            XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice", "replication": value]))),
                           .fail(.replicationUnsupported), "replication=\(value)")
        }
    }

    func testReplicationFalseIsAnOrdinaryConnection() {
        for value in ["false", "off", "0", "no", "FALSE"] {
            var machine = makeMachine()
            XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice", "replication": value]))),
                           .send([Self.saslRequest]), "replication=\(value)")
        }
    }

    func testReplicationIsRefusedEvenWithTrust() {
        var machine = makeMachine(trust: true)
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice", "replication": "true"]))),
                       .fail(.replicationUnsupported))
    }

    func testSecondStartupPacketFails() {
        var machine = makeMachine()
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))), .send([Self.saslRequest]))
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "bob"]))),
                       .fail(.protocolViolation("startup packet received twice")))
    }

    func testSSLRequestAfterStartupFails() {
        var machine = makeMachine()
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        guard case .fail(let error) = machine.receive(.sslRequest) else {
            return XCTFail("SSLRequest after the startup message must fail")
        }
        XCTAssertEqual(error.sqlState, "08P01")
    }

    func testTypedFrameBeforeStartupIsAProtocolViolation() {
        var machine = makeMachine()
        guard case .fail(let error) = machine.receive(makeFrame(.query(Query(query: "SELECT 1")))) else {
            return XCTFail("a typed frame before startup must fail")
        }
        XCTAssertEqual(error.sqlState, "08P01")
    }

    // MARK: - Trust

    func testTrustAuthenticatesWithoutAPassword() {
        var machine = makeMachine(trust: true)
        let message = makeStartup(["user": "mallory", "database": "app"])
        XCTAssertEqual(machine.receive(.startup(message)),
                       .authenticated(user: "mallory", startup: message, messages: []))
    }

    func testTrustWithProtocol3Point1StillSendsNegotiateProtocolVersion() {
        var machine = makeMachine(trust: true)
        let message = makeStartup(["user": "alice"], version: 3 << 16 | 2)
        XCTAssertEqual(machine.receive(.startup(message)), .authenticated(user: "alice", startup: message, messages: [
            .negotiateProtocolVersion(NegotiateProtocolVersion(newestMinorVersion: 0, unrecognizedOptions: []))
        ]))
    }

    func testTheMachineNamesTheUserTheSessionResolvedNotTheRawStartupName() {
        // The session splits a tenant suffix off ("alice.acme" -> "alice") before asking the machine.
        var machine = ClientStartupMachine(trust: true, mockSecret: Self.mockSecret)
        let message = makeStartup(["user": "alice.acme"])
        XCTAssertEqual(machine.receive(.startup(message), user: "alice", verifier: nil),
                       .authenticated(user: "alice", startup: message, messages: []))
    }

    func testEmptyResolvedUserFailsEvenIfTheStartupNamesOne() {
        var machine = ClientStartupMachine(trust: true, mockSecret: Self.mockSecret)
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": ".acme"])), user: "", verifier: nil),
                       .fail(.noUserName))
    }

    // MARK: - SCRAM-SHA-256

    func testFullSCRAMExchangeWithTheRightPasswordAuthenticates() throws {
        var machine = makeMachine()
        let run = try runSCRAM(&machine, user: "alice", password: Self.alicePassword)
        guard case .authenticated(let user, let startup, let messages) = run.final else {
            return XCTFail("expected .authenticated, got \(run.final)")
        }
        XCTAssertEqual(user, "alice")
        XCTAssertEqual(startup, makeStartup(["user": "alice"]))
        XCTAssertEqual(messages.count, 1)
        guard case .authentication(.saslFinal(let serverFinal))? = messages.first else {
            return XCTFail("expected AuthenticationSASLFinal, got \(messages)")
        }
        // The client accepts the server's signature: the proxy proved it holds the verifier.
        XCTAssertNoThrow(try run.client.receiveServerFinal(serverFinal))
        XCTAssertTrue(run.serverFirst.hasPrefix("r=\(run.clientNonce)"), run.serverFirst)
        XCTAssertTrue(run.serverFirst.contains(",i=4096"), run.serverFirst)
    }

    func testWrongPasswordFailsWith28P01AndTheStandardText() throws {
        var machine = makeMachine()
        let run = try runSCRAM(&machine, user: "alice", password: "wrong")
        XCTAssertEqual(run.final, .fail(.authenticationFailed(user: "alice")))
        guard case .fail(let error) = run.final else { return }
        XCTAssertEqual(error.sqlState, "28P01")
        XCTAssertEqual(error.message, "password authentication failed for user \"alice\"")
        XCTAssertEqual(error.errorResponse.sqlState, "28P01")
    }

    func testUnknownUserFailsExactlyLikeAWrongPassword() throws {
        var wrongPassword = makeMachine()
        let wrong = try runSCRAM(&wrongPassword, user: "alice", password: "wrong")

        // A directory without alice, so the same name is unknown this time.
        var unknown = makeMachine(verifiers: [:])
        let run = try runSCRAM(&unknown, user: "alice", password: "anything")

        XCTAssertEqual(run.final, wrong.final)
        guard case .fail(let error) = run.final else { return XCTFail("unknown user must fail") }
        XCTAssertEqual(error.message, "password authentication failed for user \"alice\"")
        XCTAssertEqual(error.errorResponse, ProxyError.authenticationFailed(user: "alice").errorResponse)
    }

    func testUnknownUserServerFirstLooksNormal() throws {
        var machine = makeMachine(verifiers: [:])
        let run = try runSCRAM(&machine, user: "nobody", password: "anything")
        let parts = run.serverFirst.split(separator: ",").map(String.init)
        XCTAssertEqual(parts.count, 3, run.serverFirst)
        XCTAssertTrue(parts[0].hasPrefix("r=\(run.clientNonce)"), run.serverFirst)
        XCTAssertGreaterThan(parts[0].count, "r=\(run.clientNonce)".count, "server must extend the nonce")
        XCTAssertTrue(parts[1].hasPrefix("s="), run.serverFirst)
        XCTAssertEqual(parts[2], "i=4096")
        XCTAssertEqual(run.final, .fail(.authenticationFailed(user: "nobody")))
    }

    func testUnknownUserGetsTheSameSaltOnEveryAttempt() throws {
        func salt(_ user: String) throws -> Substring? {
            var machine = makeMachine(verifiers: [:])
            let run = try runSCRAM(&machine, user: user, password: "x")
            return run.serverFirst.split(separator: ",").first { $0.hasPrefix("s=") }
        }
        let first = try salt("nobody")
        XCTAssertNotNil(first)
        XCTAssertEqual(try salt("nobody"), first, "a changing salt reveals the user does not exist")
        XCTAssertNotEqual(try salt("somebody-else"), first)
    }

    func testWrongSASLMechanismFails() {
        var machine = makeMachine()
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        var client = SCRAMClientExchange(password: Self.alicePassword)
        let action = machine.receive(makeFrame(.saslInitialResponse(
            SASLInitialResponse(mechanism: "SCRAM-SHA-256-PLUS", initialResponse: client.clientFirstMessage()))))
        guard case .fail(let error) = action else { return XCTFail("expected .fail, got \(action)") }
        XCTAssertEqual(error.sqlState, "28000")
        XCTAssertTrue(error.message.contains("SASL"), error.message)
    }

    func testNonPasswordFrameWhereSASLInitialIsExpectedIsAProtocolViolation() {
        var machine = makeMachine()
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        XCTAssertEqual(machine.receive(makeFrame(.query(Query(query: "SELECT 1")))),
                       .fail(.protocolViolation("expected SASLInitialResponse")))
    }

    func testNonPasswordFrameWhereSASLResponseIsExpectedIsAProtocolViolation() {
        var machine = makeMachine()
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        var client = SCRAMClientExchange(password: Self.alicePassword)
        let action = machine.receive(makeFrame(.saslInitialResponse(
            SASLInitialResponse(mechanism: "SCRAM-SHA-256", initialResponse: client.clientFirstMessage()))))
        guard case .send = action else { return XCTFail("expected SASLContinue, got \(action)") }
        XCTAssertEqual(machine.receive(makeFrame(.terminate)), .fail(.protocolViolation("expected SASLResponse")))
    }

    func testMalformedClientFirstMessageFailsWith08P01() {
        var machine = makeMachine()
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        let action = machine.receive(makeFrame(.saslInitialResponse(
            SASLInitialResponse(mechanism: "SCRAM-SHA-256", initialResponse: Array("garbage".utf8)))))
        guard case .fail(let error) = action else { return XCTFail("expected .fail, got \(action)") }
        XCTAssertEqual(error.sqlState, "08P01")
    }

    func testChannelBindingRequiredByClientIsRefused() {
        var machine = makeMachine()
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        let action = machine.receive(makeFrame(.saslInitialResponse(SASLInitialResponse(
            mechanism: "SCRAM-SHA-256", initialResponse: Array("p=tls-server-end-point,,n=,r=abcdefgh".utf8)))))
        guard case .fail = action else { return XCTFail("p= channel binding must fail, got \(action)") }
    }

    func testNothingIsAcceptedAfterAFailure() throws {
        var machine = makeMachine()
        _ = try runSCRAM(&machine, user: "alice", password: "wrong")
        guard case .fail = machine.receive(makeFrame(.saslResponse(SASLResponse(data: Array("x".utf8))))) else {
            return XCTFail("the machine must stay failed")
        }
        guard case .fail = machine.receive(.startup(makeStartup(["user": "alice"]))) else {
            return XCTFail("the machine must stay failed")
        }
    }
}
