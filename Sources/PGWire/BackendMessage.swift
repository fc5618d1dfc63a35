import NIOCore

/// A decoded typed message sent by the server.
public enum BackendMessage: Equatable, Sendable {
    /// 'R'
    case authentication(Authentication)
    /// 'K'
    case backendKeyData(BackendKeyData)
    /// 'S'
    case parameterStatus(ParameterStatus)
    /// 'Z'
    case readyForQuery(ReadyForQuery)
    /// 'T'
    case rowDescription(RowDescription)
    /// 'D'
    case dataRow(DataRow)
    /// 'C'
    case commandComplete(CommandComplete)
    /// 'I'
    case emptyQueryResponse
    /// 'E'
    case errorResponse(ErrorResponse)
    /// 'N'
    case noticeResponse(NoticeResponse)
    /// 'A'
    case notificationResponse(NotificationResponse)
    /// '1'
    case parseComplete
    /// '2'
    case bindComplete
    /// '3'
    case closeComplete
    /// 'n'
    case noData
    /// 't'
    case parameterDescription(ParameterDescription)
    /// 's'
    case portalSuspended
    /// 'G'
    case copyInResponse(CopyResponse)
    /// 'H'
    case copyOutResponse(CopyResponse)
    /// 'W'
    case copyBothResponse(CopyResponse)
    /// 'd'
    case copyData(CopyData)
    /// 'c'
    case copyDone
    /// 'v'
    case negotiateProtocolVersion(NegotiateProtocolVersion)
    /// 'V'
    case functionCallResponse(FunctionCallResponse)

    /// The identifier of this message.
    public var id: BackendMessageID {
        switch self {
        case .authentication: return .authentication
        case .backendKeyData: return .backendKeyData
        case .parameterStatus: return .parameterStatus
        case .readyForQuery: return .readyForQuery
        case .rowDescription: return .rowDescription
        case .dataRow: return .dataRow
        case .commandComplete: return .commandComplete
        case .emptyQueryResponse: return .emptyQueryResponse
        case .errorResponse: return .errorResponse
        case .noticeResponse: return .noticeResponse
        case .notificationResponse: return .notificationResponse
        case .parseComplete: return .parseComplete
        case .bindComplete: return .bindComplete
        case .closeComplete: return .closeComplete
        case .noData: return .noData
        case .parameterDescription: return .parameterDescription
        case .portalSuspended: return .portalSuspended
        case .copyInResponse: return .copyInResponse
        case .copyOutResponse: return .copyOutResponse
        case .copyBothResponse: return .copyBothResponse
        case .copyData: return .copyData
        case .copyDone: return .copyDone
        case .negotiateProtocolVersion: return .negotiateProtocolVersion
        case .functionCallResponse: return .functionCallResponse
        }
    }

    /// Decodes a typed frame.
    ///
    /// - Throws: ``PGWireError`` with `.unexpectedMessage` for an unknown identifier, or the
    ///   payload's decoding error.
    public static func decode(_ frame: PGFrame) throws -> BackendMessage {
        guard let id = BackendMessageID(rawValue: frame.type) else {
            throw PGWireError.unexpectedMessage("unknown backend message identifier \(frame.type)")
        }
        var payload = frame.payload
        switch id {
        case .authentication: return .authentication(try Authentication.decode(payload: &payload))
        case .backendKeyData: return .backendKeyData(try BackendKeyData.decode(payload: &payload))
        case .parameterStatus: return .parameterStatus(try ParameterStatus.decode(payload: &payload))
        case .readyForQuery: return .readyForQuery(try ReadyForQuery.decode(payload: &payload))
        case .rowDescription: return .rowDescription(try RowDescription.decode(payload: &payload))
        case .dataRow: return .dataRow(try DataRow.decode(payload: &payload))
        case .commandComplete: return .commandComplete(try CommandComplete.decode(payload: &payload))
        case .errorResponse: return .errorResponse(try ErrorResponse.decode(payload: &payload))
        case .noticeResponse: return .noticeResponse(try NoticeResponse.decode(payload: &payload))
        case .notificationResponse: return .notificationResponse(try NotificationResponse.decode(payload: &payload))
        case .parameterDescription: return .parameterDescription(try ParameterDescription.decode(payload: &payload))
        case .copyInResponse: return .copyInResponse(try CopyResponse.decode(payload: &payload))
        case .copyOutResponse: return .copyOutResponse(try CopyResponse.decode(payload: &payload))
        case .copyBothResponse: return .copyBothResponse(try CopyResponse.decode(payload: &payload))
        case .copyData: return .copyData(try CopyData.decode(payload: &payload))
        case .negotiateProtocolVersion: return .negotiateProtocolVersion(try NegotiateProtocolVersion.decode(payload: &payload))
        case .functionCallResponse: return .functionCallResponse(try FunctionCallResponse.decode(payload: &payload))
        case .emptyQueryResponse, .parseComplete, .bindComplete, .closeComplete, .noData, .portalSuspended, .copyDone:
            try payload.pgwireExpectEnd("\(id)")
            switch id {
            case .emptyQueryResponse: return .emptyQueryResponse
            case .parseComplete: return .parseComplete
            case .bindComplete: return .bindComplete
            case .closeComplete: return .closeComplete
            case .noData: return .noData
            case .portalSuspended: return .portalSuspended
            default: return .copyDone
            }
        }
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .authentication(let message): message.encode(into: &buffer)
        case .backendKeyData(let message): message.encode(into: &buffer)
        case .parameterStatus(let message): message.encode(into: &buffer)
        case .readyForQuery(let message): message.encode(into: &buffer)
        case .rowDescription(let message): message.encode(into: &buffer)
        case .dataRow(let message): message.encode(into: &buffer)
        case .commandComplete(let message): message.encode(into: &buffer)
        case .errorResponse(let message): message.encode(into: &buffer)
        case .noticeResponse(let message): message.encode(into: &buffer)
        case .notificationResponse(let message): message.encode(into: &buffer)
        case .parameterDescription(let message): message.encode(into: &buffer)
        case .copyInResponse(let message): message.encode(into: &buffer, kind: .copyIn)
        case .copyOutResponse(let message): message.encode(into: &buffer, kind: .copyOut)
        case .copyBothResponse(let message): message.encode(into: &buffer, kind: .copyBoth)
        case .copyData(let message): message.encode(into: &buffer)
        case .negotiateProtocolVersion(let message): message.encode(into: &buffer)
        case .functionCallResponse(let message): message.encode(into: &buffer)
        case .emptyQueryResponse, .parseComplete, .bindComplete, .closeComplete, .noData, .portalSuspended, .copyDone:
            buffer.writeInteger(self.id.rawValue)
            buffer.writeInteger(Int32(4))
        }
    }
}
