import Logging
import NIOConcurrencyHelpers
import NIOCore

/// What every session shares: configuration, the users directory (replaced atomically on
/// reload), the session registry and the logger.
final class ProxyRuntime: @unchecked Sendable {
    let config: ProxyConfig
    let registry: SessionRegistry
    let logger: Logger
    /// Per-process secret for the fake SCRAM exchange of unknown users.
    let mockSecret: [UInt8]

    private let lock = NIOLock()
    private var _users: UserDirectory
    private var _draining = false

    init(config: ProxyConfig, users: UserDirectory, logger: Logger) {
        self.config = config
        self._users = users
        self.logger = logger
        self.registry = SessionRegistry(maxSessions: config.server.maxClientConnections)
        var generator = SystemRandomNumberGenerator()
        self.mockSecret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    var users: UserDirectory { lock.withLock { _users } }

    var isDraining: Bool { lock.withLock { _draining } }

    func replaceUsers(_ users: UserDirectory) {
        lock.withLock { _users = users }
    }

    func startDraining() {
        lock.withLock { _draining = true }
    }
}
