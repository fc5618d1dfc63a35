/// One thing wrong with a configuration file: the key it concerns, what is wrong, and how to fix it.
struct ConfigProblem: Error, Equatable, CustomStringConvertible {
    var key: String
    var problem: String
    var fix: String

    var description: String { "\(key): \(problem); fix: \(fix)" }
}

/// Raised when a configuration cannot be used; carries every problem found, not just the first.
struct ConfigError: Error, CustomStringConvertible {
    var file: String
    var problems: [ConfigProblem]

    var description: String {
        "invalid configuration \(file):\n" + problems.map { "  \($0)" }.joined(separator: "\n")
    }
}
