import XCTest

@testable import TenantProxy

final class ContextInjectorTests: XCTestCase {
    func testLiteralsAndIdentifiersDoubleTheirQuote() {
        XCTAssertEqual(ContextInjector.literal("acme"), "'acme'")
        XCTAssertEqual(ContextInjector.literal("o'brien''s"), "'o''brien''''s'")
        XCTAssertEqual(ContextInjector.literal(""), "''")
        XCTAssertEqual(ContextInjector.literal("naïve \"x\""), "'naïve \"x\"'")
        XCTAssertEqual(ContextInjector.identifier("we\"ird"), "\"we\"\"ird\"")
        XCTAssertEqual(ContextInjector.identifier("it's"), "\"it's\"")
        // A quote followed by a combining mark is one Character but two things to PostgreSQL:
        // the quote byte must still be doubled.
        XCTAssertEqual(ContextInjector.literal("a'\u{301}; SELECT 1"), "'a''\u{301}; SELECT 1'")
        XCTAssertEqual(ContextInjector.identifier("a\"\u{301}b"), "\"a\"\"\u{301}b\"")
    }

    func testStatementsSetTenantSchemaAndUser() {
        let injector = ContextInjector(tenantSetting: "nile.tenant_id", userSetting: "nile.user_id")
        var tenant = Tenant(name: "acme", id: "acme-id")
        XCTAssertEqual(injector.statements(tenant: tenant, userID: "u'1"),
                       "SET nile.tenant_id = 'acme-id'; SET nile.user_id = 'u''1'")
        tenant.isolation = .schema
        tenant.schema = "acme"
        XCTAssertEqual(injector.statements(tenant: tenant, userID: nil),
                       "SET nile.tenant_id = 'acme-id'; SET search_path = \"acme\", public")
        XCTAssertNil(injector.statements(tenant: nil, userID: nil))
        XCTAssertEqual(injector.resetStatements(searchPath: false), "RESET nile.tenant_id; RESET nile.user_id")
        XCTAssertEqual(injector.resetStatements(searchPath: true), "RESET nile.tenant_id; RESET nile.user_id; RESET search_path")
    }

    func testSearchPathIsFoundOnlyInSchemaContexts() {
        let injector = ContextInjector(tenantSetting: "nile.tenant_id", userSetting: "nile.user_id")
        var tenant = Tenant(name: "acme", id: "acme-id")
        XCTAssertFalse(ContextInjector.setsSearchPath(injector.statements(tenant: tenant, userID: "u1")!))
        tenant.isolation = .schema
        tenant.schema = "search_path"
        XCTAssertTrue(ContextInjector.setsSearchPath(injector.statements(tenant: tenant, userID: nil)!))
        XCTAssertFalse(ContextInjector.setsSearchPath(""))
        XCTAssertFalse(ContextInjector.setsSearchPath("SET search_pat"))
        XCTAssertTrue(ContextInjector.setsSearchPath("SET search_path = x"))
    }
}
