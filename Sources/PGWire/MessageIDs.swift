/// Identifier bytes of typed messages sent by the client (frontend).
public enum FrontendMessageID: UInt8, Sendable, CaseIterable {
    /// ascii: B
    case bind = 66
    /// ascii: C
    case close = 67
    /// ascii: d
    case copyData = 100
    /// ascii: c
    case copyDone = 99
    /// ascii: f
    case copyFail = 102
    /// ascii: D
    case describe = 68
    /// ascii: E
    case execute = 69
    /// ascii: H
    case flush = 72
    /// ascii: F
    case functionCall = 70
    /// ascii: p (PasswordMessage, GSSResponse, SASLInitialResponse, SASLResponse)
    case password = 112
    /// ascii: P
    case parse = 80
    /// ascii: Q
    case query = 81
    /// ascii: S
    case sync = 83
    /// ascii: X
    case terminate = 88
}

/// Identifier bytes of typed messages sent by the server (backend).
public enum BackendMessageID: UInt8, Sendable, CaseIterable {
    /// ascii: R
    case authentication = 82
    /// ascii: K
    case backendKeyData = 75
    /// ascii: S
    case parameterStatus = 83
    /// ascii: Z
    case readyForQuery = 90
    /// ascii: T
    case rowDescription = 84
    /// ascii: D
    case dataRow = 68
    /// ascii: C
    case commandComplete = 67
    /// ascii: I
    case emptyQueryResponse = 73
    /// ascii: E
    case errorResponse = 69
    /// ascii: N
    case noticeResponse = 78
    /// ascii: A
    case notificationResponse = 65
    /// ascii: 1
    case parseComplete = 49
    /// ascii: 2
    case bindComplete = 50
    /// ascii: 3
    case closeComplete = 51
    /// ascii: n
    case noData = 110
    /// ascii: t
    case parameterDescription = 116
    /// ascii: s
    case portalSuspended = 115
    /// ascii: G
    case copyInResponse = 71
    /// ascii: H
    case copyOutResponse = 72
    /// ascii: W
    case copyBothResponse = 87
    /// ascii: v
    case negotiateProtocolVersion = 118
    /// ascii: V
    case functionCallResponse = 86
    /// ascii: c
    case copyDone = 99
    /// ascii: d
    case copyData = 100
}
