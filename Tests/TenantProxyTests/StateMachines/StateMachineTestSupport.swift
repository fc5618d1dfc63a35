import NIOCore
import PGWire
import XCTest

@testable import TenantProxy

/// Encodes a frontend message and frames it again with PGWire's own decoder, so tests feed the
/// machines exactly what the channel handler would.
func makeFrame(_ message: FrontendMessage, file: StaticString = #filePath, line: UInt = #line) -> PGFrame {
    var buffer = ByteBuffer()
    message.encode(into: &buffer)
    var decoder = PGFrontendDecoder()
    decoder.phase = .messages
    guard case .frame(let frame)? = try? decoder.next(from: &buffer) else {
        XCTFail("could not frame \(message)", file: file, line: line)
        return PGFrame(type: 0, payload: ByteBuffer())
    }
    XCTAssertEqual(buffer.readableBytes, 0, "encoder wrote trailing bytes", file: file, line: line)
    return frame
}

func makeStartup(
    _ parameters: [String: String],
    version: UInt32 = StartupMessage.protocolVersion3
) -> StartupMessage {
    StartupMessage(protocolVersion: version, parameters: parameters)
}

func utf8String(_ bytes: [UInt8]) -> String {
    String(decoding: bytes, as: UTF8.self)
}
