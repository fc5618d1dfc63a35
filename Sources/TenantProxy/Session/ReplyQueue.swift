/// What the session sent upstream and PostgreSQL has still to answer, in order: each extended
/// message (Parse, Bind, Describe, Execute, Close) until its completion, and each query cycle
/// (Query, FunctionCall, Sync) until its ReadyForQuery, with what the session owes the client
/// there.
///
/// It follows the server's rule for errors in the extended protocol: when an extended message
/// fails, PostgreSQL discards every message up to the next Sync, and a Query or FunctionCall
/// the client put inside the batch gets no ReadyForQuery; nor does a Parse skipped there
/// prepare anything. `failed()` returns what the error undid, so the session can drop those
/// cycles and forget those statements. Until the client sends that Sync, what it sends is
/// discarded (`skippingUntilSync`).
///
/// Value type without I/O; the session calls it for what it sends and receives.
struct ReplyQueue<Note> {
    enum Kind: UInt8 {
        case parse, bind, describe, execute, close
        /// Query or FunctionCall.
        case query
        case sync

        var isExtended: Bool { self != .query && self != .sync }
    }

    struct Item {
        var kind: Kind
        /// Query and Sync: what the session owes the client at their ReadyForQuery.
        var note: Note?
        /// Parse: the proxy's own (re-preparing a statement): its ParseComplete is not sent on.
        var added = false
        /// Parse: the statement it prepares on the connection; Close: the one it closes.
        var statement: UInt64 = 0
    }

    private var items: [Item] = []   // an empty array allocates nothing: idle sessions stay small
    private var head = 0
    private(set) var skippingUntilSync = false

    var isEmpty: Bool { head == items.count }

    mutating func sent(_ item: Item) {
        if item.kind == .sync { skippingUntilSync = false }
        items.append(item)
    }

    /// ParseComplete: true when the Parse was the proxy's (the reply is not the client's).
    mutating func parseComplete() -> Bool {
        guard let first = first, first.kind == .parse else { return false }
        return popFirst().added
    }

    /// BindComplete, CloseComplete, NoData, RowDescription, CommandComplete, EmptyQueryResponse
    /// or PortalSuspended: completes the first item when it is the extended message such a reply
    /// answers; otherwise the reply is a Query's own.
    mutating func completed(by kind: Kind) {
        guard let first = first, first.kind == kind else { return }
        _ = popFirst()
    }

    /// ReadyForQuery: the note of the cycle it ends (nil when none was expected).
    mutating func readyForQuery() -> Note? {
        while let first = first {
            _ = popFirst()
            if first.kind == .query || first.kind == .sync { return first.note }
        }
        return nil
    }

    /// ErrorResponse. When it answers an extended message, that message and everything before
    /// the next Sync are undone; they are returned in order (Query cycles among them get no
    /// ReadyForQuery, Parses prepared nothing, Closes closed nothing). An error of a Query, a
    /// FunctionCall or a Sync (a failed commit) undoes nothing.
    mutating func failed() -> [Item] {
        guard let first = first, first.kind.isExtended else { return [] }
        var undone: [Item] = []
        while let next = self.first, next.kind != .sync {
            undone.append(next)
            _ = popFirst()
        }
        if isEmpty { skippingUntilSync = true }
        return undone
    }

    private var first: Item? { head < items.count ? items[head] : nil }

    private mutating func popFirst() -> Item {
        let item = items[head]
        head += 1
        if head == items.count {
            // The usual case: everything answered. Keeps the storage for the next transaction.
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 16, head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
        return item
    }
}
