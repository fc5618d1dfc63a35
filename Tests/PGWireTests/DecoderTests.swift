import NIOCore
import NIOEmbedded
import NIOTestUtils
import XCTest

@testable import PGWire

/// Test-only adapter: the verifier feeds the same decoder instance the whole input set three
/// times (shuffled), so this resets the stateful frontend decoder at the end of each
/// "connection" (after Terminate or CancelRequest). It delegates decoding to the real
/// `PGFrontendByteDecoder`.
struct ResettingFrontendByteDecoder: ByteToMessageDecoder {
    typealias InboundOut = PGFrontendPart
    var inner = PGFrontendByteDecoder()

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let isTerminate = self.inner.decoder.phase == .messages
            && buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == FrontendMessageID.terminate.rawValue
        let state = try self.inner.decode(context: context, buffer: &buffer)
        if self.inner.decoder.phase == .finished || (isTerminate && state == .continue) {
            self.inner.decoder.phase = .startup
        }
        return state
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try self.decode(context: context, buffer: &buffer)
    }
}

final class DecoderTests: XCTestCase {
    // MARK: fixtures

    static let startupMessage = StartupMessage(parameters: [
        "user": "alice",
        "database": "tenant_db",
        "options": "-c search_path=app",
        "application_name": "psql ✓",
    ])

    /// Encodes a frontend message and returns its bytes and the expected raw frame.
    static func frontendFrame(_ message: FrontendMessage) -> (ByteBuffer, PGFrame) {
        var bytes = ByteBuffer()
        message.encode(into: &bytes)
        return (bytes, PGFrame(type: bytes.getInteger(at: 0)!, payload: bytes.getSlice(at: 5, length: bytes.readableBytes - 5)!))
    }

    static func backendFrame(_ message: BackendMessage) -> (ByteBuffer, PGFrame) {
        var bytes = ByteBuffer()
        message.encode(into: &bytes)
        return (bytes, PGFrame(type: bytes.getInteger(at: 0)!, payload: bytes.getSlice(at: 5, length: bytes.readableBytes - 5)!))
    }

    static let unknownFrontendFrame = PGFrame(type: UInt8(ascii: "z"), payload: ByteBuffer(bytes: [1, 2, 3]))

    /// One "connection": SSLRequest, StartupMessage, every frontend message, an unknown frame, Terminate.
    static func frontendConnection(leadingPackets: [StartupPacket] = [.sslRequest]) -> (ByteBuffer, [PGFrontendPart]) {
        var stream = ByteBuffer()
        var parts = [PGFrontendPart]()
        for packet in leadingPackets + [.startup(Self.startupMessage)] {
            packet.encode(into: &stream)
            parts.append(.startup(packet))
        }
        for (message, _) in FrontendMessageTests.allMessages where message != .terminate {
            var (bytes, frame) = Self.frontendFrame(message)
            stream.writeBuffer(&bytes)
            parts.append(.frame(frame))
        }
        Self.unknownFrontendFrame.encode(into: &stream)
        parts.append(.frame(Self.unknownFrontendFrame))
        var (bytes, frame) = Self.frontendFrame(.terminate)
        stream.writeBuffer(&bytes)
        parts.append(.frame(frame))
        return (stream, parts)
    }

    static func cancelConnection() -> (ByteBuffer, [PGFrontendPart]) {
        var stream = ByteBuffer()
        let packet = StartupPacket.cancel(CancelRequest(processID: 1234, secretKey: -98765))
        packet.encode(into: &stream)
        return (stream, [.startup(packet)])
    }

    static func backendStream() -> (ByteBuffer, [PGFrame]) {
        var stream = ByteBuffer()
        var frames = [PGFrame]()
        for message in BackendMessageTests.allMessages {
            var (bytes, frame) = Self.backendFrame(message)
            stream.writeBuffer(&bytes)
            frames.append(frame)
        }
        let unknown = PGFrame(type: UInt8(ascii: "~"), payload: ByteBuffer(string: "opaque"))
        unknown.encode(into: &stream)
        frames.append(unknown)
        return (stream, frames)
    }

    // MARK: startup packets

    func testStartupPacketsRoundTrip() throws {
        let packets: [StartupPacket] = [
            .startup(Self.startupMessage),
            .startup(StartupMessage(parameters: [:])),
            .startup(StartupMessage(protocolVersion: 196_610, parameters: ["user": "u", "_pq_.x": "y"])),
            .sslRequest,
            .gssencRequest,
            .cancel(CancelRequest(processID: Int32.max, secretKey: Int32.min)),
        ]
        for packet in packets {
            var buffer = ByteBuffer()
            packet.encode(into: &buffer)
            var decoder = PGFrontendDecoder()
            XCTAssertEqual(try decoder.next(from: &buffer), .startup(packet))
            XCTAssertEqual(buffer.readableBytes, 0)
        }
    }

    func testStartupPacketKnownBytes() {
        var buffer = ByteBuffer()
        StartupPacket.sslRequest.encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F])
        buffer.clear()
        StartupPacket.gssencRequest.encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x30])
        buffer.clear()
        CancelRequest(processID: 1, secretKey: 2).encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E, 0, 0, 0, 1, 0, 0, 0, 2])
        buffer.clear()
        StartupMessage(parameters: ["user": "a"]).encode(into: &buffer)
        XCTAssertEqual(Array(buffer.readableBytesView), [0, 0, 0, 16, 0, 3, 0, 0] + Array("user".utf8) + [0, UInt8(ascii: "a"), 0, 0])
    }

    func testStartupMessageAccessors() {
        let message = Self.startupMessage
        XCTAssertEqual(message.protocolVersion, 196_608)
        XCTAssertEqual(message.majorVersion, 3)
        XCTAssertEqual(message.minorVersion, 0)
        XCTAssertEqual(message.user, "alice")
        XCTAssertEqual(message.database, "tenant_db")
        XCTAssertEqual(message.options, "-c search_path=app")
        XCTAssertEqual(StartupMessage(parameters: ["user": "bob"]).database, "bob")
        XCTAssertEqual(StartupMessage(parameters: ["user": "bob", "database": ""]).database, "bob")
        XCTAssertNil(StartupMessage(parameters: [:]).database)
        XCTAssertNil(StartupMessage(parameters: [:]).user)
        XCTAssertNil(StartupMessage(parameters: [:]).options)
    }

    // MARK: phases

    func testPhaseTransitions() throws {
        var decoder = PGFrontendDecoder()
        XCTAssertEqual(decoder.phase, .startup)
        var buffer = ByteBuffer()
        StartupPacket.sslRequest.encode(into: &buffer)
        XCTAssertEqual(try decoder.next(from: &buffer), .startup(.sslRequest))
        XCTAssertEqual(decoder.phase, .startup)
        StartupPacket.gssencRequest.encode(into: &buffer)
        XCTAssertEqual(try decoder.next(from: &buffer), .startup(.gssencRequest))
        XCTAssertEqual(decoder.phase, .startup)
        StartupPacket.startup(Self.startupMessage).encode(into: &buffer)
        XCTAssertEqual(try decoder.next(from: &buffer), .startup(.startup(Self.startupMessage)))
        XCTAssertEqual(decoder.phase, .messages)
        XCTAssertNil(try decoder.next(from: &buffer))

        var cancelDecoder = PGFrontendDecoder()
        CancelRequest(processID: 1, secretKey: 2).encode(into: &buffer)
        XCTAssertEqual(try cancelDecoder.next(from: &buffer), .startup(.cancel(CancelRequest(processID: 1, secretKey: 2))))
        XCTAssertEqual(cancelDecoder.phase, .finished)
        XCTAssertNil(try cancelDecoder.next(from: &buffer))
    }

    func testForcedPhase() throws {
        var decoder = PGFrontendDecoder()
        decoder.phase = .messages
        var buffer = ByteBuffer()
        FrontendMessage.query(Query(query: "SELECT 1")).encode(into: &buffer)
        let part = try decoder.next(from: &buffer)
        guard case .frame(let frame) = part else { return XCTFail("expected frame, got \(String(describing: part))") }
        XCTAssertEqual(try FrontendMessage.decode(frame), .query(Query(query: "SELECT 1")))
    }

    func testUnknownTypedIDsPassThrough() throws {
        var buffer = ByteBuffer()
        for type in [UInt8(0), 0x7F, 0xFF, UInt8(ascii: "?")] {
            PGFrame(type: type, payload: ByteBuffer(bytes: [type])).encode(into: &buffer)
        }
        var backend = PGBackendDecoder()
        var frontend = PGFrontendDecoder()
        frontend.phase = .messages
        var copy = buffer
        for type in [UInt8(0), 0x7F, 0xFF, UInt8(ascii: "?")] {
            XCTAssertEqual(try backend.next(from: &buffer), PGFrame(type: type, payload: ByteBuffer(bytes: [type])))
            XCTAssertEqual(try frontend.next(from: &copy), .frame(PGFrame(type: type, payload: ByteBuffer(bytes: [type]))))
        }
        XCTAssertThrowsPGWireError(.unexpectedMessage, try FrontendMessage.decode(PGFrame(type: 0x7F, payload: ByteBuffer())))
        XCTAssertThrowsPGWireError(.unexpectedMessage, try BackendMessage.decode(PGFrame(type: UInt8(ascii: "?"), payload: ByteBuffer())))
    }

    func testFramePayloadIsASliceNotACopy() throws {
        var buffer = ByteBuffer()
        FrontendMessage.query(Query(query: "SELECT 42")).encode(into: &buffer)
        let base = buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        var decoder = PGBackendDecoder()
        let frame = try XCTUnwrap(try decoder.next(from: &buffer))
        let payloadBase = frame.payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        XCTAssertEqual(payloadBase, base + 5)
    }

    func testZeroLengthPayloadFrame() throws {
        var buffer = ByteBuffer(bytes: [UInt8(ascii: "S"), 0, 0, 0, 4])
        var decoder = PGBackendDecoder()
        XCTAssertEqual(try decoder.next(from: &buffer), PGFrame(type: UInt8(ascii: "S"), payload: ByteBuffer()))
        XCTAssertEqual(buffer.readableBytes, 0)
    }

    /// peekHeader sees the same frames as next(from:) without consuming them, and says nil until
    /// a frame is complete.
    func testPeekHeaderAgreesWithNextAtEverySplit() throws {
        let (stream, expected) = Self.backendStream()
        for split in 0...stream.readableBytes {
            let decoder = PGBackendDecoder()
            var consuming = PGBackendDecoder()
            var buffer = stream.getSlice(at: 0, length: split)!
            var frames = [PGFrame]()
            while let (type, size) = try decoder.peekHeader(in: buffer) {
                let before = buffer.readerIndex
                XCTAssertEqual(try decoder.peekHeader(in: buffer).map { [Int($0.type), $0.size] }, [Int(type), size], "peeking consumes nothing")
                let frame = try XCTUnwrap(try consuming.next(from: &buffer))
                XCTAssertEqual(frame.type, type)
                XCTAssertEqual(buffer.readerIndex - before, size)
                frames.append(frame)
            }
            XCTAssertNil(try consuming.next(from: &buffer), "split at \(split)")
            XCTAssertEqual(frames, Array(expected.prefix(frames.count)), "split at \(split)")
        }
        var bad = ByteBuffer(bytes: [UInt8(ascii: "D"), 0, 0, 0, 3])
        XCTAssertThrowsPGWireError(.invalidLength, try PGBackendDecoder().peekHeader(in: bad))
        bad = ByteBuffer(bytes: [UInt8(ascii: "D"), 0x7F, 0, 0, 0])
        XCTAssertThrowsPGWireError(.messageTooLarge, try PGBackendDecoder(maxMessageLength: 1024).peekHeader(in: bad))
    }

    // MARK: split at every byte (direct API)

    /// Feeds `stream` split at `splits` into a fresh decoder; checks nil never consumes bytes.
    private func feedFrontend(_ stream: ByteBuffer, splits: [Int]) throws -> [PGFrontendPart] {
        var decoder = PGFrontendDecoder()
        var buffer = ByteBuffer()
        var parts = [PGFrontendPart]()
        var start = 0
        for end in splits + [stream.readableBytes] {
            var chunk = stream.getSlice(at: stream.readerIndex + start, length: end - start)!
            buffer.writeBuffer(&chunk)
            start = end
            while true {
                let before = buffer.readerIndex
                guard let part = try decoder.next(from: &buffer) else {
                    XCTAssertEqual(buffer.readerIndex, before, "nil must leave the buffer untouched")
                    break
                }
                parts.append(part)
            }
        }
        XCTAssertEqual(buffer.readableBytes, 0)
        return parts
    }

    func testFrontendDecoderSplitAtEveryByte() throws {
        let (stream, expected) = Self.frontendConnection(leadingPackets: [.sslRequest, .gssencRequest])
        for split in 0...stream.readableBytes {
            XCTAssertEqual(try self.feedFrontend(stream, splits: [split]), expected, "split at \(split)")
        }
        // Every byte separately.
        XCTAssertEqual(try self.feedFrontend(stream, splits: Array(1..<stream.readableBytes)), expected)
    }

    func testBackendDecoderSplitAtEveryByte() throws {
        let (stream, expected) = Self.backendStream()
        for split in 0...stream.readableBytes {
            var decoder = PGBackendDecoder()
            var buffer = stream.getSlice(at: 0, length: split)!
            var frames = [PGFrame]()
            while let frame = try decoder.next(from: &buffer) { frames.append(frame) }
            var rest = stream.getSlice(at: split, length: stream.readableBytes - split)!
            buffer.writeBuffer(&rest)
            while let frame = try decoder.next(from: &buffer) { frames.append(frame) }
            XCTAssertEqual(frames, expected, "split at \(split)")
            XCTAssertEqual(buffer.readableBytes, 0)
        }
    }

    // MARK: split at every byte (ByteToMessageDecoder wrappers)

    func testFrontendByteDecoderEverySplitThroughChannel() throws {
        let (stream, expected) = Self.frontendConnection()
        for split in 0...stream.readableBytes {
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(PGFrontendByteDecoder()))
            try channel.writeInbound(stream.getSlice(at: 0, length: split)!)
            try channel.writeInbound(stream.getSlice(at: split, length: stream.readableBytes - split)!)
            var parts = [PGFrontendPart]()
            while let part = try channel.readInbound(as: PGFrontendPart.self) { parts.append(part) }
            XCTAssertEqual(parts, expected, "split at \(split)")
            XCTAssertTrue(try channel.finish().isClean)
        }
    }

    func testFrontendByteDecoderWithVerifier() throws {
        let connections = [
            Self.frontendConnection(leadingPackets: []),
            Self.frontendConnection(leadingPackets: [.sslRequest]),
            Self.frontendConnection(leadingPackets: [.gssencRequest, .sslRequest]),
            Self.cancelConnection(),
        ]
        XCTAssertNoThrow(try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: connections.map { ($0.0, $0.1) },
            decoderFactory: { ResettingFrontendByteDecoder() }
        ))
        // The plain wrapper with a single packet type that keeps the phase (.startup).
        var ssl = ByteBuffer()
        StartupPacket.sslRequest.encode(into: &ssl)
        var gss = ByteBuffer()
        StartupPacket.gssencRequest.encode(into: &gss)
        XCTAssertNoThrow(try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [(ssl, [.startup(.sslRequest)]), (gss, [.startup(.gssencRequest)])],
            decoderFactory: { PGFrontendByteDecoder() }
        ))
        // The plain wrapper in the typed phase, one pair per frame.
        var decoder = PGFrontendDecoder()
        decoder.phase = .messages
        let frames = FrontendMessageTests.allMessages.map { Self.frontendFrame($0.0) }
        XCTAssertNoThrow(try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: frames.map { ($0.0, [PGFrontendPart.frame($0.1)]) },
            decoderFactory: { PGFrontendByteDecoder(decoder: decoder) }
        ))
    }

    func testBackendByteDecoderWithVerifier() throws {
        let pairs = BackendMessageTests.allMessages.map { message -> (ByteBuffer, [PGFrame]) in
            let (bytes, frame) = Self.backendFrame(message)
            return (bytes, [frame])
        }
        let (stream, frames) = Self.backendStream()
        XCTAssertNoThrow(try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: pairs + [(stream, frames)],
            decoderFactory: { PGBackendByteDecoder() }
        ))
    }

    func testByteDecoderPropagatesErrors() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(PGBackendByteDecoder()))
        XCTAssertThrowsError(try channel.writeInbound(ByteBuffer(bytes: [UInt8(ascii: "Z"), 0, 0, 0, 3]))) { error in
            XCTAssertEqual((error as? PGWireError)?.code, .invalidLength)
        }
        _ = try? channel.finish()
    }
}
