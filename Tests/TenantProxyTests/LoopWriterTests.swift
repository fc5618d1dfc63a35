import NIOCore
import NIOEmbedded
import XCTest

@testable import TenantProxy

/// LoopWriter on an EmbeddedChannel: what reaches the channel, in which pieces and order. Each
/// case runs twice: through the pipeline and straight to the channel (plaintext connections).
final class LoopWriterTests: XCTestCase {
    private var channel: EmbeddedChannel!

    private func eachMode(_ body: (inout LoopWriter) throws -> Void) throws {
        for direct in [false, true] {
            channel = EmbeddedChannel()
            defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
            var writer = LoopWriter(channel, direct: direct)
            try body(&writer)
        }
    }

    private func bytes(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    /// Everything the channel was given to send, one element per pipeline write.
    private func written() throws -> [String] {
        var out: [String] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            out.append(String(buffer: buffer))
        }
        return out
    }

    func testNothingReachesTheChannelBeforeFlush() throws {
        try eachMode { writer in
            writer.write(bytes("one"))
            writer.write(bytes("two"))
            XCTAssertEqual(try written(), [])
            writer.flush()
            XCTAssertEqual(try written(), ["onetwo"])
        }
    }

    func testSmallWritesBetweenFlushesBecomeOneWrite() throws {
        try eachMode { writer in
            for piece in ["B-header", "params", "E", "S"] { writer.write(bytes(piece)) }
            writer.flush()
            writer.write(bytes("next"))
            writer.flush()
            XCTAssertEqual(try written(), ["B-headerparamsES", "next"])
        }
    }

    func testALoneBufferIsPassedOnWithoutACopy() throws {
        try eachMode { writer in
            var source = ByteBuffer(string: "xxSELECT 1yy")
            source.moveReaderIndex(forwardBy: 2)
            let slice = source.getSlice(at: source.readerIndex, length: 8)!
            writer.write(slice)
            writer.flush()
            let out = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self))
            XCTAssertEqual(String(buffer: out), "SELECT 1")
            // Same storage as the slice: its bytes were not copied.
            let sameStorage = out.withUnsafeReadableBytes { a in slice.withUnsafeReadableBytes { b in a.baseAddress == b.baseAddress } }
            XCTAssertTrue(sameStorage)
        }
    }

    func testBigBuffersKeepTheirPlaceInTheStream() throws {
        try eachMode { writer in
            let big = String(repeating: "r", count: LoopWriter.coalesceLimit + 1)
            writer.write(bytes("a"))
            writer.write(bytes("b"))
            writer.write(bytes(big))
            writer.write(bytes("c"))
            writer.write(bytes(big))
            writer.flush()
            XCTAssertEqual(try written(), ["ab", big, "c", big])
        }
    }

    func testAFlushWithNothingWrittenDoesNothing() throws {
        try eachMode { writer in
            writer.flush()
            writer.write(bytes("x"))
            writer.flush()
            writer.flush()
            XCTAssertEqual(try written(), ["x"])
        }
    }

    func testEmptyBuffersChangeNothing() throws {
        try eachMode { writer in
            writer.write(bytes(""))
            writer.write(bytes("a"))
            writer.write(bytes(""))
            writer.flush()
            XCTAssertEqual(try written().joined(), "a")
        }
    }

    /// Straight-to-the-channel writes skip outbound handlers; once TLS joins, `usePipeline()`
    /// flushes what was meant for the plain connection and sends the rest through the handlers.
    func testUsePipelineRoutesLaterWritesThroughOutboundHandlers() throws {
        channel = EmbeddedChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        var writer = LoopWriter(channel, direct: true)
        writer.write(bytes("S"))
        writer.usePipeline()
        try channel.pipeline.syncOperations.addHandler(Wrapping())
        writer.write(bytes("hello"))
        writer.flush()
        XCTAssertEqual(try written(), ["S", "[hello]"])
    }
}

/// An outbound handler standing in for TLS: it changes what it passes on.
private final class Wrapping: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let text = String(buffer: unwrapOutboundIn(data))
        context.write(wrapOutboundOut(ByteBuffer(string: "[\(text)]")), promise: promise)
    }
}
