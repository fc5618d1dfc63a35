import Foundation
import XCTest

@testable import TenantProxy

/// tls-server-end-point data of certificates made with openssl, compared with the hash openssl's
/// DER output gives under `sha256sum` / `sha384sum` / `sha512sum`.
final class TLSChannelBindingTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")
            || FileManager.default.isExecutableFile(atPath: "/usr/local/bin/openssl") else {
            throw XCTSkip("openssl is not installed")
        }
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("tls-channel-binding-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let directory { try? FileManager.default.removeItem(at: directory) }
    }

    /// Runs `script` with /bin/sh in the test directory; returns stdout, fails on a non-zero exit.
    @discardableResult
    private func sh(_ script: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "set -e; " + script]
        process.currentDirectoryURL = directory
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            struct ShellFailure: Error, CustomStringConvertible { var description: String }
            throw ShellFailure(description: "`\(script)` failed: \(String(decoding: errors, as: UTF8.self))")
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// Makes a self-signed certificate with `keyOptions` / `signOptions` for `openssl req`, returns
    /// its DER bytes and the hex digest `openssl x509 -outform DER | <sum>` prints.
    private func certificate(_ name: String, key: String, sign: String, sum: String) throws -> (der: [UInt8], expectedHex: String) {
        try sh("""
            openssl genpkey \(key) -out \(name).key 2>/dev/null
            openssl req -x509 -new -key \(name).key \(sign) -days 2 -subj /CN=proxy.test -out \(name).pem 2>/dev/null
            openssl x509 -in \(name).pem -outform DER -out \(name).der
            """)
        let der = [UInt8](try Data(contentsOf: directory.appendingPathComponent("\(name).der")))
        let digest = try sh("openssl x509 -in \(name).pem -outform DER | \(sum)")
        let hex = String(digest.split(separator: " ").first ?? "")
        return (der, hex)
    }

    private func hex(_ bytes: [UInt8]) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    private func signatureAlgorithm(of name: String) throws -> String {
        try sh("openssl x509 -in \(name).pem -noout -text | grep -m1 'Signature Algorithm'")
    }

    func testRSAWithSHA256UsesSHA256() throws {
        let cert = try certificate("rsa256", key: "-algorithm RSA -pkeyopt rsa_keygen_bits:2048", sign: "-sha256", sum: "sha256sum")
        XCTAssertTrue(try signatureAlgorithm(of: "rsa256").contains("sha256WithRSAEncryption"))
        let data = try TLSChannelBinding.serverEndPoint(certificateDER: cert.der)
        XCTAssertEqual(data.count, 32)
        XCTAssertEqual(hex(data), cert.expectedHex)
    }

    func testECDSAWithSHA384UsesSHA384() throws {
        let cert = try certificate("ec384", key: "-algorithm EC -pkeyopt ec_paramgen_curve:P-384", sign: "-sha384", sum: "sha384sum")
        XCTAssertTrue(try signatureAlgorithm(of: "ec384").contains("ecdsa-with-SHA384"))
        let data = try TLSChannelBinding.serverEndPoint(certificateDER: cert.der)
        XCTAssertEqual(data.count, 48)
        XCTAssertEqual(hex(data), cert.expectedHex)
    }

    func testECDSAWithSHA512UsesSHA512() throws {
        let cert = try certificate("ec512", key: "-algorithm EC -pkeyopt ec_paramgen_curve:P-256", sign: "-sha512", sum: "sha512sum")
        let data = try TLSChannelBinding.serverEndPoint(certificateDER: cert.der)
        XCTAssertEqual(data.count, 64)
        XCTAssertEqual(hex(data), cert.expectedHex)
    }

    func testSHA1BecomesSHA256() throws {
        // RFC 5929 section 4.1: MD5 and SHA-1 are replaced by SHA-256.
        let cert = try certificate("rsa1", key: "-algorithm RSA -pkeyopt rsa_keygen_bits:2048", sign: "-sha1", sum: "sha256sum")
        XCTAssertTrue(try signatureAlgorithm(of: "rsa1").contains("sha1WithRSAEncryption"))
        XCTAssertEqual(hex(try TLSChannelBinding.serverEndPoint(certificateDER: cert.der)), cert.expectedHex)
    }

    func testRSAPSSUsesTheHashOfItsParameters() throws {
        let cert = try certificate("pss384", key: "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
                                   sign: "-sha384 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-1", sum: "sha384sum")
        XCTAssertTrue(try signatureAlgorithm(of: "pss384").contains("rsassaPss"))
        XCTAssertEqual(hex(try TLSChannelBinding.serverEndPoint(certificateDER: cert.der)), cert.expectedHex)
    }

    func testEd25519HasNoBinding() throws {
        // PostgreSQL cannot compute tls-server-end-point for EdDSA certificates either.
        let cert = try certificate("ed", key: "-algorithm ED25519", sign: "", sum: "sha256sum")
        XCTAssertThrowsError(try TLSChannelBinding.serverEndPoint(certificateDER: cert.der)) { error in
            guard case TLSChannelBinding.Failure.unsupportedSignatureAlgorithm(let oid)? = error as? TLSChannelBinding.Failure else {
                return XCTFail("unexpected \(error)")
            }
            XCTAssertEqual(oid, "1.3.101.112")
        }
    }

    func testUnparseableDERThrows() throws {
        let cert = try certificate("rsa", key: "-algorithm RSA -pkeyopt rsa_keygen_bits:2048", sign: "-sha256", sum: "sha256sum")
        let pem = [UInt8](try Data(contentsOf: directory.appendingPathComponent("rsa.pem")))
        for bad in [[], [0x30], [0x30, 0x80, 0x00, 0x00], Array(cert.der.dropLast()), cert.der + [0x00],
                    pem, Array("not a certificate".utf8), [0x30, 0x03, 0x02, 0x01, 0x01]] {
            XCTAssertThrowsError(try TLSChannelBinding.serverEndPoint(certificateDER: bad)) { error in
                guard case TLSChannelBinding.Failure.malformedCertificate? = error as? TLSChannelBinding.Failure else {
                    return XCTFail("unexpected \(error)")
                }
            }
        }
    }
}
