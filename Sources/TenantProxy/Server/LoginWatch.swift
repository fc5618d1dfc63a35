import NIOCore

/// The client connections of one event loop that have not finished logging in, each with the
/// moment it must have: `[server] login_timeout_seconds`, as PostgreSQL's authentication_timeout
/// and PgBouncer's client_login_timeout. Without it a client that sends half a start-up message,
/// stalls its TLS handshake or never answers the SCRAM challenge would hold its socket, and its
/// place in max_client_connections, for good.
///
/// Loop-confined: a session joins when its channel becomes active and leaves when it is ready,
/// closes or turns out to be a cancel request (one dictionary insert and one removal per
/// connection); the loop looks for expired members once a second.
final class LoginWatch<Member: AnyObject> {
    private var pending: [ObjectIdentifier: (member: Member, deadline: NIODeadline)] = [:]

    var count: Int { pending.count }

    func watch(_ member: Member, until deadline: NIODeadline) {
        pending[ObjectIdentifier(member)] = (member, deadline)
    }

    func finish(_ member: Member) {
        pending.removeValue(forKey: ObjectIdentifier(member))
    }

    /// Takes out and returns the members whose deadline is `now` or earlier.
    func expire(now: NIODeadline) -> [Member] {
        guard !pending.isEmpty else { return [] }
        let due = pending.filter { $0.value.deadline <= now }
        for key in due.keys { pending.removeValue(forKey: key) }
        return due.values.sorted { $0.deadline < $1.deadline }.map(\.member)
    }
}
