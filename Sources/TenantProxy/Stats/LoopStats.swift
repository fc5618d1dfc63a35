import NIOCore

/// Running totals of one tenant's traffic on one event loop. Sessions of that loop add to it
/// directly (no lock, no atomics: only the loop touches it); readers hop onto the loop to copy it.
final class TenantTally {
    /// Totals so far (`tenant` and `clients` are filled in by whoever reads them).
    var counters = TenantCounters(tenant: "")
    var guardRefusals = 0
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
