import NIOCore

/// NotificationResponse ('A'): a NOTIFY delivered to a listening session.
public struct NotificationResponse: Equatable, Sendable {
    /// The process ID of the notifying backend.
    public var processID: Int32
    /// The channel name.
    public var channel: String
    /// The notification payload.
    public var payload: String

    /// Creates a NotificationResponse message.
    public init(processID: Int32, channel: String, payload: String) {
        self.processID = processID
        self.channel = channel
        self.payload = payload
    }

    /// Decodes the payload (after identifier and length); the payload must be consumed exactly.
    public static func decode(payload: inout ByteBuffer) throws -> NotificationResponse {
        let processID = try payload.pgwireReadInteger(as: Int32.self, "NotificationResponse")
        let channel = try payload.pgwireReadString("NotificationResponse channel")
        let message = try payload.pgwireReadString("NotificationResponse payload")
        try payload.pgwireExpectEnd("NotificationResponse")
        return NotificationResponse(processID: processID, channel: channel, payload: message)
    }

    /// Writes the full frame including identifier and length.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.pgwireWriteFrame(BackendMessageID.notificationResponse.rawValue) { buffer in
            buffer.writeInteger(self.processID)
            buffer.pgwireWriteString(self.channel)
            buffer.pgwireWriteString(self.payload)
        }
    }
}
