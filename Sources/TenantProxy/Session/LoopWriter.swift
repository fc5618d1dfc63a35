import NIOCore

/// Writes bytes into a channel from the channel's own event loop, through its whole pipeline (TLS
/// included), without `Channel.write<T>`: that one is a protocol requirement, called unspecialised,
/// and wrapped every buffer in `NIOAny` through dynamic casts (type metadata and conformance
/// cache lookups, a lock among them) on each message relayed. Here the buffer's type is known
/// where it is wrapped.
struct LoopWriter {
    let pipeline: ChannelPipeline

    init(_ channel: Channel) {
        self.pipeline = channel.pipeline
    }

    func write(_ buffer: ByteBuffer) {
        pipeline.syncOperations.write(NIOAny(buffer), promise: nil)
    }

    func flush() {
        pipeline.syncOperations.flush()
    }

    func writeAndFlush(_ buffer: ByteBuffer) {
        pipeline.syncOperations.writeAndFlush(NIOAny(buffer), promise: nil)
    }
}
