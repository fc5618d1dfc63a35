import Foundation
import NIOCore

/// What SHOW CLIENTS shows of one session; read on the session's loop.
struct ClientView: Sendable {
    var processID: Int32
    var kind: String  // "client" or "admin"
    var user: String
    var database: String
    var tenantID: String
    var tenantName: String
    var state: String  // login, idle, active, waiting, paused
    var address: String
    var port: Int
    var connectedAt: Date
    var tls: Bool
    var poolMode: String
    var cluster: String
    var poolKey: PoolKey?
    /// Holds an upstream connection right now.
    var hasConnection: Bool
}

/// What SHOW SERVERS shows of one upstream connection.
struct ServerView: Sendable {
    var key: PoolKey
    var state: String  // active, idle
    var tenantID: String
    var host: String
    var port: Int
    var backendPID: Int32
    var connectedAt: Date
    var clientProcessID: Int32?
}

/// One loop's share of the admin views.
struct LoopView: Sendable {
    var clients: [ClientView] = []
    var servers: [ServerView] = []
    var pools: [UpstreamPool.PoolRow] = []
    var stats: [String: TenantCounters] = [:]
    var poolWaits = WaitHistogram()
}

extension UpstreamPool.PoolRow: @unchecked Sendable {}

extension ProxyRuntime {
    /// Reads every loop's sessions, pools and tallies on their own loops; answers on `loop`.
    func loopViews(on loop: EventLoop) -> EventLoopFuture<[LoopView]> {
        let sessions = sessionsByLoop()
        return gather(on: loop) { [self] current in
            var view = LoopView()
            let id = ObjectIdentifier(current)
            for session in sessions[id] ?? [] {
                guard let client = session.clientView() else { continue }
                view.clients.append(client)
                if let server = session.serverView() { view.servers.append(server) }
            }
            if let pool = pools[id] {
                view.pools = pool.poolRows()
                view.poolWaits = pool.waits
                view.servers += pool.idleConnections.map { connection in
                    ServerView(key: connection.key, state: "idle", tenantID: connection.lastTenant ?? "",
                               host: connection.cancelHost, port: connection.cancelPort,
                               backendPID: connection.backendKey?.processID ?? 0, connectedAt: connection.openedAt, clientProcessID: nil)
                }
            }
            view.stats = loopStats[id]?.snapshot() ?? [:]
            return view
        }
    }

    /// Totals per tenant over all loops, with each tenant's current client count.
    func tenantCounters(_ views: [LoopView]) -> [TenantCounters] {
        var totals: [String: TenantCounters] = [:]
        for view in views {
            for (tenant, counters) in view.stats {
                var entry = totals[tenant] ?? TenantCounters(tenant: tenant, transactions: 0, queries: 0, errors: 0, bytesReceived: 0,
                                                             bytesSent: 0, waitMicroseconds: 0, clients: 0)
                entry.add(counters)
                totals[tenant] = entry
            }
            for client in view.clients where client.kind == "client" {
                totals[client.tenantID, default: TenantCounters(tenant: client.tenantID, transactions: 0, queries: 0, errors: 0,
                                                                bytesReceived: 0, bytesSent: 0, waitMicroseconds: 0, clients: 0)].clients += 1
            }
        }
        return totals.keys.sorted().map { key in
            var entry = totals[key]!
            entry.tenant = key
            return entry
        }
    }

    /// What the metrics endpoint exports.
    func metricsSnapshot(on loop: EventLoop) -> EventLoopFuture<MetricsSnapshot> {
        loopViews(on: loop).map { [self] views in
            var snapshot = MetricsSnapshot()
            for state in ["active", "idle", "waiting", "paused", "login"] { snapshot.clients[state] = 0 }
            for state in ["active", "idle"] { snapshot.upstreamConnections[state] = 0 }
            for view in views {
                for client in view.clients { snapshot.clients[client.state, default: 0] += 1 }
                for server in view.servers { snapshot.upstreamConnections[server.state, default: 0] += 1 }
                snapshot.waitingClients += view.pools.reduce(0) { $0 + $1.waiting }
                snapshot.poolWaits.add(view.poolWaits)
            }
            snapshot.tenants = tenantCounters(views)
            return snapshot
        }
    }
}
