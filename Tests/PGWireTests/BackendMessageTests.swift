import NIOCore
import XCTest

@testable import PGWire

final class BackendMessageTests: XCTestCase {
    static let allAuthentications: [Authentication] = [
        .ok,
        .kerberosV5,
        .cleartextPassword,
        .md5Password(salt: [0xDE, 0xAD, 0xBE, 0xEF]),
        .scmCredential,
        .gss,
        .gssContinue(data: [1, 2, 3, 4, 5]),
        .gssContinue(data: []),
        .sspi,
        .sasl(mechanisms: ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
        .sasl(mechanisms: []),
        .saslContinue(data: Array("r=abc,s=c2FsdA==,i=4096".utf8)),
        .saslFinal(data: Array("v=c2lnbmF0dXJl".utf8)),
    ]

    static let allMessages: [BackendMessage] = allAuthentications.map { .authentication($0) } + [
        .backendKeyData(BackendKeyData(processID: 4242, secretKey: -123_456)),
        .parameterStatus(ParameterStatus(name: "server_version", value: "17.2")),
        .parameterStatus(ParameterStatus(name: "application_name", value: "")),
        .readyForQuery(ReadyForQuery(status: .idle)),
        .readyForQuery(ReadyForQuery(status: .inTransaction)),
        .readyForQuery(ReadyForQuery(status: .failed)),
        .rowDescription(RowDescription(fields: [
            .init(name: "id", tableOID: 16384, columnAttributeNumber: 1, dataTypeOID: 23, dataTypeSize: 4, typeModifier: -1, format: 0),
            .init(name: "nämé", tableOID: 0, columnAttributeNumber: 0, dataTypeOID: 25, dataTypeSize: -1, typeModifier: -1, format: 1),
            .init(name: "", tableOID: UInt32.max, columnAttributeNumber: -5, dataTypeOID: 1043, dataTypeSize: -1, typeModifier: 68, format: 0),
        ])),
        .rowDescription(RowDescription(fields: [])),
        .dataRow(DataRow(columns: [ByteBuffer(string: "1"), nil, ByteBuffer(), ByteBuffer(bytes: [0xFF, 0x00])])),
        .dataRow(DataRow(columns: [])),
        .commandComplete(CommandComplete(tag: "SELECT 3")),
        .emptyQueryResponse,
        .errorResponse(ErrorResponse(sqlState: "28P01", message: "password authentication failed", detail: "d", hint: "h")),
        .errorResponse(ErrorResponse(fields: [])),
        .errorResponse(ErrorResponse(fields: [.init(code: UInt8(ascii: "Z"), value: "custom field")])),
        .noticeResponse(NoticeResponse(severity: "WARNING", sqlState: "01000", message: "careful")),
        .notificationResponse(NotificationResponse(processID: 77, channel: "events", payload: "{\"a\":1}")),
        .parseComplete,
        .bindComplete,
        .closeComplete,
        .noData,
        .parameterDescription(ParameterDescription(dataTypes: [23, 25, 0])),
        .parameterDescription(ParameterDescription(dataTypes: [])),
        .portalSuspended,
        .copyInResponse(CopyResponse(format: 0, columnFormats: [0, 0])),
        .copyOutResponse(CopyResponse(format: 1, columnFormats: [1])),
        .copyBothResponse(CopyResponse(format: 0, columnFormats: [])),
        .copyData(CopyData(data: ByteBuffer(string: "row\n"))),
        .copyDone,
        .negotiateProtocolVersion(NegotiateProtocolVersion(newestMinorVersion: 0, unrecognizedOptions: ["_pq_.foo", "_pq_.bar"])),
        .negotiateProtocolVersion(NegotiateProtocolVersion(newestMinorVersion: 2, unrecognizedOptions: [])),
        .functionCallResponse(FunctionCallResponse(result: ByteBuffer(bytes: [0, 0, 0, 1]))),
        .functionCallResponse(FunctionCallResponse(result: nil)),
    ]

    func testEveryMessageRoundTrips() throws {
        for message in Self.allMessages {
            var buffer = ByteBuffer()
            message.encode(into: &buffer)
            let frames = try decodeAllFrames(buffer)
            XCTAssertEqual(frames.count, 1, "\(message)")
            XCTAssertEqual(frames.first?.type, message.id.rawValue, "\(message)")
            XCTAssertEqual(try BackendMessage.decode(frames[0]), message)
        }
    }

    func testEveryBackendIDIsCovered() {
        XCTAssertEqual(Set(Self.allMessages.map(\.id)), Set(BackendMessageID.allCases))
    }

    func testEveryAuthenticationCodeIsDistinct() {
        XCTAssertEqual(Set(Self.allAuthentications.map(\.code)), [0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12])
    }

    func testStructEncodersMatchEnumEncoder() throws {
        for message in Self.allMessages {
            var viaEnum = ByteBuffer()
            message.encode(into: &viaEnum)
            var viaStruct = ByteBuffer()
            switch message {
            case .authentication(let m): m.encode(into: &viaStruct)
            case .backendKeyData(let m): m.encode(into: &viaStruct)
            case .parameterStatus(let m): m.encode(into: &viaStruct)
            case .readyForQuery(let m): m.encode(into: &viaStruct)
            case .rowDescription(let m): m.encode(into: &viaStruct)
            case .dataRow(let m): m.encode(into: &viaStruct)
            case .commandComplete(let m): m.encode(into: &viaStruct)
            case .errorResponse(let m): m.encode(into: &viaStruct)
            case .noticeResponse(let m): m.encode(into: &viaStruct)
            case .notificationResponse(let m): m.encode(into: &viaStruct)
            case .parameterDescription(let m): m.encode(into: &viaStruct)
            case .copyInResponse(let m): m.encode(into: &viaStruct, kind: .copyIn)
            case .copyOutResponse(let m): m.encode(into: &viaStruct, kind: .copyOut)
            case .copyBothResponse(let m): m.encode(into: &viaStruct, kind: .copyBoth)
            case .copyData(let m): m.encode(into: &viaStruct)
            case .negotiateProtocolVersion(let m): m.encode(into: &viaStruct)
            case .functionCallResponse(let m): m.encode(into: &viaStruct)
            case .emptyQueryResponse, .parseComplete, .bindComplete, .closeComplete, .noData, .portalSuspended, .copyDone:
                continue
            }
            XCTAssertEqual(viaEnum, viaStruct, "\(message)")
        }
    }

    func testKnownWireBytes() {
        var buffer = ByteBuffer()
        ReadyForQuery(status: .idle).encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [UInt8(ascii: "Z"), 0, 0, 0, 5, UInt8(ascii: "I")])

        buffer.clear()
        Authentication.ok.encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [UInt8(ascii: "R"), 0, 0, 0, 8, 0, 0, 0, 0])

        buffer.clear()
        Authentication.md5Password(salt: [1, 2, 3, 4]).encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [UInt8(ascii: "R"), 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4])

        buffer.clear()
        Authentication.sasl(mechanisms: ["SCRAM-SHA-256"]).encode(into: &buffer)
        XCTAssertEqual(
            Array(buffer.readableBytesView),
            [UInt8(ascii: "R"), 0, 0, 0, 23, 0, 0, 0, 10] + Array("SCRAM-SHA-256".utf8) + [0, 0]
        )

        buffer.clear()
        BackendKeyData(processID: 1, secretKey: 2).encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [UInt8(ascii: "K"), 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 2])
    }

    func testMD5SaltIsAlwaysFourBytesOnTheWire() throws {
        var buffer = ByteBuffer()
        Authentication.md5Password(salt: [9]).encode(into: &buffer)
        let frame = try decodeAllFrames(buffer)[0]
        XCTAssertEqual(try BackendMessage.decode(frame), .authentication(.md5Password(salt: [9, 0, 0, 0])))
    }

    func testErrorResponseConvenience() {
        let error = ErrorResponse(sqlState: "53300", message: "too many connections", detail: "limit 10", hint: "retry")
        XCTAssertEqual(error.fields.map(\.code), Array("SVCMDH".utf8))
        XCTAssertEqual(error.severity, "ERROR")
        XCTAssertEqual(error.sqlState, "53300")
        XCTAssertEqual(error.message, "too many connections")
        XCTAssertEqual(error.detail, "limit 10")
        XCTAssertEqual(error.hint, "retry")
        XCTAssertEqual(error[code: UInt8(ascii: "V")], "ERROR")
        XCTAssertNil(error[code: UInt8(ascii: "P")])

        let fatal = ErrorResponse(severity: "FATAL", sqlState: "28000", message: "no")
        XCTAssertEqual(fatal.fields.map(\.code), Array("SVCM".utf8))
        XCTAssertEqual(fatal.severity, "FATAL")
        XCTAssertNil(fatal.detail)
        XCTAssertNil(fatal.hint)
        XCTAssertEqual(fatal.errorFields, ErrorFields(severity: "FATAL", sqlState: "28000", message: "no"))
        XCTAssertEqual(ErrorResponse(fatal.errorFields), fatal)

        let notice = NoticeResponse(fields: [.init(code: UInt8(ascii: "S"), value: "AVISO")])
        XCTAssertEqual(notice.severity, "AVISO")
    }

    func testErrorFieldsOrderPreserved() throws {
        let fields: [ErrorFields.Field] = [
            .init(code: UInt8(ascii: "M"), value: "m"),
            .init(code: UInt8(ascii: "S"), value: "s"),
            .init(code: UInt8(ascii: "M"), value: "second m"),
        ]
        var buffer = ByteBuffer()
        ErrorResponse(fields: fields).encode(into: &buffer)
        let frame = try decodeAllFrames(buffer)[0]
        guard case .errorResponse(let decoded) = try BackendMessage.decode(frame) else {
            return XCTFail("expected error response")
        }
        XCTAssertEqual(decoded.fields, fields)
        XCTAssertEqual(decoded.message, "m")

        var payload = frame.payload
        XCTAssertEqual(try ErrorFields.decode(payload: &payload), ErrorFields(fields: fields))
    }

    func testCopyDataSameStructBothDirections() throws {
        let copy = CopyData(data: ByteBuffer(string: "abc"))
        var fromClient = ByteBuffer()
        FrontendMessage.copyData(copy).encode(into: &fromClient)
        var fromServer = ByteBuffer()
        BackendMessage.copyData(copy).encode(into: &fromServer)
        XCTAssertEqual(fromClient, fromServer)
    }
}
