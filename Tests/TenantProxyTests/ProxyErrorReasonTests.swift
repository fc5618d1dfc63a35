import XCTest

@testable import TenantProxy

/// tenant_proxy_auth_failures_total's `reason` label comes from each refusal's own tag, not from
/// its text (a message reworded, or one that merely mentions "SSL", once moved a refusal to
/// another label).
final class ProxyErrorReasonTests: XCTestCase {
    func testEveryLogInRefusalCarriesItsLabel() {
        let expected: [(ProxyError, String)] = [
            (.authenticationFailed(user: "alice"), "bad_credentials"),
            (.lockedOut, "locked_out"),
            (.adminOnly, "admin_only"),
            (.cleartextNeedsTLS, "tls_required"),
            (.tlsRequired(user: "alice"), "tls_required"),
            (.tlsUnavailable, "tls_required"),
            (.directTLSWithoutALPN, "tls_required"),
            (.tokenExpired, "token_expired"),
            (.tenantMissing(user: "alice", setting: "nile.tenant_id", separator: "."), "tenant"),
            (.tenantNotFound("acme"), "tenant"),
            (.tenantNotActive("acme"), "tenant"),
            (.tenantSourcesDisagree, "tenant"),
            (.rejectedByRule(user: "alice"), "rejected"),
            (.certificateFailed(user: "alice"), "certificate"),
            (.loginTimeout(seconds: 60), "login_timeout"),
            (.protocolViolation("SSLRequest sent twice"), "other"),
            (ProxyError(severity: .fatal, sqlState: "28P01", message: "a bad password, worded otherwise"), "bad_credentials"),
            (ProxyError(severity: .fatal, sqlState: "28000", message: "tenant and TLS and rejected, untagged"), "other"),
        ]
        for (error, label) in expected {
            XCTAssertEqual(error.metricReason, label, "\(error)")
        }
    }

    func testTheTagNeverReachesTheClient() {
        let tagged = ProxyError.lockedOut
        var untagged = tagged
        untagged.failureReason = nil
        XCTAssertEqual(tagged.errorResponse, untagged.errorResponse)
    }
}
