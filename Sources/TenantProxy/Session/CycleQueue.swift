/// The client's query cycles that wait for the upstream's ReadyForQuery, in order (one per
/// Query, Sync or FunctionCall sent upstream), with what the session owes the client at each.
///
/// It also follows PostgreSQL's rule for errors in the extended protocol: when a Parse, Bind,
/// Describe, Execute or Close fails, the server discards every message up to the next Sync,
/// a Query or FunctionCall included, and those get no ReadyForQuery. A client may send a Query
/// in the middle of an extended batch (the batch then ends with the Query's transaction); had
/// the session waited for that Query's ReadyForQuery after such an error, it would have held
/// everything after it and hung. So the queue counts, per cycle, the extended messages sent
/// ahead of its message and not yet answered: an ErrorResponse while one is unanswered answers
/// an extended message, and the cycles up to the next Sync are dropped.
///
/// Value type without I/O; the session calls it for what it sends and receives.
struct CycleQueue<Note> {
    private struct Entry {
        var note: Note
        /// Extended messages sent before this cycle's message and not answered yet.
        var ahead: Int
        /// The message is a Sync: PostgreSQL answers it even after an error.
        var sync: Bool
    }

    private var entries: [Entry] = []   // an empty array allocates nothing: idle sessions stay small
    /// Extended messages sent after the last cycle's message and not answered yet.
    private var tail = 0
    /// An extended message failed and the client has not sent the Sync that ends the skipping:
    /// the server discards what it sends until then (its Query and FunctionCall messages
    /// should not be sent, or wait for a ReadyForQuery).
    private(set) var skippingUntilSync = false

    var isEmpty: Bool { entries.isEmpty }

    /// A Parse, Bind, Describe, Execute or Close went upstream.
    mutating func extendedSent(_ count: Int = 1) {
        if !skippingUntilSync { tail += count }
    }

    /// A Query, Sync or FunctionCall went upstream; its ReadyForQuery will carry `note`.
    mutating func append(_ note: Note, sync: Bool) {
        entries.append(Entry(note: note, ahead: tail, sync: sync))
        tail = 0
        if sync { skippingUntilSync = false }
    }

    /// A reply that completes an extended message (ParseComplete, BindComplete, CloseComplete,
    /// NoData, RowDescription, CommandComplete, EmptyQueryResponse, PortalSuspended). With none
    /// ahead of the first cycle, the reply is that cycle's own (a Query's rows): nothing to do.
    mutating func extendedAnswered() {
        if entries.isEmpty {
            if tail > 0 { tail -= 1 }
        } else if entries[0].ahead > 0 {
            entries[0].ahead -= 1
        }
    }

    /// A ReadyForQuery arrived: the first cycle's note (nil if none was expected).
    mutating func popFirst() -> Note? {
        // One cycle outstanding is the usual case: removeLast takes it without removeFirst's
        // shifting (Array.replaceSubrange, ~150 instructions a transaction).
        switch entries.count {
        case 0: return nil
        case 1: return entries.removeLast().note
        default: return entries.removeFirst().note
        }
    }

    /// An ErrorResponse arrived. When it answers an extended message, the Query and FunctionCall
    /// cycles before the next Sync will never be answered: they are removed and returned (in
    /// order). With no Sync sent yet, the skipping lasts until the client sends one.
    mutating func failed() -> [Note] {
        if entries.isEmpty {
            guard tail > 0 else { return [] }
            tail = 0
            skippingUntilSync = true
            return []
        }
        guard entries[0].ahead > 0 else { return [] }
        var skipped: [Note] = []
        while let first = entries.first, !first.sync {
            skipped.append(entries.removeFirst().note)
        }
        if entries.isEmpty {
            // The extended messages sent since are discarded too.
            tail = 0
            skippingUntilSync = true
        } else {
            entries[0].ahead = 0
        }
        return skipped
    }
}
