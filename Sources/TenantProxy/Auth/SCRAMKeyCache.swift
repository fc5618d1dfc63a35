import NIOConcurrencyHelpers

/// SaltedPassword of the proxy's upstream roles, per (role, salt, iterations). PostgreSQL keeps a
/// role's salt until its password changes, so every upstream log-in after the first skips the
/// 4096 PBKDF2 rounds. The password itself is not a key: one cache per configuration.
final class SCRAMKeyCache: @unchecked Sendable {
    private struct Key: Hashable {
        var user: String
        var salt: [UInt8]
        var iterations: Int
    }

    private let lock = NIOLock()
    private var keys: [Key: [UInt8]] = [:]

    func saltedPassword(user: String, salt: [UInt8], iterations: Int, derive: () -> [UInt8]) -> [UInt8] {
        let key = Key(user: user, salt: salt, iterations: iterations)
        if let cached = lock.withLock({ keys[key] }) { return cached }
        let salted = derive()
        lock.withLock {
            if keys.count > 64 { keys.removeAll() }
            keys[key] = salted
        }
        return salted
    }
}
