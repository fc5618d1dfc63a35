import NIOCore

/// Writes bytes into a channel from the channel's own event loop, through its whole pipeline (TLS
/// included), without `Channel.write<T>`: that one is a protocol requirement, called unspecialised,
/// and wrapped every buffer in `NIOAny` through dynamic casts (type metadata and conformance
/// cache lookups, a lock among them) on each message relayed. Here the buffer's type is known
/// where it is wrapped. A flush with nothing written since the last one is skipped: it would still
/// walk the pipeline.
struct LoopWriter {
    private let pipeline: ChannelPipeline
    private var unflushed = false

    init(_ channel: Channel) {
        self.pipeline = channel.pipeline
    }

    mutating func write(_ buffer: ByteBuffer) {
        pipeline.syncOperations.write(NIOAny(buffer), promise: nil)
        unflushed = true
    }

    mutating func flush() {
        guard unflushed else { return }
        unflushed = false
        pipeline.syncOperations.flush()
    }
}
