import NIOCore

extension ByteBuffer {
    /// Newly read bytes joined to what is left of earlier reads (a frame split across reads),
    /// copying only when something is left; `pending` is emptied.
    static func joining(_ data: ByteBuffer, after pending: inout ByteBuffer?) -> ByteBuffer {
        guard var existing = pending else { return data }
        pending = nil
        existing.discardReadBytes()
        var incoming = data
        existing.writeBuffer(&incoming)
        return existing
    }
}
