import Foundation

/// A throwaway PostgreSQL cluster in a folder, driven with Debian's initdb/pg_ctl/psql. PostgreSQL
/// refuses to run as root, so when we are root every server command runs as the `postgres` user.
struct LocalPostgres {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let dataDirectory: String
    let socketDirectory: String
    let port: Int
    let binDirectory: String

    var logFile: String { dataDirectory + "/../postgres.log" }

    /// The newest PostgreSQL under /usr/lib/postgresql, or the folder of `pg_config --bindir`.
    static func findBinDirectory() throws -> String {
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        let sorted = versions.compactMap { Int($0) }.sorted(by: >)
        for version in sorted {
            let bin = "\(root)/\(version)/bin"
            if FileManager.default.isExecutableFile(atPath: bin + "/initdb") { return bin }
        }
        throw Failure(description: "PostgreSQL server binaries not found under \(root); install them with: apt-get install -y postgresql")
    }

    static var isRoot: Bool { geteuid() == 0 }

    /// Runs a program (as the postgres user when we are root) and returns its output; throws on a non-zero exit.
    @discardableResult
    static func run(
        _ program: String, _ arguments: [String], asPostgres: Bool, input: String? = nil, capture: Bool = true
    ) throws -> String {
        if !capture {
            return try runDetached(program, arguments, asPostgres: asPostgres)
        }
        let process = Process()
        if asPostgres && isRoot {
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/runuser")
            process.arguments = ["-u", "postgres", "--", program] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = arguments
        }
        // A server started by pg_ctl inherits our pipes and would hold them open forever, so
        // commands that start one write nowhere instead (the server logs to its own file).
        let output = Pipe()
        if capture {
            process.standardOutput = output
            process.standardError = output
        } else {
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
        }
        let inputPipe = Pipe()
        if input != nil { process.standardInput = inputPipe }
        try process.run()
        if let input {
            inputPipe.fileHandleForWriting.write(Data(input.utf8))
            try? inputPipe.fileHandleForWriting.close()
        }
        let data = capture ? output.fileHandleForReading.readDataToEndOfFile() : Data()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw Failure(description: "\(URL(fileURLWithPath: program).lastPathComponent) failed (exit \(process.terminationStatus)):\n\(text)")
        }
        return text
    }

    /// For commands that leave a server behind (pg_ctl start): Foundation's Process waits for
    /// descriptors the server inherits, so this goes through fork/exec/waitpid with output to /dev/null.
    private static func runDetached(_ program: String, _ arguments: [String], asPostgres: Bool) throws -> String {
        var argv = asPostgres && isRoot ? ["/usr/sbin/runuser", "-u", "postgres", "--", program] : [program]
        argv += arguments
        let command = argv.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let status = system(command + " </dev/null >/dev/null 2>&1")
        guard status == 0 else {
            throw Failure(description: "\(URL(fileURLWithPath: program).lastPathComponent) failed (status \(status))")
        }
        return ""
    }

    static func chownToPostgres(_ path: String) throws {
        guard isRoot else { return }
        try run("/bin/chown", ["-R", "postgres:postgres", path], asPostgres: false)
    }

    var isInitialized: Bool {
        FileManager.default.fileExists(atPath: dataDirectory + "/PG_VERSION")
    }

    func initialize(superuserPassword: String) throws {
        let passwordFile = dataDirectory + ".pwfile"
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        try superuserPassword.write(toFile: passwordFile, atomically: true, encoding: .utf8)
        try Self.chownToPostgres(dataDirectory)
        try Self.chownToPostgres(passwordFile)
        defer { try? FileManager.default.removeItem(atPath: passwordFile) }
        try Self.run(binDirectory + "/initdb", [
            "-D", dataDirectory, "-U", "postgres", "--pwfile", passwordFile,
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
        ], asPostgres: true)
    }

    func start() throws {
        try FileManager.default.createDirectory(atPath: socketDirectory, withIntermediateDirectories: true)
        try Self.chownToPostgres(socketDirectory)
        if !FileManager.default.fileExists(atPath: logFile) {
            FileManager.default.createFile(atPath: logFile, contents: nil)
        }
        try Self.chownToPostgres(logFile)
        try Self.run(binDirectory + "/pg_ctl", [
            "-D", dataDirectory, "-l", logFile, "-w", "-t", "60",
            "-o", "-p \(port) -k \(socketDirectory) -c listen_addresses=127.0.0.1",
            "start",
        ], asPostgres: true, capture: false)
    }

    func stop() throws {
        try Self.run(binDirectory + "/pg_ctl", ["-D", dataDirectory, "-m", "fast", "-w", "stop"], asPostgres: true)
    }

    /// Runs SQL as the superuser over the unix socket; stops at the first error.
    @discardableResult
    func psql(_ sql: String, database: String = "postgres", variables: [String: String] = [:]) throws -> String {
        var arguments = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", socketDirectory, "-p", "\(port)", "-U", "postgres", "-d", database]
        for (name, value) in variables.sorted(by: { $0.key < $1.key }) {
            arguments += ["-v", "\(name)=\(value)"]
        }
        arguments += ["-f", "-"]
        return try Self.run(binDirectory + "/psql", arguments, asPostgres: true, input: sql)
    }
}
