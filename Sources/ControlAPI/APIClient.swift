import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A refused or failed request: the server's status and message, or why it could not be reached.
public struct APIClientError: Error, CustomStringConvertible {
    public var description: String
    public var status: Int?
}

/// The command line's side of `ControlAPI`: one blocking call per request, over Foundation's URLSession (HTTP
/// or HTTPS with the system's certificate authorities).
public struct APIClient: Sendable {
    public let server: URL
    public let token: String?

    public init(server: String, token: String?) throws {
        guard let url = URL(string: server), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil else {
            throw APIClientError(description: "--server \(server): expected http://HOST:PORT or https://HOST:PORT")
        }
        self.server = url
        self.token = token
    }

    public func submit(_ request: SubmitRequest) throws -> JobView {
        try call("POST", APIPath.jobs, body: try JSONEncoder.api.encode(request))
    }

    public func jobs() throws -> [JobView] { try call("GET", APIPath.jobs) }
    public func job(_ id: Int64) throws -> JobView { try call("GET", APIPath.job(id)) }
    public func cancel(_ id: Int64) throws -> JobView { try call("POST", APIPath.cancel(id)) }
    public func pool() throws -> [PoolMemberView] { try call("GET", APIPath.pool) }

    /// Job `id`'s events (each line of its events.jsonl, with its line number) from the first at `fromStep` or
    /// later; with `follow`, until the job ends. A dropped connection is resumed after the last line received.
    public func events(_ id: Int64, fromStep: Int? = nil, follow: Bool, onEvent: @escaping @Sendable (Int, String) -> Void) throws {
        var components = URLComponents(url: server.appendingPathComponent(APIPath.events(id)), resolvingAgainstBaseURL: false)!
        components.queryItems = (fromStep.map { [URLQueryItem(name: "from_step", value: "\($0)")] } ?? [])
            + (follow ? [URLQueryItem(name: "follow", value: "1")] : [])
        let stream = EventStreamReader(onEvent: onEvent)
        while true {
            var request = authorized(URLRequest(url: components.url!))
            if stream.lastID > 0 { request.setValue("\(stream.lastID)", forHTTPHeaderField: "Last-Event-ID") }
            let session = URLSession(configuration: .ephemeral, delegate: stream, delegateQueue: nil)
            let finished = stream.start()
            session.dataTask(with: request).resume()
            finished.wait()
            session.finishTasksAndInvalidate()
            if let status = stream.status, !(200..<300).contains(status) {
                throw APIClientError(description: "\(server) answered \(status): \(Self.message(stream.errorBody))", status: status)
            }
            guard stream.failure != nil, follow, stream.status != nil else {
                if let failure = stream.failure { throw APIClientError(description: "\(server): \(failure.localizedDescription)") }
                return
            }
            Thread.sleep(forTimeInterval: 1)  // the connection dropped mid-stream: resume after the last line
        }
    }

    private func authorized(_ request: URLRequest) -> URLRequest {
        var request = request
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        return request
    }

    private func call<T: Decodable>(_ method: String, _ path: String, body: Data? = nil) throws -> T {
        var request = authorized(URLRequest(url: server.appendingPathComponent(path)))
        request.httpMethod = method
        if let body {
            request.httpBody = body
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let outcome = ResponseOutcome(), done = DispatchSemaphore(value: 0)
        let session = URLSession(configuration: .ephemeral)
        session.dataTask(with: request) { data, response, error in
            (outcome.data, outcome.response, outcome.error) = (data, response, error)
            done.signal()
        }.resume()
        done.wait()
        session.finishTasksAndInvalidate()
        if let error = outcome.error { throw APIClientError(description: "\(server): \(error.localizedDescription)") }
        let status = (outcome.response as? HTTPURLResponse)?.statusCode ?? 0
        let data = outcome.data ?? Data()
        guard (200..<300).contains(status) else {
            throw APIClientError(description: "\(server) answered \(status): \(Self.message(data))", status: status)
        }
        do {
            return try JSONDecoder.api.decode(T.self, from: data)
        } catch {
            throw APIClientError(description: "\(server) answered with an unexpected body: \(error)", status: status)
        }
    }

    static func message(_ body: Data) -> String {
        (try? JSONDecoder.api.decode(ErrorBody.self, from: body).error) ?? String(decoding: body.prefix(500), as: UTF8.self)
    }
}

/// What a data task handed its completion handler (read after the semaphore: no lock needed).
private final class ResponseOutcome: @unchecked Sendable {
    var data: Data?
    var response: URLResponse?
    var error: Error?
}

/// Parses a text/event-stream as it arrives: `id:` and `data:` fields, events separated by a blank line.
final class EventStreamReader: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    private let onEvent: @Sendable (Int, String) -> Void
    private var buffer = Data()
    private var done = DispatchSemaphore(value: 0)
    private(set) var lastID = 0
    private(set) var status: Int?
    private(set) var failure: Error?
    private(set) var errorBody = Data()

    init(onEvent: @escaping @Sendable (Int, String) -> Void) { self.onEvent = onEvent }

    /// Resets for a new request; the semaphore is signalled when it ends.
    func start() -> DispatchSemaphore {
        buffer = Data()
        status = nil
        failure = nil
        errorBody = Data()
        done = DispatchSemaphore(value: 0)
        return done
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                    completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
        status = (response as? HTTPURLResponse)?.statusCode
        completionHandler(.allow)
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        guard let status, (200..<300).contains(status) else { return errorBody.append(data) }
        buffer.append(data)
        let separator = Data("\n\n".utf8)
        while let range = buffer.range(of: separator) {
            let block = String(decoding: buffer[buffer.startIndex..<range.lowerBound], as: UTF8.self)
            buffer = Data(buffer[range.upperBound...])
            var id: Int?, payload: String?
            for line in block.split(separator: "\n", omittingEmptySubsequences: false) {
                if line.hasPrefix("id: ") { id = Int(line.dropFirst(4)) }
                if line.hasPrefix("data: ") { payload = String(line.dropFirst(6)) }
            }
            if let id, let payload {
                lastID = id
                onEvent(id, payload)
            }
        }
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
        failure = error
        done.signal()
    }
}
