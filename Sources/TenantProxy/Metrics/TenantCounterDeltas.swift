/// Turns the running totals of successive snapshots into counter increments per label.
///
/// Deltas are taken per tenant id, then summed per label, so that tenants sharing the `_other`
/// label add up, and a tenant that leaves the snapshot does not look like a drop of the whole
/// label (which would hide what the others did in the same interval). A tenant whose totals go
/// down is taken to have been reset (removed and added again): its new totals count in full,
/// the Prometheus rule for counter resets. Totals of tenants that left are kept, so that a tenant
/// coming back with the same counters is not counted twice.
struct TenantCounterDeltas {
    /// How much each counter of one label grew since the last snapshot.
    struct Increments: Equatable {
        var transactions = 0
        var queries = 0
        var errors = 0
        var bytesReceived = 0
        var bytesSent = 0
        var waitMicroseconds = 0
    }

    private var lastTotals: [String: TenantCounters] = [:]

    /// Tenant ids whose last totals are remembered (every tenant ever seen).
    var rememberedTenants: Int { lastTotals.count }

    /// The increments since the previous call, by label. Every label of the snapshot has an
    /// entry, with zeros if nothing grew, so its series exist from the first scrape on.
    mutating func increments(for tenants: [TenantCounters], label: (String) -> String) -> [String: Increments] {
        // The same tenant listed twice (say, one entry per pool) is one tenant. Snapshot order is
        // kept, so that tenants are handed labels in the order the runtime lists them.
        var totals: [String: TenantCounters] = [:]
        var order: [String] = []
        for entry in tenants {
            if totals[entry.tenant] == nil { order.append(entry.tenant) }
            totals[entry.tenant, default: TenantCounters(tenant: entry.tenant)].add(entry)
        }

        var byLabel: [String: Increments] = [:]
        for tenant in order {
            let now = totals[tenant]!
            let before = lastTotals[tenant] ?? TenantCounters(tenant: tenant)
            lastTotals[tenant] = now
            let label = label(tenant)
            var increments = byLabel[label] ?? Increments()
            increments.transactions += Self.growth(from: before.transactions, to: now.transactions)
            increments.queries += Self.growth(from: before.queries, to: now.queries)
            increments.errors += Self.growth(from: before.errors, to: now.errors)
            increments.bytesReceived += Self.growth(from: before.bytesReceived, to: now.bytesReceived)
            increments.bytesSent += Self.growth(from: before.bytesSent, to: now.bytesSent)
            increments.waitMicroseconds += Self.growth(from: before.waitMicroseconds, to: now.waitMicroseconds)
            byLabel[label] = increments
        }
        return byLabel
    }

    private static func growth(from before: Int, to now: Int) -> Int {
        let (before, now) = (max(before, 0), max(now, 0))
        return now >= before ? now - before : now
    }
}

extension TenantCounters {
    /// Adds another set of totals for the same tenant (another loop's, or a duplicate entry).
    mutating func add(_ other: TenantCounters) {
        transactions += other.transactions
        queries += other.queries
        errors += other.errors
        bytesReceived += other.bytesReceived
        bytesSent += other.bytesSent
        waitMicroseconds += other.waitMicroseconds
        clients += other.clients
    }
}
