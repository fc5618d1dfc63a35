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
struct LoopWriter {
    private let pipeline: ChannelPipeline
    private let allocator: ByteBufferAllocator
    /// The first small buffer since the last hand-over, kept as it is while it stays alone.
    private var held: ByteBuffer?
    /// Small buffers after `held`, copied behind its bytes; made when needed and handed on whole,
    /// so an idle session keeps no buffer of its own here.
    private var batch: ByteBuffer?
    private var unflushed = false

    /// Buffers up to this size are coalesced; bigger ones are written as they are.
    static let coalesceLimit = 2048

    init(_ channel: Channel) {
        self.pipeline = channel.pipeline
        self.allocator = channel.allocator
    }

    mutating func write(_ buffer: ByteBuffer) {
        unflushed = true
        guard buffer.readableBytes <= Self.coalesceLimit else {
            handOver()
            pipeline.syncOperations.write(NIOAny(buffer), promise: nil)
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
        pipeline.syncOperations.flush()
    }

    /// Passes what is held on to the pipeline (unflushed).
    private mutating func handOver() {
        if let joined = batch {
            batch = nil
            pipeline.syncOperations.write(NIOAny(joined), promise: nil)
        } else if let first = held {
            held = nil
            pipeline.syncOperations.write(NIOAny(first), promise: nil)
        }
    }
}
