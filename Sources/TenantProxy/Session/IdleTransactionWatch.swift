import NIOCore

/// What the watch reads of a session at each sweep.
struct TransactionActivity: Equatable {
    /// Inside a transaction block (the last ReadyForQuery said T or E) and still relaying.
    var inTransaction: Bool
    /// A statement is being answered, or client bytes wait to be sent: not idle.
    var busy: Bool
    /// ReadyForQuery messages so far: a change means the client ran something since the last sweep.
    var cycles: UInt64
}

protocol IdleTransactionMember: AnyObject {
    var transactionActivity: TransactionActivity { get }
}

/// The sessions of one event loop that are inside a transaction, for `[pool]
/// idle_transaction_timeout_seconds` (PgBouncer's idle_transaction_timeout): a client that keeps
/// a transaction open without sending anything holds its upstream connection (in transaction
/// mode, a connection other clients wait for) and the transaction's locks.
///
/// Loop-confined and off the relay's path: a session joins when a ReadyForQuery first says it is
/// in a transaction (once per transaction block, and only while the timeout is on); the loop
/// sweeps once a second, dropping members that left their transaction and timing those that sent
/// nothing since the last sweep. No timer per statement, no clock read per message: a session
/// is ended between `timeout` and `timeout` plus one sweep after its last statement was answered.
final class IdleTransactionWatch<Member: IdleTransactionMember> {
    private struct Entry {
        let member: Member
        var cycles: UInt64
        /// The sweep that first saw it idle at `cycles` (nil: not seen idle yet).
        var idleSince: NIODeadline?
    }

    private var members: [ObjectIdentifier: Entry] = [:]
    /// Seconds (0: off; nobody joins and the next sweep lets everyone go).
    var timeoutSeconds: Int

    init(timeoutSeconds: Int) {
        self.timeoutSeconds = timeoutSeconds
    }

    var count: Int { members.count }

    /// Returns false when the watch is off (the member need not remember it joined).
    func join(_ member: Member) -> Bool {
        guard timeoutSeconds > 0 else { return false }
        members[ObjectIdentifier(member)] = Entry(member: member, cycles: member.transactionActivity.cycles)
        return true
    }

    /// One sweep at `now`: returns the members that left their transaction (no longer watched)
    /// and those idle in it for the timeout (taken out; the caller ends them).
    func sweep(now: NIODeadline) -> (left: [Member], expired: [Member]) {
        guard !members.isEmpty else { return ([], []) }
        var left: [Member] = []
        var expired: [Member] = []
        let timeout = TimeAmount.seconds(Int64(timeoutSeconds))
        for (key, var entry) in members {
            let activity = entry.member.transactionActivity
            if !activity.inTransaction || timeoutSeconds == 0 {
                members.removeValue(forKey: key)
                left.append(entry.member)
                continue
            }
            if activity.busy || activity.cycles != entry.cycles {
                entry.cycles = activity.cycles
                entry.idleSince = activity.busy ? nil : now
            } else if let since = entry.idleSince {
                if now - since >= timeout {
                    members.removeValue(forKey: key)
                    expired.append(entry.member)
                }
                continue
            } else {
                entry.idleSince = now
            }
            members[key] = entry
        }
        return (left, expired)
    }
}
