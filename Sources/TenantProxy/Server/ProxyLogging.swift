import Logging

enum ProxyLogging {
    /// A logger on stderr. `format` "json" writes one JSON object per line (for log collectors);
    /// anything else keeps swift-log's human-readable text lines.
    static func makeLogger(level: String, format: String = "text") -> Logger {
        let json = format.lowercased() == "json"
        var logger = Logger(label: "tenant-proxy") { label -> any LogHandler in
            if json { return JSONLogHandler.standardError(label: label) }
            return StreamLogHandler.standardError(label: label)
        }
        logger.logLevel = Logger.Level(rawValue: level) ?? .info
        return logger
    }
}
