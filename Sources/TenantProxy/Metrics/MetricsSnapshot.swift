/// What the proxy looks like at one instant, read right before a scrape.
///
/// The runtime fills it from its registries and pools; `ProxyMetrics.update(from:)` turns it into
/// Prometheus series. Dictionary keys are states (`active`, `idle`, ...); a state missing from one
/// snapshot is exported as 0, not left at its last value.
struct MetricsSnapshot: Sendable {
    /// Client connections by state: `active`, `idle`, `waiting`.
    var clients: [String: Int]
    /// Upstream (PostgreSQL) connections by state: `active`, `idle`, `login`.
    var upstreamConnections: [String: Int]
    /// Clients waiting for an upstream connection right now.
    var waitingClients: Int
    /// One entry per tenant the proxy knows of; several entries for the same tenant are summed.
    var tenants: [TenantCounters]
    /// Every wait for an upstream connection so far, over all loops.
    var poolWaits: WaitHistogram

    init(
        clients: [String: Int] = [:],
        upstreamConnections: [String: Int] = [:],
        waitingClients: Int = 0,
        tenants: [TenantCounters] = [],
        poolWaits: WaitHistogram = WaitHistogram()
    ) {
        self.clients = clients
        self.upstreamConnections = upstreamConnections
        self.waitingClients = waitingClients
        self.tenants = tenants
        self.poolWaits = poolWaits
    }
}

/// Running totals for one tenant since the proxy started (or since the tenant's counters were
/// created). All fields but `clients` only ever grow; `clients` is the number connected now.
struct TenantCounters: Sendable, Equatable {
    var tenant: String
    var transactions: Int
    var queries: Int
    var errors: Int
    var bytesReceived: Int
    var bytesSent: Int
    var waitMicroseconds: Int
    var clients: Int

    init(
        tenant: String,
        transactions: Int = 0,
        queries: Int = 0,
        errors: Int = 0,
        bytesReceived: Int = 0,
        bytesSent: Int = 0,
        waitMicroseconds: Int = 0,
        clients: Int = 0
    ) {
        self.tenant = tenant
        self.transactions = transactions
        self.queries = queries
        self.errors = errors
        self.bytesReceived = bytesReceived
        self.bytesSent = bytesSent
        self.waitMicroseconds = waitMicroseconds
        self.clients = clients
    }
}
