/// What a Describe or Close message refers to.
public enum PGTargetKind: UInt8, Sendable, CaseIterable {
    /// ascii: S - a prepared statement.
    case statement = 83
    /// ascii: P - a portal.
    case portal = 80
}
