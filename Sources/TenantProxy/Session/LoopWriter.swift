import NIOCore

/// Writes bytes into a channel from the channel's own event loop, through its whole pipeline (TLS
/// included), without `Channel.write<T>`: that one is a protocol requirement, called unspecialised,
/// and wrapped every buffer in `NIOAny` through dynamic casts (type metadata and conformance
/// cache lookups, a lock among them) on each message relayed. Here the buffer's type is known
/// where it is wrapped. A flush with nothing written since the last one is skipped: it would still
/// walk the pipeline.
///
/// Small buffers written between two flushes are coalesced: each pipeline write costs more than
/// a thousand instructions in SwiftNIO (a walk of the pipeline, a pending-write record, checks of
/// the channel's state), copying a few hundred bytes far less. A renamed Bind (header, the
/// client's parameters, then its Execute and Sync) goes out as one write instead of three or four.
/// A buffer alone since the last flush is passed on as it is, without a copy; big ones (result
/// rows) always are. Every write to the channel between flushes must go through its writer, or it
/// would overtake the bytes held here; `flush()` hands everything on in order.
///
/// While no handler in the pipeline touches outbound data (a plaintext connection: the proxy's
/// own handlers are inbound only), bytes skip the pipeline: on a TCP socket whose descriptor is
/// known they are sent on it by the writer itself (`SocketSend`), and NIO gets only what the
/// kernel does not take at once; otherwise they go straight to the channel as NIO's head handler
/// would pass them (about 800 instructions saved per write and per flush). Once TLS is in the
/// pipeline, `usePipeline()` sends everything through it.
///
/// Sending on the socket keeps the stream's order with one rule: while anything this writer gave
/// NIO is still queued there, later bytes queue behind it in NIO too. Writes to the channel from
/// outside the writer happen only before it is first used (log-in messages, all of them written
/// before the peer's answer that lets the writer be used) or right before closing (Terminate).
struct LoopWriter {
    private let pipeline: ChannelPipeline
    /// The channel itself; written to directly while `direct` (nothing in its pipeline handles
    /// outbound data). Not optional: unwrapping an optional existential copied it (a retain and
    /// release, about 250 instructions) on every write.
    private let core: ChannelCore
    private var direct: Bool
    /// The channel's socket while bytes are sent on it (see `SocketSend`), else -1.
    private var descriptor: CInt = -1
    /// For the socket path: whether the channel is still open (a closed descriptor's number is
    /// reused) and its loop, for the promise that tells when NIO's queue drains.
    private let channel: Channel
    /// Writes NIO holds for this writer (the kernel did not take them at once), made at the first
    /// one: while any remain, bytes go to NIO behind them instead of to the socket.
    private var backlog: Backlog?
    /// Bytes went to NIO since the last flush (which flushes NIO and tracks them in `backlog`).
    private var queuedSinceFlush = false
    private let allocator: ByteBufferAllocator
    /// The first small buffer since the last hand-over, kept as it is while it stays alone.
    private var held: ByteBuffer?
    /// Small buffers after `held`, copied behind its bytes; made when needed and handed on whole,
    /// so an idle session keeps no buffer of its own here.
    private var batch: ByteBuffer?
    /// With `reusesBatch`: the last batch's storage, kept when the kernel took all of it, for
    /// the next batch (no allocation per renamed Bind). Only pooled upstream connections' writers
    /// keep one (a pool has a few); a client's writer does not, so an idle client holds none.
    private var spare: ByteBuffer?
    private let reusesBatch: Bool
    private var unflushed = false

    /// Buffers up to this size are coalesced; bigger ones are written as they are.
    static let coalesceLimit = 2048
    /// A batch's storage is kept for the next one up to this capacity.
    static let spareLimit = 16 * 1024

    /// `direct`: nothing in the channel's pipeline handles outbound data (no TLS), so writes may
    /// skip it.
    init(_ channel: Channel, direct: Bool, reusesBatch: Bool = false) {
        self.reusesBatch = reusesBatch
        self.pipeline = channel.pipeline
        self.allocator = channel.allocator
        self.core = channel._channelCore
        self.channel = channel
        self.direct = direct
        if direct, let descriptor = SocketSend.descriptor(of: channel) {
            self.descriptor = descriptor
        }
    }

    /// Whether bytes are sent on the socket by the writer.
    var sendsOnSocket: Bool { descriptor >= 0 }
    /// Flushes of bytes given to NIO (the kernel did not take them at once) not yet written.
    var flushesQueuedInNIO: Int { backlog?.writes ?? 0 }

    /// An outbound handler (TLS) joins the pipeline: from now on everything goes through it.
    /// Anything not yet flushed was meant for the plain connection and goes out first.
    mutating func usePipeline() {
        flush()
        direct = false
        descriptor = -1
    }

    /// Sends or queues `buffer`; true when NIO holds (some of) it, false when the kernel took it all.
    @discardableResult
    private mutating func pass(_ buffer: ByteBuffer) -> Bool {
        if descriptor >= 0 {
            var rest = buffer
            if !queuedSinceFlush, backlog?.writes ?? 0 == 0, channel.isActive {
                guard let unsent = SocketSend.send(buffer, on: descriptor) else { return false }
                rest = unsent
            }
            queuedSinceFlush = true
            core.write0(NIOAny(rest), promise: nil)
        } else if direct {
            core.write0(NIOAny(buffer), promise: nil)
        } else {
            pipeline.syncOperations.write(NIOAny(buffer), promise: nil)
        }
        return true
    }

    mutating func write(_ buffer: ByteBuffer) {
        unflushed = true
        guard buffer.readableBytes <= Self.coalesceLimit else {
            handOver()
            pass(buffer)
            return
        }
        if batch != nil {
            Self.append(buffer, to: &batch!)
        } else if let first = held {
            var joined: ByteBuffer
            if spare != nil {
                joined = spare!
                spare = nil
                joined.clear()   // unique now: no allocation
            } else {
                joined = allocator.buffer(capacity: first.readableBytes + buffer.readableBytes + 128)
            }
            Self.append(first, to: &joined)
            Self.append(buffer, to: &joined)
            held = nil
            batch = joined
        } else {
            held = buffer
        }
    }

    mutating func flush() {
        guard unflushed else { return }
        unflushed = false
        handOver()
        if descriptor >= 0 {
            guard queuedSinceFlush else { return }
            queuedSinceFlush = false
            // An empty write behind the queued bytes: NIO completes writes in order, so its
            // promise says when everything this writer queued has reached the socket.
            let backlog = self.backlog ?? Backlog()
            self.backlog = backlog
            backlog.writes += 1
            let drained = channel.eventLoop.makePromise(of: Void.self)
            core.write0(NIOAny(ByteBuffer()), promise: drained)
            core.flush0()
            drained.futureResult.whenComplete { _ in backlog.writes -= 1 }
        } else if direct {
            core.flush0()
        } else {
            pipeline.syncOperations.flush()
        }
    }

    /// One memcpy (writeImmutableBuffer went through ByteBuffer's generic byte-copy path, about
    /// 150 instructions a call).
    private static func append(_ source: ByteBuffer, to batch: inout ByteBuffer) {
        let count = source.readableBytes
        guard count > 0 else { return }
        batch.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { out in
            source.withUnsafeReadableBytes { out.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: count) }
            return count
        }
    }

    /// Passes what is held on to the pipeline (unflushed).
    private mutating func handOver() {
        if let joined = batch {
            batch = nil
            if !pass(joined), reusesBatch, joined.capacity <= Self.spareLimit { spare = joined }
        } else if let first = held {
            held = nil
            pass(first)
        }
    }
}

extension LoopWriter {
    /// Flushes of bytes a writer gave NIO that NIO has not finished writing.
    fileprivate final class Backlog {
        var writes = 0
    }
}
