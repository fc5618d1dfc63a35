#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's limit on open files against what the configured client limit needs. A shell's
/// default soft limit (1024) would stop accepting at about a thousand clients, long before
/// `server.max_client_connections` (10,000 by default): new clients would wait in the listen
/// backlog without an answer. At start-up the soft limit is raised toward the need, never past
/// the hard limit (which only root may raise); if that is still short, a warning says so.
enum FileDescriptorLimit {
    /// Sockets and files besides client and upstream connections: listeners, event loops'
    /// epoll, eventfd and timerfd descriptors, log and configuration files.
    static let reserve = 128

    /// A socket per client, and per client at most one upstream connection (session mode; in
    /// transaction mode far fewer).
    static func needed(maxClients: Int) -> Int {
        maxClients * 2 + reserve
    }

    struct Outcome {
        var before: Int
        var after: Int
        var needed: Int
        /// Clients the limit in force allows for, at the same two descriptors per client.
        var clientsAllowed: Int { max(0, (after - FileDescriptorLimit.reserve) / 2) }
    }

    /// The soft limit to ask for: the need, capped by the hard limit, never lower than now.
    static func target(current: Int, hard: Int, needed: Int) -> Int {
        max(current, min(needed, hard))
    }

    /// Raises the soft limit of open files toward `needed(maxClients:)`; nil if the limits
    /// cannot be read.
    static func raise(maxClients: Int) -> Outcome? {
        var limit = rlimit()
        #if os(Linux)
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        #else
        let resource = RLIMIT_NOFILE
        #endif
        guard getrlimit(resource, &limit) == 0 else { return nil }
        // RLIM_INFINITY is all ones.
        let hard = limit.rlim_max == rlim_t.max ? Int.max : Int(clamping: limit.rlim_max)
        let current = limit.rlim_cur == rlim_t.max ? Int.max : Int(clamping: limit.rlim_cur)
        let needed = needed(maxClients: maxClients)
        let wanted = target(current: current, hard: hard, needed: needed)
        if wanted > current {
            var raised = limit
            raised.rlim_cur = rlim_t(wanted)
            if setrlimit(resource, &raised) != 0 {
                return Outcome(before: current, after: current, needed: needed)
            }
        }
        return Outcome(before: current, after: wanted, needed: needed)
    }
}
