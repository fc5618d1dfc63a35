import Atomics
import Foundation
import NIOCore
import PGWire

/// A client's named protocol-level prepared statements in transaction pooling mode. Each name the
/// client uses maps to a proxy name that no other statement of this process ever had
/// (`tp<session>_<number>`, the number counted process-wide), so clients sharing an upstream
/// connection never collide, and the Parse is kept so the statement can be prepared again on
/// whichever connection the client borrows next.
///
/// The number is process-wide, not per session: a session's id is unique only among live
/// sessions, and the statements of a client that left stay prepared on the connections it used.
/// Counted per session, a later session given the same id would have found its first statement's
/// name already prepared there, and its Binds would have run the earlier client's SQL.
struct PreparedStatements {
    final class Statement {
        /// Process-wide; what upstream connections record as prepared on them.
        let number: UInt64
        let proxyName: String
        /// The client's Parse with the proxy name, ready to send again.
        let parse: ByteBuffer
        /// The proxy name and its terminator as they go on the wire (a slice of `parse`), for
        /// renamed Binds.
        let nameBytes: ByteBuffer
        /// The client's name for it, as its Binds carry it (without the terminator).
        let clientName: [UInt8]

        init(number: UInt64, proxyName: String, parse: ByteBuffer, clientName: String) {
            self.number = number
            self.proxyName = proxyName
            self.parse = parse
            // A Parse is its type byte, its length, then the statement name and its terminator.
            self.nameBytes = parse.getSlice(at: parse.readerIndex + 5, length: proxyName.utf8.count + 1)!
            self.clientName = Array(clientName.utf8)
        }
    }

    private static let numbers = ManagedAtomic<UInt64>(0)

    private let prefix: String
    private(set) var statements: [String: Statement] = [:]
    /// The statements Binds named last, compared byte for byte before the dictionary is asked: a
    /// Bind then needs neither a String made of its name nor a hash of one. An application's hot
    /// statements are few (pgbench's TPC-B-like script: five).
    private var recent: [Statement] = []
    private var recentNext = 0
    static let recentLimit = 8
    /// The last statements removed (number, client's name): a Bind sent before the removal
    /// was known (pipelined behind a batch whose Parse of it the server skipped) fails upstream
    /// under the proxy name, which the client must see as its own.
    private var retired: [(number: UInt64, name: String)] = []
    static let retiredLimit = 16
    /// Parses of a name whose earlier Parse was still unanswered, sent under the earlier one's
    /// proxy name so that the server decides (see `contend`): the statement each makes should
    /// it succeed. Nearly always empty.
    private var contenders: [UInt64: Statement] = [:]

    init(sessionID: Int32) {
        prefix = "tp\(UInt32(bitPattern: sessionID))_"
    }

    /// A client Parse of a named statement: registers it and returns the Parse to send (renamed).
    mutating func register(_ parse: Parse, allocator: ByteBufferAllocator) -> Statement {
        let statement = Self.statement(parse, number: Self.numbers.wrappingIncrementThenLoad(ordering: .relaxed),
                                       prefix: prefix, allocator: allocator)
        forget(parse.name)
        statements[parse.name] = statement
        return statement
    }

    private static func statement(_ parse: Parse, number: UInt64, prefix: String, allocator: ByteBufferAllocator) -> Statement {
        var renamed = parse
        renamed.name = prefix + String(number)
        var buffer = allocator.buffer(capacity: renamed.query.utf8.count + 32)
        renamed.encode(into: &buffer)
        return Statement(number: number, proxyName: renamed.name, parse: buffer, clientName: parse.name)
    }

    /// A Parse of a name whose statement's own Parse the server has not answered yet (both in
    /// one pipeline): whether the name is taken depends on that answer, so this Parse goes under
    /// the same proxy name and the server decides, as it would for the client's own names
    /// (42P05 if the first one succeeded). Its statement becomes the client's should it succeed
    /// (`contenderPrepared`). nil when a contender for that name is already on its way.
    mutating func contend(_ parse: Parse, with existing: Statement, allocator: ByteBufferAllocator) -> Statement? {
        guard contenders[existing.number] == nil else { return nil }
        let statement = Self.statement(parse, number: existing.number, prefix: prefix, allocator: allocator)
        contenders[existing.number] = statement
        return statement
    }

    /// The contender's Parse succeeded (so the earlier one failed): the name is its statement's.
    /// False when the client has closed or deallocated the name since.
    mutating func contenderPrepared(_ number: UInt64) -> Bool {
        guard let statement = contenders.removeValue(forKey: number) else { return false }
        let name = String(decoding: statement.clientName, as: UTF8.self)
        forget(name)
        statements[name] = statement
        return true
    }

    /// The contender's Parse failed or was skipped: the name stays as the earlier Parse left it.
    mutating func contenderFailed(_ number: UInt64) {
        contenders.removeValue(forKey: number)
    }

    subscript(name: String) -> Statement? { statements[name] }

    /// The statement a Bind names, from the name's bytes (without its terminator).
    mutating func statement(named name: UnsafeRawBufferPointer) -> Statement? {
        for statement in recent where statement.clientName.count == name.count {
            let same = statement.clientName.withUnsafeBytes { memcmp($0.baseAddress!, name.baseAddress!, name.count) == 0 }
            if same { return statement }
        }
        guard let statement = statements[String(decoding: name, as: UTF8.self)] else { return nil }
        if recent.count < Self.recentLimit {
            recent.append(statement)
        } else {
            recent[recentNext] = statement
            recentNext = (recentNext + 1) % Self.recentLimit
        }
        return statement
    }

    /// The client closed or deallocated the name (a contender for it is dropped too).
    mutating func remove(_ name: String) {
        if !contenders.isEmpty, let number = statements[name]?.number { contenders.removeValue(forKey: number) }
        drop(name)
    }

    private mutating func drop(_ name: String) {
        forget(name)
        guard let statement = statements.removeValue(forKey: name) else { return }
        retire(statement.number, name)
    }

    private mutating func retire(_ number: UInt64, _ name: String) {
        if retired.count == Self.retiredLimit { retired.removeFirst() }
        retired.append((number, name))
    }

    /// The proxy names' common start for this session's statements (`tp<session>_`).
    var proxyPrefix: String { prefix }

    /// `text` with each proxy name of this session's statements (quoted, as PostgreSQL's
    /// messages quote them) replaced by the client's name for it; nil when there is none.
    func clientFacing(_ text: String) -> String? {
        let quotedPrefix = "\"" + prefix
        guard text.contains(quotedPrefix) else { return nil }
        var out = ""
        var rest = Substring(text)
        while let range = rest.range(of: quotedPrefix) {
            out += rest[..<range.lowerBound]
            let digits = rest[range.upperBound...].prefix(while: \.isASCII).prefix(while: \.isNumber)
            let after = rest[range.upperBound...].dropFirst(digits.count)
            if let number = UInt64(digits), after.first == "\"", let name = clientName(number: number) {
                out += "\"" + name + "\""
                rest = after.dropFirst()
            } else {
                out += rest[range]
                rest = rest[range.upperBound...]
            }
        }
        return out + rest
    }

    private func clientName(number: UInt64) -> String? {
        statements.first(where: { $0.value.number == number })?.key
            ?? retired.last(where: { $0.number == number })?.name
    }

    /// Removes the statement with this proxy number, if the client still has it under its name
    /// (a Parse that PostgreSQL refused or skipped made no statement).
    mutating func remove(number: UInt64) {
        guard let name = statements.first(where: { $0.value.number == number })?.key else { return }
        drop(name)
    }

    /// DEALLOCATE ALL, DISCARD ALL. The names are remembered as removed ones are: a Bind sent
    /// before may still fail upstream under a proxy name.
    mutating func removeAll() {
        for (name, statement) in statements.prefix(Self.retiredLimit) { retire(statement.number, name) }
        statements.removeAll()
        contenders.removeAll()
        recent.removeAll()
        recentNext = 0
    }

    private mutating func forget(_ name: String) {
        guard let statement = statements[name] else { return }
        recent.removeAll { $0 === statement }
        recentNext = 0
    }

    /// Where a Bind payload's statement name is (after the portal and its terminator, up to its
    /// own terminator) and where the rest starts, as offsets from its reader index; found with
    /// memchr on the bytes in place.
    static func bindParts(_ payload: ByteBuffer) -> (nameStart: Int, nameLength: Int, restStart: Int)? {
        payload.withUnsafeReadableBytes { raw -> (Int, Int, Int)? in
            guard let base = raw.baseAddress, let portalEnd = memchr(base, 0, raw.count) else { return nil }
            let nameStart = base.distance(to: UnsafeRawPointer(portalEnd)) + 1
            guard let nameEnd = memchr(base + nameStart, 0, raw.count - nameStart) else { return nil }
            let nameLength = (base + nameStart).distance(to: UnsafeRawPointer(nameEnd))
            return (nameStart, nameLength, nameStart + nameLength + 1)
        }
    }

    /// Whether a Parse payload names its statement (the unnamed one has an empty name: the payload
    /// starts with its terminator). Read without decoding the Parse.
    static func isNamed(parse payload: ByteBuffer) -> Bool {
        payload.getInteger(at: payload.readerIndex, as: UInt8.self).map { $0 != 0 } ?? false
    }

    /// The start of a Bind with its statement name replaced (type, length, portal, statement
    /// name, each name with its terminator), sent before the original's `restLength` bytes of
    /// parameters: those are not copied. Written into `header` (cleared first): a buffer the
    /// caller keeps reuses its storage once the previous header has gone out. One copy of each
    /// part into the storage (ByteBuffer's writeInteger and writeImmutableBuffer cost ~900
    /// instructions for these four).
    static func writeRenamedBindHeader(into header: inout ByteBuffer, portal: UnsafeRawBufferPointer,
                                       statement: ByteBuffer, restLength: Int) {
        header.clear()
        let length = 5 + portal.count + statement.readableBytes
        header.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { out in
            let base = out.baseAddress!
            base.storeBytes(of: FrontendMessageID.bind.rawValue, as: UInt8.self)
            base.storeBytes(of: UInt32(length - 1 + restLength).bigEndian, toByteOffset: 1, as: UInt32.self)
            if portal.count > 0 { (base + 5).copyMemory(from: portal.baseAddress!, byteCount: portal.count) }
            statement.withUnsafeReadableBytes { name in
                (base + 5 + portal.count).copyMemory(from: name.baseAddress!, byteCount: name.count)
            }
            return length
        }
    }
}
