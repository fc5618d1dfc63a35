import Crypto
import Foundation
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
    static let saslPlusRequest: BackendMessage =
        .authentication(.sasl(mechanisms: ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    /// tls-server-end-point data of a pretend server certificate (a SHA-256 hash).
    static let bindingData: [UInt8] = Array(SHA256.hash(data: Array("server certificate".utf8)))
    static let binding = SCRAMChannelBinding(type: "tls-server-end-point", data: bindingData)

    /// Plays the session's part: looks the startup packet's user up and hands the machine a plan
    /// with that user's verifier (nil for an unknown user). The one place that knows how users
    /// reach the machine.
    private struct Harness {
        var machine: ClientStartupMachine
        var verifiers: [String: SCRAMVerifier]
        var plan: AuthPlan

        mutating func receive(_ packet: StartupPacket) -> Action {
            var user: String?
            if case .startup(let message) = packet { user = message.user }
            var plan = plan
            plan.verifier = user.flatMap { verifiers[$0] }
            return machine.receive(packet, user: user, plan: plan)
        }

        mutating func receive(_ frame: PGFrame) -> Action {
            machine.receive(frame)
        }
    }

    private func makeMachine(
        tlsAvailable: Bool = false,
        plan: AuthPlan = AuthPlan(),
        verifiers: [String: SCRAMVerifier] = ["alice": aliceVerifier]
    ) -> Harness {
        Harness(machine: ClientStartupMachine(tlsAvailable: tlsAvailable, mockSecret: Self.mockSecret),
                verifiers: verifiers, plan: plan)
    }

    private static func plan(_ method: AuthMethod, _ configure: (inout AuthPlan) -> Void = { _ in }) -> AuthPlan {
        var plan = AuthPlan()
        plan.method = method
        configure(&plan)
        return plan
    }

    private static let trustPlan = plan(.trust) { $0.trustAllowed = true }

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
        expectedRequest: BackendMessage = saslRequest,
        file: StaticString = #filePath,
        line: UInt = #line
    ) throws -> SCRAMRun {
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": user]))), .send([expectedRequest]),
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

    /// The error of a `.fail` action, checking its `authentication` flag.
    private func failure(
        _ action: Action,
        authentication: Bool,
        file: StaticString = #filePath,
        line: UInt = #line
    ) -> ProxyError? {
        guard case .fail(let error, let counted) = action else {
            XCTFail("expected .fail, got \(action)", file: file, line: line)
            return nil
        }
        XCTAssertEqual(counted, authentication, "authentication flag of \(error)", file: file, line: line)
        return error
    }

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
        guard let error = failure(machine.receive(.startup(makeStartup(["user": "alice"]))), authentication: false)
        else { return }
        XCTAssertEqual(error.sqlState, "08P01")
    }

    // MARK: - Startup packet validation

    func testStartupWithoutUserFailsWith28000() {
        var machine = makeMachine()
        let action = machine.receive(.startup(makeStartup(["database": "app"])))
        XCTAssertEqual(action, .fail(.noUserName, authentication: false))
        guard case .fail(let error, _) = action else { return }
        XCTAssertEqual(error.sqlState, "28000")
        XCTAssertEqual(error.severity, .fatal)
    }

    func testStartupWithEmptyUserFailsWith28000() {
        var machine = makeMachine()
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": ""]))), .fail(.noUserName, authentication: false))
    }

    func testProtocolVersions2And4AreRejectedWith0A000() {
        for major: UInt32 in [2, 4] {
            var machine = makeMachine()
            let version = major << 16
            let action = machine.receive(.startup(makeStartup(["user": "alice"], version: version)))
            XCTAssertEqual(action, .fail(.unsupportedProtocol(version), authentication: false), "protocol \(major).0")
            guard case .fail(let error, _) = action else { continue }
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
                           .fail(.replicationUnsupported, authentication: false), "replication=\(value)")
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
        var machine = makeMachine(plan: Self.trustPlan)
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice", "replication": "true"]))),
                       .fail(.replicationUnsupported, authentication: false))
    }

    func testSecondStartupPacketFails() {
        var machine = makeMachine()
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))), .send([Self.saslRequest]))
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "bob"]))),
                       .fail(.protocolViolation("startup packet received twice"), authentication: false))
    }

    func testSSLRequestAfterStartupFails() {
        var machine = makeMachine()
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        guard let error = failure(machine.receive(.sslRequest), authentication: false) else {
            return XCTFail("SSLRequest after the startup message must fail")
        }
        XCTAssertEqual(error.sqlState, "08P01")
    }

    func testTypedFrameBeforeStartupIsAProtocolViolation() {
        var machine = makeMachine()
        guard let error = failure(machine.receive(makeFrame(.query(Query(query: "SELECT 1")))), authentication: false)
        else {
            return XCTFail("a typed frame before startup must fail")
        }
        XCTAssertEqual(error.sqlState, "08P01")
    }

    // MARK: - Trust

    func testTrustAuthenticatesWithoutAPassword() {
        var machine = makeMachine(plan: Self.trustPlan)
        let message = makeStartup(["user": "mallory", "database": "app"])
        XCTAssertEqual(machine.receive(.startup(message)),
                       .authenticated(user: "mallory", startup: message, messages: [], token: nil))
    }

    func testTrustWithProtocol3Point1StillSendsNegotiateProtocolVersion() {
        var machine = makeMachine(plan: Self.trustPlan)
        let message = makeStartup(["user": "alice"], version: 3 << 16 | 2)
        XCTAssertEqual(machine.receive(.startup(message)), .authenticated(user: "alice", startup: message, messages: [
            .negotiateProtocolVersion(NegotiateProtocolVersion(newestMinorVersion: 0, unrecognizedOptions: []))
        ], token: nil))
    }

    func testTheMachineNamesTheUserTheSessionResolvedNotTheRawStartupName() {
        // The session splits a tenant suffix off ("alice.acme" -> "alice") before asking the machine.
        var machine = ClientStartupMachine(tlsAvailable: false, mockSecret: Self.mockSecret)
        let message = makeStartup(["user": "alice.acme"])
        XCTAssertEqual(machine.receive(.startup(message), user: "alice", plan: Self.trustPlan),
                       .authenticated(user: "alice", startup: message, messages: [], token: nil))
    }

    func testEmptyResolvedUserFailsEvenIfTheStartupNamesOne() {
        var machine = ClientStartupMachine(tlsAvailable: false, mockSecret: Self.mockSecret)
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": ".acme"])), user: "", plan: Self.trustPlan),
                       .fail(.noUserName, authentication: false))
    }

    // MARK: - SCRAM-SHA-256

    func testFullSCRAMExchangeWithTheRightPasswordAuthenticates() throws {
        var machine = makeMachine()
        let run = try runSCRAM(&machine, user: "alice", password: Self.alicePassword)
        guard case .authenticated(let user, let startup, let messages, let token) = run.final else {
            return XCTFail("expected .authenticated, got \(run.final)")
        }
        XCTAssertEqual(user, "alice")
        XCTAssertEqual(startup, makeStartup(["user": "alice"]))
        XCTAssertNil(token)
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
        XCTAssertEqual(run.final, .fail(.authenticationFailed(user: "alice"), authentication: true))
        guard case .fail(let error, _) = run.final else { return }
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
        guard case .fail(let error, true) = run.final else { return XCTFail("unknown user must fail") }
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
        XCTAssertEqual(run.final, .fail(.authenticationFailed(user: "nobody"), authentication: true))
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
        guard let error = failure(action, authentication: true) else { return }
        XCTAssertEqual(error.sqlState, "28000")
        XCTAssertTrue(error.message.contains("SASL"), error.message)
    }

    func testNonPasswordFrameWhereSASLInitialIsExpectedIsAProtocolViolation() {
        var machine = makeMachine()
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        XCTAssertEqual(machine.receive(makeFrame(.query(Query(query: "SELECT 1")))),
                       .fail(.protocolViolation("expected SASLInitialResponse"), authentication: false))
    }

    func testNonPasswordFrameWhereSASLResponseIsExpectedIsAProtocolViolation() {
        var machine = makeMachine()
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        var client = SCRAMClientExchange(password: Self.alicePassword)
        let action = machine.receive(makeFrame(.saslInitialResponse(
            SASLInitialResponse(mechanism: "SCRAM-SHA-256", initialResponse: client.clientFirstMessage()))))
        guard case .send = action else { return XCTFail("expected SASLContinue, got \(action)") }
        XCTAssertEqual(machine.receive(makeFrame(.terminate)),
                       .fail(.protocolViolation("expected SASLResponse"), authentication: false))
    }

    func testMalformedClientFirstMessageFailsWith08P01() {
        var machine = makeMachine()
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        let action = machine.receive(makeFrame(.saslInitialResponse(
            SASLInitialResponse(mechanism: "SCRAM-SHA-256", initialResponse: Array("garbage".utf8)))))
        guard let error = failure(action, authentication: true) else { return }
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

    // MARK: - TLS

    func testSSLRequestWithTLSAvailableIsAcceptedAndAStartupMessageMayFollow() {
        var machine = makeMachine(tlsAvailable: true, plan: Self.plan(.scram) { $0.tls = true })
        XCTAssertEqual(machine.receive(.sslRequest), .acceptEncryption)
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))), .send([Self.saslRequest]))
    }

    func testSecondSSLRequestAfterAcceptingEncryptionFails() {
        var machine = makeMachine(tlsAvailable: true)
        XCTAssertEqual(machine.receive(.sslRequest), .acceptEncryption)
        guard let error = failure(machine.receive(.sslRequest), authentication: false) else { return }
        XCTAssertEqual(error.sqlState, "08P01")
        // And the machine stays failed.
        guard case .fail = machine.receive(.startup(makeStartup(["user": "alice"]))) else {
            return XCTFail("the machine must stay failed")
        }
    }

    func testSecondSSLRequestAfterARefusalFails() {
        var machine = makeMachine()
        XCTAssertEqual(machine.receive(.sslRequest), .refuseEncryption)
        guard let error = failure(machine.receive(.sslRequest), authentication: false) else { return }
        XCTAssertEqual(error.sqlState, "08P01")
    }

    func testGSSENCRequestIsRefusedEvenWithTLSAvailable() {
        var machine = makeMachine(tlsAvailable: true)
        XCTAssertEqual(machine.receive(.gssencRequest), .refuseEncryption)
        XCTAssertEqual(machine.receive(.sslRequest), .acceptEncryption)
    }

    func testRequireTLSOnAPlainConnectionFailsWith28000() {
        var machine = makeMachine(plan: Self.plan(.scram) { $0.requireTLS = true })
        let action = machine.receive(.startup(makeStartup(["user": "alice"])))
        XCTAssertEqual(action, .fail(.tlsRequired(user: "alice"), authentication: false))
        guard let error = failure(action, authentication: false) else { return }
        XCTAssertEqual(error.sqlState, "28000")
    }

    func testRequireTLSRefusesEvenTrust() {
        var machine = makeMachine(plan: Self.plan(.trust) { $0.trustAllowed = true; $0.requireTLS = true })
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))),
                       .fail(.tlsRequired(user: "alice"), authentication: false))
    }

    func testRequireTLSNamesTheUserAsTheClientSentIt() {
        var machine = ClientStartupMachine(tlsAvailable: false, mockSecret: Self.mockSecret)
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice.acme"])), user: "alice",
                                       plan: Self.plan(.scram) { $0.requireTLS = true }),
                       .fail(.tlsRequired(user: "alice.acme"), authentication: false))
    }

    func testRequireTLSOverTLSProceeds() {
        var machine = makeMachine(plan: Self.plan(.scram) { $0.requireTLS = true; $0.tls = true })
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))), .send([Self.saslRequest]))
    }

    // MARK: - Trust and reject

    func testTrustNotAllowedFails() {
        var machine = makeMachine(plan: Self.plan(.trust))
        let action = machine.receive(.startup(makeStartup(["user": "alice"])))
        XCTAssertEqual(action, .fail(.rejectedByRule(user: "alice"), authentication: true))
        XCTAssertEqual(failure(action, authentication: true)?.sqlState, "28000")
    }

    func testRejectFailsWith28000() {
        var machine = makeMachine(plan: Self.plan(.reject) { $0.trustAllowed = true; $0.tls = true })
        let action = machine.receive(.startup(makeStartup(["user": "alice"])))
        XCTAssertEqual(action, .fail(.rejectedByRule(user: "alice"), authentication: true))
        XCTAssertEqual(failure(action, authentication: true)?.sqlState, "28000")
        guard case .fail = machine.receive(makeFrame(.password(PasswordMessage(password: "x")))) else {
            return XCTFail("the machine must stay failed")
        }
    }

    // MARK: - MD5

    private static let md5Plan = plan(.md5) {
        $0.md5 = MD5Password.storedHash(user: "alice", password: alicePassword)
    }

    /// Sends the startup message and returns the salt of the AuthenticationMD5Password request.
    private func md5Salt(
        _ machine: inout Harness,
        user: String = "alice",
        file: StaticString = #filePath,
        line: UInt = #line
    ) -> [UInt8]? {
        let action = machine.receive(.startup(makeStartup(["user": user])))
        guard case .send(let messages) = action, messages.count == 1,
              case .authentication(.md5Password(let salt)) = messages[0]
        else {
            XCTFail("expected AuthenticationMD5Password, got \(action)", file: file, line: line)
            return nil
        }
        XCTAssertEqual(salt.count, 4, file: file, line: line)
        return salt
    }

    func testMD5WithTheRightPasswordAuthenticates() {
        var machine = makeMachine(plan: Self.md5Plan)
        guard let salt = md5Salt(&machine) else { return }
        let response = MD5Password.response(user: "alice", password: Self.alicePassword, salt: salt)
        XCTAssertEqual(machine.receive(makeFrame(.password(PasswordMessage(password: response)))),
                       .authenticated(user: "alice", startup: makeStartup(["user": "alice"]), messages: [], token: nil))
    }

    func testMD5WithAWrongPasswordFailsWith28P01() {
        var machine = makeMachine(plan: Self.md5Plan)
        guard let salt = md5Salt(&machine) else { return }
        let response = MD5Password.response(user: "alice", password: "wrong", salt: salt)
        let action = machine.receive(makeFrame(.password(PasswordMessage(password: response))))
        XCTAssertEqual(action, .fail(.authenticationFailed(user: "alice"), authentication: true))
        XCTAssertEqual(failure(action, authentication: true)?.sqlState, "28P01")
    }

    func testMD5ResponseForAnotherSaltFails() {
        var machine = makeMachine(plan: Self.md5Plan)
        guard let salt = md5Salt(&machine) else { return }
        let otherSalt = salt.map { $0 ^ 0xFF }
        let response = MD5Password.response(user: "alice", password: Self.alicePassword, salt: otherSalt)
        XCTAssertEqual(machine.receive(makeFrame(.password(PasswordMessage(password: response)))),
                       .fail(.authenticationFailed(user: "alice"), authentication: true))
    }

    func testMD5WithoutAStoredHashFailsLikeAWrongPassword() {
        var machine = makeMachine(plan: Self.plan(.md5))
        guard let salt = md5Salt(&machine) else { return }
        let response = MD5Password.response(user: "alice", password: Self.alicePassword, salt: salt)
        XCTAssertEqual(machine.receive(makeFrame(.password(PasswordMessage(password: response)))),
                       .fail(.authenticationFailed(user: "alice"), authentication: true))
    }

    func testMD5SaltsDifferBetweenConnections() {
        var first = makeMachine(plan: Self.md5Plan)
        var second = makeMachine(plan: Self.md5Plan)
        XCTAssertNotEqual(md5Salt(&first), md5Salt(&second))
    }

    func testMD5WithProtocol3Point1SendsNegotiateProtocolVersionFirst() {
        var machine = makeMachine(plan: Self.md5Plan)
        let action = machine.receive(.startup(makeStartup(["user": "alice"], version: 3 << 16 | 1)))
        guard case .send(let messages) = action, messages.count == 2,
              case .negotiateProtocolVersion = messages[0], case .authentication(.md5Password) = messages[1]
        else { return XCTFail("expected NegotiateProtocolVersion and AuthenticationMD5Password, got \(action)") }
    }

    func testNonPasswordFrameWherePasswordIsExpectedIsAProtocolViolation() {
        var machine = makeMachine(plan: Self.md5Plan)
        _ = md5Salt(&machine)
        XCTAssertEqual(machine.receive(makeFrame(.query(Query(query: "SELECT 1")))),
                       .fail(.protocolViolation("expected PasswordMessage"), authentication: false))
    }

    // MARK: - Cleartext password

    private static let passwordPlan = plan(.password) { $0.tls = true }

    func testCleartextPasswordOverTLSWithTheRightPasswordAuthenticates() {
        var machine = makeMachine(plan: Self.passwordPlan)
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))),
                       .send([.authentication(.cleartextPassword)]))
        XCTAssertEqual(machine.receive(makeFrame(.password(PasswordMessage(password: Self.alicePassword)))),
                       .authenticated(user: "alice", startup: makeStartup(["user": "alice"]), messages: [], token: nil))
    }

    func testCleartextPasswordOverTLSWithAWrongPasswordFailsWith28P01() {
        var machine = makeMachine(plan: Self.passwordPlan)
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        let action = machine.receive(makeFrame(.password(PasswordMessage(password: "wrong"))))
        XCTAssertEqual(action, .fail(.authenticationFailed(user: "alice"), authentication: true))
        XCTAssertEqual(failure(action, authentication: true)?.sqlState, "28P01")
    }

    func testCleartextPasswordForAnUnknownUserFailsLikeAWrongPassword() {
        var machine = makeMachine(plan: Self.passwordPlan, verifiers: [:])
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))),
                       .send([.authentication(.cleartextPassword)]))
        XCTAssertEqual(machine.receive(makeFrame(.password(PasswordMessage(password: Self.alicePassword)))),
                       .fail(.authenticationFailed(user: "alice"), authentication: true))
    }

    func testCleartextPasswordWithoutTLSIsRefusedBeforeAskingForIt() {
        var machine = makeMachine(plan: Self.plan(.password))
        let action = machine.receive(.startup(makeStartup(["user": "alice"])))
        // No AuthenticationCleartextPassword goes out: the client never sends its password in clear.
        XCTAssertEqual(action, .fail(.cleartextNeedsTLS, authentication: false))
        XCTAssertEqual(failure(action, authentication: false)?.sqlState, "28000")
    }

    func testPasswordMatchesChecksAgainstTheVerifier() {
        XCTAssertTrue(ClientStartupMachine.passwordMatches(Self.alicePassword, verifier: Self.aliceVerifier))
        XCTAssertFalse(ClientStartupMachine.passwordMatches("wrong", verifier: Self.aliceVerifier))
        XCTAssertFalse(ClientStartupMachine.passwordMatches("", verifier: Self.aliceVerifier))
    }

    // MARK: - Client certificates

    private static func certPlan(names: [String]?, tls: Bool = true) -> AuthPlan {
        plan(.cert) {
            $0.tls = tls
            $0.certificateNames = names
            $0.acceptedCertificateNames = ["alice", "alice@example.com"]
        }
    }

    func testCertificateWithAMatchingNameAuthenticates() {
        for names in [["alice"], ["host.example.com", "alice@example.com"]] {
            var machine = makeMachine(plan: Self.certPlan(names: names))
            let message = makeStartup(["user": "alice"])
            XCTAssertEqual(machine.receive(.startup(message)),
                           .authenticated(user: "alice", startup: message, messages: [], token: nil), "\(names)")
        }
    }

    func testCertificateWithoutAMatchingNameFails() {
        for names in [["mallory"], [], ["ALICE"], ["alice.evil.com"]] {
            var machine = makeMachine(plan: Self.certPlan(names: names))
            let action = machine.receive(.startup(makeStartup(["user": "alice"])))
            XCTAssertEqual(action, .fail(.certificateFailed(user: "alice"), authentication: true), "\(names)")
            XCTAssertEqual(failure(action, authentication: true)?.sqlState, "28000")
        }
    }

    func testCertMethodWithoutACertificateFails() {
        var machine = makeMachine(plan: Self.certPlan(names: nil))
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))),
                       .fail(.certificateFailed(user: "alice"), authentication: true))
    }

    func testCertMethodOnAPlainConnectionFails() {
        var machine = makeMachine(plan: Self.certPlan(names: ["alice"], tls: false))
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))),
                       .fail(.certificateFailed(user: "alice"), authentication: true))
    }

    // MARK: - SCRAM-SHA-256-PLUS

    private static let plusPlan = plan(.scram) { $0.tls = true; $0.channelBinding = binding }

    /// A SCRAM-SHA-256-PLUS client built from the primitives (PGWire's client has no channel binding).
    private struct PlusClient {
        var password: String
        var nonce = "rOprNGfwEbeRWgbNEkqO"
        var gs2Header = "p=tls-server-end-point,,"
        var bare: String { "n=,r=\(nonce)" }
        var clientFirst: [UInt8] { Array((gs2Header + bare).utf8) }

        static func hmac(_ key: [UInt8], _ data: [UInt8]) -> [UInt8] {
            Array(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: key)))
        }

        /// Hi(password, salt, i): PBKDF2-HMAC-SHA256, one block.
        static func saltedPassword(_ password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
            var u = hmac(password, salt + [0, 0, 0, 1])
            var result = u
            for _ in 1..<iterations {
                u = hmac(password, u)
                for index in result.indices { result[index] ^= u[index] }
            }
            return result
        }

        /// Returns the client-final-message and the server-final-message the server must send.
        func clientFinal(serverFirst: String, bindingData: [UInt8]) throws -> (message: [UInt8], serverFinal: String) {
            var nonce = "", salt: [UInt8] = [], iterations = 0
            for part in serverFirst.split(separator: ",") {
                let value = String(part.dropFirst(2))
                switch part.first {
                case "r": nonce = value
                case "s": salt = try XCTUnwrap(Data(base64Encoded: value)).map { $0 }
                case "i": iterations = try XCTUnwrap(Int(value))
                default: break
                }
            }
            XCTAssertTrue(nonce.hasPrefix(self.nonce) && nonce.count > self.nonce.count, serverFirst)
            let cbind = Data(Array(gs2Header.utf8) + bindingData).base64EncodedString()
            let withoutProof = "c=\(cbind),r=\(nonce)"
            let authMessage = Array("\(bare),\(serverFirst),\(withoutProof)".utf8)
            let salted = Self.saltedPassword(Array(password.utf8), salt: salt, iterations: iterations)
            let clientKey = Self.hmac(salted, Array("Client Key".utf8))
            let storedKey = Array(SHA256.hash(data: clientKey))
            let signature = Self.hmac(storedKey, authMessage)
            let proof = zip(clientKey, signature).map { $0 ^ $1 }
            let serverKey = Self.hmac(salted, Array("Server Key".utf8))
            let serverSignature = Self.hmac(serverKey, authMessage)
            return (Array("\(withoutProof),p=\(Data(proof).base64EncodedString())".utf8),
                    "v=\(Data(serverSignature).base64EncodedString())")
        }
    }

    /// Startup, SASLInitialResponse with `mechanism` and the client's first message; returns the
    /// server-first-message, or nil (after recording the action) when the machine did not continue.
    private func startPlus(
        _ machine: inout Harness,
        client: PlusClient,
        mechanism: String = "SCRAM-SHA-256-PLUS",
        file: StaticString = #filePath,
        line: UInt = #line
    ) -> (serverFirst: String?, action: Action) {
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))), .send([Self.saslPlusRequest]),
                       file: file, line: line)
        let action = machine.receive(makeFrame(.saslInitialResponse(
            SASLInitialResponse(mechanism: mechanism, initialResponse: client.clientFirst))))
        guard case .send(let messages) = action, messages.count == 1,
              case .authentication(.saslContinue(let serverFirst)) = messages[0]
        else { return (nil, action) }
        return (utf8String(serverFirst), action)
    }

    func testChannelBindingOffersSCRAMSHA256PLUSFirst() {
        var machine = makeMachine(plan: Self.plusPlan)
        let action = machine.receive(.startup(makeStartup(["user": "alice"])))
        XCTAssertEqual(action, .send([Self.saslPlusRequest]))
        guard case .send(let messages) = action, case .authentication(.sasl(let mechanisms))? = messages.last else {
            return XCTFail("expected AuthenticationSASL, got \(action)")
        }
        XCTAssertEqual(mechanisms.first, "SCRAM-SHA-256-PLUS")
    }

    func testFullSCRAMSHA256PLUSExchangeWithTheRightPasswordAndBindingAuthenticates() throws {
        var machine = makeMachine(plan: Self.plusPlan)
        let client = PlusClient(password: Self.alicePassword)
        let (serverFirst, action) = startPlus(&machine, client: client)
        guard let serverFirst else { return XCTFail("expected SASLContinue, got \(action)") }
        let (clientFinal, expectedServerFinal) = try client.clientFinal(serverFirst: serverFirst,
                                                                        bindingData: Self.bindingData)
        let final = machine.receive(makeFrame(.saslResponse(SASLResponse(data: clientFinal))))
        XCTAssertEqual(final, .authenticated(
            user: "alice", startup: makeStartup(["user": "alice"]),
            messages: [.authentication(.saslFinal(data: Array(expectedServerFinal.utf8)))], token: nil))
    }

    func testSCRAMSHA256PLUSWithPGWiresClientAuthenticatesOnlyWithTheSameBinding() throws {
        for (clientBinding, succeeds) in [
            (Self.binding, true),
            (SCRAMChannelBinding.tlsServerEndPoint(certificateHash: Array(repeating: 0xAB, count: 32)), false),
        ] {
            var machine = makeMachine(plan: Self.plusPlan)
            XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))), .send([Self.saslPlusRequest]))
            var client = SCRAMClientExchange(password: Self.alicePassword, channelBinding: clientBinding)
            XCTAssertEqual(client.mechanism, "SCRAM-SHA-256-PLUS")
            let action = machine.receive(makeFrame(.saslInitialResponse(
                SASLInitialResponse(mechanism: client.mechanism, initialResponse: client.clientFirstMessage()))))
            guard case .send(let messages) = action, case .authentication(.saslContinue(let first))? = messages.first
            else { return XCTFail("expected SASLContinue, got \(action)") }
            let final = machine.receive(makeFrame(.saslResponse(SASLResponse(data: try client.receiveServerFirst(first)))))
            if succeeds {
                guard case .authenticated(_, _, let messages, nil) = final,
                      case .authentication(.saslFinal(let serverFinal))? = messages.first
                else { return XCTFail("expected .authenticated, got \(final)") }
                XCTAssertNoThrow(try client.receiveServerFinal(serverFinal))
            } else {
                XCTAssertEqual(final, .fail(.authenticationFailed(user: "alice"), authentication: true))
            }
        }
    }

    func testSCRAMSHA256PLUSWithTheWrongBindingDataFails() throws {
        var machine = makeMachine(plan: Self.plusPlan)
        let client = PlusClient(password: Self.alicePassword)
        let (serverFirst, action) = startPlus(&machine, client: client)
        guard let serverFirst else { return XCTFail("expected SASLContinue, got \(action)") }
        // A man in the middle terminates TLS with another certificate: the binding data differs.
        let otherData = Array(SHA256.hash(data: Array("attacker certificate".utf8)))
        let (clientFinal, _) = try client.clientFinal(serverFirst: serverFirst, bindingData: otherData)
        let final = machine.receive(makeFrame(.saslResponse(SASLResponse(data: clientFinal))))
        XCTAssertEqual(final, .fail(.authenticationFailed(user: "alice"), authentication: true))
    }

    func testSCRAMSHA256PLUSWithAWrongPasswordFails() throws {
        var machine = makeMachine(plan: Self.plusPlan)
        let client = PlusClient(password: "wrong")
        let (serverFirst, action) = startPlus(&machine, client: client)
        guard let serverFirst else { return XCTFail("expected SASLContinue, got \(action)") }
        let (clientFinal, _) = try client.clientFinal(serverFirst: serverFirst, bindingData: Self.bindingData)
        XCTAssertEqual(machine.receive(makeFrame(.saslResponse(SASLResponse(data: clientFinal)))),
                       .fail(.authenticationFailed(user: "alice"), authentication: true))
    }

    func testSCRAMSHA256PLUSForAnUnknownUserFailsLikeAWrongPassword() throws {
        var machine = makeMachine(plan: Self.plusPlan, verifiers: [:])
        let client = PlusClient(password: Self.alicePassword)
        let (serverFirst, action) = startPlus(&machine, client: client)
        guard let serverFirst else { return XCTFail("expected SASLContinue, got \(action)") }
        let (clientFinal, _) = try client.clientFinal(serverFirst: serverFirst, bindingData: Self.bindingData)
        XCTAssertEqual(machine.receive(makeFrame(.saslResponse(SASLResponse(data: clientFinal)))),
                       .fail(.authenticationFailed(user: "alice"), authentication: true))
    }

    func testPlainSCRAMStillWorksWhenChannelBindingIsOffered() throws {
        // A client without channel binding support ("n,,") may pick SCRAM-SHA-256.
        var machine = makeMachine(plan: Self.plusPlan)
        let run = try runSCRAM(&machine, user: "alice", password: Self.alicePassword,
                               expectedRequest: Self.saslPlusRequest)
        guard case .authenticated(_, _, let messages, nil) = run.final,
              case .authentication(.saslFinal(let serverFinal))? = messages.first
        else { return XCTFail("expected .authenticated, got \(run.final)") }
        XCTAssertNoThrow(try run.client.receiveServerFinal(serverFinal))
    }

    func testClientThatThinksTheServerCannotBindIsADowngradeAndFails() {
        // "y,,": the client supports binding but did not see -PLUS offered, though it was.
        var machine = makeMachine(plan: Self.plusPlan)
        let client = PlusClient(password: Self.alicePassword, gs2Header: "y,,")
        let (serverFirst, action) = startPlus(&machine, client: client, mechanism: "SCRAM-SHA-256")
        XCTAssertNil(serverFirst)
        XCTAssertEqual(failure(action, authentication: true)?.sqlState, "08P01")
    }

    func testClientThatCannotSeeBindingOnAPlainConnectionMaySayY() throws {
        // Without TLS the server offers no -PLUS, so "y,," is honest and accepted.
        var machine = makeMachine()
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))), .send([Self.saslRequest]))
        let client = PlusClient(password: Self.alicePassword, gs2Header: "y,,")
        let action = machine.receive(makeFrame(.saslInitialResponse(
            SASLInitialResponse(mechanism: "SCRAM-SHA-256", initialResponse: client.clientFirst))))
        guard case .send(let messages) = action, case .authentication(.saslContinue(let first))? = messages.first
        else { return XCTFail("expected SASLContinue, got \(action)") }
        let (clientFinal, expected) = try client.clientFinal(serverFirst: utf8String(first), bindingData: [])
        XCTAssertEqual(machine.receive(makeFrame(.saslResponse(SASLResponse(data: clientFinal)))),
                       .authenticated(user: "alice", startup: makeStartup(["user": "alice"]),
                                      messages: [.authentication(.saslFinal(data: Array(expected.utf8)))], token: nil))
    }

    func testChannelBindingOnAPlainConnectionFails() {
        let client = PlusClient(password: Self.alicePassword)
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"] {
            var machine = makeMachine()
            XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))), .send([Self.saslRequest]))
            let action = machine.receive(makeFrame(.saslInitialResponse(
                SASLInitialResponse(mechanism: mechanism, initialResponse: client.clientFirst))))
            guard case .fail(_, true) = action else {
                return XCTFail("p= on a plain connection must fail (\(mechanism)), got \(action)")
            }
        }
    }

    func testPLUSMechanismWithoutChannelBindingFails() {
        for header in ["n,,", "y,,"] {
            var machine = makeMachine(plan: Self.plusPlan)
            let client = PlusClient(password: Self.alicePassword, gs2Header: header)
            let (serverFirst, action) = startPlus(&machine, client: client, mechanism: "SCRAM-SHA-256-PLUS")
            XCTAssertNil(serverFirst, header)
            guard case .fail(_, true) = action else { return XCTFail("\(header): expected .fail, got \(action)") }
        }
    }

    func testChannelBindingWithPlainMechanismFails() {
        var machine = makeMachine(plan: Self.plusPlan)
        let client = PlusClient(password: Self.alicePassword)
        let (serverFirst, action) = startPlus(&machine, client: client, mechanism: "SCRAM-SHA-256")
        XCTAssertNil(serverFirst)
        guard case .fail(_, true) = action else { return XCTFail("expected .fail, got \(action)") }
    }

    func testUnsupportedChannelBindingTypeFails() {
        var machine = makeMachine(plan: Self.plusPlan)
        let client = PlusClient(password: Self.alicePassword, gs2Header: "p=tls-unique,,")
        let (serverFirst, action) = startPlus(&machine, client: client)
        XCTAssertNil(serverFirst)
        guard case .fail(_, true) = action else { return XCTFail("expected .fail, got \(action)") }
    }

    // MARK: - JWT

    private static let jwtSecret: [UInt8] = Array("an HS256 secret of at least 32 bytes!!".utf8)
    private static let jwtClock = JWTTestClock()

    private func jwtPlan(tls: Bool = true) throws -> AuthPlan {
        let verifier = try JWTVerifier(settings: JWTSettings(hs256Secret: Self.jwtSecret), httpFetcher: nil,
                                       clock: Self.jwtClock.function)
        return Self.plan(.jwt) { $0.tls = tls; $0.jwtVerifier = verifier }
    }

    private func jwtToken(secret: [UInt8] = jwtSecret, _ extra: [String: Any] = [:]) -> String {
        let now = Int(Self.jwtClock.now.timeIntervalSince1970)
        var claims: [String: Any] = ["sub": "user-7", "tenant_id": "acme", "iat": now, "exp": now + 600]
        for (key, value) in extra { claims[key] = value }
        return JWTTestTokens.hs256(secret: secret, payload: claims)
    }

    func testJWTWithAGoodTokenAuthenticatesWithItsTenant() throws {
        var machine = makeMachine(plan: try jwtPlan())
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))),
                       .send([.authentication(.cleartextPassword)]))
        let action = machine.receive(makeFrame(.password(PasswordMessage(password: jwtToken()))))
        guard case .authenticated(let user, let startup, let messages, let token) = action else {
            return XCTFail("expected .authenticated, got \(action)")
        }
        XCTAssertEqual(user, "alice")
        XCTAssertEqual(startup, makeStartup(["user": "alice"]))
        XCTAssertEqual(messages, [])
        XCTAssertEqual(token?.tenant, "acme")
        XCTAssertEqual(token?.user, "user-7")
        XCTAssertNotNil(token?.expiresAt)
    }

    func testJWTWithABadSignatureFailsWith28P01() throws {
        var machine = makeMachine(plan: try jwtPlan())
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        let forged = jwtToken(secret: Array("another secret, also 32 bytes long!!".utf8))
        let action = machine.receive(makeFrame(.password(PasswordMessage(password: forged))))
        XCTAssertEqual(action, .fail(.authenticationFailed(user: "alice"), authentication: true))
        XCTAssertEqual(failure(action, authentication: true)?.sqlState, "28P01")
    }

    func testJWTThatIsExpiredOrGarbageFails() throws {
        let now = Int(Self.jwtClock.now.timeIntervalSince1970)
        for password in [jwtToken(["exp": now - 3600]), "not a token", "", Self.alicePassword] {
            var machine = makeMachine(plan: try jwtPlan())
            _ = machine.receive(.startup(makeStartup(["user": "alice"])))
            XCTAssertEqual(machine.receive(makeFrame(.password(PasswordMessage(password: password)))),
                           .fail(.authenticationFailed(user: "alice"), authentication: true), password)
        }
    }

    func testJWTWithoutAVerifierFails() {
        var machine = makeMachine(plan: Self.plan(.jwt) { $0.tls = true })
        _ = machine.receive(.startup(makeStartup(["user": "alice"])))
        XCTAssertEqual(machine.receive(makeFrame(.password(PasswordMessage(password: jwtToken())))),
                       .fail(.authenticationFailed(user: "alice"), authentication: true))
    }

    func testJWTWithoutTLSIsRefusedBeforeAskingForTheToken() throws {
        var machine = makeMachine(plan: try jwtPlan(tls: false))
        XCTAssertEqual(machine.receive(.startup(makeStartup(["user": "alice"]))),
                       .fail(.cleartextNeedsTLS, authentication: false))
    }

    func testJWTFailureNamesTheUserAsTheClientSentIt() throws {
        var machine = ClientStartupMachine(tlsAvailable: false, mockSecret: Self.mockSecret)
        let message = makeStartup(["user": "alice.acme"])
        XCTAssertEqual(machine.receive(.startup(message), user: "alice", plan: try jwtPlan()),
                       .send([.authentication(.cleartextPassword)]))
        XCTAssertEqual(machine.receive(makeFrame(.password(PasswordMessage(password: "bad")))),
                       .fail(.authenticationFailed(user: "alice.acme"), authentication: true))
    }
}
