import Foundation
import NIOCore
import NIOSSL
import PGWire

/// Who receives an upstream connection's bytes: the client session it is lent to, or the pool
/// while it logs in or sits idle.
protocol UpstreamConnectionOwner: AnyObject {
    func upstreamRead(_ data: ByteBuffer)
    func upstreamReadComplete()
    func upstreamClosed()
    func upstreamWritabilityChanged()
}

/// Which pool an upstream connection belongs to: the cluster it lives on, the role it logged in
/// as and its database.
struct PoolKey: Hashable, Sendable {
    var cluster: String = "default"
    var user: String
    var database: String
}

/// A tenant context as the pool compares it: the statements and their hash, so that looking
/// for an idle connection with a borrower's context tests integers, not strings of a hundred
/// bytes that differ only past their common `SET nile.tenant_id = '` prefix.
struct ContextKey: Equatable {
    let statements: String
    let hash: Int

    init(_ statements: String) {
        self.statements = statements
        self.hash = statements.hashValue
    }

    static func == (a: ContextKey, b: ContextKey) -> Bool {
        a.hash == b.hash && a.statements == b.statements
    }
}

/// One upstream PostgreSQL connection and what the proxy knows about its session state, so a
/// borrower gets exactly the state it expects (tenant context, tracked parameters, prepared
/// statements) and nothing another borrower left.
final class UpstreamConnection {
    let channel: Channel
    /// Writes from the channel's loop (every message a borrower relays).
    var out: LoopWriter
    /// Small messages the proxy writes on this connection (renamed Bind headers) are built here:
    /// once the previous one has been written, its storage is reused, not allocated again.
    var scratch: ByteBuffer
    let key: PoolKey
    /// The pool lane it belongs to (transaction pooling; nil for a session's own connection).
    let lane: UpstreamPool.Lane?
    var backendKey: BackendKeyData?
    /// Parameter values as the server last reported them (ParameterStatus).
    var parameters: [String: String] = [:]
    /// The tenant context the connection carries ("" = none), as `ContextInjector` keys it.
    var context = "" {
        didSet { contextKey = ContextKey(context) }
    }
    /// What `context` holds when the server's context may differ from any record: a switch
    /// user's SET of the tenant, which its transaction may roll back. Matches no session's
    /// context, so the next lend resets it all (search_path included) and sets the borrower's.
    /// Also the value `applied` gives a read-back setting changed but not read yet: it matches
    /// no client's value, so the next lend sets or resets it.
    static let unknownContext = "(unknown)"

    /// The next lend's reset of the context must include search_path.
    var contextMaySetSearchPath: Bool {
        context == Self.unknownContext || ContextInjector.setsSearchPath(context)
    }
    private(set) var contextKey = ContextKey("")
    /// Settings the proxy (or a borrower, for tracked parameters) placed on the connection,
    /// lower-case names: diffed against the next borrower's wishes.
    var applied: [String: String] = [:]
    /// Protocol-level prepared statements present on this connection (their process-wide
    /// numbers, see PreparedStatements).
    var preparedStatements: Set<UInt64> = []
    /// A borrower's DISCARD ALL / DEALLOCATE ALL may or may not have run (inside a transaction
    /// block, after an earlier error of its batch): `preparedStatements` was emptied, and the
    /// next prelude makes the server agree with a DEALLOCATE ALL of the proxy's. Else the proxy
    /// would prepare a statement again where it still is, and its Bind would fail (42P05).
    var preparedStatementsUncertain = false
    var lastReleased: NIODeadline = .now()
    let openedAt = Date()
    /// When it was opened, for `[pool] server_lifetime_seconds`.
    let opened: NIODeadline = .now()
    /// Up to a tenth of the lifetime taken off this connection's (in 16,384ths), so that
    /// connections opened together are not all closed, and opened again, together.
    private let lifetimeSlack = Int64.random(in: 0..<1_638)
    /// Where cancel requests for this connection go (the server's address).
    var cancelHost = ""
    var cancelPort = 0
    /// The tenant of its last borrower (SHOW SERVERS).
    var lastTenant: String?
    /// The shared settings object `applied` equals, when known: a borrower holding the same
    /// object needs no diff (see SessionSettings).
    var appliedSettings: SessionSettings?
    /// Last autoRead value set on the channel.
    var reading = true
    /// Set when the connection must not be lent again (error mid-protocol, failed context).
    var broken = false
    /// Strong, and cleared whenever the connection changes hands (release, discard, close): a
    /// weak reference would give every session a side table and slow each retain and release.
    var owner: UpstreamConnectionOwner?

    /// Whether the connection has lived longer than `lifetime` nanoseconds (less its slack) at `now`.
    func outlived(_ lifetime: Int64, at now: NIODeadline) -> Bool {
        (now - opened).nanoseconds >= lifetime - (lifetime >> 14) * lifetimeSlack
    }

    init(channel: Channel, key: PoolKey, lane: UpstreamPool.Lane? = nil) {
        self.channel = channel
        // The connector returns the channel with TLS (if any) in place.
        let tls = (try? channel.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self)) != nil
        // A pooled connection's writer keeps a batch's storage for the next (a session's own
        // connection, one per client in session mode, does not).
        self.out = LoopWriter(channel, direct: !tls, reusesBatch: lane != nil)
        self.scratch = channel.allocator.buffer(capacity: 64)
        self.key = key
        self.lane = lane
    }
}

/// Forwards an upstream channel's events to whoever owns the connection now.
final class UpstreamConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    /// Strong: the pipeline drops this handler when the channel closes, which ends the cycle.
    var connection: UpstreamConnection?
    /// Before the connection object exists (login), events go here; cleared when login ends.
    var loginOwner: UpstreamConnectionOwner?

    private var owner: UpstreamConnectionOwner? { connection?.owner ?? loginOwner }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if let owner {
            owner.upstreamRead(unwrapInboundIn(data))
        } else if let connection {
            // An idle pooled connection has nothing to say; bytes now are the server's FATAL on
            // its way out (pg_terminate_backend, shutdown) or state nobody asked for. Never lend it.
            connection.broken = true
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        owner?.upstreamReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        owner?.upstreamWritabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection?.broken = true
        owner?.upstreamClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
