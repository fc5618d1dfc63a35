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
    }

    func testSettingsAreReadFromStatementStartsOutsideQuotes() {
        let injector = ContextInjector(tenantSetting: "nile.tenant_id", userSetting: "nile.user_id")
        var tenant = Tenant(name: "acme", id: "acme-id")
        XCTAssertEqual(injector.settings(in: injector.statements(tenant: tenant, userID: "u1")!), [.tenant, .user])
        XCTAssertEqual(injector.settings(in: injector.statements(tenant: tenant, userID: nil)!), [.tenant])
        XCTAssertEqual(injector.settings(in: injector.statements(tenant: nil, userID: "u1")!), [.user])
        tenant.isolation = .schema
        tenant.schema = "search_path"
        XCTAssertEqual(injector.settings(in: injector.statements(tenant: tenant, userID: nil)!), [.tenant, .searchPath])
        XCTAssertEqual(injector.settings(in: ""), [])
        XCTAssertEqual(injector.settings(in: "SET search_pat"), [])
        // Inside a literal or an identifier (quotes doubled), a statement's text is a value.
        let sneaky = Tenant(name: "x", id: "x'; SET nile.user_id = 'v")
        XCTAssertEqual(injector.settings(in: injector.statements(tenant: sneaky, userID: nil)!), [.tenant])
        var quotedSchema = Tenant(name: "y", id: "y")
        quotedSchema.isolation = .schema
        quotedSchema.schema = "a\"; SET nile.user_id = \"b"
        XCTAssertEqual(injector.settings(in: injector.statements(tenant: quotedSchema, userID: nil)!), [.tenant, .searchPath])
        XCTAssertEqual(injector.settings(in: injector.statements(tenant: nil, userID: "''; SET search_path = ''")!), [.user])
    }

    func testASwitchIsOneQueryResettingOnlyWhatTheNewContextLeavesUnset() {
        let injector = ContextInjector(tenantSetting: "nile.tenant_id", userSetting: "nile.user_id")
        let acme = injector.statements(tenant: Tenant(name: "acme", id: "a"), userID: nil)!
        let globex = injector.statements(tenant: Tenant(name: "globex", id: "g"), userID: "u")!
        var schemaTenant = Tenant(name: "s", id: "s")
        schemaTenant.isolation = .schema
        schemaTenant.schema = "s"
        let schema = injector.statements(tenant: schemaTenant, userID: nil)!
        // Fresh connection: only the SETs.
        XCTAssertEqual(injector.switchStatements(from: "", to: acme), acme)
        XCTAssertNil(injector.switchStatements(from: "", to: ""))
        // The user setting is reset unless the new context sets it, whatever the old one read as.
        XCTAssertEqual(injector.switchStatements(from: globex, to: acme), "RESET nile.user_id; " + acme)
        XCTAssertEqual(injector.switchStatements(from: acme, to: acme), "RESET nile.user_id; " + acme)
        XCTAssertEqual(injector.switchStatements(from: acme, to: globex), globex)
        // To no context (a global user): everything the old one may have set.
        XCTAssertEqual(injector.switchStatements(from: acme, to: ""), "RESET nile.tenant_id; RESET nile.user_id")
        XCTAssertEqual(injector.switchStatements(from: schema, to: ""),
                       "RESET nile.tenant_id; RESET nile.user_id; RESET search_path")
        XCTAssertEqual(injector.switchStatements(from: schema, to: globex), "RESET search_path; " + globex)
        XCTAssertEqual(injector.switchStatements(from: globex, to: schema), "RESET nile.user_id; " + schema)
        // A value that looks like a SET of the user setting does not spare its reset.
        let sneaky = injector.statements(tenant: Tenant(name: "x", id: "x'; SET nile.user_id = 'v"), userID: nil)!
        XCTAssertEqual(injector.switchStatements(from: globex, to: sneaky), "RESET nile.user_id; " + sneaky)
    }
}
