import Foundation
import PGWire
import TOMLKit

/// The users the proxy authenticates itself, read from the users file:
///
///     [users.alice]
///     password = "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"   # from `tenant-proxy hash-password`
struct UserDirectory: Sendable {
    struct User: Sendable {
        var name: String
        var verifier: SCRAMVerifier
    }

    var users: [String: User] = [:]

    subscript(name: String) -> User? { users[name] }

    static func load(path: String) throws -> UserDirectory {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: path, problems: [
                ConfigProblem(key: "(file)", problem: "cannot be read", fix: "check auth.users_file and the file's permissions")
            ])
        }
        return try parse(text, file: path)
    }

    static func parse(_ text: String, file: String) throws -> UserDirectory {
        let root: TOMLTable
        do {
            root = try TOMLTable(string: text)
        } catch {
            throw ConfigError(file: file, problems: [
                ConfigProblem(key: "(syntax)", problem: "not valid TOML: \(error)", fix: "correct the syntax at the position shown")
            ])
        }
        var problems: [ConfigProblem] = []
        var directory = UserDirectory()
        for key in root.keys where key != "users" {
            problems.append(ConfigProblem(key: key, problem: "unknown section", fix: "users go under [users.NAME]"))
        }
        if let users = root["users"]?.table {
            for name in users.keys {
                let key = "users.\(name)"
                guard let entry = users[name]?.table else {
                    problems.append(ConfigProblem(key: key, problem: "must be a table", fix: "write [users.\(name)] with password = \"SCRAM-SHA-256$...\""))
                    continue
                }
                for field in entry.keys where field != "password" {
                    problems.append(ConfigProblem(key: "\(key).\(field)", problem: "unknown key", fix: "remove it"))
                }
                guard let stored = entry["password"]?.string else {
                    problems.append(ConfigProblem(key: "\(key).password", problem: "is missing",
                                                  fix: "add the output of `tenant-proxy hash-password`"))
                    continue
                }
                guard let verifier = try? SCRAMVerifier(parsing: stored) else {
                    // Never echo the stored value: it is a secret-equivalent.
                    problems.append(ConfigProblem(key: "\(key).password", problem: "is not a SCRAM-SHA-256 verifier",
                                                  fix: "replace it with the output of `tenant-proxy hash-password`"))
                    continue
                }
                directory.users[name] = User(name: name, verifier: verifier)
            }
        }
        if !problems.isEmpty { throw ConfigError(file: file, problems: problems) }
        return directory
    }
}
