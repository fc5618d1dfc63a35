import NIOCore
import XCTest

@testable import PGWire

/// Asserts that `body` throws a `PGWireError` with the given code.
func XCTAssertThrowsPGWireError<T>(
    _ code: PGWireError.Code,
    _ body: @autoclosure () throws -> T,
    file: StaticString = #filePath,
    line: UInt = #line
) {
    XCTAssertThrowsError(try body(), file: file, line: line) { error in
        guard let wireError = error as? PGWireError else {
            XCTFail("expected PGWireError(\(code)), got \(error)", file: file, line: line)
            return
        }
        XCTAssertEqual(wireError.code, code, "\(wireError)", file: file, line: line)
        XCTAssertFalse(wireError.message.isEmpty, file: file, line: line)
    }
}

extension ByteBuffer {
    mutating func writeCString(_ string: String) {
        self.writeString(string)
        self.writeInteger(UInt8(0))
    }
}

/// Decodes every frame in `buffer` with a backend decoder, requiring that it is consumed exactly.
func decodeAllFrames(_ buffer: ByteBuffer, file: StaticString = #filePath, line: UInt = #line) throws -> [PGFrame] {
    var buffer = buffer
    var decoder = PGBackendDecoder()
    var frames = [PGFrame]()
    while let frame = try decoder.next(from: &buffer) {
        frames.append(frame)
    }
    XCTAssertEqual(buffer.readableBytes, 0, "undecoded bytes left", file: file, line: line)
    return frames
}
