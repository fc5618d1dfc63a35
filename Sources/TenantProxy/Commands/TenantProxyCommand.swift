import ArgumentParser
import Foundation
import Logging

@main
struct TenantProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenant-proxy",
        abstract: "A PostgreSQL wire-protocol proxy that binds every connection to a tenant.",
        subcommands: [RunCommand.self, CheckConfigCommand.self, HashPasswordCommand.self, DemoCommand.self, AuditCommand.self],
        defaultSubcommand: RunCommand.self
    )
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the proxy (the default command).")

    @Option(name: .long, help: "Path of proxy.conf (TOML).")
    var config: String = "proxy.conf"

    func run() throws {
        try ProxyServer.run(configPath: config)
    }
}

struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config", abstract: "Validate a proxy.conf and the files it names; report each problem with its key and a fix.")

    @Argument(help: "Path of proxy.conf.")
    var file: String

    func run() throws {
        do {
            let config = try ProxyConfig.load(path: file)
            let map = try TenantMap.load(path: config.tenancy.mapFile, clusters: Set(config.clusters.keys))
            let missing = config.admin.users.filter { map[user: $0] == nil }
            if !missing.isEmpty {
                throw ConfigError(file: file, problems: missing.map {
                    ConfigProblem(key: "admin.users", problem: "user \"\($0)\" is not in the tenant map",
                                  fix: "add [users.\($0)] (mode = \"global\") to the tenant map, or remove it here")
                })
            }
        } catch let error as ConfigError {
            for problem in error.problems {
                print("\(error.file): \(problem)")
            }
            throw ExitCode(1)
        }
        print("OK")
    }
}

struct HashPasswordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hash-password",
        abstract: "Print a SCRAM-SHA-256 verifier for the users file (reads the password from stdin if --password is absent).")

    @Option(help: "The password (prefer stdin: command lines are visible to other users).")
    var password: String?

    @Option(help: "PBKDF2 iterations.")
    var iterations: Int = 4096

    func validate() throws {
        guard (1...10_000_000).contains(iterations) else {
            throw ValidationError("--iterations must be 1-10000000")
        }
    }

    func run() throws {
        var secret = password
        if secret == nil {
            secret = readLine(strippingNewline: true)
        }
        guard let secret, !secret.isEmpty else {
            throw ValidationError("no password given (use --password or pipe it on stdin)")
        }
        print(SCRAMVerifierFactory.make(password: secret, iterations: iterations))
    }
}
