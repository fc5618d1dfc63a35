import ArgumentParser
import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The listener: accepts clients, gives each a `ClientSession`, and drains on shutdown.
final class ProxyServer: @unchecked Sendable {
    let runtime: ProxyRuntime
    let group: MultiThreadedEventLoopGroup
    private var listeners: [Channel] = []
    private var metricsServer: MetricsHTTPServer?
    /// Every client listener is bound: /readyz answers ready only from then on (and until draining).
    private let accepting = NIOLockedValueBox(false)
    private var cancelListener: Channel?
    private let done: EventLoopPromise<Void>

    init(runtime: ProxyRuntime) {
        self.runtime = runtime
        let threads = runtime.config.server.eventLoopThreads
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads > 0 ? threads : System.coreCount)
        self.done = group.next().makePromise(of: Void.self)
        runtime.makePools(for: group)
        runtime.shutdownHandler = { [weak self] in self?.shutdown() }
    }

    /// The address actually bound (useful when the port is 0).
    var localAddress: SocketAddress? { listeners.first?.localAddress }

    /// One listening socket per event loop, in one SO_REUSEPORT group: the kernel spreads new
    /// connections over them by their addresses, and each loop accepts and serves its own. With a
    /// single listener SwiftNIO accepted on one loop and handed each connection meant for another
    /// loop across three times (set up there, back to the acceptor, registered there: an eventfd
    /// write and a wake-up each): the benchmark's -C cell counted 4.1-5.1 context switches of
    /// the proxy per connection then, 2.6-2.9 now.
    func start() throws {
        let config = runtime.config.server
        let loops = Array(group.makeIterator())
        // Several sockets need SO_REUSEPORT, which would also let a second instance started by
        // mistake share the port. Unless sharing is asked for (reuse_port), refuse to start
        // while anyone listens there, as a lone socket's bind would.
        if !config.reusePort, config.listenPort != 0 {
            try ListenAddressProbe.ensureNobodyListens(host: config.listenHost, port: config.listenPort)
        }
        // The metrics endpoint first: once a client can connect, /healthz answers too (a probe or
        // a test that starts on the client port found it refused for a few milliseconds).
        try startMetrics()
        let shared = loops.count > 1 || config.reusePort
        var port = config.listenPort
        for loop in loops {
            let channel = try bootstrap(on: loop, shared: shared)
                .bind(host: config.listenHost, port: port).wait()
            listeners.append(channel)
            // Port 0: the first socket's port is the group's.
            if port == 0 { port = channel.localAddress?.port ?? 0 }
        }
        accepting.withLockedValue { $0 = true }
        runtime.logger.info("listening", metadata: [
            "address": "\(localAddress.map { "\($0)" } ?? "?")", "sockets": "\(listeners.count)",
        ])
        if config.cancelPort > 0 {
            let runtime = self.runtime
            cancelListener = try ServerBootstrap(group: group)
                .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in channel.pipeline.addHandler(PeerCancelHandler(runtime: runtime)) }
                .bind(host: config.listenHost, port: config.cancelPort).wait()
        }
    }

    /// TCP_DEFER_ACCEPT (Linux): the kernel hands a connection to accept() once its first bytes
    /// (an SSLRequest or a StartupMessage: a PostgreSQL client always speaks first) have arrived,
    /// so accepting it and reading them take one wake-up of the loop instead of two, and a
    /// connection that never sends anything stays in the kernel for `deferAcceptSeconds`
    /// (SYN-ACK retransmissions) rather than holding a channel. PgBouncer sets the same (45 s).
    static let deferAccept = ChannelOptions.Types.SocketOption(
        level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_DEFER_ACCEPT))
    static let deferAcceptSeconds: SocketOptionValue = 45

    /// The client listener of one event loop: what it accepts lives on that loop.
    private func bootstrap(on loop: EventLoop, shared: Bool) -> ServerBootstrap {
        let runtime = self.runtime
        return ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(ChannelOptions.backlog, value: 1024)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.Types.SocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: shared ? 1 : 0)
            // On the listening socket (ServerBootstrap's default too): accepted sockets inherit it,
            // no setsockopt per connection. At the TCP level: socketOption(.tcp_nodelay) would set
            // SO_DEBUG, which only root may, and failed every connection under a service user.
            .serverChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .serverChannelOption(Self.deferAccept, value: Self.deferAcceptSeconds)
            // Inherited by accepted sockets too (no setsockopt per connection).
            .serverChannelOptions(runtime.config.server.keepalive.socketOptions)
            .childChannelInitializer { channel in
                // Options and handler set synchronously: as child channel options they went through
                // a chain of futures on every accepted connection.
                do {
                    if let options = channel.syncOptions {
                        try options.setOption(ChannelOptions.maxMessagesPerRead, value: 16)
                        // Client messages are small (queries, binds); a channel keeps its receive
                        // buffer while idle, so start small and let it grow for bigger messages.
                        try options.setOption(ChannelOptions.recvAllocator,
                                              value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65536))
                    }
                    try channel.pipeline.syncOperations.addHandler(ClientChannelHandler(runtime: runtime))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
    }

    /// /metrics, /healthz and /readyz on their own port, served by the same event loops (a scrape
    /// gathers each loop's view with futures, never blocking one).
    private func startMetrics() throws {
        let settings = runtime.config.metrics
        guard settings.listenPort > 0 else { return }
        let runtime = self.runtime
        let accepting = self.accepting
        let server = MetricsHTTPServer(
            group: group, host: settings.listenHost, port: settings.listenPort, metrics: runtime.metrics,
            gather: { loop in runtime.metricsSnapshot(on: loop) },
            ready: { accepting.withLockedValue { $0 } && !runtime.isDraining })
        try server.start()
        metricsServer = server
        runtime.logger.info("metrics endpoint", metadata: ["address": "\(server.localAddress.map { "\($0)" } ?? "?")"])
    }

    /// Stops accepting, lets sessions finish up to the configured timeout, then closes the rest.
    func shutdown() {
        guard !runtime.isDraining else { return }
        runtime.startDraining()
        let timeout = runtime.config.server.shutdownTimeoutSeconds
        runtime.logger.info("draining", metadata: ["sessions": "\(runtime.registry.count)", "timeout_seconds": "\(timeout)"])
        let done = self.done
        let runtime = self.runtime
        let cancelListener = self.cancelListener
        EventLoopFuture.andAllComplete(listeners.map { $0.close() }, on: group.next()).whenComplete { _ in
            // Cancels for the sessions still draining keep arriving from peers until the end.
            done.futureResult.whenComplete { _ in cancelListener?.close(promise: nil) }
            for session in runtime.registry.allSessions {
                session.client.eventLoop.execute { session.drain() }
            }
            let deadline = done.futureResult.eventLoop.scheduleTask(in: .seconds(Int64(timeout))) {
                let left = runtime.registry.allSessions
                if !left.isEmpty {
                    runtime.logger.info("drain timeout: closing sessions", metadata: ["sessions": "\(left.count)"])
                }
                for session in left {
                    session.client.eventLoop.execute { session.terminate() }
                }
            }
            runtime.registry.whenEmpty {
                deadline.cancel()
                done.succeed(())
            }
        }
    }

    /// The whole life of a proxy process: load the config and tenant map, prepare TLS and JWT
    /// keys, listen, handle signals, and return once SIGTERM/SIGINT has drained the sessions.
    /// `ready` runs once the listener is up. Problems with the configuration exit with code 2.
    static func run(configPath: String, ready: () -> Void = {}) throws {
        let config: ProxyConfig
        let map: TenantMap
        do {
            config = try ProxyConfig.load(path: configPath)
            map = try TenantMap.load(path: config.tenancy.mapFile, clusters: Set(config.clusters.keys))
        } catch let error as ConfigError {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(2)
        }
        let logger = ProxyLogging.makeLogger(level: config.log.level, format: config.log.format)
        if let files = FileDescriptorLimit.raise(maxClients: config.server.maxClientConnections) {
            if files.after > files.before {
                logger.info("raised the open-file limit", metadata: ["from": "\(files.before)", "to": "\(files.after)"])
            }
            if files.after < files.needed {
                logger.warning("the open-file limit is too low for server.max_client_connections", metadata: [
                    "limit": "\(files.after)", "needed": "\(files.needed)", "clients_allowed": "\(files.clientsAllowed)",
                    "fix": "raise the hard limit (systemd LimitNOFILE=, ulimit -Hn, a container's nofile) or lower server.max_client_connections",
                ])
            }
        }
        let server = ProxyServer(runtime: ProxyRuntime(config: config, map: map, logger: logger, configPath: configPath))
        do {
            try server.runtime.prepareSecurity()
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(2)
        }
        // The handlers exist before any socket is bound: a SIGTERM sent as soon as the port
        // accepts found the default action still in place and killed the process (exit -15
        // instead of a drain). Their queue stays suspended until start() has finished, so a
        // signal that early is held, then handled against a started server.
        let signalQueue = DispatchQueue(label: "tenant-proxy.signals")
        signalQueue.suspend()
        let signals = server.installSignalHandlers(queue: signalQueue)
        do {
            try server.start()
        } catch {
            // A port in use, say: close what did open and stop the loops before reporting it (the
            // unfulfilled drain promise stopped debug builds with "leaking promise" instead).
            // Signals held so far are dropped: there is nothing left to drain or reload.
            for source in signals { source.cancel() }
            signalQueue.resume()
            server.abandon()
            throw error
        }
        signalQueue.resume()
        server.watchMapFile()
        ready()
        server.waitUntilStopped()
        withExtendedLifetime(signals) {}
    }

    /// Undoes a start that failed part way (a port in use): nothing drains, the loops close
    /// whatever they hold as they stop.
    func abandon() {
        for listener in listeners { try? listener.close().wait() }
        try? cancelListener?.close().wait()
        _ = try? metricsServer?.close().wait()
        done.succeed(())
        try? group.syncShutdownGracefully()
    }

    /// Blocks until `shutdown()` has finished draining, then stops the event loops.
    func waitUntilStopped() {
        try? done.futureResult.wait()
        _ = try? metricsServer?.close().wait()
        runtime.logger.info("stopped")
        try? group.syncShutdownGracefully()
    }

    /// Reloads the tenant map when its file changes on disk (checked every 2 s), once the server
    /// has started.
    func watchMapFile() {
        let runtime = self.runtime
        group.next().scheduleRepeatedTask(initialDelay: .seconds(2), delay: .seconds(2)) { _ in
            runtime.reloadIfFileChanged()
        }
    }

    /// SIGTERM and SIGINT drain; SIGHUP reloads proxy.conf, the tenant map and the TLS
    /// certificate. The handlers run on `queue`.
    func installSignalHandlers(queue: DispatchQueue) -> [DispatchSourceSignal] {
        let runtime = self.runtime
        var sources: [DispatchSourceSignal] = []
        let actions: [(Int32, () -> Void)] = [
            (SIGTERM, { [self] in shutdown() }), (SIGINT, { [self] in shutdown() }), (SIGHUP, { runtime.reload() }),
        ]
        for (signalNumber, action) in actions {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
            source.setEventHandler(handler: action)
            source.resume()
            sources.append(source)
        }
        return sources
    }
}
