import NIOConcurrencyHelpers
import NIOCore
import PGWire

/// Every live client session, keyed by the BackendKeyData the proxy handed out. Used to route
/// CancelRequests, to enforce the global client limit and to drain on shutdown.
///
/// One lock around plain dictionaries; callers never run session code while holding it.
final class SessionRegistry: @unchecked Sendable {
    struct CancelTarget: Equatable {
        var key: BackendKeyData
        var host: String
        var port: Int

        /// The CancelRequest that reaches the upstream backend (its own key).
        var request: CancelRequest { CancelRequest(processID: key.processID, secretKey: key.secretKey) }
    }

    private struct Entry {
        var secret: Int32
        var session: ClientSession
    }

    private let lock = NIOLock()
    private var entries: [Int32: Entry] = [:]
    private var onEmpty: (() -> Void)?
    let maxSessions: Int
    /// 1-255 when several instances share one address: written into bits 23-30 of every
    /// process id handed out, so a peer that receives the cancel request knows whose it is.
    let instanceID: Int

    init(maxSessions: Int, instanceID: Int = 0) {
        self.maxSessions = maxSessions
        self.instanceID = instanceID
    }

    static let instanceShift = 23

    /// The instance that issued a cancel key (0: one without an instance id).
    static func instance(of processID: Int32) -> Int {
        Int(processID >> Int32(instanceShift)) & 0xFF
    }

    var count: Int { lock.withLock { entries.count } }

    /// Registers a session and returns the key the client will use to cancel its queries, or nil
    /// when the global client limit is reached.
    func register(_ session: ClientSession) -> BackendKeyData? {
        // One draw (one getrandom call) gives the secret and the process id's low bits; made
        // before the lock, which the other event loops take for their own log-ins and cancels.
        var generator = SystemRandomNumberGenerator()
        var word: UInt64 = generator.next()
        return lock.withLock {
            guard entries.count < maxSessions else { return nil }
            while true {
                let secret = Int32(truncatingIfNeeded: word)
                let low = Int32(truncatingIfNeeded: word >> 32) & ((1 << Int32(Self.instanceShift)) - 1)
                // Without an id, bits 23-30 stay clear so no peer mistakes the key for its own.
                let processID = Int32(instanceID << Self.instanceShift) | low
                if (instanceID != 0 || processID != 0) && entries[processID] == nil {
                    entries[processID] = Entry(secret: secret, session: session)
                    return BackendKeyData(processID: processID, secretKey: secret)
                }
                word = generator.next()
            }
        }
    }

    func unregister(_ processID: Int32) {
        let callback: (() -> Void)? = lock.withLock {
            entries.removeValue(forKey: processID)
            if entries.isEmpty, let onEmpty {
                self.onEmpty = nil
                return onEmpty
            }
            return nil
        }
        callback?()
    }

    /// The session a cancel request names, when its secret matches (compared in constant time).
    func session(for request: CancelRequest) -> ClientSession? {
        lock.withLock {
            guard let entry = entries[request.processID] else { return nil }
            let difference = entry.secret ^ request.secretKey
            guard difference == 0 else { return nil }
            return entry.session
        }
    }

    /// The upstream query a cancel request names: nil when no session has that key and secret;
    /// otherwise what the session's loop says it is running on (nil between transactions).
    /// Asked on the session's loop, so lending and returning connections, every transaction,
    /// keep nothing up to date for a cancel that rarely comes.
    func cancelTarget(for request: CancelRequest) -> EventLoopFuture<CancelTarget?>? {
        guard let session = session(for: request) else { return nil }
        return session.eventLoop.submit { session.cancelTarget }
    }

    var allSessions: [ClientSession] {
        lock.withLock { entries.values.map(\.session) }
    }

    /// Calls `callback` once when no session is left (at once if none is).
    func whenEmpty(_ callback: @escaping () -> Void) {
        let runNow: Bool = lock.withLock {
            if entries.isEmpty { return true }
            onEmpty = callback
            return false
        }
        if runNow { callback() }
    }
}
