import NIOConcurrencyHelpers
import Prometheus

/// The proxy's Prometheus series, and the one place that decides their labels.
///
/// Events (auth failures, guard refusals) are recorded as they happen; everything the runtime
/// already counts, pool waits included (each loop's `WaitHistogram`), is read from a
/// `MetricsSnapshot` right before each scrape (`update(from:)`), so the hot path takes no lock
/// for those. Tenant labels are bounded: the
/// first `maxTenantLabels` tenants get their own, every later one shares `_other`.
final class ProxyMetrics: Sendable {
    /// The label of series that belong to no tenant (a nil or empty tenant id).
    static let globalTenantLabel = "_global"
    /// The label shared by every tenant past the first `maxTenantLabels`.
    static let otherTenantLabel = "_other"

    /// Pool-wait buckets: 100 µs (an idle connection handed over at once) up to 30 s (a pool
    /// timeout). Built from integers so that the `le` labels read 0.0001, not 0.000099999….
    static let poolWaitBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500),
        .milliseconds(1), .microseconds(2500), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
    ]

    let registry: PrometheusCollectorRegistry
    let maxTenantLabels: Int

    private let labeledTenants = NIOLockedValueBox(Set<String>())
    private let scrape = NIOLockedValueBox(ScrapeState())
    private let waitingClientsGauge: Gauge
    private let contextSwitchCounter: Counter

    /// What `update(from:)` must remember between scrapes.
    private struct ScrapeState {
        var deltas = TenantCounterDeltas()
        /// Every state and tenant label a gauge was ever set for, so that one missing from a
        /// later snapshot drops to 0 instead of keeping its last value.
        var clientStates: Set<String> = ["active", "idle", "waiting"]
        var upstreamStates: Set<String> = ["active", "idle", "login"]
        var tenantClientLabels: Set<String> = []
        /// Pool waits as of the last snapshot (rendered by `render()`, not by the registry).
        var poolWaits = WaitHistogram()
    }

    /// - Parameters:
    ///   - maxTenantLabels: how many distinct tenants get a label of their own.
    ///   - registry: where the series live; pass one to share it with other collectors.
    init(maxTenantLabels: Int, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.maxTenantLabels = max(0, maxTenantLabels)
        self.registry = registry
        self.waitingClientsGauge = registry.makeGauge(descriptor: Family.waitingClients.descriptor)
        self.contextSwitchCounter = registry.makeCounter(descriptor: Family.contextSwitches.descriptor)
        // Series a dashboard expects from the first scrape on, at 0.
        let initial = ScrapeState()
        for state in initial.clientStates {
            _ = registry.makeGauge(descriptor: Family.clients.descriptor, labels: [("state", state)])
        }
        for state in initial.upstreamStates {
            _ = registry.makeGauge(descriptor: Family.upstreamConnections.descriptor, labels: [("state", state)])
        }
    }

    // MARK: - Labels

    /// The label for a tenant id: `_global` for none, the id itself for the first
    /// `maxTenantLabels` distinct ids, `_other` for all later ones. Stable for the process' life.
    func tenantLabel(_ tenant: String?) -> String {
        guard let tenant, !tenant.isEmpty else { return Self.globalTenantLabel }
        let maxTenantLabels = self.maxTenantLabels
        return labeledTenants.withLockedValue { labeled in
            if labeled.contains(tenant) { return tenant }
            guard labeled.count < maxTenantLabels else { return Self.otherTenantLabel }
            labeled.insert(tenant)
            return tenant
        }
    }

    // MARK: - Events

    /// A client failed to authenticate. `reason` must come from a small fixed set (it is a label).
    func authFailure(reason: String) {
        registry.makeCounter(descriptor: Family.authFailures.descriptor, labels: [("reason", reason)]).increment()
    }

    /// A statement guard refused a statement. `kind` must come from a small fixed set.
    func guardRefusal(tenant: String?, kind: String) {
        registry.makeCounter(
            descriptor: Family.guardRefusals.descriptor,
            labels: [("tenant", tenantLabel(tenant)), ("kind", kind)]
        ).increment()
    }

    /// Where a CancelRequest went. `outcome`: `upstream` (sent to the server of the connection
    /// the client holds), `peer` (another instance issued the key), `idle` (the client holds no
    /// connection: between transactions, nothing runs), `unknown_key` (no session has that key
    /// and secret).
    func cancelRequest(outcome: CancelOutcome) {
        registry.makeCounter(descriptor: Family.cancelRequests.descriptor, labels: [("outcome", outcome.rawValue)]).increment()
    }

    enum CancelOutcome: String {
        case upstream, peer, idle
        case unknownKey = "unknown_key"
    }

    /// A client was ended for idling inside a transaction (idle_transaction_timeout_seconds).
    func idleTransactionTimeout(tenant: String?) {
        registry.makeCounter(descriptor: Family.idleTransactionTimeouts.descriptor, labels: [("tenant", tenantLabel(tenant))]).increment()
    }

    /// A pooled connection was lent with another tenant's context, cleared and replaced first
    /// (two more statements upstream): how well tenant affinity works for this workload.
    func contextSwitch() {
        contextSwitchCounter.increment()
    }

    // MARK: - Scrape

    /// Brings the snapshot-derived series up to date. Call right before `render()`.
    ///
    /// Tenant totals become counter increments (see `TenantCounterDeltas`); gauges are set, and a
    /// state or tenant label that is missing from this snapshot is set to 0.
    func update(from snapshot: MetricsSnapshot) {
        scrape.withLockedValue { state in
            let increments = state.deltas.increments(for: snapshot.tenants) { tenantLabel($0) }
            for (label, growth) in increments {
                let labels = [("tenant", label)]
                counter(.transactions, labels).increment(by: Int64(growth.transactions))
                counter(.queries, labels).increment(by: Int64(growth.queries))
                counter(.errors, labels).increment(by: Int64(growth.errors))
                counter(.bytesReceived, labels).increment(by: Int64(growth.bytesReceived))
                counter(.bytesSent, labels).increment(by: Int64(growth.bytesSent))
                counter(.poolWaitTotal, labels).increment(by: Double(growth.waitMicroseconds) / 1_000_000)
            }

            var clientsByLabel: [String: Int] = [:]
            for entry in snapshot.tenants {
                clientsByLabel[tenantLabel(entry.tenant), default: 0] += entry.clients
            }
            setGauges(.tenantClients, labelName: "tenant", values: clientsByLabel, known: &state.tenantClientLabels)
            setGauges(.clients, labelName: "state", values: snapshot.clients, known: &state.clientStates)
            setGauges(
                .upstreamConnections,
                labelName: "state",
                values: snapshot.upstreamConnections,
                known: &state.upstreamStates
            )
            waitingClientsGauge.set(to: Double(snapshot.waitingClients))
            state.poolWaits = snapshot.poolWaits
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of every series.
    func render() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        Self.emit(scrape.withLockedValue { $0.poolWaits }, into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }

    /// The pool-wait histogram in the registry's format (bounds and sum written as the
    /// Prometheus package writes Durations, so the series read as they did when it kept them).
    private static func emit(_ waits: WaitHistogram, into buffer: inout [UInt8]) {
        let descriptor = Family.poolWait.descriptor
        let name = descriptor.name
        buffer.append(contentsOf: "# HELP \(name) \(descriptor.helpText ?? "")\n# TYPE \(name) histogram\n".utf8)
        let cumulative = waits.cumulative
        for (bound, count) in zip(poolWaitBuckets, cumulative) {
            buffer.append(contentsOf: "\(name)_bucket{le=\"\(bound.bucketRepresentation)\"} \(count)\n".utf8)
        }
        buffer.append(contentsOf: "\(name)_bucket{le=\"+Inf\"} \(waits.count)\n".utf8)
        buffer.append(contentsOf: "\(name)_sum \(Duration.nanoseconds(waits.sumNanoseconds).bucketRepresentation)\n".utf8)
        buffer.append(contentsOf: "\(name)_count \(waits.count)\n".utf8)
    }

    // MARK: - Private

    private func counter(_ family: Family, _ labels: [(String, String)]) -> Counter {
        registry.makeCounter(descriptor: family.descriptor, labels: labels)
    }

    private func setGauges(_ family: Family, labelName: String, values: [String: Int], known: inout Set<String>) {
        known.formUnion(values.keys)
        for labelValue in known {
            registry.makeGauge(descriptor: family.descriptor, labels: [(labelName, labelValue)])
                .set(to: Double(values[labelValue] ?? 0))
        }
    }

    /// Every series family, with its name and help text in one place: the registry refuses (traps
    /// on) a second registration of a name with a different help text.
    private enum Family {
        case authFailures, guardRefusals, poolWait, contextSwitches, cancelRequests, idleTransactionTimeouts
        case transactions, queries, errors, bytesReceived, bytesSent, poolWaitTotal
        case clients, upstreamConnections, waitingClients, tenantClients

        var descriptor: MetricNameDescriptor {
            switch self {
            case .authFailures:
                return Self.make("auth_failures", "total", "Client authentication failures, by reason.")
            case .guardRefusals:
                return Self.make("guard_refusals", "total", "Statements refused by a guard, by tenant and kind.")
            case .cancelRequests:
                return Self.make("cancel_requests", "total", "Cancel requests, by where they went.")
            case .idleTransactionTimeouts:
                return Self.make("idle_transaction_timeouts", "total",
                                 "Clients ended for idling inside a transaction (idle_transaction_timeout_seconds), by tenant.")
            case .poolWait:
                return Self.make("pool_wait", "seconds", "Time clients waited for an upstream connection.")
            case .contextSwitches:
                return Self.make("context_switches", "total",
                                 "Upstream connections lent with another tenant's context, reset and set again first.")
            case .transactions:
                return Self.make("transactions", "total", "Transactions completed, by tenant.")
            case .queries:
                return Self.make("queries", "total", "Queries run, by tenant.")
            case .errors:
                return Self.make("errors", "total", "Errors returned to clients, by tenant.")
            case .bytesReceived:
                return Self.make("bytes_received", "total", "Bytes received, by tenant.")
            case .bytesSent:
                return Self.make("bytes_sent", "total", "Bytes sent, by tenant.")
            case .poolWaitTotal:
                return Self.make("pool_wait_seconds", "total", "Total time clients waited for a connection, by tenant.")
            case .clients:
                return Self.make("clients", "", "Client connections, by state.")
            case .upstreamConnections:
                return Self.make("upstream_connections", "", "Upstream server connections, by state.")
            case .waitingClients:
                return Self.make("waiting_clients", "", "Clients waiting for an upstream connection.")
            case .tenantClients:
                return Self.make("tenant_clients", "", "Client connections, by tenant.")
            }
        }

        private static func make(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "tenant_proxy", metricName: name, unitName: unit, helpText: help)
        }
    }
}
