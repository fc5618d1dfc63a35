/// TLS channel binding for SCRAM-SHA-256-PLUS (RFC 5802 section 6, RFC 5929): the binding type
/// and this connection's binding data. For "tls-server-end-point" the data is the hash of the
/// server's certificate (see RFC 5929 section 4.1), the only type PostgreSQL supports.
public struct SCRAMChannelBinding: Equatable, Sendable {
    /// The channel binding type named in the gs2 header ("p=<type>").
    public var type: String
    /// The channel binding data appended to the gs2 header in the client-final "c=" attribute.
    public var data: [UInt8]

    public init(type: String, data: [UInt8]) {
        self.type = type
        self.data = data
    }

    /// The channel binding type PostgreSQL supports.
    public static let tlsServerEndPoint = "tls-server-end-point"

    /// A tls-server-end-point binding with `certificateHash` (the server certificate's hash).
    public static func tlsServerEndPoint(certificateHash: [UInt8]) -> SCRAMChannelBinding {
        SCRAMChannelBinding(type: tlsServerEndPoint, data: certificateHash)
    }
}

/// SASL mechanism names of SCRAM-SHA-256 (RFC 7677) as PostgreSQL advertises them.
public enum SCRAMMechanism {
    /// SCRAM-SHA-256 without channel binding.
    public static let scramSHA256 = "SCRAM-SHA-256"
    /// SCRAM-SHA-256 with channel binding (offered over TLS only).
    public static let scramSHA256Plus = "SCRAM-SHA-256-PLUS"

    /// The mechanisms to advertise in AuthenticationSASL, in PostgreSQL's order: -PLUS first
    /// when the connection has channel binding data.
    public static func offered(channelBinding: SCRAMChannelBinding?) -> [String] {
        channelBinding != nil ? [scramSHA256Plus, scramSHA256] : [scramSHA256]
    }
}
