import Atomics
import NIOConcurrencyHelpers
import NIOCore

/// Failed logins per client address: after `lockoutFailures` within the window, the address is
/// locked out for `lockoutSeconds`. One lock around a dictionary; touched only at log-in.
final class LoginThrottle: @unchecked Sendable {
    private let lock = NIOLock()
    private var failures: [String: [NIODeadline]] = [:]
    private var lockedUntil: [String: NIODeadline] = [:] {
        didSet { lockedCount.store(lockedUntil.count, ordering: .relaxed) }
    }
    /// lockedUntil's size, read without the lock: with no address locked out (the usual case) a
    /// log-in neither formats its address nor takes the lock.
    private let lockedCount = ManagedAtomic(0)
    private let limit: Int
    private let window: TimeAmount
    private let lockout: TimeAmount

    init(limit: Int, windowSeconds: Int, lockoutSeconds: Int) {
        self.limit = limit
        self.window = .seconds(Int64(windowSeconds))
        self.lockout = .seconds(Int64(lockoutSeconds))
    }

    func isLocked(_ address: @autoclosure () -> String, now: NIODeadline = .now()) -> Bool {
        guard limit > 0, lockedCount.load(ordering: .relaxed) > 0 else { return false }
        let address = address()
        return lock.withLock {
            guard let until = lockedUntil[address] else { return false }
            if until > now { return true }
            lockedUntil.removeValue(forKey: address)
            return false
        }
    }

    func recordFailure(_ address: String, now: NIODeadline = .now()) {
        guard limit > 0 else { return }
        lock.withLock {
            if failures.count > 100_000 { failures.removeAll() }
            var recent = failures[address, default: []].filter { $0 > now - window }
            recent.append(now)
            if recent.count >= limit {
                lockedUntil[address] = now + lockout
                recent.removeAll()
            }
            failures[address] = recent.isEmpty ? nil : recent
        }
    }
}
