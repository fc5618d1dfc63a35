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
        /// Parse: a contender for a name whose earlier Parse was unanswered when it was sent
        /// (PreparedStatements.contend).
        var contested = false
    }

    /// A ring: `count` items from `head`, wrapping at the end (its length is a power of two).
    /// Allocated at the first message sent (idle sessions stay small), grown only by pipelines.
    private var ring: ContiguousArray<Item> = []
    private var head = 0
    private var count = 0
    private(set) var skippingUntilSync = false

    var isEmpty: Bool { count == 0 }

    @inline(__always)
    mutating func sent(_ item: Item) {
        if item.kind == .sync { skippingUntilSync = false }
        if count == ring.count { grow() }
        ring[(head + count) & (ring.count - 1)] = item
        count += 1
    }

    private mutating func grow() {
        var larger = ContiguousArray(repeating: Item(kind: .sync), count: max(8, ring.count * 2))
        for offset in 0 ..< count { larger[offset] = ring[(head + offset) & (ring.count - 1)] }
        ring = larger
        head = 0
    }

    /// ParseComplete: true when the Parse was the proxy's (the reply is not the client's).
    @inline(__always)
    mutating func parseComplete() -> Bool {
        guard count > 0, ring[head].kind == .parse else { return false }
        let added = ring[head].added
        dropFirst()
        return added
    }

    /// A client's Parse of statement `number` is still unanswered.
    func hasPendingParse(of number: UInt64) -> Bool {
        for offset in 0 ..< count {
            let item = ring[(head + offset) & (ring.count - 1)]
            if item.kind == .parse, item.statement == number, !item.added { return true }
        }
        return false
    }

    /// The statement of the first item when it is a contending Parse (see Item.contested).
    var firstContestedParse: UInt64? {
        guard count > 0, ring[head].kind == .parse, ring[head].contested else { return nil }
        return ring[head].statement
    }

    /// BindComplete, CloseComplete, NoData, RowDescription, CommandComplete, EmptyQueryResponse
    /// or PortalSuspended: completes the first item when it is the extended message such a reply
    /// answers; otherwise the reply is a Query's own.
    @inline(__always)
    mutating func completed(by kind: Kind) {
        guard count > 0, ring[head].kind == kind else { return }
        dropFirst()
    }

    /// ReadyForQuery: the note of the cycle it ends (nil when none was expected).
    mutating func readyForQuery() -> Note? {
        while count > 0 {
            let kind = ring[head].kind
            let note = ring[head].note
            dropFirst()
            if kind == .query || kind == .sync { return note }
        }
        return nil
    }

    /// ErrorResponse. When it answers an extended message, that message and everything before
    /// the next Sync are undone; they are returned in order (Query cycles among them get no
    /// ReadyForQuery, Parses prepared nothing, Closes closed nothing). An error of a Query, a
    /// FunctionCall or a Sync (a failed commit) undoes nothing.
    mutating func failed() -> [Item] {
        guard count > 0, ring[head].kind.isExtended else { return [] }
        var undone: [Item] = []
        while count > 0, ring[head].kind != .sync {
            undone.append(ring[head])
            dropFirst()
        }
        if isEmpty { skippingUntilSync = true }
        return undone
    }

    @inline(__always)
    private mutating func dropFirst() {
        head = (head + 1) & (ring.count - 1)
        count -= 1
    }
}
