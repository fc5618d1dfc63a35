import NIOCore
import PGWire
import XCTest

@testable import TenantProxy

/// The Bind rename of transaction pooling, byte for byte: the renamed Bind must decode to the
/// client's Bind with only the statement name changed.
final class PreparedStatementsTests: XCTestCase {
    private func payload(of message: FrontendMessage) -> ByteBuffer {
        var buffer = ByteBuffer()
        message.encode(into: &buffer)
        buffer.moveReaderIndex(forwardBy: 5)
        return buffer
    }

    func testRenamedBindKeepsPortalParametersAndFormats() throws {
        var statements = PreparedStatements(sessionID: 42)
        let statement = statements.register(Parse(name: "s1", query: "SELECT $1, $2", parameterTypes: [23, 25]),
                                            allocator: ByteBufferAllocator())
        XCTAssertEqual(String(buffer: statement.nameBytes), statement.proxyName + "\0")
        for portal in ["", "portal_1"] {
            let bind = Bind(portal: portal, statement: "s1", parameterFormats: [1, 0],
                            parameters: [ByteBuffer(bytes: [0, 0, 0, 7]), nil], resultFormats: [1])
            let (name, rest, portalBytes) = try XCTUnwrap(PreparedStatements.statementName(ofBind: payload(of: .bind(bind))))
            XCTAssertEqual(name, "s1")
            XCTAssertEqual(String(buffer: portalBytes), portal + "\0")
            var header = ByteBuffer(string: "left over from the previous Bind")
            PreparedStatements.writeRenamedBindHeader(into: &header, portal: portalBytes, statement: statement.nameBytes,
                                                      restLength: rest.readableBytes)
            var wire = header
            wire.writeImmutableBuffer(rest)
            var expected = bind
            expected.statement = statement.proxyName
            var encoded = ByteBuffer()
            FrontendMessage.bind(expected).encode(into: &encoded)
            XCTAssertEqual(wire, encoded, "portal \(portal)")
        }
    }

    func testBindWithoutTerminatorsIsNotRenamed() {
        XCTAssertNil(PreparedStatements.statementName(ofBind: ByteBuffer(string: "portal")))
        XCTAssertNil(PreparedStatements.statementName(ofBind: ByteBuffer(string: "portal\0statement")))
    }
}
