/// Pool waits counted on one event loop, without a lock: the Prometheus histogram took a mutex
/// shared by every loop and compared its 17 bounds as `Duration`s on each wait (~800
/// instructions, on most transactions when clients outnumber connections). The loops' counts are
/// summed at each scrape (`MetricsSnapshot.poolWaits`) and rendered by `ProxyMetrics`.
struct WaitHistogram: Sendable, Equatable {
    /// Upper bounds (inclusive) in nanoseconds, ascending: `ProxyMetrics.poolWaitBuckets`.
    static let bounds: [Int64] = ProxyMetrics.poolWaitBuckets.map { bound in
        let (seconds, attoseconds) = bound.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// Waits per bucket, not cumulative; the last entry counts the waits above every bound.
    private(set) var counts = [Int](repeating: 0, count: WaitHistogram.bounds.count + 1)
    private(set) var sumNanoseconds: Int64 = 0
    private(set) var count = 0

    /// Counts one wait; a negative one (a clock going backwards) counts as none.
    mutating func record(nanoseconds: Int64) {
        let value = max(0, nanoseconds)
        let bounds = Self.bounds
        var index = 0
        while index < bounds.count, bounds[index] < value { index += 1 }
        counts[index] += 1
        sumNanoseconds &+= value
        count += 1
    }

    mutating func add(_ other: WaitHistogram) {
        for index in counts.indices { counts[index] += other.counts[index] }
        sumNanoseconds &+= other.sumNanoseconds
        count += other.count
    }

    /// Waits at or below each bound (Prometheus' cumulative buckets), then the total (`+Inf`).
    var cumulative: [Int] {
        var running = 0
        return counts.map { count in
            running += count
            return running
        }
    }
}
