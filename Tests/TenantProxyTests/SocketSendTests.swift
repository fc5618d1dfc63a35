import NIOCore
import NIOEmbedded
import NIOPosix
import XCTest

@testable import TenantProxy

/// LoopWriter sending on a real loopback TCP socket (SocketSend): the descriptor is found and
/// verified, bytes arrive whole and in order whether the kernel takes them at once or NIO has
/// to queue them, and a writer whose channel closed never sends on a descriptor number that a
/// newer connection got.
final class SocketSendTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var server: Channel!
    /// Accepted connections, in order.
    private var accepted: [EventLoopPromise<Channel>] = []
    private let acceptedLock = NSLock()

    override func setUpWithError() throws {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        server = try ServerBootstrap(group: group)
            // A small send buffer, so that a client that does not read fills it quickly.
            .childChannelOption(ChannelOptions.socketOption(.so_sndbuf), value: 4096)
            .childChannelInitializer { [self] channel in
                acceptedLock.lock()
                defer { acceptedLock.unlock() }
                accepted.removeFirst().succeed(channel)
                return loop.makeSucceededVoidFuture()
            }
            .bind(host: "127.0.0.1", port: 0).wait()
    }

    override func tearDownWithError() throws {
        try server.close().wait()
        try group.syncShutdownGracefully()
    }

    /// A client connection reading into a `Collector`, and the server's end of it.
    private func connect(reading: Bool = true) throws -> (client: Channel, collector: Collector, served: Channel) {
        let promise = group.next().makePromise(of: Channel.self)
        acceptedLock.lock()
        accepted.append(promise)
        acceptedLock.unlock()
        let collector = Collector(eventLoop: group.next())
        let client = try ClientBootstrap(group: group)
            .channelOption(ChannelOptions.autoRead, value: reading)
            .channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: 4096)
            .channelInitializer { $0.pipeline.addHandler(collector) }
            .connect(to: server.localAddress!).wait()
        return (client, collector, try promise.futureResult.wait())
    }

    /// Runs `body` with a writer on the served channel's loop (where writers live).
    private func onLoop<T>(_ served: Channel, _ body: @escaping () throws -> T) throws -> T {
        try served.eventLoop.submit(body).wait()
    }

    func testTheDescriptorOfATCPChannelIsFoundAndOfAnEmbeddedOneNot() throws {
        let (client, _, served) = try connect()
        defer { client.close(promise: nil) }
        let found = try onLoop(served) { SocketSend.descriptor(of: served) }
        XCTAssertNotNil(found, "SwiftNIO's socket layout changed: LoopWriter lost its socket path")
        XCTAssertTrue(try onLoop(served) { LoopWriter(served, direct: true).sendsOnSocket })
        XCTAssertFalse(try onLoop(served) { LoopWriter(served, direct: false).sendsOnSocket })
        XCTAssertNil(SocketSend.descriptor(of: EmbeddedChannel()))
    }

    func testBytesArriveInOrderThroughTheSocketAndThroughNIOsQueue() throws {
        let (client, collector, served) = try connect(reading: false)
        defer { client.close(promise: nil) }
        let box = WriterBox(try onLoop(served) { LoopWriter(served, direct: true) })
        // Far more than the socket buffers hold while the client does not read: the kernel
        // stops taking bytes and the rest queues in NIO, behind which later writes must wait.
        var expected = ByteBuffer()
        let queued = try onLoop(served) { () -> Int in
            var sent = ByteBuffer()
            for i in 0..<600 {
                let small = ByteBuffer(string: "<\(i)>")
                let big = ByteBuffer(repeating: UInt8(ascii: "a") + UInt8(i % 26), count: LoopWriter.coalesceLimit + 1 + i)
                for piece in [small, big, small] {
                    box.writer.write(piece)
                    sent.writeImmutableBuffer(piece)
                }
                if i % 7 == 0 { box.writer.flush() }
            }
            box.writer.flush()
            expected = sent
            return box.writer.flushesQueuedInNIO
        }
        XCTAssertGreaterThan(queued, 0, "the kernel took everything: the test did not reach NIO's queue")
        let received = collector.expect(expected.readableBytes)
        client.read()
        client.setOption(ChannelOptions.autoRead, value: true).whenSuccess { client.read() }
        XCTAssertEqual(try received.wait(), expected)

        // Everything was written: the writer sends on the socket again.
        XCTAssertEqual(try onLoop(served) { box.writer.flushesQueuedInNIO }, 0)
        let tail = collector.expect(expected.readableBytes + 4)
        try onLoop(served) {
            box.writer.write(ByteBuffer(string: "tail"))
            box.writer.flush()
            XCTAssertEqual(box.writer.flushesQueuedInNIO, 0)
        }
        expected.writeString("tail")
        XCTAssertEqual(try tail.wait(), expected)
    }

    func testAWriterOfAClosedChannelNeverSendsOnANewerConnection() throws {
        let (firstClient, _, firstServed) = try connect()
        let box = WriterBox(try onLoop(firstServed) { LoopWriter(firstServed, direct: true) })
        try firstServed.close().wait()
        try firstClient.closeFuture.wait()
        // The freed descriptor number is usually the next one accepted.
        let (client, collector, served) = try connect()
        defer { client.close(promise: nil) }
        let received = collector.expect(5)
        try onLoop(served) {
            box.writer.write(ByteBuffer(string: "STALE"))
            box.writer.flush()
            var writer = LoopWriter(served, direct: true)
            writer.write(ByteBuffer(string: "fresh"))
            writer.flush()
        }
        XCTAssertEqual(String(buffer: try received.wait()), "fresh")
        // Nothing more comes: a round trip through the connection proves no stale bytes trail.
        let more = collector.expect(10)
        try onLoop(served) {
            var writer = LoopWriter(served, direct: true)
            writer.write(ByteBuffer(string: "again"))
            writer.flush()
        }
        XCTAssertEqual(String(buffer: try more.wait()), "freshagain")
    }
}

private final class WriterBox: @unchecked Sendable {
    var writer: LoopWriter
    init(_ writer: LoopWriter) { self.writer = writer }
}

/// Collects what a client receives; `expect(n)` completes once n bytes in all have arrived.
private final class Collector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let eventLoop: EventLoop
    private var received = ByteBuffer()
    private var waiting: (count: Int, promise: EventLoopPromise<ByteBuffer>)?

    init(eventLoop: EventLoop) { self.eventLoop = eventLoop }

    func expect(_ count: Int) -> EventLoopFuture<ByteBuffer> {
        let promise = eventLoop.makePromise(of: ByteBuffer.self)
        eventLoop.execute { [self] in
            waiting = (count, promise)
            check()
        }
        return promise.futureResult
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        received.writeBuffer(&buffer)
        check()
    }

    private func check() {
        guard let (count, promise) = waiting, received.readableBytes >= count else { return }
        waiting = nil
        promise.succeed(received)
    }
}
