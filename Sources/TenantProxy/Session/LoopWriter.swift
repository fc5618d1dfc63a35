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
/// own handlers are inbound only), writes and flushes go straight to the channel, as NIO's head
/// handler would pass them, without walking the pipeline: about 800 instructions saved per
/// write and per flush, twice each per relayed transaction. Once TLS is in the pipeline,
/// `usePipeline()` sends everything through it.
struct LoopWriter {
    private let pipeline: ChannelPipeline
    /// The channel itself; written to directly while `direct` (nothing in its pipeline handles
    /// outbound data). Not optional: unwrapping an optional existential copied it (a retain and
    /// release, about 250 instructions) on every write.
    private let core: ChannelCore
    private var direct: Bool
    private let allocator: ByteBufferAllocator
    /// The first small buffer since the last hand-over, kept as it is while it stays alone.
    private var held: ByteBuffer?
    /// Small buffers after `held`, copied behind its bytes; made when needed and handed on whole,
    /// so an idle session keeps no buffer of its own here.
    private var batch: ByteBuffer?
    private var unflushed = false

    /// Buffers up to this size are coalesced; bigger ones are written as they are.
    static let coalesceLimit = 2048

    /// `direct`: nothing in the channel's pipeline handles outbound data (no TLS), so writes may
    /// skip it.
    init(_ channel: Channel, direct: Bool) {
        self.pipeline = channel.pipeline
        self.allocator = channel.allocator
        self.core = channel._channelCore
        self.direct = direct
    }

    /// An outbound handler (TLS) joins the pipeline: from now on everything goes through it.
    /// Anything not yet flushed was meant for the plain connection and goes out first.
    mutating func usePipeline() {
        flush()
        direct = false
    }

    private func pass(_ buffer: ByteBuffer) {
        if direct {
            core.write0(NIOAny(buffer), promise: nil)
        } else {
            pipeline.syncOperations.write(NIOAny(buffer), promise: nil)
        }
    }

    mutating func write(_ buffer: ByteBuffer) {
        unflushed = true
        guard buffer.readableBytes <= Self.coalesceLimit else {
            handOver()
            pass(buffer)
            return
        }
        if batch != nil {
            batch!.writeImmutableBuffer(buffer)
        } else if let first = held {
            var joined = allocator.buffer(capacity: first.readableBytes + buffer.readableBytes + 128)
            joined.writeImmutableBuffer(first)
            joined.writeImmutableBuffer(buffer)
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
        if direct {
            core.flush0()
        } else {
            pipeline.syncOperations.flush()
        }
    }

    /// Passes what is held on to the pipeline (unflushed).
    private mutating func handOver() {
        if let joined = batch {
            batch = nil
            pass(joined)
        } else if let first = held {
            held = nil
            pass(first)
        }
    }
}
