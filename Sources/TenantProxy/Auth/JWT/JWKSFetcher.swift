import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Fetches a JWKS document. Injected so tests (and the lead's HTTP client of choice) can replace it.
protocol JWKSFetcher: Sendable {
    func fetch(url: String) async throws -> Data
}

enum JWKSFetchError: Error, Equatable, CustomStringConvertible {
    case invalidURL
    case httpStatus(Int)
    case tooLarge
    case transport

    var description: String {
        switch self {
        case .invalidURL: return "jwks_url is not an https URL"
        case .httpStatus(let status): return "jwks_url answered HTTP \(status)"
        case .tooLarge: return "jwks_url answered a document that is too large"
        case .transport: return "jwks_url could not be fetched"
        }
    }
}

/// Rules for a JWKS URL: https, or http only to a loopback host (for local tests).
enum JWKSURLRule {
    static func isAcceptable(_ string: String) -> Bool {
        guard let components = URLComponents(string: string),
              let scheme = components.scheme?.lowercased(),
              let host = components.host, !host.isEmpty,
              components.user == nil, components.password == nil
        else { return false }
        if scheme == "https" { return true }
        if scheme == "http" {
            let lowered = host.lowercased()
            return lowered == "localhost" || lowered == "::1" || lowered == "[::1]" || lowered.hasPrefix("127.")
        }
        return false
    }
}

/// Default fetcher built on Foundation's URLSession (FoundationNetworking on Linux).
/// Never logs or reports the URL (it may carry a query token) or the response body.
struct URLSessionJWKSFetcher: JWKSFetcher {
    var timeoutSeconds: Double = 10
    var maximumBytes: Int = JWKSParser.maximumDocumentBytes

    init(timeoutSeconds: Double = 10) {
        self.timeoutSeconds = timeoutSeconds
    }

    func fetch(url: String) async throws -> Data {
        guard JWKSURLRule.isAcceptable(url), let target = URL(string: url) else { throw JWKSFetchError.invalidURL }
        var request = URLRequest(url: target, cachePolicy: .reloadIgnoringLocalCacheData, timeoutInterval: timeoutSeconds)
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        let maximumBytes = self.maximumBytes
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Data, any Error>) in
            let task = URLSession.shared.dataTask(with: request) { data, response, error in
                if error != nil {
                    continuation.resume(throwing: JWKSFetchError.transport)
                    return
                }
                guard let http = response as? HTTPURLResponse else {
                    continuation.resume(throwing: JWKSFetchError.transport)
                    return
                }
                guard (200..<300).contains(http.statusCode) else {
                    continuation.resume(throwing: JWKSFetchError.httpStatus(http.statusCode))
                    return
                }
                let body = data ?? Data()
                guard body.count <= maximumBytes else {
                    continuation.resume(throwing: JWKSFetchError.tooLarge)
                    return
                }
                continuation.resume(returning: body)
            }
            task.resume()
        }
    }
}
