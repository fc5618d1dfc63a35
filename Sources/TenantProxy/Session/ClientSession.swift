import Logging
import NIOCore
import NIOPosix
import PGWire

/// One client connection and the upstream connection that serves it (session pooling: one upstream
/// connection per client for its life). Both channels live on the same EventLoop, so this class is
/// only ever touched from that loop and needs no lock.
///
/// Start-up and authentication are decided by `ClientStartupMachine` and `UpstreamStartupMachine`;
/// once both sides are ready, frames are relayed as slices of the bytes read, without re-encoding.
final class ClientSession {
    private enum Phase {
        case startup
        case connectingUpstream
        case relaying
        case closed
    }

    let client: Channel
    private let runtime: ProxyRuntime
    private var logger: Logger
    private var phase: Phase = .startup

    private var frontendDecoder: PGFrontendDecoder
    private var backendDecoder: PGBackendDecoder
    private var startupMachine: ClientStartupMachine
    private var upstreamMachine: UpstreamStartupMachine?

    private var upstream: Channel?
    /// Client bytes not yet forming a whole message.
    private var clientPending: ByteBuffer?
    /// Upstream bytes not yet forming a whole message.
    private var upstreamPending: ByteBuffer?
    /// Whole client messages that arrived before the upstream was ready.
    private var heldForUpstream: ByteBuffer?

    private var clientUser = ""
    private var startupMessage: StartupMessage?
    private(set) var proxyKey: BackendKeyData?
    /// Status of the last ReadyForQuery relayed: shutdown closes idle sessions at a boundary.
    private var transactionStatus: TransactionStatus = .idle
    private var awaitingReply = false
    /// The client said goodbye: the upstream closing next is expected, not an error.
    private var clientTerminated = false

    init(client: Channel, runtime: ProxyRuntime) {
        self.client = client
        self.runtime = runtime
        self.logger = runtime.logger
        let maxMessage = runtime.config.server.maxMessageBytes
        self.frontendDecoder = PGFrontendDecoder(maxMessageLength: maxMessage)
        self.backendDecoder = PGBackendDecoder(maxMessageLength: maxMessage)
        let trust = runtime.config.auth.trustLoopback && Self.isLoopback(client.remoteAddress)
        self.startupMachine = ClientStartupMachine(users: runtime.users, trust: trust, mockSecret: runtime.mockSecret)
        if let address = client.remoteAddress {
            logger[metadataKey: "client"] = "\(address.ipAddress ?? "?"):\(address.port ?? 0)"
        }
    }

    static func isLoopback(_ address: SocketAddress?) -> Bool {
        guard let address else { return false }
        switch address {
        case .v4:
            return address.ipAddress?.hasPrefix("127.") ?? false
        case .v6:
            let ip = address.ipAddress ?? ""
            return ip == "::1" || ip.hasPrefix("::ffff:127.")
        case .unixDomainSocket:
            return true
        }
    }

    // MARK: - Client side events

    func clientRead(_ data: ByteBuffer) {
        guard phase != .closed else { return }
        var buffer = Self.append(data, to: &clientPending)
        do {
            switch phase {
            case .startup:
                try processStartup(&buffer)
            case .connectingUpstream:
                try holdClientMessages(&buffer)
            case .relaying:
                try relayClientMessages(&buffer)
            case .closed:
                return
            }
        } catch let error as PGWireError {
            logger.info("closing client: malformed message", metadata: ["error": "\(error)"])
            fail(.protocolViolation(error.message))
            return
        } catch {
            fail(.protocolViolation("unreadable message"))
            return
        }
        if buffer.readableBytes > 0, phase != .closed {
            clientPending = buffer
        }
    }

    func clientReadComplete() {
        upstream?.flush()
    }

    func clientClosed() {
        guard phase != .closed else { return }
        logger.debug("client disconnected")
        close()
    }

    func clientWritabilityChanged() {
        // Backpressure: stop reading the upstream while the client cannot take more bytes.
        upstream?.setOption(ChannelOptions.autoRead, value: client.isWritable).whenFailure { _ in }
    }

    // MARK: - Start-up

    private func processStartup(_ buffer: inout ByteBuffer) throws {
        while phase == .startup, let part = try frontendDecoder.next(from: &buffer) {
            let action: ClientStartupMachine.Action
            switch part {
            case .startup(let packet):
                action = startupMachine.receive(packet)
            case .frame(let frame):
                action = startupMachine.receive(frame)
            }
            try run(action, remaining: &buffer)
        }
    }

    private func run(_ action: ClientStartupMachine.Action, remaining buffer: inout ByteBuffer) throws {
        switch action {
        case .refuseEncryption:
            // Bytes after an SSLRequest before our answer would be a TLS ClientHello sent blind.
            guard buffer.readableBytes == 0 else {
                fail(.protocolViolation("data sent before the encryption answer"))
                return
            }
            var answer = client.allocator.buffer(capacity: 1)
            answer.writeInteger(UInt8(ascii: "N"))
            client.writeAndFlush(answer, promise: nil)

        case .send(let messages):
            writeToClient(messages, flush: true)

        case .cancel(let request):
            forwardCancel(request)

        case .fail(let error):
            logger.info("refused client", metadata: ["sqlstate": "\(error.sqlState)", "reason": "\(error.message)"])
            fail(error)

        case .authenticated(let user, let startup, let messages):
            clientUser = user
            startupMessage = startup
            logger[metadataKey: "user"] = "\(user)"
            writeToClient(messages, flush: true)
            if runtime.isDraining {
                fail(.notAcceptingConnections)
                return
            }
            guard let key = runtime.registry.register(self) else {
                fail(.tooManyClients)
                return
            }
            proxyKey = key
            logger[metadataKey: "session"] = "\(key.processID)"
            phase = .connectingUpstream
            try holdClientMessages(&buffer)
            connectUpstream(startup: startup)
        }
    }

    private func holdClientMessages(_ buffer: inout ByteBuffer) throws {
        let unread = buffer
        while let part = try frontendDecoder.next(from: &buffer) {
            if case .startup = part { throw PGWireError(code: .unexpectedMessage, message: "startup packet after log-in") }
        }
        let whole = buffer.readerIndex - unread.readerIndex
        guard whole > 0, let slice = unread.getSlice(at: unread.readerIndex, length: whole) else { return }
        heldForUpstream = Self.append(slice, to: &heldForUpstream)
    }

    // MARK: - Upstream connection

    private func connectUpstream(startup: StartupMessage) {
        let config = runtime.config.upstream
        let database = config.database.isEmpty ? (startup.database ?? clientUser) : config.database
        var parameters = startup.parameters
        parameters["user"] = config.user
        parameters["database"] = database
        parameters.removeValue(forKey: "replication")
        for key in parameters.keys where key.hasPrefix("_pq_.") {
            parameters.removeValue(forKey: key)
        }
        upstreamMachine = UpstreamStartupMachine(user: config.user, password: config.password)
        let upstreamStartup = StartupMessage(parameters: parameters)

        let bootstrap = ClientBootstrap(group: client.eventLoop)
            .channelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(Int64(config.connectTimeoutSeconds)))
            .channelInitializer { [self] channel in
                channel.pipeline.addHandler(UpstreamChannelHandler(session: self))
            }
        bootstrap.connect(host: config.host, port: config.port).whenComplete { [self] result in
            switch result {
            case .success(let channel):
                guard phase == .connectingUpstream else {
                    channel.close(promise: nil)
                    return
                }
                upstream = channel
                var buffer = channel.allocator.buffer(capacity: 256)
                upstreamStartup.encode(into: &buffer)
                channel.writeAndFlush(buffer, promise: nil)
            case .failure(let error):
                logger.warning("upstream connect failed", metadata: ["error": "\(error)"])
                fail(.upstreamUnavailable)
            }
        }
    }

    func upstreamRead(_ data: ByteBuffer) {
        guard phase != .closed else { return }
        var buffer = Self.append(data, to: &upstreamPending)
        do {
            if phase == .connectingUpstream {
                try processUpstreamStartup(&buffer)
            }
            if phase == .relaying {
                try relayUpstreamMessages(&buffer)
            }
        } catch {
            logger.warning("upstream sent an unreadable message", metadata: ["error": "\(error)"])
            fail(.upstreamProtocol("unreadable message"))
            return
        }
        if buffer.readableBytes > 0, phase != .closed {
            upstreamPending = buffer
        }
    }

    func upstreamReadComplete() {
        client.flush()
    }

    func upstreamClosed() {
        guard phase != .closed else { return }
        if clientTerminated {
            close()
        } else if phase == .connectingUpstream {
            fail(.upstreamUnavailable)
        } else {
            logger.warning("upstream connection lost")
            fail(.upstreamLost)
        }
    }

    func upstreamWritabilityChanged() {
        guard let upstream else { return }
        client.setOption(ChannelOptions.autoRead, value: upstream.isWritable).whenFailure { _ in }
    }

    private func processUpstreamStartup(_ buffer: inout ByteBuffer) throws {
        while phase == .connectingUpstream, let frame = try backendDecoder.next(from: &buffer) {
            let message = try BackendMessage.decode(frame)
            guard let action = upstreamMachine?.receive(message) else { return }
            switch action {
            case .wait:
                continue
            case .send(let reply):
                var out = upstream!.allocator.buffer(capacity: 128)
                reply.encode(into: &out)
                upstream?.writeAndFlush(out, promise: nil)
            case .fail(let error, let serverError):
                logger.warning("upstream refused the proxy", metadata: ["sqlstate": "\(serverError?.sqlState ?? error.sqlState)"])
                if let serverError {
                    failRelayingServerError(serverError)
                } else {
                    fail(error)
                }
            case .ready(let parameters, let key):
                becomeReady(parameters: parameters, upstreamKey: key)
            }
        }
    }

    private func becomeReady(parameters: [ParameterStatus], upstreamKey: BackendKeyData?) {
        guard let proxyKey else { return }
        phase = .relaying
        upstreamMachine = nil
        if let upstreamKey {
            let config = runtime.config.upstream
            runtime.registry.setCancelTarget(
                .init(key: upstreamKey, host: config.host, port: config.port), for: proxyKey.processID)
        }
        var messages: [BackendMessage] = [.authentication(.ok)]
        messages += parameters.map { .parameterStatus($0) }
        messages.append(.backendKeyData(proxyKey))
        messages.append(.readyForQuery(ReadyForQuery(status: .idle)))
        writeToClient(messages, flush: true)
        logger.debug("session ready")
        if var held = heldForUpstream {
            heldForUpstream = nil
            do {
                try relayClientMessages(&held, alreadyFramed: true)
            } catch {
                fail(.protocolViolation("unreadable message"))
                return
            }
            upstream?.flush()
        }
    }

    // MARK: - Relaying

    private func relayClientMessages(_ buffer: inout ByteBuffer, alreadyFramed: Bool = false) throws {
        guard let upstream else { return }
        if alreadyFramed {
            upstream.write(buffer, promise: nil)
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            awaitingReply = true
            return
        }
        let unread = buffer
        while let part = try frontendDecoder.next(from: &buffer) {
            guard case .frame(let frame) = part else {
                throw PGWireError(code: .unexpectedMessage, message: "startup packet after log-in")
            }
            if frame.type == FrontendMessageID.terminate.rawValue {
                clientTerminated = true
            }
        }
        let whole = buffer.readerIndex - unread.readerIndex
        if whole > 0, let slice = unread.getSlice(at: unread.readerIndex, length: whole) {
            awaitingReply = true
            upstream.write(slice, promise: nil)
        }
    }

    private func relayUpstreamMessages(_ buffer: inout ByteBuffer) throws {
        let unread = buffer
        while let frame = try backendDecoder.next(from: &buffer) {
            if frame.type == BackendMessageID.readyForQuery.rawValue,
               let byte = frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt8.self),
               let status = TransactionStatus(rawValue: byte) {
                transactionStatus = status
                awaitingReply = false
            }
        }
        let whole = buffer.readerIndex - unread.readerIndex
        if whole > 0, let slice = unread.getSlice(at: unread.readerIndex, length: whole) {
            client.write(slice, promise: nil)
        }
        if runtime.isDraining, transactionStatus == .idle, !awaitingReply {
            // A session that is between transactions when the proxy drains ends cleanly here.
            fail(.shuttingDown)
        }
    }

    // MARK: - Cancel

    private func forwardCancel(_ request: CancelRequest) {
        phase = .closed
        let target = runtime.registry.cancelTarget(for: request)
        client.close(promise: nil)
        guard let target else {
            logger.info("cancel request with unknown key ignored")
            return
        }
        let logger = self.logger
        ClientBootstrap(group: client.eventLoop)
            .connectTimeout(.seconds(Int64(runtime.config.upstream.connectTimeoutSeconds)))
            .connect(host: target.host, port: target.port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    var buffer = channel.allocator.buffer(capacity: 16)
                    CancelRequest(processID: target.key.processID, secretKey: target.key.secretKey).encode(into: &buffer)
                    channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
                case .failure(let error):
                    logger.warning("could not forward cancel request", metadata: ["error": "\(error)"])
                }
            }
    }

    // MARK: - Shutdown

    /// Called on the session's loop when the proxy drains: an idle session ends now, a busy one
    /// at its next transaction boundary.
    func drain() {
        guard phase != .closed else { return }
        if phase == .relaying, transactionStatus == .idle, !awaitingReply {
            fail(.shuttingDown)
        } else if phase == .startup {
            fail(.notAcceptingConnections)
        }
    }

    /// Ends the session at once (drain timeout).
    func terminate() {
        fail(.shuttingDown)
    }

    // MARK: - Helpers

    private func writeToClient(_ messages: [BackendMessage], flush: Bool) {
        guard !messages.isEmpty else { return }
        var buffer = client.allocator.buffer(capacity: 256)
        for message in messages {
            message.encode(into: &buffer)
        }
        if flush {
            client.writeAndFlush(buffer, promise: nil)
        } else {
            client.write(buffer, promise: nil)
        }
    }

    private func failRelayingServerError(_ error: ErrorResponse) {
        guard phase != .closed else { return }
        writeToClient([.errorResponse(error)], flush: true)
        close()
    }

    /// Sends the error to the client and closes both connections.
    private func fail(_ error: ProxyError) {
        guard phase != .closed else { return }
        writeToClient([.errorResponse(error.errorResponse)], flush: true)
        close()
    }

    private func close() {
        guard phase != .closed else { return }
        phase = .closed
        clientPending = nil
        upstreamPending = nil
        heldForUpstream = nil
        if let proxyKey {
            runtime.registry.unregister(proxyKey.processID)
        }
        if let upstream {
            // Tell the server we are leaving so it does not log an unexpected EOF.
            var terminate = upstream.allocator.buffer(capacity: 5)
            FrontendMessage.terminate.encode(into: &terminate)
            upstream.writeAndFlush(terminate).whenComplete { _ in upstream.close(promise: nil) }
        }
        upstream = nil
        client.close(promise: nil)
    }

    /// Joins newly read bytes to what is left of earlier reads, copying only when something is left.
    private static func append(_ data: ByteBuffer, to pending: inout ByteBuffer?) -> ByteBuffer {
        guard var existing = pending else { return data }
        pending = nil
        existing.discardReadBytes()
        var incoming = data
        existing.writeBuffer(&incoming)
        return existing
    }
}
