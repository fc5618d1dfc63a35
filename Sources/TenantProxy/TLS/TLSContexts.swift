import NIOCore
import NIOSSL
import PGWire
import X509

/// The TLS material built from the configuration: the server context clients connect to, the
/// channel binding data of the proxy's certificate, and the client context for the upstream.
/// Rebuilt on reload (SIGHUP), so a renewed certificate is used for new connections.
struct TLSContexts: @unchecked Sendable {
    var server: NIOSSLContext?
    var channelBinding: SCRAMChannelBinding?
    var upstream: NIOSSLContext?

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func make(_ config: ProxyConfig) throws -> TLSContexts {
        var contexts = TLSContexts()
        if config.tls.enabled {
            let chain: [NIOSSLCertificate]
            let key: NIOSSLPrivateKey
            do {
                chain = try NIOSSLCertificate.fromPEMFile(config.tls.certFile)
                key = try NIOSSLPrivateKey(file: config.tls.keyFile, format: .pem)
            } catch {
                throw Failure(description: "tls.cert_file / tls.key_file could not be loaded: \(error)")
            }
            guard let leaf = chain.first else { throw Failure(description: "tls.cert_file holds no certificate") }
            var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            tls.minimumTLSVersion = config.tls.minVersion == "1.3" ? .tlsv13 : .tlsv12
            tls.applicationProtocols = ["postgresql"]
            if !config.tls.clientCAFile.isEmpty {
                tls.trustRoots = .file(config.tls.clientCAFile)
                tls.certificateVerification = .optionalVerification
                tls.sendCANameList = true
            }
            contexts.server = try NIOSSLContext(configuration: tls)
            let der = try leaf.toDERBytes()
            // Certificates whose signature hash has no binding (Ed25519...): SCRAM-SHA-256-PLUS is not offered.
            if let hash = try? TLSChannelBinding.serverEndPoint(certificateDER: der) {
                contexts.channelBinding = SCRAMChannelBinding(type: "tls-server-end-point", data: hash)
            }
        }
        switch config.upstream.tls {
        case .disable:
            break
        case .prefer, .require:
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.certificateVerification = .none
            contexts.upstream = try NIOSSLContext(configuration: tls)
        case .verifyFull:
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.certificateVerification = .fullVerification
            tls.trustRoots = .file(config.upstream.tlsCAFile)
            contexts.upstream = try NIOSSLContext(configuration: tls)
        }
        return contexts
    }

    /// DNS names of a server certificate (SAN, else CN), for verify-full by name.
    static func dnsNames(of certificate: NIOSSLCertificate) -> [String] {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else { return [] }
        var names: [String] = []
        if let san = try? parsed.extensions.subjectAlternativeNames {
            for case .dnsName(let value) in san { names.append(value) }
        }
        if names.isEmpty {
            for rdn in parsed.subject {
                for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                    names.append(attribute.value.description)
                }
            }
        }
        return names
    }

    /// CN and SAN (DNS, email, URI) values of a client certificate, for method cert.
    static func names(of certificate: NIOSSLCertificate) -> [String] {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else { return [] }
        var names: [String] = []
        for rdn in parsed.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                names.append(attribute.value.description)
            }
        }
        if let san = try? parsed.extensions.subjectAlternativeNames {
            for name in san {
                switch name {
                case .dnsName(let value): names.append(value)
                case .rfc822Name(let value): names.append(value)
                case .uniformResourceIdentifier(let value): names.append(value)
                default: break
                }
            }
        }
        return names
    }
}
