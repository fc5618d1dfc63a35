import Dispatch
import XCTest

@testable import TenantProxy

final class ProxyMetricsTests: XCTestCase {
    // MARK: - Labels

    func testTenantLabelsAreBoundedAndStable() {
        let metrics = ProxyMetrics(maxTenantLabels: 2)
        XCTAssertEqual(metrics.tenantLabel(nil), "_global")
        XCTAssertEqual(metrics.tenantLabel(""), "_global")
        XCTAssertEqual(metrics.tenantLabel("acme"), "acme")
        XCTAssertEqual(metrics.tenantLabel("globex"), "globex")
        XCTAssertEqual(metrics.tenantLabel("initech"), "_other")
        XCTAssertEqual(metrics.tenantLabel("acme"), "acme")
        XCTAssertEqual(metrics.tenantLabel("umbrella"), "_other")
        XCTAssertEqual(metrics.tenantLabel("initech"), "_other")
        XCTAssertEqual(metrics.tenantLabel(nil), "_global", "no tenant never takes a slot")
    }

    func testZeroTenantLabelsSendsEveryTenantToOther() {
        let metrics = ProxyMetrics(maxTenantLabels: 0)
        XCTAssertEqual(metrics.tenantLabel("acme"), "_other")
        XCTAssertEqual(metrics.tenantLabel(nil), "_global")
    }

    func testTenantLabelsFromManyThreadsHandOutExactlyTheLimit() {
        let metrics = ProxyMetrics(maxTenantLabels: 10)
        let tenants = (0..<200).map { "tenant-\($0)" }
        let first = LockedArray<(String, String)>()
        DispatchQueue.concurrentPerform(iterations: tenants.count) { index in
            let tenant = tenants[index]
            first.append((tenant, metrics.tenantLabel(tenant)))
        }
        let labels = first.values
        XCTAssertEqual(labels.count, 200)
        let own = labels.filter { $0.0 == $0.1 }
        XCTAssertEqual(own.count, 10)
        XCTAssertEqual(labels.filter { $0.1 == "_other" }.count, 190)
        for (tenant, label) in labels {
            XCTAssertEqual(metrics.tenantLabel(tenant), label, "\(tenant) changed label")
        }
    }

    // MARK: - Snapshot counters

    func testUpdateExportsTotalsThenOnlyTheGrowthAndSumsOther() {
        let metrics = ProxyMetrics(maxTenantLabels: 1)
        metrics.update(
            from: MetricsSnapshot(tenants: [
                TenantCounters(
                    tenant: "acme",
                    transactions: 5,
                    queries: 10,
                    errors: 1,
                    bytesReceived: 100,
                    bytesSent: 200,
                    waitMicroseconds: 1_500_000,
                    clients: 2
                ),
                TenantCounters(tenant: "globex", transactions: 3, queries: 4, bytesSent: 50, clients: 1),
                TenantCounters(tenant: "initech", transactions: 4, queries: 6, waitMicroseconds: 250_000, clients: 3),
            ])
        )
        var series = Series(metrics.render())
        XCTAssertEqual(series[#"tenant_proxy_transactions_total{tenant="acme"}"#], "5")
        XCTAssertEqual(series[#"tenant_proxy_transactions_total{tenant="_other"}"#], "7")
        XCTAssertEqual(series[#"tenant_proxy_queries_total{tenant="acme"}"#], "10")
        XCTAssertEqual(series[#"tenant_proxy_queries_total{tenant="_other"}"#], "10")
        XCTAssertEqual(series[#"tenant_proxy_errors_total{tenant="acme"}"#], "1")
        XCTAssertEqual(series[#"tenant_proxy_errors_total{tenant="_other"}"#], "0")
        XCTAssertEqual(series[#"tenant_proxy_bytes_received_total{tenant="acme"}"#], "100")
        XCTAssertEqual(series[#"tenant_proxy_bytes_sent_total{tenant="_other"}"#], "50")
        XCTAssertEqual(series[#"tenant_proxy_pool_wait_seconds_total{tenant="acme"}"#], "1.5")
        XCTAssertEqual(series[#"tenant_proxy_pool_wait_seconds_total{tenant="_other"}"#], "0.25")
        XCTAssertEqual(series[#"tenant_proxy_tenant_clients{tenant="acme"}"#], "2.0")
        XCTAssertEqual(series[#"tenant_proxy_tenant_clients{tenant="_other"}"#], "4.0")
        XCTAssertNil(series[#"tenant_proxy_transactions_total{tenant="globex"}"#])

        // Second scrape: acme +1, globex +7, initech unchanged; _other must be 7 + 7, not 10 + 4.
        metrics.update(
            from: MetricsSnapshot(tenants: [
                TenantCounters(tenant: "acme", transactions: 6, queries: 10, errors: 1, waitMicroseconds: 1_500_000),
                TenantCounters(tenant: "globex", transactions: 10, queries: 4),
                TenantCounters(tenant: "initech", transactions: 4, queries: 6, waitMicroseconds: 500_000, clients: 1),
            ])
        )
        series = Series(metrics.render())
        XCTAssertEqual(series[#"tenant_proxy_transactions_total{tenant="acme"}"#], "6")
        XCTAssertEqual(series[#"tenant_proxy_transactions_total{tenant="_other"}"#], "14")
        XCTAssertEqual(series[#"tenant_proxy_queries_total{tenant="_other"}"#], "10")
        XCTAssertEqual(series[#"tenant_proxy_pool_wait_seconds_total{tenant="acme"}"#], "1.5")
        XCTAssertEqual(series[#"tenant_proxy_pool_wait_seconds_total{tenant="_other"}"#], "0.5")
        XCTAssertEqual(series[#"tenant_proxy_tenant_clients{tenant="acme"}"#], "0.0")
        XCTAssertEqual(series[#"tenant_proxy_tenant_clients{tenant="_other"}"#], "1.0")
    }

    func testTenantLeavingDoesNotHideGrowthOfOthersAndResetCountsInFull() {
        let metrics = ProxyMetrics(maxTenantLabels: 0)
        metrics.update(
            from: MetricsSnapshot(tenants: [
                TenantCounters(tenant: "a", queries: 100, clients: 1),
                TenantCounters(tenant: "b", queries: 50, clients: 1),
            ])
        )
        XCTAssertEqual(Series(metrics.render())[#"tenant_proxy_queries_total{tenant="_other"}"#], "150")

        // a leaves, b grows by 10: the label grows by 10 (a per-label delta would see 150 -> 60).
        metrics.update(from: MetricsSnapshot(tenants: [TenantCounters(tenant: "b", queries: 60)]))
        var series = Series(metrics.render())
        XCTAssertEqual(series[#"tenant_proxy_queries_total{tenant="_other"}"#], "160")
        XCTAssertEqual(series[#"tenant_proxy_tenant_clients{tenant="_other"}"#], "0.0")

        // a comes back with the totals it had: nothing new. Then b restarts from 0 and reaches 5.
        metrics.update(
            from: MetricsSnapshot(tenants: [
                TenantCounters(tenant: "a", queries: 100), TenantCounters(tenant: "b", queries: 60),
            ])
        )
        XCTAssertEqual(Series(metrics.render())[#"tenant_proxy_queries_total{tenant="_other"}"#], "160")
        metrics.update(
            from: MetricsSnapshot(tenants: [
                TenantCounters(tenant: "a", queries: 100), TenantCounters(tenant: "b", queries: 5),
            ])
        )
        series = Series(metrics.render())
        XCTAssertEqual(series[#"tenant_proxy_queries_total{tenant="_other"}"#], "165")
    }

    func testSameTenantListedTwiceIsSummedOnce() {
        let metrics = ProxyMetrics(maxTenantLabels: 5)
        let twice = MetricsSnapshot(tenants: [
            TenantCounters(tenant: "acme", queries: 3, clients: 1),
            TenantCounters(tenant: "acme", queries: 4, clients: 2),
        ])
        metrics.update(from: twice)
        metrics.update(from: twice)
        let series = Series(metrics.render())
        XCTAssertEqual(series[#"tenant_proxy_queries_total{tenant="acme"}"#], "7")
        XCTAssertEqual(series[#"tenant_proxy_tenant_clients{tenant="acme"}"#], "3.0")
    }

    func testEmptyTenantIdIsExportedAsGlobal() {
        let metrics = ProxyMetrics(maxTenantLabels: 5)
        metrics.update(from: MetricsSnapshot(tenants: [TenantCounters(tenant: "", transactions: 2)]))
        XCTAssertEqual(Series(metrics.render())[#"tenant_proxy_transactions_total{tenant="_global"}"#], "2")
    }

    // MARK: - Gauges

    func testStateGaugesAreSetAndMissingStatesDropToZero() {
        let metrics = ProxyMetrics(maxTenantLabels: 5)
        var series = Series(metrics.render())
        for state in ["active", "idle", "waiting"] {
            XCTAssertEqual(
                series["tenant_proxy_clients{state=\"\(state)\"}"],
                "0.0",
                "clients \(state) before any update"
            )
        }
        for state in ["active", "idle", "login"] {
            XCTAssertEqual(series["tenant_proxy_upstream_connections{state=\"\(state)\"}"], "0.0")
        }

        metrics.update(
            from: MetricsSnapshot(
                clients: ["active": 4, "idle": 2, "waiting": 1, "tls_handshake": 1],
                upstreamConnections: ["active": 3, "login": 1],
                waitingClients: 1
            )
        )
        series = Series(metrics.render())
        XCTAssertEqual(series[#"tenant_proxy_clients{state="active"}"#], "4.0")
        XCTAssertEqual(series[#"tenant_proxy_clients{state="idle"}"#], "2.0")
        XCTAssertEqual(series[#"tenant_proxy_clients{state="tls_handshake"}"#], "1.0")
        XCTAssertEqual(series[#"tenant_proxy_upstream_connections{state="active"}"#], "3.0")
        XCTAssertEqual(series[#"tenant_proxy_upstream_connections{state="login"}"#], "1.0")
        XCTAssertEqual(series["tenant_proxy_waiting_clients"], "1.0")

        metrics.update(from: MetricsSnapshot(clients: ["active": 1], upstreamConnections: [:], waitingClients: 0))
        series = Series(metrics.render())
        XCTAssertEqual(series[#"tenant_proxy_clients{state="active"}"#], "1.0")
        XCTAssertEqual(series[#"tenant_proxy_clients{state="idle"}"#], "0.0")
        XCTAssertEqual(series[#"tenant_proxy_clients{state="tls_handshake"}"#], "0.0")
        XCTAssertEqual(series[#"tenant_proxy_upstream_connections{state="active"}"#], "0.0")
        XCTAssertEqual(series["tenant_proxy_waiting_clients"], "0.0")
    }

    // MARK: - Events

    func testAuthFailuresAndGuardRefusalsAreCountedByLabel() {
        let metrics = ProxyMetrics(maxTenantLabels: 1)
        metrics.authFailure(reason: "bad_password")
        metrics.authFailure(reason: "bad_password")
        metrics.authFailure(reason: "unknown_user")
        metrics.guardRefusal(tenant: "acme", kind: "ddl")
        metrics.guardRefusal(tenant: "globex", kind: "ddl")
        metrics.guardRefusal(tenant: "initech", kind: "ddl")
        metrics.guardRefusal(tenant: nil, kind: "set_role")

        let series = Series(metrics.render())
        XCTAssertEqual(series[#"tenant_proxy_auth_failures_total{reason="bad_password"}"#], "2")
        XCTAssertEqual(series[#"tenant_proxy_auth_failures_total{reason="unknown_user"}"#], "1")
        XCTAssertEqual(series[#"tenant_proxy_guard_refusals_total{tenant="acme",kind="ddl"}"#], "1")
        XCTAssertEqual(series[#"tenant_proxy_guard_refusals_total{tenant="_other",kind="ddl"}"#], "2")
        XCTAssertEqual(series[#"tenant_proxy_guard_refusals_total{tenant="_global",kind="set_role"}"#], "1")
    }

    func testIdleTransactionTimeoutsAreCountedByTenant() {
        let metrics = ProxyMetrics(maxTenantLabels: 1)
        metrics.idleTransactionTimeout(tenant: "acme")
        metrics.idleTransactionTimeout(tenant: "acme")
        metrics.idleTransactionTimeout(tenant: "globex")
        metrics.idleTransactionTimeout(tenant: nil)
        let series = Series(metrics.render())
        XCTAssertEqual(series[#"tenant_proxy_idle_transaction_timeouts_total{tenant="acme"}"#], "2")
        XCTAssertEqual(series[#"tenant_proxy_idle_transaction_timeouts_total{tenant="_other"}"#], "1")
        XCTAssertEqual(series[#"tenant_proxy_idle_transaction_timeouts_total{tenant="_global"}"#], "1")
    }

    func testContextSwitchesAreCountedFromZero() {
        let metrics = ProxyMetrics(maxTenantLabels: 1)
        XCTAssertEqual(Series(metrics.render())["tenant_proxy_context_switches_total"], "0")
        metrics.contextSwitch()
        metrics.contextSwitch()
        XCTAssertEqual(Series(metrics.render())["tenant_proxy_context_switches_total"], "2")
    }

    func testPoolWaitHistogramBuckets() {
        let metrics = ProxyMetrics(maxTenantLabels: 1)
        // Two loops' waits, summed by the snapshot.
        var first = WaitHistogram(), second = WaitHistogram()
        first.record(nanoseconds: 100_000)  // On the first bound: le is inclusive.
        first.record(nanoseconds: 200_000)
        second.record(nanoseconds: 3_000_000)
        second.record(nanoseconds: 45_000_000_000)
        second.record(nanoseconds: -1_000_000_000)  // A clock going backwards counts as no wait.
        first.record(nanoseconds: 0)
        var snapshot = MetricsSnapshot()
        snapshot.poolWaits.add(first)
        snapshot.poolWaits.add(second)
        XCTAssertEqual(Series(metrics.render())["tenant_proxy_pool_wait_seconds_count"], "0", "before any scrape: no waits")
        metrics.update(from: snapshot)

        let series = Series(metrics.render())
        let bucket = { (le: String) in series["tenant_proxy_pool_wait_seconds_bucket{le=\"\(le)\"}"] }
        let expectedBounds = [
            "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
            "1.0", "2.5", "5.0", "10.0", "30.0", "+Inf",
        ]
        let rendered = series.keys.filter { $0.hasPrefix("tenant_proxy_pool_wait_seconds_bucket{") }
        XCTAssertEqual(Set(rendered), Set(expectedBounds.map { "tenant_proxy_pool_wait_seconds_bucket{le=\"\($0)\"}" }))
        XCTAssertEqual(bucket("0.0001"), "3")
        XCTAssertEqual(bucket("0.00025"), "4")
        XCTAssertEqual(bucket("0.001"), "4")
        XCTAssertEqual(bucket("0.005"), "5")
        XCTAssertEqual(bucket("30.0"), "5")
        XCTAssertEqual(bucket("+Inf"), "6")
        XCTAssertEqual(series["tenant_proxy_pool_wait_seconds_count"], "6")
        XCTAssertEqual(series["tenant_proxy_pool_wait_seconds_sum"], "45.0033")
    }

    func testRenderHasOneTypeLinePerFamily() {
        let metrics = ProxyMetrics(maxTenantLabels: 3)
        metrics.authFailure(reason: "x")
        metrics.guardRefusal(tenant: "acme", kind: "ddl")
        metrics.update(from: MetricsSnapshot(tenants: [TenantCounters(tenant: "acme"), TenantCounters(tenant: "b")]))
        let text = metrics.render()
        let typeLines = text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }
        let expected = [
            "# TYPE tenant_proxy_auth_failures_total counter",
            "# TYPE tenant_proxy_guard_refusals_total counter",
            "# TYPE tenant_proxy_pool_wait_seconds histogram",
            "# TYPE tenant_proxy_context_switches_total counter",
            "# TYPE tenant_proxy_transactions_total counter",
            "# TYPE tenant_proxy_queries_total counter",
            "# TYPE tenant_proxy_errors_total counter",
            "# TYPE tenant_proxy_bytes_received_total counter",
            "# TYPE tenant_proxy_bytes_sent_total counter",
            "# TYPE tenant_proxy_pool_wait_seconds_total counter",
            "# TYPE tenant_proxy_clients gauge",
            "# TYPE tenant_proxy_upstream_connections gauge",
            "# TYPE tenant_proxy_waiting_clients gauge",
            "# TYPE tenant_proxy_tenant_clients gauge",
        ]
        XCTAssertEqual(Set(typeLines.map(String.init)), Set(expected))
        XCTAssertEqual(typeLines.count, expected.count)
        XCTAssertTrue(text.hasSuffix("\n"))
    }

    func testDeltaTrackerReportsEveryLabelOfTheSnapshot() {
        var deltas = TenantCounterDeltas()
        let first = deltas.increments(for: [TenantCounters(tenant: "a", queries: 2), TenantCounters(tenant: "b")]) {
            $0
        }
        XCTAssertEqual(first["a"], TenantCounterDeltas.Increments(queries: 2))
        XCTAssertEqual(first["b"], TenantCounterDeltas.Increments())
        let second = deltas.increments(for: [TenantCounters(tenant: "a", queries: 2)]) { $0 }
        XCTAssertEqual(second, ["a": TenantCounterDeltas.Increments()])
        XCTAssertEqual(deltas.rememberedTenants, 2)
    }
}

/// The samples of a text exposition, by series (`name{labels}`), ignoring comments.
struct Series {
    private var values: [String: String] = [:]

    init(_ text: String) {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " ") else { continue }
            values[String(line[..<space])] = String(line[line.index(after: space)...])
        }
    }

    subscript(_ series: String) -> String? { values[series] }
    var keys: Dictionary<String, String>.Keys { values.keys }
}

/// An array appended to from several threads.
final class LockedArray<Element>: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [Element] = []

    func append(_ element: Element) {
        lock.lock()
        defer { lock.unlock() }
        storage.append(element)
    }

    var values: [Element] {
        lock.lock()
        defer { lock.unlock() }
        return storage
    }
}
