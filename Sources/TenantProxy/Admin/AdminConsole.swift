import Foundation
import NIOCore
import PGWire

/// The admin console: a session on the virtual database `proxy`, for the users listed in
/// `[admin] users`. It speaks the simple query protocol and answers PgBouncer-style commands
/// with ordinary result sets. Commands that need every event loop's view (SHOW CLIENTS, PAUSE)
/// run asynchronously; meanwhile the client's further bytes are held.
final class AdminConsole {
    private let runtime: ProxyRuntime
    private let channel: Channel
    private let user: String
    private var decoder: PGFrontendDecoder
    private var pending: ByteBuffer?
    private var busy = false
    private var closed = false
    /// Extended-protocol messages are refused once, at the next Sync.
    private var refusingUntilSync = false
    private let onClose: () -> Void

    static let commands = """
        SHOW POOLS | CLIENTS | SERVERS | TENANTS | STATS | CONFIG | VERSION, RELOAD, \
        PAUSE [tenant | CLUSTER name], RESUME [tenant | CLUSTER name], SUSPEND tenant, ACTIVATE tenant, \
        KILL tenant, SHUTDOWN
        """

    init(runtime: ProxyRuntime, channel: Channel, user: String, maxMessageBytes: Int, onClose: @escaping () -> Void) {
        self.runtime = runtime
        self.channel = channel
        self.user = user
        self.decoder = PGFrontendDecoder(maxMessageLength: maxMessageBytes)
        self.decoder.phase = .messages
        self.onClose = onClose
    }

    /// Parameters reported at log-in: enough for psql and drivers to be content.
    static let parameters: [ParameterStatus] = [
        ParameterStatus(name: "server_version", value: "15.0 (tenant-proxy admin console)"),
        ParameterStatus(name: "server_encoding", value: "UTF8"),
        ParameterStatus(name: "client_encoding", value: "UTF8"),
        ParameterStatus(name: "DateStyle", value: "ISO, MDY"),
        ParameterStatus(name: "TimeZone", value: "UTC"),
        ParameterStatus(name: "integer_datetimes", value: "on"),
        ParameterStatus(name: "standard_conforming_strings", value: "on"),
        ParameterStatus(name: "application_name", value: "tenant-proxy"),
    ]

    func read(_ data: ByteBuffer) {
        guard !closed else { return }
        var buffer = ByteBuffer.joining(data, after: &pending)
        process(&buffer)
    }

    func close() {
        closed = true
    }

    private func process(_ buffer: inout ByteBuffer) {
        do {
            while !busy, !closed, let part = try decoder.next(from: &buffer) {
                guard case .frame(let frame) = part else { throw PGWireError(code: .unexpectedMessage, message: "startup packet after log-in") }
                handle(frame)
            }
        } catch {
            send([.errorResponse(ProxyError.protocolViolation("\(error)").errorResponse)])
            onClose()
            return
        }
        if buffer.readableBytes > 0 { pending = buffer }
    }

    private func handle(_ frame: PGFrame) {
        switch frame.type {
        case FrontendMessageID.query.rawValue:
            var payload = frame.payload
            let text = (try? Query.decode(payload: &payload).query) ?? ""
            run(text)
        case FrontendMessageID.terminate.rawValue:
            onClose()
        case FrontendMessageID.sync.rawValue:
            if refusingUntilSync {
                refusingUntilSync = false
                send([.errorResponse(ErrorResponse(sqlState: "0A000", message: "the admin console speaks the simple query protocol only",
                                                   hint: "use psql, or a driver's simple-query mode")), ready])
            } else {
                send([ready])
            }
        default:
            refusingUntilSync = true
        }
    }

    private var ready: BackendMessage { .readyForQuery(ReadyForQuery(status: .idle)) }

    private func send(_ messages: [BackendMessage]) {
        guard !closed else { return }
        var buffer = channel.allocator.buffer(capacity: 512)
        for message in messages { message.encode(into: &buffer) }
        channel.writeAndFlush(buffer, promise: nil)
    }

    // MARK: - Commands

    /// Runs each statement of the query text in turn (psql sends one; scripts may send several).
    private func run(_ text: String) {
        let statements = text.split(separator: ";").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
        guard !statements.isEmpty else {
            send([.emptyQueryResponse, ready])
            return
        }
        busy = true
        runSequentially(statements[...], output: [])
    }

    private func runSequentially(_ statements: ArraySlice<String>, output: [BackendMessage]) {
        guard let statement = statements.first else {
            finish(output + [ready])
            return
        }
        execute(statement).whenComplete { [self] result in
            switch result {
            case .success(let messages):
                runSequentially(statements.dropFirst(), output: output + messages)
            case .failure(let error):
                let response = (error as? AdminError)?.errorResponse
                    ?? ErrorResponse(sqlState: "XX000", message: "admin command failed: \(error)")
                finish(output + [.errorResponse(response), ready])
            }
        }
    }

    private func finish(_ messages: [BackendMessage]) {
        send(messages)
        busy = false
        if var held = pending {
            pending = nil
            process(&held)
        }
    }

    private var loop: EventLoop { channel.eventLoop }

    private func execute(_ statement: String) -> EventLoopFuture<[BackendMessage]> {
        let words = statement.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
        let verb = words.first?.uppercased() ?? ""
        let rest = Array(words.dropFirst())
        switch verb {
        case "SHOW":
            return show(rest.first?.uppercased() ?? "")
        case "RELOAD":
            let problems = runtime.reload()
            guard problems.isEmpty else {
                return fail(AdminError(sqlState: "F0000", message: "reload failed; the previous configuration stays in force",
                                       hint: problems.joined(separator: "; ")))
            }
            runtime.logger.notice("admin: reload", metadata: ["admin": "\(user)"])
            return done("RELOAD")
        case "PAUSE", "RESUME":
            guard let target = pauseTarget(rest) else { return fail(unknownTarget(rest)) }
            if verb == "RESUME" {
                guard runtime.resume(target) else {
                    return fail(AdminError(sqlState: "55000", message: "\(target) is not paused", hint: "SHOW POOLS lists what is paused"))
                }
                runtime.logger.notice("admin: resume", metadata: ["admin": "\(user)", "target": "\(target)"])
                return done("RESUME")
            }
            runtime.pause(target)
            runtime.logger.notice("admin: pause", metadata: ["admin": "\(user)", "target": "\(target)"])
            return whenQuiet(target).map { ["PAUSE"].map { .commandComplete(CommandComplete(tag: $0)) } }
        case "SUSPEND", "ACTIVATE", "KILL":
            guard rest.count == 1, let tenant = tenant(rest[0]) else { return fail(unknownTarget(rest)) }
            return tenantCommand(verb, tenant: tenant)
        case "SHUTDOWN":
            runtime.logger.notice("admin: shutdown", metadata: ["admin": "\(user)"])
            let handler = runtime.shutdownHandler
            loop.scheduleTask(in: .milliseconds(50)) { handler?() }
            return done("SHUTDOWN")
        case "BEGIN", "COMMIT", "ROLLBACK", "SET":
            // What drivers send on their own: accepted and ignored, the console has no transactions.
            return done(verb)
        default:
            return fail(AdminError(sqlState: "42601", message: "unknown admin command \"\(verb)\"", hint: "commands: \(Self.commands)"))
        }
    }

    private func done(_ tag: String) -> EventLoopFuture<[BackendMessage]> {
        loop.makeSucceededFuture([.commandComplete(CommandComplete(tag: tag))])
    }

    private func fail(_ error: AdminError) -> EventLoopFuture<[BackendMessage]> {
        loop.makeFailedFuture(error)
    }

    private func unknownTarget(_ words: [String]) -> AdminError {
        AdminError(sqlState: "42704", message: "no tenant or cluster \"\(words.joined(separator: " "))\"",
                   hint: "name a tenant (id, name or alias) from SHOW TENANTS, or CLUSTER <name>")
    }

    /// A tenant of the map by id, name or alias, or by UUID one found in the upstream's tenants
    /// table at run time (not in the map).
    private func tenant(_ identifier: String) -> (id: String, name: String)? {
        if let tenant = runtime.map.tenant(named: identifier) { return (tenant.id, tenant.name) }
        return TenantIdentifier.isUUID(identifier) ? (identifier, identifier) : nil
    }

    private func pauseTarget(_ words: [String]) -> PauseTarget? {
        switch words.count {
        case 0:
            return .all
        case 1:
            return tenant(words[0]).map { .tenant($0.id) }
        case 2 where words[0].uppercased() == "CLUSTER":
            return runtime.clusterNames().contains(words[1]) ? .cluster(words[1]) : nil
        case 2 where words[0].uppercased() == "TENANT":
            return tenant(words[1]).map { .tenant($0.id) }
        default:
            return nil
        }
    }

    private func tenantCommand(_ verb: String, tenant: (id: String, name: String)) -> EventLoopFuture<[BackendMessage]> {
        runtime.logger.notice("admin: \(verb.lowercased())", metadata: ["admin": "\(user)", "target_tenant": "\(tenant.name)"])
        switch verb {
        case "SUSPEND":
            runtime.suspend(tenantID: tenant.id)
            return done("SUSPEND")
        case "ACTIVATE":
            guard runtime.activate(tenantID: tenant.id) else {
                let fileSays = runtime.map.tenants[tenant.name]?.status == .suspended
                return fail(AdminError(sqlState: "55000", message: "tenant \(tenant.name) is not suspended from the console",
                                       hint: fileSays ? "the tenant map marks it suspended: edit its status and RELOAD" : nil))
            }
            return done("ACTIVATE")
        default:
            // Each session is looked at and ended on its own loop.
            let sessions = runtime.sessionsByLoop()
            return runtime.gather(on: loop) { current in
                var killed = 0
                for session in sessions[ObjectIdentifier(current)] ?? [] where session.kill(ifTenant: tenant.id) {
                    killed += 1
                }
                return killed
            }.map { counts in [.commandComplete(CommandComplete(tag: "KILL \(counts.reduce(0, +))"))] }
        }
    }

    /// PAUSE returns once no client of the target is inside a transaction: from then on its
    /// upstream connections carry nothing in flight and new transactions wait for RESUME.
    private func whenQuiet(_ target: PauseTarget) -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        func check() {
            guard !closed else { return promise.succeed(()) }
            let sessions = runtime.sessionsByLoop()
            runtime.gather(on: loop) { current in
                (sessions[ObjectIdentifier(current)] ?? []).contains { $0.isBusy(for: target) }
            }.whenComplete { [self] result in
                if case .success(let busy) = result, !busy.contains(true) {
                    promise.succeed(())
                } else {
                    loop.scheduleTask(in: .milliseconds(10)) { check() }
                }
            }
        }
        check()
        return promise.futureResult
    }

    // MARK: - SHOW

    private func show(_ what: String) -> EventLoopFuture<[BackendMessage]> {
        switch what {
        case "VERSION":
            return loop.makeSucceededFuture(Self.resultSet(columns: [("version", .text)], rows: [["tenant-proxy \(TenantProxyVersion.current)"]]))
        case "CONFIG":
            return loop.makeSucceededFuture(Self.resultSet(columns: [("key", .text), ("value", .text), ("changeable", .text)],
                                                           rows: AdminConfigRows.rows(runtime.config)))
        case "TENANTS":
            return runtime.loopViews(on: loop).map { [runtime] views in Self.tenantRows(runtime: runtime, views: views) }
        case "POOLS":
            return runtime.loopViews(on: loop).map { [runtime] views in Self.poolRows(runtime: runtime, views: views) }
        case "CLIENTS":
            return runtime.loopViews(on: loop).map { views in Self.clientRows(views) }
        case "SERVERS":
            return runtime.loopViews(on: loop).map { views in Self.serverRows(views) }
        case "STATS":
            return runtime.loopViews(on: loop).map { [runtime] views in Self.statsRows(runtime: runtime, views: views) }
        default:
            return fail(AdminError(sqlState: "42601", message: "unknown SHOW \"\(what)\"",
                                   hint: "SHOW POOLS, CLIENTS, SERVERS, TENANTS, STATS, CONFIG or VERSION"))
        }
    }

    enum ColumnType {
        case text, int, float

        var oid: UInt32 {
            switch self {
            case .text: return 25
            case .int: return 20
            case .float: return 701
            }
        }
    }

    static func resultSet(columns: [(String, ColumnType)], rows: [[String?]]) -> [BackendMessage] {
        let fields = columns.map { name, type in
            RowDescription.Field(name: name, tableOID: 0, columnAttributeNumber: 0, dataTypeOID: type.oid,
                                 dataTypeSize: type == .text ? -1 : 8, typeModifier: -1, format: 0)
        }
        var messages: [BackendMessage] = [.rowDescription(RowDescription(fields: fields))]
        let allocator = ByteBufferAllocator()
        for row in rows {
            messages.append(.dataRow(DataRow(columns: row.map { $0.map { allocator.buffer(string: $0) } })))
        }
        messages.append(.commandComplete(CommandComplete(tag: "SHOW")))
        return messages
    }

    private static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }

    private static func tenantName(_ runtime: ProxyRuntime, _ id: String) -> String {
        guard !id.isEmpty else { return "(none)" }
        return runtime.map.tenant(named: id)?.name ?? id
    }

    private static func tenantRows(runtime: ProxyRuntime, views: [LoopView]) -> [BackendMessage] {
        let map = runtime.map
        let suspended = runtime.suspendedTenantIDs
        let paused = runtime.pausedTargets
        var clients: [String: Int] = [:]
        var connections: [String: Int] = [:]
        for view in views {
            for client in view.clients where client.kind == "client" { clients[client.tenantID, default: 0] += 1 }
            for server in view.servers where server.state == "active" { connections[server.tenantID, default: 0] += 1 }
        }
        var rows: [[String?]] = map.tenants.values.sorted { $0.name < $1.name }.map { tenant in
            let status = suspended.contains(tenant.id) ? "suspended (console)" : tenant.status.rawValue
            let isPaused = paused.contains(.all) || paused.contains(.tenant(tenant.id)) || paused.contains(.cluster(tenant.upstream))
            return [tenant.name, tenant.id, status, tenant.isolation.rawValue, tenant.upstream, "\(clients[tenant.id] ?? 0)",
                    "\(connections[tenant.id] ?? 0)", isPaused ? "yes" : "no"]
        }
        // Tenants found in the upstream's tenants table (not in the map) with live clients.
        for id in clients.keys.sorted() where !id.isEmpty && map.tenant(named: id) == nil {
            let isPaused = paused.contains(.all) || paused.contains(.tenant(id)) || paused.contains(.cluster("default"))
            rows.append([id, id, suspended.contains(id) ? "suspended (console)" : "active", "rls", "default", "\(clients[id] ?? 0)",
                         "\(connections[id] ?? 0)", isPaused ? "yes" : "no"])
        }
        return resultSet(columns: [("name", .text), ("id", .text), ("status", .text), ("isolation", .text), ("cluster", .text),
                                   ("clients", .int), ("connections", .int), ("paused", .text)], rows: rows)
    }

    private static func poolRows(runtime: ProxyRuntime, views: [LoopView]) -> [BackendMessage] {
        struct Row { var active = 0, waiting = 0, serverActive = 0, serverIdle = 0, open = 0; var maxWait = 0.0 }
        /// One row per upstream role and database and pool mode: clients of one role may be pooled
        /// per transaction or hold a connection each (per user or database mode).
        struct RowKey: Hashable { var key: PoolKey; var mode: String }
        var rows: [RowKey: Row] = [:]
        for view in views {
            for pool in view.pools {
                let row = RowKey(key: pool.key, mode: "transaction")
                rows[row, default: Row()].waiting += pool.waiting
                rows[row, default: Row()].serverIdle += pool.idle
                rows[row, default: Row()].open += pool.open
                rows[row]!.maxWait = max(rows[row]!.maxWait, pool.oldestWaitSeconds)
            }
            for client in view.clients where client.hasConnection {
                guard let key = client.poolKey else { continue }
                let row = RowKey(key: key, mode: client.poolMode)
                rows[row, default: Row()].active += 1
                rows[row, default: Row()].serverActive += 1
            }
        }
        let paused = runtime.pausedTargets
        let order = rows.keys.sorted { ($0.key.cluster, $0.key.database, $0.key.user, $0.mode) < ($1.key.cluster, $1.key.database, $1.key.user, $1.mode) }
        let list: [[String?]] = order.map { rowKey in
            let (key, row) = (rowKey.key, rows[rowKey]!)
            let open = rowKey.mode == "transaction" ? row.open : row.serverActive
            let isPaused = paused.contains(.all) || paused.contains(.cluster(key.cluster))
            return [key.cluster, key.database, key.user, "\(row.active)", "\(row.waiting)", "\(row.serverActive)", "\(row.serverIdle)",
                    "\(open)", String(format: "%.3f", row.maxWait), rowKey.mode, isPaused ? "yes" : "no"]
        }
        return resultSet(columns: [("cluster", .text), ("database", .text), ("user", .text), ("cl_active", .int), ("cl_waiting", .int),
                                   ("sv_active", .int), ("sv_idle", .int), ("sv_open", .int), ("maxwait", .float), ("pool_mode", .text),
                                   ("paused", .text)], rows: list)
    }

    private static func clientRows(_ views: [LoopView]) -> [BackendMessage] {
        let clients = views.flatMap(\.clients).sorted { $0.connectedAt < $1.connectedAt }
        let rows: [[String?]] = clients.map { client in
            ["\(client.processID)", client.kind, client.user, client.database, client.tenantName, client.tenantID, client.state,
             client.address, "\(client.port)", timestamp(client.connectedAt), client.tls ? "yes" : "no", client.poolMode, client.cluster]
        }
        return resultSet(columns: [("session", .int), ("type", .text), ("user", .text), ("database", .text), ("tenant", .text),
                                   ("tenant_id", .text), ("state", .text), ("addr", .text), ("port", .int), ("connect_time", .text),
                                   ("tls", .text), ("pool_mode", .text), ("cluster", .text)], rows: rows)
    }

    private static func serverRows(_ views: [LoopView]) -> [BackendMessage] {
        let servers = views.flatMap(\.servers).sorted { $0.connectedAt < $1.connectedAt }
        let rows: [[String?]] = servers.map { server in
            [server.key.cluster, server.key.database, server.key.user, server.state, server.tenantID, server.host, "\(server.port)",
             "\(server.backendPID)", timestamp(server.connectedAt), server.clientProcessID.map { "\($0)" }]
        }
        return resultSet(columns: [("cluster", .text), ("database", .text), ("user", .text), ("state", .text), ("tenant_id", .text),
                                   ("addr", .text), ("port", .int), ("backend_pid", .int), ("connect_time", .text), ("client", .int)],
                         rows: rows)
    }

    private static func statsRows(runtime: ProxyRuntime, views: [LoopView]) -> [BackendMessage] {
        let rows: [[String?]] = runtime.tenantCounters(views).map { entry in
            [tenantName(runtime, entry.tenant), entry.tenant, "\(entry.transactions)", "\(entry.queries)", "\(entry.bytesReceived)",
             "\(entry.bytesSent)", "\(entry.waitMicroseconds)", "\(entry.errors)", "\(entry.clients)"]
        }
        return resultSet(columns: [("tenant", .text), ("tenant_id", .text), ("total_xact_count", .int), ("total_query_count", .int),
                                   ("total_received", .int), ("total_sent", .int), ("total_wait_time_us", .int), ("total_errors", .int),
                                   ("clients", .int)], rows: rows)
    }
}

/// An admin command's failure, rendered as an ErrorResponse; the console stays usable.
struct AdminError: Error {
    var sqlState: String
    var message: String
    var hint: String?

    var errorResponse: ErrorResponse {
        ErrorResponse(sqlState: sqlState, message: message, hint: hint)
    }
}

enum TenantProxyVersion {
    static let current = "0.6.0"
}
