import Logging

enum ProxyLogging {
    static func makeLogger(level: String) -> Logger {
        var logger = Logger(label: "tenant-proxy") { label in StreamLogHandler.standardError(label: label) }
        logger.logLevel = Logger.Level(rawValue: level) ?? .info
        return logger
    }
}
