import NIOCore
import PGWire
import XCTest

@testable import TenantProxy

/// The Bind rename of transaction pooling, byte for byte (the renamed Bind must decode to the
/// client's Bind with only the statement name changed), and the lookup of the statement a Bind
/// names.
final class PreparedStatementsTests: XCTestCase {
    private func payload(of message: FrontendMessage) -> ByteBuffer {
        var buffer = ByteBuffer()
        message.encode(into: &buffer)
        buffer.moveReaderIndex(forwardBy: 5)
        return buffer
    }

    private func parse(_ name: String, _ query: String = "SELECT 1") -> Parse {
        Parse(name: name, query: query, parameterTypes: [])
    }

    private func lookUp(_ name: String, in statements: inout PreparedStatements) -> PreparedStatements.Statement? {
        Array(name.utf8).withUnsafeBytes { statements.statement(named: $0) }
    }

    func testRenamedBindKeepsPortalParametersAndFormats() throws {
        var statements = PreparedStatements(sessionID: 42)
        let statement = statements.register(Parse(name: "s1", query: "SELECT $1, $2", parameterTypes: [23, 25]),
                                            allocator: ByteBufferAllocator())
        XCTAssertEqual(String(buffer: statement.nameBytes), statement.proxyName + "\0")
        for portal in ["", "portal_1"] {
            let bind = Bind(portal: portal, statement: "s1", parameterFormats: [1, 0],
                            parameters: [ByteBuffer(bytes: [0, 0, 0, 7]), nil], resultFormats: [1])
            let payload = payload(of: .bind(bind))
            let parts = try XCTUnwrap(PreparedStatements.bindParts(payload))
            XCTAssertEqual(payload.getString(at: payload.readerIndex + parts.nameStart, length: parts.nameLength), "s1")
            XCTAssertEqual(parts.nameStart, portal.utf8.count + 1)
            var header = ByteBuffer(string: "left over from the previous Bind")
            payload.withUnsafeReadableBytes { raw in
                PreparedStatements.writeRenamedBindHeader(into: &header, portal: UnsafeRawBufferPointer(rebasing: raw[0 ..< parts.nameStart]),
                                                          statement: statement.nameBytes, restLength: raw.count - parts.restStart)
            }
            var wire = header
            wire.writeImmutableBuffer(payload.getSlice(at: payload.readerIndex + parts.restStart,
                                                       length: payload.readableBytes - parts.restStart)!)
            var expected = bind
            expected.statement = statement.proxyName
            var encoded = ByteBuffer()
            FrontendMessage.bind(expected).encode(into: &encoded)
            XCTAssertEqual(wire, encoded, "portal \(portal)")
        }
    }

    func testBindWithoutTerminatorsIsNotRenamed() {
        XCTAssertNil(PreparedStatements.bindParts(ByteBuffer(string: "portal")))
        XCTAssertNil(PreparedStatements.bindParts(ByteBuffer(string: "portal\0statement")))
        XCTAssertNil(PreparedStatements.bindParts(ByteBuffer()))
    }

    /// Session ids are reused once a session has ended, while its statements stay prepared on the
    /// connections it used: a later session with the same id must not get the same proxy names.
    func testProxyNamesAreNotReusedBySessionsWithTheSameID() {
        let allocator = ByteBufferAllocator()
        var first = PreparedStatements(sessionID: 7)
        var second = PreparedStatements(sessionID: 7)
        let a = first.register(parse("s1", "SELECT 'first'"), allocator: allocator)
        let b = second.register(parse("s1", "SELECT 'second'"), allocator: allocator)
        XCTAssertNotEqual(a.proxyName, b.proxyName)
        XCTAssertNotEqual(a.number, b.number)
        // and within one session, a name closed and prepared again is a new statement upstream
        first.remove("s1")
        let again = first.register(parse("s1", "SELECT 'again'"), allocator: allocator)
        XCTAssertNotEqual(again.proxyName, a.proxyName)
        XCTAssertNotEqual(again.number, a.number)
    }

    /// More statements than the recent list holds, Binds naming them in turn, then removals and
    /// re-registrations: the lookup by bytes always gives the dictionary's current statement.
    func testLookupByBytesFollowsRegistrationsAndRemovals() throws {
        let allocator = ByteBufferAllocator()
        var statements = PreparedStatements(sessionID: 9)
        let names = (0 ..< PreparedStatements.recentLimit * 2).map { "stmt_\($0)" }
        for name in names { _ = statements.register(parse(name, "SELECT '\(name)'"), allocator: allocator) }
        for _ in 0 ..< 3 {
            for name in names.shuffled() {
                XCTAssertTrue(try XCTUnwrap(lookUp(name, in: &statements)) === statements[name], name)
            }
        }
        XCTAssertNil(lookUp("stmt_", in: &statements))
        XCTAssertNil(lookUp("stmt_00", in: &statements))
        XCTAssertNil(lookUp("", in: &statements))
        // a statement just looked up (so in the recent list) is closed: gone, also by bytes
        _ = lookUp("stmt_3", in: &statements)
        statements.remove("stmt_3")
        XCTAssertNil(lookUp("stmt_3", in: &statements))
        // prepared again under the same name: the new one, not the closed one
        let fresh = statements.register(parse("stmt_3", "SELECT 'fresh'"), allocator: allocator)
        XCTAssertTrue(lookUp("stmt_3", in: &statements) === fresh)
        _ = lookUp("stmt_4", in: &statements)
        statements.removeAll()
        for name in names { XCTAssertNil(lookUp(name, in: &statements), name) }
    }

    /// An upstream error naming a statement by its proxy name reaches the client with the
    /// client's name, for statements it has and for ones removed since (a skipped Parse).
    func testErrorTextsGetTheClientsNames() {
        var statements = PreparedStatements(sessionID: 7)
        let kept = statements.register(parse("kept"), allocator: ByteBufferAllocator())
        let gone = statements.register(parse("gone"), allocator: ByteBufferAllocator())
        statements.remove(number: gone.number)
        XCTAssertEqual(statements.clientFacing("prepared statement \"\(gone.proxyName)\" does not exist"),
                       "prepared statement \"gone\" does not exist")
        XCTAssertEqual(statements.clientFacing("\"\(kept.proxyName)\" and \"\(gone.proxyName)\""), "\"kept\" and \"gone\"")
        XCTAssertNil(statements.clientFacing("division by zero"))
        // another session's names, a longer number, an unquoted name: left alone
        let other = "prepared statement \"tp8_\(kept.number)\" does not exist"
        XCTAssertNil(statements.clientFacing(other))
        let longer = "\"\(kept.proxyName)0\""
        XCTAssertEqual(statements.clientFacing(longer), longer)
        XCTAssertEqual(statements.clientFacing(kept.proxyName), nil)
        // only the last retiredLimit removals are remembered
        for n in 0 ..< PreparedStatements.retiredLimit {
            let s = statements.register(parse("r\(n)"), allocator: ByteBufferAllocator())
            statements.remove("r\(n)")
            XCTAssertEqual(statements.clientFacing("\"\(s.proxyName)\""), "\"r\(n)\"")
        }
        XCTAssertEqual(statements.clientFacing("\"\(gone.proxyName)\""), "\"\(gone.proxyName)\"")
    }
}
