import Crypto

/// Channel binding data of TLS connections (RFC 5929), for SCRAM-SHA-256-PLUS.
enum TLSChannelBinding {
    enum Failure: Error, Equatable, CustomStringConvertible {
        /// The bytes are not a DER-encoded X.509 certificate.
        case malformedCertificate(String)
        /// The certificate's signature algorithm has no hash function usable for
        /// tls-server-end-point (e.g. Ed25519, or SHA-224 which swift-crypto lacks). PostgreSQL
        /// cannot bind to such a certificate either; do not offer SCRAM-SHA-256-PLUS with it.
        case unsupportedSignatureAlgorithm(String)

        var description: String {
            switch self {
            case .malformedCertificate(let why):
                return "the certificate could not be parsed: \(why)"
            case .unsupportedSignatureAlgorithm(let oid):
                return "tls-server-end-point channel binding is not defined for the certificate's signature algorithm \(oid)"
            }
        }
    }

    /// tls-server-end-point: the hash of the server's certificate, with the hash function of the
    /// certificate's signature algorithm; MD5 and SHA-1 become SHA-256 (RFC 5929, section 4.1).
    ///
    /// As PostgreSQL's `be_tls_get_certificate_hash` (OpenSSL's `X509_get_signature_info`): the
    /// hash of RSASSA-PSS is the one in its parameters (SHA-1 when absent, hence SHA-256).
    /// - Parameter certificateDER: the certificate exactly as sent in the TLS handshake (DER).
    /// - Throws: `Failure.malformedCertificate` when the bytes are not a DER certificate,
    ///   `Failure.unsupportedSignatureAlgorithm` when no hash function applies.
    static func serverEndPoint(certificateDER: [UInt8]) throws -> [UInt8] {
        switch try hash(forSignatureAlgorithmOf: certificateDER) {
        case .sha256: return Array(SHA256.hash(data: certificateDER))
        case .sha384: return Array(SHA384.hash(data: certificateDER))
        case .sha512: return Array(SHA512.hash(data: certificateDER))
        }
    }

    enum Hash: Equatable {
        case sha256, sha384, sha512
    }

    /// The tls-server-end-point hash for a certificate: reads the outer signatureAlgorithm of
    /// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }.
    static func hash(forSignatureAlgorithmOf der: [UInt8]) throws -> Hash {
        var top = DERReader(der[...])
        var certificate = DERReader(try top.read(tag: 0x30, "Certificate"))
        guard top.isAtEnd else { throw Failure.malformedCertificate("trailing bytes after the certificate") }
        _ = try certificate.read(tag: 0x30, "tbsCertificate")
        var algorithm = DERReader(try certificate.read(tag: 0x30, "signatureAlgorithm"))
        _ = try certificate.read(tag: 0x03, "signatureValue")
        guard certificate.isAtEnd else { throw Failure.malformedCertificate("unexpected field after signatureValue") }

        let oid = try algorithm.readOID("signatureAlgorithm")
        switch oid {
        case "1.2.840.113549.1.1.4",  // md5WithRSAEncryption
             "1.2.840.113549.1.1.5",  // sha1WithRSAEncryption
             "1.3.14.3.2.29",  // sha1WithRSASignature (OIW)
             "1.2.840.10045.4.1",  // ecdsa-with-SHA1
             "1.2.840.10040.4.3",  // id-dsa-with-sha1
             "1.2.840.113549.1.1.11",  // sha256WithRSAEncryption
             "1.2.840.10045.4.3.2",  // ecdsa-with-SHA256
             "2.16.840.1.101.3.4.3.2":  // id-dsa-with-sha256
            return .sha256
        case "1.2.840.113549.1.1.12", "1.2.840.10045.4.3.3":  // sha384WithRSAEncryption, ecdsa-with-SHA384
            return .sha384
        case "1.2.840.113549.1.1.13", "1.2.840.10045.4.3.4":  // sha512WithRSAEncryption, ecdsa-with-SHA512
            return .sha512
        case "1.2.840.113549.1.1.10":  // RSASSA-PSS
            // RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] HashAlgorithm DEFAULT sha1, ... }
            guard !algorithm.isAtEnd else { return .sha256 }
            var parameters = DERReader(try algorithm.read(tag: 0x30, "RSASSA-PSS-params"))
            guard parameters.peekTag == 0xA0 else { return .sha256 }
            var explicit = DERReader(try parameters.read(tag: 0xA0, "hashAlgorithm"))
            var hashAlgorithm = DERReader(try explicit.read(tag: 0x30, "hashAlgorithm"))
            let hashOID = try hashAlgorithm.readOID("hashAlgorithm")
            switch hashOID {
            case "1.2.840.113549.2.5", "1.3.14.3.2.26", "2.16.840.1.101.3.4.2.1":  // MD5, SHA-1, SHA-256
                return .sha256
            case "2.16.840.1.101.3.4.2.2":
                return .sha384
            case "2.16.840.1.101.3.4.2.3":
                return .sha512
            default:
                throw Failure.unsupportedSignatureAlgorithm("RSASSA-PSS with hash \(hashOID)")
            }
        default:
            // Ed25519 and Ed448 (no separate hash), SHA-224 and SHA-3 variants, GOST, ...
            throw Failure.unsupportedSignatureAlgorithm(oid)
        }
    }

    /// A minimal DER reader for the few fields needed here (single-byte tags, definite lengths).
    private struct DERReader {
        private var bytes: ArraySlice<UInt8>

        init(_ bytes: ArraySlice<UInt8>) {
            self.bytes = bytes
        }

        var isAtEnd: Bool { bytes.isEmpty }
        var peekTag: UInt8? { bytes.first }

        /// Reads one element with `tag` and returns its contents.
        mutating func read(tag: UInt8, _ what: String) throws -> ArraySlice<UInt8> {
            guard let actual = bytes.first else { throw Failure.malformedCertificate("\(what) is missing") }
            guard actual == tag else { throw Failure.malformedCertificate("\(what) has an unexpected tag") }
            var index = bytes.index(after: bytes.startIndex)
            guard index < bytes.endIndex else { throw Failure.malformedCertificate("\(what) has no length") }
            let first = bytes[index]
            index += 1
            var length = 0
            if first < 0x80 {
                length = Int(first)
            } else {
                let count = Int(first & 0x7F)
                guard count >= 1, count <= 4, bytes.endIndex - index >= count else {
                    throw Failure.malformedCertificate("\(what) has an invalid length")
                }
                for _ in 0..<count {
                    length = length << 8 | Int(bytes[index])
                    index += 1
                }
            }
            guard bytes.endIndex - index >= length else {
                throw Failure.malformedCertificate("\(what) is truncated")
            }
            let contents = bytes[index..<(index + length)]
            bytes = bytes[(index + length)...]
            return contents
        }

        /// Reads an OBJECT IDENTIFIER and returns it in dotted form.
        mutating func readOID(_ what: String) throws -> String {
            let contents = try read(tag: 0x06, what)
            guard !contents.isEmpty, contents.last! & 0x80 == 0 else {
                throw Failure.malformedCertificate("\(what) is not a valid object identifier")
            }
            var arcs: [UInt64] = []
            var value: UInt64 = 0
            for byte in contents {
                guard value >> 56 == 0 else { throw Failure.malformedCertificate("\(what) has an oversized arc") }
                value = value << 7 | UInt64(byte & 0x7F)
                if byte & 0x80 == 0 {
                    if arcs.isEmpty {
                        arcs.append(min(value / 40, 2))
                        arcs.append(value - arcs[0] * 40)
                    } else {
                        arcs.append(value)
                    }
                    value = 0
                }
            }
            return arcs.map(String.init).joined(separator: ".")
        }
    }
}
