import ArgumentParser
import Foundation

/// `tenant-proxy audit`: checks a live database for what tenant isolation depends on (RLS enabled
/// and forced with a policy on every tenant table, STABLE tenant functions, no dangerous privileges
/// for the proxy's role, the event trigger) and prints each finding with its fix.
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Check a live database's tenant isolation; exit 1 when something needs fixing.")

    @Option(help: "proxy.conf whose [upstream] connection is audited.")
    var config: String = "proxy.conf"

    @Option(help: "Database to audit (default: upstream.database).")
    var database: String?

    @Option(name: .customLong("sql-file"), help: "The checks (default: deploy/sql/audit.sql, found from the current folder).")
    var sqlFile: String?

    func run() throws {
        let proxyConfig: ProxyConfig
        do {
            proxyConfig = try ProxyConfig.load(path: config)
        } catch let error as ConfigError {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(2)
        }
        let path = try sqlFile ?? (DeployFiles.findSQLDirectory() + "/audit.sql")
        let checks = try Self.parseChecks(String(contentsOfFile: path, encoding: .utf8))
        let upstream = proxyConfig.upstream
        let target = database ?? (upstream.database.isEmpty ? nil : upstream.database)
        guard let target else {
            throw ValidationError("no database to audit: pass --database or set upstream.database")
        }
        let client = try UpstreamQueryClient.connect(
            host: upstream.host, port: upstream.port, user: upstream.user, password: upstream.password,
            database: target, timeoutSeconds: upstream.connectTimeoutSeconds)
        defer { client.close() }
        var findings = 0
        for check in checks {
            let rows = try client.query(check.sql)
            for row in rows {
                findings += 1
                let cells = row.map { $0 ?? "" } + ["", "", ""]
                print("\(check.name): \(cells[0])\n  problem: \(cells[1])\n  fix: \(cells[2])")
            }
        }
        if findings == 0 {
            print("audit of database \(target) as \(upstream.user): \(checks.count) checks, no findings")
        } else {
            print("audit of database \(target) as \(upstream.user): \(checks.count) checks, \(findings) finding(s)")
            throw ExitCode(1)
        }
    }

    struct Check: Equatable {
        var name: String
        var sql: String
    }

    /// Splits audit.sql on its `-- check: NAME` lines.
    static func parseChecks(_ text: String) -> [Check] {
        var checks: [Check] = []
        var current: Check?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("-- check:") {
                if let current, !current.sql.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { checks.append(current) }
                current = Check(name: line.dropFirst("-- check:".count).trimmingCharacters(in: .whitespaces), sql: "")
            } else if current != nil {
                current!.sql += line + "\n"
            }
        }
        if let current, !current.sql.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { checks.append(current) }
        return checks
    }
}

/// Finds the repository's deploy/sql folder from the current folder or the executable's.
enum DeployFiles {
    static func findSQLDirectory() throws -> String {
        var candidates = [FileManager.default.currentDirectoryPath]
        var executable = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<5 {
            candidates.append(executable.path)
            executable.deleteLastPathComponent()
        }
        for base in candidates {
            let path = base + "/deploy/sql"
            if FileManager.default.fileExists(atPath: path + "/01_nile_schema.sql") { return path }
        }
        throw ValidationError("deploy/sql not found; run from the repository folder or pass the path explicitly")
    }
}
