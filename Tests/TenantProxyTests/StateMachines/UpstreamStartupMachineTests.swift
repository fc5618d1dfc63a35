import NIOCore
import PGWire
import XCTest

@testable import TenantProxy

final class UpstreamStartupMachineTests: XCTestCase {
    typealias Action = UpstreamStartupMachine.Action

    static let password = "upstream-s3cret"
    static let verifier = SCRAMVerifier.make(password: password, iterations: 4096)
    static let parameters = [
        ParameterStatus(name: "server_version", value: "16.4"),
        ParameterStatus(name: "client_encoding", value: "UTF8"),
        ParameterStatus(name: "standard_conforming_strings", value: "on"),
    ]
    static let key = BackendKeyData(processID: 4242, secretKey: -123_456)

    /// Feeds the post-authentication messages and checks the machine waits until ReadyForQuery.
    private func finishLogin(
        _ machine: inout UpstreamStartupMachine,
        file: StaticString = #filePath,
        line: UInt = #line
    ) -> Action {
        XCTAssertEqual(machine.receive(.authentication(.ok)), .wait, file: file, line: line)
        for status in Self.parameters {
            XCTAssertEqual(machine.receive(.parameterStatus(status)), .wait, file: file, line: line)
        }
        XCTAssertEqual(machine.receive(.backendKeyData(Self.key)), .wait, file: file, line: line)
        return machine.receive(.readyForQuery(ReadyForQuery(status: .idle)))
    }

    /// Runs the SCRAM exchange against PGWire's server side up to (not including) SASLFinal.
    /// Returns the server-final-message, or nil when the server rejected the proof.
    private func scramUpToFinal(
        _ machine: inout UpstreamStartupMachine,
        server: inout SCRAMServerExchange,
        file: StaticString = #filePath,
        line: UInt = #line
    ) throws -> [UInt8]? {
        let first = machine.receive(.authentication(.sasl(mechanisms: ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])))
        guard case .send(.saslInitialResponse(let initial)) = first else {
            XCTFail("expected SASLInitialResponse, got \(first)", file: file, line: line)
            return nil
        }
        XCTAssertEqual(initial.mechanism, "SCRAM-SHA-256", file: file, line: line)
        let serverFirst = try server.receiveClientFirst(initial.initialResponse ?? [])
        let second = machine.receive(.authentication(.saslContinue(data: serverFirst)))
        guard case .send(.saslResponse(let response)) = second else {
            XCTFail("expected SASLResponse, got \(second)", file: file, line: line)
            return nil
        }
        return try? server.receiveClientFinal(response.data)
    }

    // MARK: - Trust, cleartext, MD5

    func testAuthenticationOkThenParametersAndKeyGiveReady() {
        var machine = UpstreamStartupMachine(user: "proxy", password: nil)
        XCTAssertEqual(finishLogin(&machine), .ready(parameters: Self.parameters, key: Self.key))
    }

    func testNoticeAndNegotiateProtocolVersionDuringLoginAreIgnored() {
        var machine = UpstreamStartupMachine(user: "proxy", password: nil)
        XCTAssertEqual(machine.receive(.authentication(.ok)), .wait)
        XCTAssertEqual(machine.receive(.noticeResponse(NoticeResponse(sqlState: "01000", message: "hello"))), .wait)
        XCTAssertEqual(machine.receive(.negotiateProtocolVersion(
            NegotiateProtocolVersion(newestMinorVersion: 0, unrecognizedOptions: []))), .wait)
        XCTAssertEqual(machine.receive(.parameterStatus(Self.parameters[0])), .wait)
        XCTAssertEqual(machine.receive(.readyForQuery(ReadyForQuery(status: .idle))),
                       .ready(parameters: [Self.parameters[0]], key: nil))
    }

    func testCleartextRequestIsAnsweredWithThePassword() {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        XCTAssertEqual(machine.receive(.authentication(.cleartextPassword)),
                       .send(.password(PasswordMessage(password: Self.password))))
        XCTAssertEqual(finishLogin(&machine), .ready(parameters: Self.parameters, key: Self.key))
    }

    func testMD5RequestIsAnsweredWithTheSaltedHash() {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        let salt: [UInt8] = [0xDE, 0xAD, 0xBE, 0xEF]
        let expected = MD5Password.response(user: "proxy", password: Self.password, salt: salt)
        let action = machine.receive(.authentication(.md5Password(salt: salt)))
        XCTAssertEqual(action, .send(.password(PasswordMessage(password: expected))))
        guard case .send(.password(let message)) = action else { return }
        XCTAssertTrue(message.password.hasPrefix("md5"))
        XCTAssertFalse(message.password.contains(Self.password))
        XCTAssertTrue(MD5Password.verify(
            response: message.password,
            storedHash: MD5Password.storedHash(user: "proxy", password: Self.password),
            salt: salt))
        XCTAssertEqual(finishLogin(&machine), .ready(parameters: Self.parameters, key: Self.key))
    }

    // MARK: - SCRAM-SHA-256

    func testFullSCRAMExchangeThenReady() throws {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        var server = SCRAMServerExchange(verifier: Self.verifier)
        let serverFinal = try XCTUnwrap(try scramUpToFinal(&machine, server: &server), "server rejected the proof")
        XCTAssertEqual(machine.receive(.authentication(.saslFinal(data: serverFinal))), .wait)
        XCTAssertEqual(finishLogin(&machine), .ready(parameters: Self.parameters, key: Self.key))
    }

    func testWrongPasswordAtTheServerFailsWithoutRelayingTheServerText() throws {
        var machine = UpstreamStartupMachine(user: "proxy", password: "not-the-password")
        var server = SCRAMServerExchange(verifier: Self.verifier)
        XCTAssertNil(try scramUpToFinal(&machine, server: &server), "the server must reject a wrong proof")
        let serverError = ErrorResponse(severity: "FATAL", sqlState: "28P01",
                                        message: "password authentication failed for user \"proxy\"")
        XCTAssertEqual(machine.receive(.errorResponse(serverError)),
                       .fail(.upstreamAuthenticationFailed, serverError: nil))
    }

    func testRoleDoesNotExistIsAlsoHidden() {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        let serverError = ErrorResponse(severity: "FATAL", sqlState: "28000", message: "role \"proxy\" does not exist")
        XCTAssertEqual(machine.receive(.errorResponse(serverError)),
                       .fail(.upstreamAuthenticationFailed, serverError: nil))
    }

    func testDatabaseDoesNotExistIsRelayed() {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        XCTAssertEqual(machine.receive(.authentication(.ok)), .wait)
        let serverError = ErrorResponse(severity: "FATAL", sqlState: "3D000", message: "database \"nope\" does not exist")
        let action = machine.receive(.errorResponse(serverError))
        XCTAssertEqual(action, .fail(.upstreamUnavailable, serverError: serverError))
        guard case .fail(let error, let relayed) = action else { return }
        XCTAssertEqual(error.sqlState, "08006")
        XCTAssertEqual(relayed?.sqlState, "3D000")
    }

    func testTamperedServerSignatureFails() throws {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        var server = SCRAMServerExchange(verifier: Self.verifier)
        var serverFinal = try XCTUnwrap(try scramUpToFinal(&machine, server: &server))
        XCTAssertEqual(utf8String(Array(serverFinal.prefix(2))), "v=")
        // Change the first base64 character of the signature to another valid one.
        serverFinal[2] = serverFinal[2] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        XCTAssertEqual(machine.receive(.authentication(.saslFinal(data: serverFinal))),
                       .fail(.upstreamAuthenticationFailed, serverError: nil))
    }

    func testServerThatSkipsSASLFinalIsRejected() throws {
        // AuthenticationOk without the server proving it knows the password would let an impostor in.
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        var server = SCRAMServerExchange(verifier: Self.verifier)
        XCTAssertNotNil(try scramUpToFinal(&machine, server: &server))
        guard case .fail(let error, nil) = machine.receive(.authentication(.ok)) else {
            return XCTFail("AuthenticationOk before SASLFinal must fail")
        }
        XCTAssertEqual(error.sqlState, "08006")
    }

    func testServerNonceThatDoesNotExtendTheClientNonceFails() {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        guard case .send(.saslInitialResponse) = machine.receive(.authentication(.sasl(mechanisms: ["SCRAM-SHA-256"])))
        else { return XCTFail("expected SASLInitialResponse") }
        let forged = Array("r=someoneElsesNonce,s=QSXCR+Q6sek8bf92,i=4096".utf8)
        XCTAssertEqual(machine.receive(.authentication(.saslContinue(data: forged))),
                       .fail(.upstreamAuthenticationFailed, serverError: nil))
    }

    // MARK: - Refusals

    func testServerAsksForAPasswordButNoneIsConfigured() {
        let requests: [Authentication] = [.cleartextPassword, .md5Password(salt: [1, 2, 3, 4]),
                                          .sasl(mechanisms: ["SCRAM-SHA-256"])]
        for request in requests {
            var machine = UpstreamStartupMachine(user: "proxy", password: nil)
            XCTAssertEqual(machine.receive(.authentication(request)),
                           .fail(.upstreamAuthenticationFailed, serverError: nil), "\(request)")
        }
    }

    func testSASLWithoutSCRAMSHA256Fails() {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        let action = machine.receive(.authentication(.sasl(mechanisms: ["SCRAM-SHA-256-PLUS", "OAUTHBEARER"])))
        XCTAssertEqual(action, .fail(.upstreamProtocol("no supported SASL mechanism offered"), serverError: nil))
    }

    func testUnsupportedAuthenticationMethodFails() {
        for request: Authentication in [.kerberosV5, .gss, .sspi, .scmCredential] {
            var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
            guard case .fail(let error, nil) = machine.receive(.authentication(request)) else {
                XCTFail("\(request) must fail")
                continue
            }
            XCTAssertEqual(error.sqlState, "08006")
        }
    }

    func testDataRowDuringLoginFails() {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        XCTAssertEqual(machine.receive(.authentication(.ok)), .wait)
        XCTAssertEqual(machine.receive(.dataRow(DataRow(columns: [nil]))),
                       .fail(.upstreamProtocol("unexpected message during log-in"), serverError: nil))
    }

    func testDataRowBeforeAuthenticationFails() {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        XCTAssertEqual(machine.receive(.dataRow(DataRow(columns: []))),
                       .fail(.upstreamProtocol("unexpected message during log-in"), serverError: nil))
    }

    func testReadyForQueryBeforeAuthenticationOkFails() {
        var machine = UpstreamStartupMachine(user: "proxy", password: Self.password)
        guard case .fail = machine.receive(.readyForQuery(ReadyForQuery(status: .idle))) else {
            return XCTFail("ReadyForQuery before AuthenticationOk must fail")
        }
    }
}
