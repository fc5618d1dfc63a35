import NIOCore
import NIOEmbedded
import XCTest

@testable import TenantProxy

/// LoopWriter on an EmbeddedChannel: what reaches the channel, in which pieces and order.
final class LoopWriterTests: XCTestCase {
    private var channel: EmbeddedChannel!

    override func setUp() {
        channel = EmbeddedChannel()
    }

    override func tearDown() {
        _ = try? channel.finish(acceptAlreadyClosed: true)
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
        var writer = LoopWriter(channel)
        writer.write(bytes("one"))
        writer.write(bytes("two"))
        XCTAssertEqual(try written(), [])
        writer.flush()
        XCTAssertEqual(try written(), ["onetwo"])
    }

    func testSmallWritesBetweenFlushesBecomeOneWrite() throws {
        var writer = LoopWriter(channel)
        for piece in ["B-header", "params", "E", "S"] { writer.write(bytes(piece)) }
        writer.flush()
        writer.write(bytes("next"))
        writer.flush()
        XCTAssertEqual(try written(), ["B-headerparamsES", "next"])
    }

    func testALoneBufferIsPassedOnWithoutACopy() throws {
        var writer = LoopWriter(channel)
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

    func testBigBuffersKeepTheirPlaceInTheStream() throws {
        var writer = LoopWriter(channel)
        let big = String(repeating: "r", count: LoopWriter.coalesceLimit + 1)
        writer.write(bytes("a"))
        writer.write(bytes("b"))
        writer.write(bytes(big))
        writer.write(bytes("c"))
        writer.write(bytes(big))
        writer.flush()
        XCTAssertEqual(try written(), ["ab", big, "c", big])
    }

    func testAFlushWithNothingWrittenDoesNothing() throws {
        var writer = LoopWriter(channel)
        writer.flush()
        writer.write(bytes("x"))
        writer.flush()
        writer.flush()
        XCTAssertEqual(try written(), ["x"])
    }

    func testEmptyBuffersChangeNothing() throws {
        var writer = LoopWriter(channel)
        writer.write(bytes(""))
        writer.write(bytes("a"))
        writer.write(bytes(""))
        writer.flush()
        XCTAssertEqual(try written().joined(), "a")
    }
}
