import NIOCore
import TOMLKit

/// How a client proves who it is.
enum AuthMethod: String, Sendable, CaseIterable {
    case scram = "scram-sha-256"
    case md5
    case password
    case cert
    case jwt
    case trust
    case reject
}

/// A pg_hba-like rule: the first rule whose user, database and address match decides the method.
struct AuthRule: Sendable, Equatable {
    var user: String = "*"
    var database: String = "*"
    var network: IPNetwork?
    var method: AuthMethod

    func matches(user name: String, database db: String, address: SocketAddress?) -> Bool {
        guard user == "*" || user == name, database == "*" || database == db else { return false }
        guard let network else { return true }
        return network.contains(address)
    }

    /// Reads `[[auth.rules]]`.
    static func read(reader: inout TOMLSectionReader) -> [AuthRule] {
        guard let array = reader.rawArray("auth", "rules") else { return [] }
        var rules: [AuthRule] = []
        for (index, element) in array.enumerated() {
            let key = "auth.rules[\(index)]"
            guard let table = element.table else {
                reader.problem(key, "must be a table", fix: "write [[auth.rules]] with user, database, address and method")
                continue
            }
            for field in table.keys where !["user", "database", "address", "method"].contains(field) {
                reader.problem("\(key).\(field)", "unknown key", fix: "use user, database, address and method")
            }
            guard let methodText = table["method"]?.string, let method = AuthMethod(rawValue: methodText) else {
                reader.problem("\(key).method", "is missing or unknown",
                               fix: "use one of \(AuthMethod.allCases.map(\.rawValue).joined(separator: ", "))")
                continue
            }
            var rule = AuthRule(method: method)
            rule.user = table["user"]?.string ?? "*"
            rule.database = table["database"]?.string ?? "*"
            if let address = table["address"]?.string {
                guard let network = IPNetwork(parsing: address) else {
                    reader.problem("\(key).address", "is not a CIDR block", fix: "write e.g. \"10.0.0.0/8\" or \"::1/128\"")
                    continue
                }
                rule.network = network
            }
            rules.append(rule)
        }
        return rules
    }
}

/// An IPv4 or IPv6 network in CIDR notation.
struct IPNetwork: Sendable, Equatable {
    var bytes: [UInt8]
    var prefix: Int

    init?(parsing text: String) {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        guard let address = Self.bytes(of: parts[0]) else { return nil }
        bytes = address
        let maxPrefix = address.count * 8
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...maxPrefix).contains(value) else { return nil }
            prefix = value
        } else {
            prefix = maxPrefix
        }
    }

    static func bytes(of ip: String) -> [UInt8]? {
        if let address = try? SocketAddress(ipAddress: ip, port: 0) {
            switch address {
            case .v4(let v4):
                return withUnsafeBytes(of: v4.address.sin_addr.s_addr) { Array($0) }
            case .v6(let v6):
                return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            case .unixDomainSocket:
                return nil
            }
        }
        return nil
    }

    func contains(_ address: SocketAddress?) -> Bool {
        guard let ip = address?.ipAddress, var candidate = Self.bytes(of: ip) else { return false }
        // IPv4-mapped IPv6 clients match IPv4 rules.
        if bytes.count == 4, candidate.count == 16, candidate[0..<10].allSatisfy({ $0 == 0 }), candidate[10] == 0xFF, candidate[11] == 0xFF {
            candidate = Array(candidate[12...])
        }
        guard candidate.count == bytes.count else { return false }
        var remaining = prefix
        for index in 0..<bytes.count where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if bytes[index] & mask != candidate[index] & mask { return false }
            remaining -= bits
        }
        return true
    }
}
