import Daemon
import Dashboard
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import JobStore
import NIOCore
import NIOSSL
import Telemetry

/// The request context: the caller's token once `BearerAuthentication` has accepted it, and its address.
public struct APIContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var token: AccessToken?
    public let remoteAddress: String

    public init(source: ApplicationRequestContextSource) {
        coreContext = CoreRequestContextStorage(source: source)
        remoteAddress = source.channel.remoteAddress.flatMap { $0.ipAddress } ?? "unknown"
    }

    /// The token, which must allow `role`: 403 otherwise.
    func require(_ role: Role) throws -> AccessToken {
        guard let token else { throw APIError(.unauthorized, "no token") }
        guard token.role >= role else {
            throw APIError(.forbidden, "token \(token.name) has role \(token.role.rawValue); this needs \(role.rawValue)")
        }
        return token
    }
}

/// An API error: its status and a message for the user, sent as `ErrorBody`.
public struct APIError: HTTPResponseError {
    public let status: HTTPResponse.Status
    public let message: String

    public init(_ status: HTTPResponse.Status, _ message: String) {
        self.status = status
        self.message = message
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        try jsonResponse(ErrorBody(error: message), status: status)
    }
}

func jsonResponse(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
    let buffer = ByteBuffer(bytes: try JSONEncoder.api.encode(value))
    return Response(status: status, headers: [.contentType: "application/json", .contentLength: "\(buffer.readableBytes)"],
                    body: .init(byteBuffer: buffer))
}

/// Every request needs `Authorization: Bearer TOKEN` naming a stored token (compared in constant time by the
/// store); a missing or unknown one is answered 401 and logged with the caller's address.
struct BearerAuthentication: RouterMiddleware {
    let store: JobStore
    let log: @Sendable (String) -> Void

    func handle(_ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response) async throws -> Response {
        var context = context
        let header = request.headers[.authorization] ?? ""
        let token = header.hasPrefix("Bearer ") ? String(header.dropFirst(7)) : nil
        guard let token, !token.isEmpty else {
            log("api: refused \(request.method) \(request.uri.path) from \(context.remoteAddress): no bearer token")
            throw APIError(.unauthorized, "no bearer token: pass --token or set TRAINERD_TOKEN")
        }
        guard let accepted = try store.authenticate(token) else {
            log("api: refused \(request.method) \(request.uri.path) from \(context.remoteAddress): unknown token")
            throw APIError(.unauthorized, "unknown token")
        }
        context.token = accepted
        return try await next(request, context)
    }
}

/// The daemon's control API over HTTP (or HTTPS with a certificate and key): a thin layer over the store and
/// the daemon (see `APIPath` for the routes), with `/metrics` and the web dashboard (`DashboardRoutes`).
public struct ControlAPI {
    public let daemon: Daemon
    public let log: @Sendable (String) -> Void
    let library: ChartLibrary
    let metrics = APIMetrics()

    public init(daemon: Daemon, library: ChartLibrary = ChartLibrary(), log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.daemon = daemon
        self.library = library
        self.log = log
    }

    /// Serves on `host:port` until the task is cancelled; `certificate` and `key` (PEM files) turn on TLS.
    /// `onListening` gets the bound port (for port 0).
    public func serve(host: String, port: Int, certificate: String? = nil, key: String? = nil,
                      onListening: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        let router = Router(context: APIContext.self)
        router.add(middleware: RequestCounter(metrics: metrics))
        DashboardRoutes.add(to: router, library: library)
        addRoutes(router.group().add(middleware: BearerAuthentication(store: daemon.store, log: log)))
        let server: HTTPServerBuilder
        if let certificate, let key {
            let chain = try NIOSSLCertificate.fromPEMFile(certificate).map { NIOSSLCertificateSource.certificate($0) }
            let configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
            server = try .tls(.http1(), tlsConfiguration: configuration)
        } else {
            server = .http1()
        }
        let app = Application(router: router, server: server, configuration: .init(address: .hostname(host, port: port)),
                              onServerRunning: { channel in onListening(channel.localAddress?.port ?? port) })
        try await app.run()
    }

    func addRoutes(_ router: RouterGroup<APIContext>) {
        let daemon = self.daemon, store = daemon.store, log = self.log, metrics = self.metrics
        router.post(RouterPath(APIPath.jobs)) { request, context -> Response in
            let token = try context.require(.submit)
            let body: SubmitRequest
            do {
                body = try JSONDecoder.api.decode(SubmitRequest.self, from: Data(buffer: try await request.body.collect(upTo: 4 << 20)))
            } catch {
                throw APIError(.badRequest, "the request body is not a job: \(error)")
            }
            let submission = JobSubmission(name: body.name ?? "", config: body.config, overrides: body.overrides,
                                           submitter: token.name, priority: body.priority ?? 0,
                                           minWorkers: body.minWorkers ?? 1, maxWorkers: body.maxWorkers)
            do {
                let record = try daemon.submit(submission, source: body.source ?? "the submitted config")
                log("api: job \(record.id!) (\(record.name)) submitted by \(token.name)")
                return try jsonResponse(JobView(record), status: .created)
            } catch let error as StoreError {
                throw APIError(.internalServerError, "\(error)")
            } catch {
                throw APIError(.badRequest, "\(error)")
            }
        }
        router.get(RouterPath(APIPath.jobs)) { _, context -> Response in
            _ = try context.require(.read)
            let live = daemon.metrics.all
            return try jsonResponse(try store.jobs().map { JobView($0, live: live[$0.id!]) })
        }
        router.get(RouterPath(APIPath.jobs + "/:id")) { _, context -> Response in
            _ = try context.require(.read)
            let job = try Self.job(context, store)
            return try jsonResponse(JobView(job, live: daemon.metrics.of(job.id!)))
        }
        router.post(RouterPath(APIPath.jobs + "/:id/cancel")) { _, context -> Response in
            let token = try context.require(.submit)
            let job = try Self.job(context, store)
            guard token.role == .admin || job.submitter == token.name else {
                throw APIError(.forbidden, "job \(job.id!) was submitted by \(job.submitter); token \(token.name) may cancel only its own jobs")
            }
            let cancelled = try daemon.cancel(job.id!)
            log("api: job \(job.id!) cancelled by \(token.name)")
            return try jsonResponse(JobView(cancelled))
        }
        router.get(RouterPath(APIPath.jobs + "/:id/events")) { request, context -> Response in
            _ = try context.require(.read)
            return try Self.events(of: try Self.job(context, store), request, store)
        }
        router.get(RouterPath(APIPath.pool)) { _, context -> Response in
            _ = try context.require(.read)
            return try jsonResponse(try Self.poolViews(daemon))
        }
        router.get(RouterPath(APIPath.watch)) { _, context -> Response in
            _ = try context.require(.read)
            return Self.watch(daemon)
        }
        router.get(RouterPath(APIPath.whoami)) { _, context -> Response in
            let token = try context.require(.read)
            return try jsonResponse(WhoAmI(name: token.name, role: token.role.rawValue))
        }
        router.get(RouterPath(APIPath.metrics)) { _, context -> Response in
            _ = try context.require(.read)
            let text = try metrics.text(daemon: daemon)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: text)))
        }
    }

    /// The jobs and the pool as Server-Sent Events: the `Overview` at once, then again whenever it changes (looked
    /// at twice a second), a comment every 15 s otherwise; until the client goes.
    private static func watch(_ daemon: Daemon) -> Response {
        let headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            var sent = "", lastWrite = Date(), number = 0
            while !Task.isCancelled {
                let live = daemon.metrics.all
                let overview = Overview(
                    jobs: try daemon.store.newestJobs(Overview.jobsShown).map { JobView($0, live: live[$0.id!]) },
                    pool: try poolViews(daemon))
                let text = String(decoding: try JSONEncoder.api.encode(overview), as: UTF8.self)
                if text != sent {
                    number += 1
                    try await writer.write(ByteBuffer(string: "id: \(number)\ndata: \(text)\n\n"))
                    sent = text
                    lastWrite = Date()
                } else if Date().timeIntervalSince(lastWrite) > 15 {
                    try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                    lastWrite = Date()
                }
                try await Task.sleep(nanoseconds: 500_000_000)
            }
            try await writer.finish(nil)
        })
    }

    /// The job's events as Server-Sent Events (`EventStream`), from `?from_step=N`, following with `?follow=1`,
    /// resuming after the `Last-Event-ID` line.
    private static func events(of job: JobRecord, _ request: Request, _ store: JobStore) throws -> Response {
        let query = request.uri.queryParameters
        var fromStep: Int?
        if let text = query["from_step"] {
            guard let step = Int(text), step >= 0 else { throw APIError(.badRequest, "from_step \"\(text)\" is not a step number") }
            fromStep = step
        }
        let follow = query["follow"].map { $0 == "1" || $0 == "true" } ?? false
        let lastEventID = HTTPField.Name("Last-Event-ID")!
        let afterLine = request.headers[lastEventID].flatMap { Int($0) } ?? 0
        let id = job.id!
        let hasEnded: @Sendable () -> Bool
        if follow {
            hasEnded = {
                guard let record = try? store.job(id) else { return true }
                return record.state.hasEnded
            }
        } else {
            hasEnded = { true }
        }
        let stream = EventStream(path: store.runDirectory(id) + "/events.jsonl", fromStep: fromStep, afterLine: afterLine,
                                 hasEnded: hasEnded)
        let headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in try await stream.write(to: &writer) })
    }

    private static func poolViews(_ daemon: Daemon) throws -> [PoolMemberView] {
        try daemon.poolMembers().map { PoolMemberView(name: $0.name, host: $0.host, state: $0.state) }
    }

    private static func job(_ context: APIContext, _ store: JobStore) throws -> JobRecord {
        let text = context.parameters.get("id") ?? ""
        guard let id = Int64(text), let job = try store.job(id) else { throw APIError(.notFound, "no job \(text)") }
        return job
    }
}
