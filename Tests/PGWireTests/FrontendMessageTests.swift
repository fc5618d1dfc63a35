import NIOCore
import XCTest

@testable import PGWire

final class FrontendMessageTests: XCTestCase {
    static let allMessages: [(FrontendMessage, FrontendMessage.PasswordKind)] = [
        (.query(Query(query: "SELECT 1; SELECT 'héllo ✓'")), .password),
        (.query(Query(query: "")), .password),
        (.parse(Parse(name: "stmt1", query: "SELECT $1::int, $2", parameterTypes: [23, 0])), .password),
        (.parse(Parse(name: "", query: "SELECT 1", parameterTypes: [])), .password),
        (.bind(Bind(
            portal: "p1",
            statement: "stmt1",
            parameterFormats: [0, 1],
            parameters: [ByteBuffer(string: "42"), nil, ByteBuffer(bytes: [0, 0, 0, 7]), ByteBuffer()],
            resultFormats: [1]
        )), .password),
        (.bind(Bind(portal: "", statement: "", parameterFormats: [], parameters: [], resultFormats: [])), .password),
        (.describe(Describe(kind: .statement, name: "stmt1")), .password),
        (.describe(Describe(kind: .portal, name: "")), .password),
        (.execute(Execute(portal: "p1", maxRows: 100)), .password),
        (.execute(Execute(portal: "", maxRows: 0)), .password),
        (.close(Close(kind: .statement, name: "stmt1")), .password),
        (.close(Close(kind: .portal, name: "p1")), .password),
        (.sync, .password),
        (.flush, .password),
        (.functionCall(FunctionCall(
            objectID: 1598,
            argumentFormats: [1],
            arguments: [ByteBuffer(bytes: [1, 2, 3]), nil],
            resultFormat: 1
        )), .password),
        (.functionCall(FunctionCall(objectID: 0, argumentFormats: [], arguments: [], resultFormat: 0)), .password),
        (.copyData(CopyData(data: ByteBuffer(string: "1\tfoo\n2\tbar\n"))), .password),
        (.copyData(CopyData(data: ByteBuffer())), .password),
        (.copyDone, .password),
        (.copyFail(CopyFail(message: "client aborted")), .password),
        (.terminate, .password),
        (.password(PasswordMessage(password: "md5abcdef0123456789")), .password),
        (.password(PasswordMessage(password: "")), .password),
        (.saslInitialResponse(SASLInitialResponse(
            mechanism: "SCRAM-SHA-256",
            initialResponse: Array("n,,n=,r=abcdef".utf8)
        )), .saslInitial),
        (.saslInitialResponse(SASLInitialResponse(mechanism: "SCRAM-SHA-256", initialResponse: nil)), .saslInitial),
        (.saslInitialResponse(SASLInitialResponse(mechanism: "SCRAM-SHA-256-PLUS", initialResponse: [])), .saslInitial),
        (.saslResponse(SASLResponse(data: Array("c=biws,r=abc,p=xyz".utf8))), .sasl),
        (.saslResponse(SASLResponse(data: [])), .sasl),
    ]

    func testEveryMessageRoundTrips() throws {
        for (message, kind) in Self.allMessages {
            var buffer = ByteBuffer()
            message.encode(into: &buffer)
            let frames = try decodeAllFrames(buffer)
            XCTAssertEqual(frames.count, 1, "\(message)")
            XCTAssertEqual(frames.first?.type, message.id.rawValue, "\(message)")
            let decoded = try FrontendMessage.decode(frames[0], passwordKind: kind)
            XCTAssertEqual(decoded, message)
        }
    }

    func testEveryFrontendIDIsCovered() {
        let covered = Set(Self.allMessages.map { $0.0.id })
        XCTAssertEqual(covered, Set(FrontendMessageID.allCases))
    }

    func testStructEncodersMatchEnumEncoder() throws {
        for (message, _) in Self.allMessages {
            var viaEnum = ByteBuffer()
            message.encode(into: &viaEnum)
            var viaStruct = ByteBuffer()
            switch message {
            case .query(let m): m.encode(into: &viaStruct)
            case .parse(let m): m.encode(into: &viaStruct)
            case .bind(let m): m.encode(into: &viaStruct)
            case .describe(let m): m.encode(into: &viaStruct)
            case .execute(let m): m.encode(into: &viaStruct)
            case .close(let m): m.encode(into: &viaStruct)
            case .functionCall(let m): m.encode(into: &viaStruct)
            case .copyData(let m): m.encode(into: &viaStruct)
            case .copyFail(let m): m.encode(into: &viaStruct)
            case .password(let m): m.encode(into: &viaStruct)
            case .saslInitialResponse(let m): m.encode(into: &viaStruct)
            case .saslResponse(let m): m.encode(into: &viaStruct)
            case .sync, .flush, .copyDone, .terminate: continue
            }
            XCTAssertEqual(viaEnum, viaStruct, "\(message)")
        }
    }

    func testPayloadStructDecodersConsumeExactly() throws {
        var payload = ByteBuffer()
        payload.writeCString("SELECT 1")
        XCTAssertEqual(try Query.decode(payload: &payload), Query(query: "SELECT 1"))
        XCTAssertEqual(payload.readableBytes, 0)
    }

    func testKnownWireBytes() {
        var buffer = ByteBuffer()
        Query(query: "SELECT 1").encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [UInt8(ascii: "Q"), 0, 0, 0, 13] + Array("SELECT 1".utf8) + [0])

        buffer.clear()
        FrontendMessage.sync.encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [UInt8(ascii: "S"), 0, 0, 0, 4])

        buffer.clear()
        Execute(portal: "", maxRows: 0).encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [UInt8(ascii: "E"), 0, 0, 0, 9, 0, 0, 0, 0, 0])

        buffer.clear()
        SASLInitialResponse(mechanism: "X", initialResponse: nil).encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [UInt8(ascii: "p"), 0, 0, 0, 10, UInt8(ascii: "X"), 0, 0xFF, 0xFF, 0xFF, 0xFF])
    }

    func testPasswordKindSelectsInterpretation() throws {
        var buffer = ByteBuffer()
        PasswordMessage(password: "secret").encode(into: &buffer)
        let frame = try decodeAllFrames(buffer)[0]
        XCTAssertEqual(try FrontendMessage.decode(frame), .password(PasswordMessage(password: "secret")))
        XCTAssertEqual(
            try FrontendMessage.decode(frame, passwordKind: .sasl),
            .saslResponse(SASLResponse(data: Array("secret".utf8) + [0]))
        )
        // "secret\0" then missing Int32 length.
        XCTAssertThrowsPGWireError(.truncated, try FrontendMessage.decode(frame, passwordKind: .saslInitial))
    }

    func testStringsWithEmbeddedNULDoNotBreakFraming() throws {
        var buffer = ByteBuffer()
        Query(query: "SELECT\u{0} 1").encode(into: &buffer)
        let frames = try decodeAllFrames(buffer)
        XCTAssertEqual(try FrontendMessage.decode(frames[0]), .query(Query(query: "SELECT 1")))
    }

    func testDecodedValuesAreSlicesOfTheFrame() throws {
        let bind = Bind(portal: "", statement: "", parameterFormats: [], parameters: [ByteBuffer(string: "value")], resultFormats: [])
        var buffer = ByteBuffer()
        bind.encode(into: &buffer)
        let frame = try decodeAllFrames(buffer)[0]
        guard case .bind(let decoded) = try FrontendMessage.decode(frame) else {
            return XCTFail("expected bind")
        }
        XCTAssertEqual(decoded.parameters[0], ByteBuffer(string: "value"))
    }

    func testPasswordDescriptionsAreRedacted() {
        XCTAssertFalse("\(PasswordMessage(password: "hunter2"))".contains("hunter2"))
        XCTAssertFalse(String(describing: SASLResponse(data: Array("proof".utf8))).contains("proof"))
        XCTAssertFalse(String(describing: SASLInitialResponse(mechanism: "M", initialResponse: Array("zzsecretzz".utf8))).contains("zzsecretzz"))
    }
}
