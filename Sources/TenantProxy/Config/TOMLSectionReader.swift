import TOMLKit

/// Reads typed keys out of a parsed TOML document, collecting every problem (wrong type, out of
/// range, unknown key) with the key's dotted name, so `check-config` can report them all at once.
struct TOMLSectionReader {
    private let root: TOMLTable
    private(set) var problems: [ConfigProblem] = []
    /// Keys each section may hold; anything else is reported as unknown (usually a typo).
    private var known: [String: Set<String>] = [:]
    /// Sections whose keys are themselves sections (`[clusters.NAME]`).
    private var containers: Set<String> = []

    init(root: TOMLTable) {
        self.root = root
    }

    mutating func problem(_ key: String, _ problem: String, fix: String) {
        problems.append(ConfigProblem(key: key, problem: problem, fix: fix))
    }

    private mutating func value(_ section: String, _ key: String) -> TOMLValueConvertible? {
        known[section, default: []].insert(key)
        if section.isEmpty { return root[key] }
        guard let table = table(at: section) else { return nil }
        return table[key]
    }

    /// The table at a dotted section path ("upstream", "clusters.replica").
    private func table(at section: String) -> TOMLTable? {
        var table: TOMLTable? = root
        for part in section.split(separator: ".", omittingEmptySubsequences: false) {
            table = table?[String(part)]?.table
        }
        return table
    }

    /// The names of the tables under `section` (`[clusters.a]`, `[clusters.b]` → a, b); each is
    /// then read as "section.name" and checked for unknown keys like any section.
    mutating func subsections(_ section: String) -> [String] {
        containers.insert(section)
        guard let raw = root[section] else { return [] }
        guard let table = raw.table else {
            problem(section, "must be a table of tables", fix: "write [\(section).NAME] sections")
            return []
        }
        return table.keys.sorted()
    }

    private static func dotted(_ section: String, _ key: String) -> String {
        section.isEmpty ? key : "\(section).\(key)"
    }

    mutating func string(_ section: String, _ key: String, default defaultValue: String) -> String {
        guard let raw = value(section, key) else { return defaultValue }
        guard let text = raw.string else {
            problem(Self.dotted(section, key), "must be a string", fix: "quote the value, e.g. \(key) = \"...\"")
            return defaultValue
        }
        return text
    }

    mutating func optionalString(_ section: String, _ key: String) -> String? {
        guard value(section, key) != nil else { return nil }
        let text = string(section, key, default: "")
        return text
    }

    mutating func int(_ section: String, _ key: String, default defaultValue: Int, range: ClosedRange<Int>) -> Int {
        guard let raw = value(section, key) else { return defaultValue }
        guard let number = raw.int else {
            problem(Self.dotted(section, key), "must be an integer", fix: "write a number without quotes, e.g. \(key) = \(defaultValue)")
            return defaultValue
        }
        guard range.contains(number) else {
            problem(
                Self.dotted(section, key),
                "must be \(range.lowerBound)-\(range.upperBound) (got \(number))",
                fix: "use a value in that range, e.g. \(defaultValue)"
            )
            return defaultValue
        }
        return number
    }

    mutating func bool(_ section: String, _ key: String, default defaultValue: Bool) -> Bool {
        guard let raw = value(section, key) else { return defaultValue }
        guard let flag = raw.bool else {
            problem(Self.dotted(section, key), "must be true or false", fix: "write \(key) = true or \(key) = false")
            return defaultValue
        }
        return flag
    }

    /// Whether the document has this section (and marks it known).
    mutating func hasSection(_ section: String) -> Bool {
        known[section, default: []] = known[section, default: []]
        return root[section]?.table != nil
    }

    /// An array of tables (`[[section.key]]`), for readers that parse the elements themselves.
    mutating func rawArray(_ section: String, _ key: String) -> TOMLArray? {
        guard let raw = value(section, key) else { return nil }
        guard let array = raw.array else {
            problem(Self.dotted(section, key), "must be an array of tables", fix: "write [[\(section).\(key)]] blocks")
            return nil
        }
        return array
    }

    /// A table of strings (`[section.key]` with `name = "value"` lines, or an inline table).
    mutating func stringTable(_ section: String, _ key: String) -> [String: String] {
        guard let raw = value(section, key) else { return [:] }
        guard let table = raw.table else {
            problem(Self.dotted(section, key), "must be a table of strings", fix: "write [\(section).\(key)] with name = \"value\" lines")
            return [:]
        }
        var result: [String: String] = [:]
        for name in table.keys {
            guard let text = table[name]?.string else {
                problem("\(Self.dotted(section, key)).\(name)", "must be a string", fix: "quote the value")
                continue
            }
            result[name] = text
        }
        return result
    }

    mutating func stringArray(_ section: String, _ key: String, default defaultValue: [String]) -> [String] {
        guard let raw = value(section, key) else { return defaultValue }
        guard let array = raw.array else {
            problem(Self.dotted(section, key), "must be an array of strings", fix: "write \(key) = [\"a\", \"b\"]")
            return defaultValue
        }
        var result: [String] = []
        for element in array {
            guard let text = element.string else {
                problem(Self.dotted(section, key), "must contain only strings", fix: "quote every element")
                return defaultValue
            }
            result.append(text)
        }
        return result
    }

    /// The dotted name of every key a reader asked for (`server.listen_port`,
    /// `clusters.replica.host`, `peers`): the settings this version knows.
    var keysAsked: Set<String> {
        var keys: Set<String> = []
        for (section, names) in known {
            for name in names { keys.insert(Self.dotted(section, name)) }
        }
        return keys
    }

    /// Reports sections and keys that no reader asked for.
    mutating func reportUnknownKeys() {
        for top in root.keys {
            let table = root[top]?.table
            if containers.contains(top) {
                for name in table?.keys ?? [] {
                    guard let child = table?[name]?.table else {
                        problem("\(top).\(name)", "must be a table", fix: "write [\(top).\(name)] and put its keys under it")
                        continue
                    }
                    let allowed = known["\(top).\(name)"] ?? []
                    for key in child.keys where !allowed.contains(key) {
                        problem("\(top).\(name).\(key)", "unknown key", fix: "remove it or check the spelling against proxy.conf.example")
                    }
                }
                continue
            }
            if let allowed = known[top] {
                guard let table else {
                    problem(top, "must be a table", fix: "write [\(top)] and put its keys under it")
                    continue
                }
                for key in table.keys where !allowed.contains(key) {
                    problem("\(top).\(key)", "unknown key", fix: "remove it or check the spelling against proxy.conf.example")
                }
            } else if known[""]?.contains(top) != true {
                problem(top, table == nil ? "unknown key" : "unknown section",
                        fix: "remove it or check the spelling against proxy.conf.example")
            }
        }
    }
}
