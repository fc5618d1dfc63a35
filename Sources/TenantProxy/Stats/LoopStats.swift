import NIOCore

/// Running totals of one tenant's traffic on one event loop. Sessions of that loop add to it
/// directly (no lock, no atomics: only the loop touches it); readers hop onto the loop to copy it.
final class TenantTally {
    var transactions = 0
    var queries = 0
    var errors = 0
    var bytesReceived = 0
    var bytesSent = 0
    var waitMicroseconds = 0
    var guardRefusals = 0

    var counters: TenantCounters {
        TenantCounters(tenant: "", transactions: transactions, queries: queries, errors: errors, bytesReceived: bytesReceived,
                       bytesSent: bytesSent, waitMicroseconds: waitMicroseconds, clients: 0)
    }
}

/// The tallies of one event loop, by tenant id ("" for sessions without a tenant: global users).
final class LoopStats {
    private var tallies: [String: TenantTally] = [:]

    func tally(for tenant: String) -> TenantTally {
        if let existing = tallies[tenant] { return existing }
        let tally = TenantTally()
        tallies[tenant] = tally
        return tally
    }

    /// A copy of every tally; call on the loop.
    func snapshot() -> [String: TenantCounters] {
        tallies.mapValues(\.counters)
    }
}
