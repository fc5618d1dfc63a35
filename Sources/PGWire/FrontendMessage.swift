import NIOCore

/// A decoded typed message sent by the client.
public enum FrontendMessage: Equatable, Sendable {
    /// 'Q'
    case query(Query)
    /// 'P'
    case parse(Parse)
    /// 'B'
    case bind(Bind)
    /// 'D'
    case describe(Describe)
    /// 'E'
    case execute(Execute)
    /// 'C'
    case close(Close)
    /// 'S'
    case sync
    /// 'H'
    case flush
    /// 'F'
    case functionCall(FunctionCall)
    /// 'd'
    case copyData(CopyData)
    /// 'c'
    case copyDone
    /// 'f'
    case copyFail(CopyFail)
    /// 'X'
    case terminate
    /// 'p' read as a PasswordMessage.
    case password(PasswordMessage)
    /// 'p' read as a SASLInitialResponse.
    case saslInitialResponse(SASLInitialResponse)
    /// 'p' read as a SASLResponse.
    case saslResponse(SASLResponse)

    /// How to read a 'p' message. 'p' is ambiguous on the wire; the caller says what it expects
    /// from the authentication exchange in progress.
    public enum PasswordKind: Sendable {
        /// PasswordMessage (cleartext or MD5).
        case password
        /// SASLInitialResponse (first message after AuthenticationSASL).
        case saslInitial
        /// SASLResponse (after AuthenticationSASLContinue).
        case sasl
    }

    /// The identifier of this message.
    public var id: FrontendMessageID {
        switch self {
        case .query: return .query
        case .parse: return .parse
        case .bind: return .bind
        case .describe: return .describe
        case .execute: return .execute
        case .close: return .close
        case .sync: return .sync
        case .flush: return .flush
        case .functionCall: return .functionCall
        case .copyData: return .copyData
        case .copyDone: return .copyDone
        case .copyFail: return .copyFail
        case .terminate: return .terminate
        case .password, .saslInitialResponse, .saslResponse: return .password
        }
    }

    /// Decodes a typed frame.
    ///
    /// - Throws: ``PGWireError`` with `.unexpectedMessage` for an unknown identifier, or the
    ///   payload's decoding error.
    public static func decode(_ frame: PGFrame, passwordKind: PasswordKind = .password) throws -> FrontendMessage {
        guard let id = FrontendMessageID(rawValue: frame.type) else {
            throw PGWireError.unexpectedMessage("unknown frontend message identifier \(frame.type)")
        }
        var payload = frame.payload
        switch id {
        case .query: return .query(try Query.decode(payload: &payload))
        case .parse: return .parse(try Parse.decode(payload: &payload))
        case .bind: return .bind(try Bind.decode(payload: &payload))
        case .describe: return .describe(try Describe.decode(payload: &payload))
        case .execute: return .execute(try Execute.decode(payload: &payload))
        case .close: return .close(try Close.decode(payload: &payload))
        case .sync:
            try payload.pgwireExpectEnd("Sync")
            return .sync
        case .flush:
            try payload.pgwireExpectEnd("Flush")
            return .flush
        case .functionCall: return .functionCall(try FunctionCall.decode(payload: &payload))
        case .copyData: return .copyData(try CopyData.decode(payload: &payload))
        case .copyDone:
            try payload.pgwireExpectEnd("CopyDone")
            return .copyDone
        case .copyFail: return .copyFail(try CopyFail.decode(payload: &payload))
        case .terminate:
            try payload.pgwireExpectEnd("Terminate")
            return .terminate
        case .password:
            switch passwordKind {
            case .password: return .password(try PasswordMessage.decode(payload: &payload))
            case .saslInitial: return .saslInitialResponse(try SASLInitialResponse.decode(payload: &payload))
            case .sasl: return .saslResponse(try SASLResponse.decode(payload: &payload))
            }
        }
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .query(let message): message.encode(into: &buffer)
        case .parse(let message): message.encode(into: &buffer)
        case .bind(let message): message.encode(into: &buffer)
        case .describe(let message): message.encode(into: &buffer)
        case .execute(let message): message.encode(into: &buffer)
        case .close(let message): message.encode(into: &buffer)
        case .functionCall(let message): message.encode(into: &buffer)
        case .copyData(let message): message.encode(into: &buffer)
        case .copyFail(let message): message.encode(into: &buffer)
        case .password(let message): message.encode(into: &buffer)
        case .saslInitialResponse(let message): message.encode(into: &buffer)
        case .saslResponse(let message): message.encode(into: &buffer)
        case .sync, .flush, .copyDone, .terminate:
            buffer.writeInteger(self.id.rawValue)
            buffer.writeInteger(Int32(4))
        }
    }
}
