import Foundation
import XCTest

@testable import TenantProxy

/// The operations keys: clusters, peers, instance id, reuse_port, metrics, admin, log format.
final class OperationsConfigTests: XCTestCase {
    private var folder: ScratchFolder!
    private var directory: String { folder.path }

    override func setUpWithError() throws {
        folder = try ScratchFolder("ops-config")
        try folder.write("tenants.toml")
    }

    override func tearDownWithError() throws {
        folder?.remove()
    }

    private func parse(_ text: String) throws -> ProxyConfig {
        try ProxyConfig.parse(text + "\n[tls]\nrequire = false\n", file: "proxy.conf", baseDirectory: directory,
                              environment: ["SECOND_PW": "from-env"])
    }

    private func problems(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> [ConfigProblem] {
        do {
            _ = try parse(text)
            XCTFail("accepted", file: file, line: line)
            return []
        } catch let error as ConfigError {
            return error.problems
        } catch {
            XCTFail("\(error)", file: file, line: line)
            return []
        }
    }

    func testDefaultsKeepOperationsFeaturesOff() throws {
        let config = try parse("")
        XCTAssertFalse(config.server.reusePort)
        XCTAssertEqual(config.server.instanceID, 0)
        XCTAssertEqual(config.peers, [])
        XCTAssertEqual(config.metrics.listenPort, 0)
        XCTAssertEqual(config.metrics.maxTenantLabels, 100)
        XCTAssertEqual(config.admin.users, [])
        XCTAssertEqual(config.log.format, "text")
        XCTAssertEqual(Array(config.clusters.keys), ["default"])
    }

    func testClustersHaveTheUpstreamKeysAndDefaultIsUpstream() throws {
        let config = try parse("""
            [upstream]
            host = "10.0.0.1"
            user = "tp"
            [clusters.second]
            host = "10.0.0.2"
            port = 5433
            user = "tp2"
            password_env = "SECOND_PW"
            tls = "require"
            """)
        XCTAssertEqual(config.cluster("default").host, "10.0.0.1")
        let second = config.cluster("second")
        XCTAssertEqual(second.name, "second")
        XCTAssertEqual(second.host, "10.0.0.2")
        XCTAssertEqual(second.port, 5433)
        XCTAssertEqual(second.password, "from-env")
        XCTAssertEqual(second.tls, .require)
        // an unknown name falls back to the default cluster
        XCTAssertEqual(config.cluster("nope").host, "10.0.0.1")
    }

    func testClusterProblemsNameTheirSection() {
        let found = problems("""
            [clusters.second]
            host = ""
            colour = "blue"
            tls = "sometimes"
            [clusters.default]
            host = "x"
            """)
        let keys = Set(found.map(\.key))
        XCTAssertTrue(keys.contains("clusters.second.host"), "\(keys)")
        XCTAssertTrue(keys.contains("clusters.second.colour"), "\(keys)")
        XCTAssertTrue(keys.contains("clusters.second.tls"), "\(keys)")
        XCTAssertTrue(keys.contains("clusters.default"), "\(keys)")
    }

    func testPeersNeedDistinctIdsAndAnInstanceID() throws {
        let config = try parse("""
            [server]
            instance_id = 1
            reuse_port = true
            [[peers]]
            instance_id = 2
            host = "10.0.0.2"
            port = 6432
            """)
        XCTAssertEqual(config.peers, [ProxyConfig.Peer(instanceID: 2, host: "10.0.0.2", port: 6432)])
        XCTAssertTrue(config.server.reusePort)

        let noID = problems("[[peers]]\ninstance_id = 2\nhost = \"h\"\nport = 1\n")
        XCTAssertTrue(noID.contains { $0.key == "server.instance_id" }, "\(noID)")
        let twice = problems("[server]\ninstance_id = 1\n[[peers]]\ninstance_id = 1\nhost = \"h\"\nport = 1\n")
        XCTAssertTrue(twice.contains { $0.key == "peers[0].instance_id" }, "\(twice)")
        let incomplete = problems("[server]\ninstance_id = 1\n[[peers]]\ninstance_id = 2\n")
        XCTAssertTrue(incomplete.contains { $0.key == "peers[0]" }, "\(incomplete)")
        let outOfRange = problems("[server]\ninstance_id = 256\n")
        XCTAssertTrue(outOfRange.contains { $0.key == "server.instance_id" }, "\(outOfRange)")
    }

    func testMetricsAdminAndLogFormat() throws {
        let config = try parse("""
            [metrics]
            listen_host = "0.0.0.0"
            listen_port = 9187
            max_tenant_labels = 5
            [admin]
            users = ["ops", "oncall"]
            [log]
            format = "JSON"
            """)
        XCTAssertEqual(config.metrics.listenHost, "0.0.0.0")
        XCTAssertEqual(config.metrics.listenPort, 9187)
        XCTAssertEqual(config.metrics.maxTenantLabels, 5)
        XCTAssertEqual(config.admin.users, ["ops", "oncall"])
        XCTAssertEqual(config.log.format, "json")
        XCTAssertTrue(problems("[log]\nformat = \"xml\"\n").contains { $0.key == "log.format" })
        XCTAssertTrue(problems("[metrics]\nlisten_port = 70000\n").contains { $0.key == "metrics.listen_port" })
    }

    func testTenantPlacementMustNameAConfiguredCluster() throws {
        let map = try TenantMap.parse("""
            [tenants.acme]
            id = "acme"
            upstream = "second"
            [tenants.globex]
            id = "globex"
            """, file: "tenants.toml")
        XCTAssertEqual(map.tenants["acme"]?.upstream, "second")
        XCTAssertEqual(map.tenants["globex"]?.upstream, "default")
        XCTAssertEqual(map.unknownClusters(known: ["default", "second"]), [])
        let unknown = map.unknownClusters(known: ["default"])
        XCTAssertEqual(unknown.map(\.key), ["tenants.acme.upstream"])
        XCTAssertThrowsError(try TenantMap.parse("[tenants.x]\nid = \"x\"\nupstream = 3\n", file: "t"))
    }
}
