/// Totals of one tenant's traffic (monotonic, except `clients`).
struct TenantCounters: Sendable, Equatable {
    var tenant: String
    var transactions: Int
    var queries: Int
    var errors: Int
    var bytesReceived: Int
    var bytesSent: Int
    var waitMicroseconds: Int
    var clients: Int
}

/// What the metrics endpoint exports, gathered from every event loop just before a scrape.
struct MetricsSnapshot: Sendable {
    var clients: [String: Int] = [:]
    var upstreamConnections: [String: Int] = [:]
    var waitingClients = 0
    var tenants: [TenantCounters] = []
}
