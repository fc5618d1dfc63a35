import NIOCore

/// A `ByteToMessageDecoder` wrapping ``PGFrontendDecoder``, for tests and simple pipelines.
public struct PGFrontendByteDecoder: ByteToMessageDecoder {
    public typealias InboundOut = PGFrontendPart

    /// The wrapped stream decoder.
    public var decoder: PGFrontendDecoder

    /// Creates the handler around a configured ``PGFrontendDecoder``.
    public init(decoder: PGFrontendDecoder = PGFrontendDecoder()) {
        self.decoder = decoder
    }

    /// Decodes at most one part per call, as `ByteToMessageDecoder` expects.
    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let part = try self.decoder.next(from: &buffer) else {
            return .needMoreData
        }
        context.fireChannelRead(Self.wrapInboundOut(part))
        return .continue
    }

    /// Same as `decode(context:buffer:)`; leftover bytes at EOF are reported by NIO.
    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try self.decode(context: context, buffer: &buffer)
    }
}

/// A `ByteToMessageDecoder` wrapping ``PGBackendDecoder``, for tests and simple pipelines.
public struct PGBackendByteDecoder: ByteToMessageDecoder {
    public typealias InboundOut = PGFrame

    /// The wrapped stream decoder.
    public var decoder: PGBackendDecoder

    /// Creates the handler around a configured ``PGBackendDecoder``.
    public init(decoder: PGBackendDecoder = PGBackendDecoder()) {
        self.decoder = decoder
    }

    /// Decodes at most one part per call, as `ByteToMessageDecoder` expects.
    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try self.decoder.next(from: &buffer) else {
            return .needMoreData
        }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    /// Same as `decode(context:buffer:)`; leftover bytes at EOF are reported by NIO.
    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try self.decode(context: context, buffer: &buffer)
    }
}
