import NIOConcurrencyHelpers
import NIOCore
import PGWire

/// A client's session settings (startup parameters and options, and tracked parameters it SET
/// later; lower-case names), restored on every connection lent to it in transaction mode.
/// Immutable and shared: clients with the same settings (one application's connections, usually)
/// hold one object, so a lend compares references, not dictionaries, and an idle client keeps
/// no dictionary of its own.
final class SessionSettings {
    let values: [String: String]

    init(_ values: [String: String]) {
        self.values = values
    }

    subscript(name: String) -> String? { values[name] }
}

extension ParameterStatus {
    /// `parameters` as ParameterStatus messages, each with the value `settings` gives its name
    /// where there is one: what a transaction-mode client is told, since the pool's connections
    /// started without its parameters.
    static func encode(_ parameters: [ParameterStatus], as settings: SessionSettings, into buffer: inout ByteBuffer) {
        for var parameter in parameters {
            if let value = settings[parameter.name.lowercased()] { parameter.value = value }
            BackendMessage.parameterStatus(parameter).encode(into: &buffer)
        }
    }
}

/// Hands out one shared value per distinct key: used at log-in and when a client changes a
/// tracked parameter, never per transaction. Bounded: past `capacity` distinct keys (a client
/// cycling application_name, say) new values are made but not kept; callers never rely on
/// sharing for correctness, only for speed and memory.
final class Interner<Key: Hashable, Value>: @unchecked Sendable {
    private let lock = NIOLock()
    private var table: [Key: Value] = [:]
    private let capacity: Int
    private let make: (Key) -> Value

    init(capacity: Int = 4096, make: @escaping (Key) -> Value) {
        self.capacity = capacity
        self.make = make
    }

    func intern(_ key: Key) -> Value {
        lock.withLock {
            if let known = table[key] { return known }
            let value = make(key)
            if table.count < capacity { table[key] = value }
            return value
        }
    }

    var count: Int { lock.withLock { table.count } }
}

extension Interner where Key == [String: String], Value == SessionSettings {
    /// Settings objects; the empty set is always the same object.
    static func settings(capacity: Int = 4096) -> Interner {
        let empty = SessionSettings([:])
        return Interner(capacity: capacity) { $0.isEmpty ? empty : SessionSettings($0) }
    }
}
