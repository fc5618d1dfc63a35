import NIOCore
import XCTest

@testable import PGWire

final class MalformedInputTests: XCTestCase {
    private static let q = UInt8(ascii: "Q")

    private func be32(_ value: Int32) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    private func be16(_ value: UInt16) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    private func frontendMessages(_ bytes: [UInt8], max: Int = 64 * 1024 * 1024) throws -> PGFrontendPart? {
        var decoder = PGFrontendDecoder(maxMessageLength: max)
        decoder.phase = .messages
        var buffer = ByteBuffer(bytes: bytes)
        return try decoder.next(from: &buffer)
    }

    private func backend(_ bytes: [UInt8], max: Int = 64 * 1024 * 1024) throws -> PGFrame? {
        var decoder = PGBackendDecoder(maxMessageLength: max)
        var buffer = ByteBuffer(bytes: bytes)
        return try decoder.next(from: &buffer)
    }

    private func startup(_ bytes: [UInt8]) throws -> PGFrontendPart? {
        var decoder = PGFrontendDecoder()
        var buffer = ByteBuffer(bytes: bytes)
        return try decoder.next(from: &buffer)
    }

    /// A startup packet with the given code and body.
    private func startupPacket(code: UInt32, body: [UInt8]) -> [UInt8] {
        be32(Int32(8 + body.count)) + withUnsafeBytes(of: code.bigEndian) { Array($0) } + body
    }

    // MARK: typed framing

    func testTypedLengthSmallerThanFour() {
        for length: Int32 in [0, 1, 3] {
            XCTAssertThrowsPGWireError(.invalidLength, try self.frontendMessages([Self.q] + self.be32(length)))
            XCTAssertThrowsPGWireError(.invalidLength, try self.backend([Self.q] + self.be32(length)))
        }
    }

    func testTypedNegativeLength() {
        for length: Int32 in [-1, -4, Int32.min] {
            XCTAssertThrowsPGWireError(.invalidLength, try self.frontendMessages([Self.q] + self.be32(length)))
            XCTAssertThrowsPGWireError(.invalidLength, try self.backend([Self.q] + self.be32(length)))
        }
    }

    func testTypedHugeLengthFailsBeforePayloadArrives() {
        // Only the 5-byte header is present: the error must come without waiting for 2 GiB.
        XCTAssertThrowsPGWireError(.messageTooLarge, try self.frontendMessages([Self.q] + self.be32(Int32.max)))
        XCTAssertThrowsPGWireError(.messageTooLarge, try self.backend([UInt8(ascii: "D")] + self.be32(Int32.max)))
        XCTAssertThrowsPGWireError(.messageTooLarge, try self.frontendMessages([Self.q] + self.be32(101), max: 100))
        XCTAssertThrowsPGWireError(.messageTooLarge, try self.backend([Self.q] + self.be32(101), max: 100))
        // At the limit the decoder just waits.
        XCTAssertNil(try self.frontendMessages([Self.q] + self.be32(100), max: 100))
        XCTAssertNil(try self.backend([Self.q] + self.be32(100), max: 100))
    }

    func testHugeLengthAllocatesNothing() throws {
        var buffer = ByteBuffer(bytes: [Self.q] + self.be32(Int32.max))
        let capacity = buffer.capacity
        var decoder = PGBackendDecoder()
        XCTAssertThrowsPGWireError(.messageTooLarge, try decoder.next(from: &buffer))
        XCTAssertEqual(buffer.capacity, capacity)
        XCTAssertEqual(buffer.readerIndex, 0)

        // A legal but large length waits without reserving anything.
        var big = ByteBuffer(bytes: [Self.q] + self.be32(60 * 1024 * 1024))
        let bigCapacity = big.capacity
        XCTAssertNil(try decoder.next(from: &big))
        XCTAssertEqual(big.capacity, bigCapacity)
        XCTAssertEqual(big.readerIndex, 0)
    }

    func testIncompleteHeaderWaits() throws {
        for prefix in 0..<5 {
            let bytes = Array(([Self.q] + self.be32(Int32.max)).prefix(prefix))
            XCTAssertNil(try self.frontendMessages(bytes))
            XCTAssertNil(try self.backend(bytes))
        }
    }

    // MARK: startup framing

    func testStartupLengthTooShort() {
        for length: Int32 in [0, 4, 7, -1, Int32.min] {
            XCTAssertThrowsPGWireError(.invalidLength, try self.startup(self.be32(length)))
        }
    }

    func testStartupPacketTooLong() {
        XCTAssertThrowsPGWireError(.messageTooLarge, try self.startup(self.be32(10_001)))
        XCTAssertThrowsPGWireError(.messageTooLarge, try self.startup(self.be32(Int32.max)))
        XCTAssertNil(try self.startup(self.be32(10_000)))
        var decoder = PGFrontendDecoder()
        decoder.maxStartupPacketLength = 100
        var buffer = ByteBuffer(bytes: self.be32(101))
        XCTAssertThrowsPGWireError(.messageTooLarge, try decoder.next(from: &buffer))
    }

    func testUnknownStartupCodes() {
        for code: UInt32 in [131_072 /* protocol 2.0 */, 0, 80_877_105, 1234 << 16 | 9999, 4 << 16, UInt32.max] {
            XCTAssertThrowsPGWireError(.unknownStartupCode, try self.startup(self.startupPacket(code: code, body: [0])))
        }
    }

    func testStartupMessageMalformedParameters() {
        let v3: UInt32 = 196_608
        // No final NUL.
        XCTAssertThrowsPGWireError(.missingTerminator, try self.startup(self.startupPacket(code: v3, body: Array("user\0alice\0".utf8))))
        // Empty parameter list without terminator.
        XCTAssertThrowsPGWireError(.missingTerminator, try self.startup(self.startupPacket(code: v3, body: [])))
        // Value without terminator.
        XCTAssertThrowsPGWireError(.missingTerminator, try self.startup(self.startupPacket(code: v3, body: Array("user\0ali".utf8))))
        // Name without value.
        XCTAssertThrowsPGWireError(.missingTerminator, try self.startup(self.startupPacket(code: v3, body: Array("user\0".utf8))))
        // Bytes after the terminator.
        XCTAssertThrowsPGWireError(.trailingBytes, try self.startup(self.startupPacket(code: v3, body: Array("user\0a\0\0x".utf8))))
        // Duplicate parameter.
        XCTAssertThrowsPGWireError(.invalidValue, try self.startup(self.startupPacket(code: v3, body: Array("user\0a\0user\0b\0\0".utf8))))
        // Invalid UTF-8.
        XCTAssertThrowsPGWireError(.invalidValue, try self.startup(self.startupPacket(code: v3, body: Array("user\0".utf8) + [0xFF, 0, 0])))
    }

    func testMalformedFixedSizeStartupPackets() {
        XCTAssertThrowsPGWireError(.trailingBytes, try self.startup(self.startupPacket(code: 80_877_103, body: [0, 0, 0, 0])))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.startup(self.startupPacket(code: 80_877_104, body: [1])))
        XCTAssertThrowsPGWireError(.truncated, try self.startup(self.startupPacket(code: 80_877_102, body: [0, 0, 0, 1])))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.startup(self.startupPacket(code: 80_877_102, body: Array(repeating: 1, count: 12))))
    }

    func testBytesAfterCancelRequest() throws {
        var buffer = ByteBuffer()
        CancelRequest(processID: 1, secretKey: 2).encode(into: &buffer)
        buffer.writeInteger(UInt8(0))
        var decoder = PGFrontendDecoder()
        XCTAssertEqual(try decoder.next(from: &buffer), .startup(.cancel(CancelRequest(processID: 1, secretKey: 2))))
        XCTAssertThrowsPGWireError(.trailingBytes, try decoder.next(from: &buffer))

        // Bytes arriving later are rejected too.
        var empty = ByteBuffer()
        var second = PGFrontendDecoder()
        CancelRequest(processID: 1, secretKey: 2).encode(into: &empty)
        _ = try second.next(from: &empty)
        XCTAssertNil(try second.next(from: &empty))
        var later = ByteBuffer(bytes: [UInt8(ascii: "Q")])
        XCTAssertThrowsPGWireError(.trailingBytes, try second.next(from: &later))
    }

    // MARK: payloads

    private func frontendDecode(_ type: Character, _ payload: [UInt8], _ kind: FrontendMessage.PasswordKind = .password) throws -> FrontendMessage {
        try FrontendMessage.decode(PGFrame(type: type.asciiValue!, payload: ByteBuffer(bytes: payload)), passwordKind: kind)
    }

    private func backendDecode(_ type: Character, _ payload: [UInt8]) throws -> BackendMessage {
        try BackendMessage.decode(PGFrame(type: type.asciiValue!, payload: ByteBuffer(bytes: payload)))
    }

    func testBindClaimingTooManyParameters() {
        // portal "", statement "", 0 formats, 1000 parameters, but nothing follows.
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("B", [0, 0] + self.be16(0) + self.be16(1000)))
        // 65535 format codes claimed.
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("B", [0, 0] + self.be16(65535) + [0, 0]))
        // A parameter claiming more bytes than the payload holds.
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("B", [0, 0] + self.be16(0) + self.be16(1) + self.be32(1_000_000) + [1, 2, 3]))
        // Negative length other than -1.
        XCTAssertThrowsPGWireError(.invalidValue, try self.frontendDecode("B", [0, 0] + self.be16(0) + self.be16(1) + self.be32(-2) + self.be16(0)))
        // Missing result format count.
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("B", [0, 0] + self.be16(0) + self.be16(1) + self.be32(-1)))
        // Missing statement name terminator.
        XCTAssertThrowsPGWireError(.missingTerminator, try self.frontendDecode("B", [0, 65, 66]))
        // Trailing bytes.
        XCTAssertThrowsPGWireError(.trailingBytes, try self.frontendDecode("B", [0, 0] + self.be16(0) + self.be16(0) + self.be16(0) + [9]))
    }

    func testFrontendPayloadErrors() {
        XCTAssertThrowsPGWireError(.missingTerminator, try self.frontendDecode("Q", Array("SELECT 1".utf8)))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.frontendDecode("Q", []))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.frontendDecode("Q", Array("SELECT 1\0x".utf8)))
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("P", [0, 0] + self.be16(65535) + self.be32(23)))
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("P", [0, 0, 0]))
        XCTAssertThrowsPGWireError(.invalidValue, try self.frontendDecode("D", [UInt8(ascii: "X"), 0]))
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("D", []))
        XCTAssertThrowsPGWireError(.invalidValue, try self.frontendDecode("C", [UInt8(ascii: "Q"), 0]))
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("E", [0, 0, 0]))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.frontendDecode("E", [0, 0, 0, 0, 0, 0]))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.frontendDecode("S", [0]))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.frontendDecode("H", [0]))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.frontendDecode("X", [0]))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.frontendDecode("c", [0]))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.frontendDecode("f", [65]))
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("F", self.be32(1) + self.be16(0) + self.be16(500)))
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("F", self.be32(1) + self.be16(0) + self.be16(0)))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.frontendDecode("p", Array("pw".utf8)))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.frontendDecode("p", Array("pw\0\0".utf8)))
        XCTAssertThrowsPGWireError(.invalidValue, try self.frontendDecode("p", Array("M\0".utf8) + self.be32(-2), .saslInitial))
        XCTAssertThrowsPGWireError(.truncated, try self.frontendDecode("p", Array("M\0".utf8) + self.be32(10) + [1], .saslInitial))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.frontendDecode("p", Array("M\0".utf8) + self.be32(-1) + [1], .saslInitial))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.frontendDecode("p", Array("SCRAM".utf8), .saslInitial))
    }

    func testInvalidUTF8IsRejected() {
        let invalid: [[UInt8]] = [
            [0xFF],
            [0xC3, 0x28],  // bad continuation
            [0xC0, 0xAF],  // overlong
            [0xED, 0xA0, 0x80],  // surrogate
            [0xF1, 0x80, 0x80, 0x41],  // truncated 4-byte sequence replaced by one U+FFFD of equal length
            [0xF4, 0x90, 0x80, 0x80],  // above U+10FFFF
            [0x41, 0x80],
        ]
        for bytes in invalid {
            XCTAssertThrowsPGWireError(.invalidValue, try self.frontendDecode("Q", bytes + [0]))
            XCTAssertThrowsPGWireError(.invalidValue, try self.backendDecode("C", bytes + [0]))
        }
        XCTAssertEqual(try self.frontendDecode("Q", Array("é✓😀".utf8) + [0]), .query(Query(query: "é✓😀")))
    }

    func testBackendPayloadErrors() {
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("R", []))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("R", [0, 0]))
        XCTAssertThrowsPGWireError(.invalidValue, try self.backendDecode("R", self.be32(4)))
        XCTAssertThrowsPGWireError(.invalidValue, try self.backendDecode("R", self.be32(-1)))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.backendDecode("R", self.be32(0) + [0]))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("R", self.be32(5) + [1, 2, 3]))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.backendDecode("R", self.be32(5) + [1, 2, 3, 4, 5]))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("R", self.be32(10) + Array("SCRAM-SHA-256\0".utf8)))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("R", self.be32(10) + Array("SCRAM".utf8)))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("R", self.be32(10)))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("K", self.be32(1)))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.backendDecode("K", self.be32(1) + self.be32(2) + [0]))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("S", Array("name\0value".utf8)))
        XCTAssertThrowsPGWireError(.invalidValue, try self.backendDecode("Z", [UInt8(ascii: "X")]))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("Z", []))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.backendDecode("Z", [UInt8(ascii: "I"), 0]))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("T", self.be16(1000)))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("T", self.be16(1) + Array("id\0".utf8) + Array(repeating: 0, count: 17)))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("T", self.be16(1) + Array(repeating: 65, count: 30)))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("D", self.be16(65535)))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("D", self.be16(1) + self.be32(Int32.max)))
        XCTAssertThrowsPGWireError(.invalidValue, try self.backendDecode("D", self.be16(1) + self.be32(Int32.min)))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.backendDecode("D", self.be16(0) + [1]))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("C", Array("SELECT".utf8)))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("E", [UInt8(ascii: "S")] + Array("ERROR\0".utf8)))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("E", [UInt8(ascii: "S")] + Array("ERROR".utf8)))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("N", []))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.backendDecode("E", [0, 0]))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("A", [0, 0]))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("A", self.be32(1) + Array("chan\0payload".utf8)))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("t", self.be16(3) + self.be32(23)))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("G", [0] + self.be16(40)))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("H", []))
        XCTAssertThrowsPGWireError(.trailingBytes, try self.backendDecode("W", [0] + self.be16(0) + [0]))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("v", self.be32(0) + self.be32(1000) + [0]))
        XCTAssertThrowsPGWireError(.invalidValue, try self.backendDecode("v", self.be32(0) + self.be32(-1)))
        XCTAssertThrowsPGWireError(.missingTerminator, try self.backendDecode("v", self.be32(0) + self.be32(1) + [65]))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("V", self.be32(8) + [1]))
        XCTAssertThrowsPGWireError(.truncated, try self.backendDecode("V", [0]))
        for empty in ["I", "1", "2", "3", "n", "s", "c"] as [Character] {
            XCTAssertThrowsPGWireError(.trailingBytes, try self.backendDecode(empty, [0]))
        }
    }

    func testPayloadStructDecodersRejectTrailingBytes() {
        var payload = ByteBuffer(bytes: Array("q\0extra".utf8))
        XCTAssertThrowsPGWireError(.trailingBytes, try Query.decode(payload: &payload))
        payload = ByteBuffer(bytes: self.be32(1) + self.be32(2) + [0])
        XCTAssertThrowsPGWireError(.trailingBytes, try BackendKeyData.decode(payload: &payload))
        payload = ByteBuffer(bytes: [UInt8(ascii: "I"), UInt8(ascii: "I")])
        XCTAssertThrowsPGWireError(.trailingBytes, try ReadyForQuery.decode(payload: &payload))
    }

    // MARK: fuzzing (never crash, only PGWireError)

    /// Deterministic SplitMix64 so failures are reproducible.
    private struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            self.state &+= 0x9E37_79B9_7F4A_7C15
            var z = self.state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    private func assertOnlyWireErrors(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) {
        do {
            try body()
        } catch is PGWireError {
        } catch {
            XCTFail("unexpected error type \(error)", file: file, line: line)
        }
    }

    func testTruncatedAndMutatedPayloadsNeverCrash() {
        var rng = SplitMix(state: 42)
        let frontend = FrontendMessageTests.allMessages
        let backend = BackendMessageTests.allMessages
        var frames = [(PGFrame, Bool)]()  // (frame, isFrontend)
        for (message, _) in frontend {
            frames.append((DecoderTests.frontendFrame(message).1, true))
        }
        for message in backend {
            frames.append((DecoderTests.backendFrame(message).1, false))
        }
        for (frame, isFrontend) in frames {
            let bytes = Array(frame.payload.readableBytesView)
            var variants = (0..<bytes.count).map { Array(bytes.prefix($0)) }
            for _ in 0..<20 where !bytes.isEmpty {
                var mutated = bytes
                mutated[Int.random(in: 0..<mutated.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                variants.append(mutated)
            }
            for variant in variants {
                let mutatedFrame = PGFrame(type: frame.type, payload: ByteBuffer(bytes: variant))
                self.assertOnlyWireErrors {
                    if isFrontend {
                        for kind in [FrontendMessage.PasswordKind.password, .saslInitial, .sasl] {
                            _ = try? FrontendMessage.decode(mutatedFrame, passwordKind: kind)
                        }
                        _ = try FrontendMessage.decode(mutatedFrame)
                    } else {
                        _ = try BackendMessage.decode(mutatedFrame)
                    }
                }
            }
        }
    }

    func testRandomPayloadsNeverCrash() {
        var rng = SplitMix(state: 7)
        let ids = FrontendMessageID.allCases.map(\.rawValue) + BackendMessageID.allCases.map(\.rawValue)
        for _ in 0..<3000 {
            let length = Int.random(in: 0..<48, using: &rng)
            let payload = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            // Bias toward small counts/lengths so deeper paths are reached.
            let frame = PGFrame(type: ids.randomElement(using: &rng)!, payload: ByteBuffer(bytes: payload))
            self.assertOnlyWireErrors { _ = try FrontendMessage.decode(frame, passwordKind: .saslInitial) }
            self.assertOnlyWireErrors { _ = try BackendMessage.decode(frame) }
        }
    }

    func testRandomStreamsNeverCrash() {
        var rng = SplitMix(state: 1234)
        for _ in 0..<2000 {
            let length = Int.random(in: 0..<64, using: &rng)
            var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if length >= 4, Bool.random(using: &rng) {
                // Plausible small length prefix.
                bytes[0] = 0; bytes[1] = 0; bytes[2] = 0
                bytes[3] = UInt8.random(in: 0...70, using: &rng)
            }
            self.assertOnlyWireErrors {
                var decoder = PGFrontendDecoder(maxMessageLength: 1 << 20)
                var buffer = ByteBuffer(bytes: bytes)
                while try decoder.next(from: &buffer) != nil {}
            }
            self.assertOnlyWireErrors {
                var decoder = PGFrontendDecoder(maxMessageLength: 1 << 20)
                decoder.phase = .messages
                var buffer = ByteBuffer(bytes: bytes)
                while try decoder.next(from: &buffer) != nil {}
            }
            self.assertOnlyWireErrors {
                var decoder = PGBackendDecoder(maxMessageLength: 1 << 20)
                var buffer = ByteBuffer(bytes: bytes)
                while try decoder.next(from: &buffer) != nil {}
            }
        }
    }
}
