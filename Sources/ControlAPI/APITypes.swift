import Foundation
import JobStore
import Telemetry

/// The JSON bodies of the control API (`ControlAPI`), shared by the server and the command line's client. Keys
/// are snake_case on the wire.
///
///     POST /v1/jobs                  SubmitRequest → 201 JobView          (submit)
///     GET  /v1/jobs                  → [JobView]                          (read)
///     GET  /v1/jobs/ID               → JobView                            (read)
///     POST /v1/jobs/ID/cancel        → JobView                            (submit: own jobs; admin: any)
///     GET  /v1/jobs/ID/events        → text/event-stream of events.jsonl  (read)
///          ?from_step=N  events from the first with step ≥ N;  ?follow=1  until the job ends
///     GET  /v1/pool                  → [PoolMemberView]                   (read)
///     GET  /v1/watch                 → text/event-stream of Overview      (read)
///          a new event whenever a job or the pool changes
///     GET  /v1/whoami                → WhoAmI                             (read)
///     GET  /metrics                  → Prometheus text                    (read)
///
/// Every request carries `Authorization: Bearer TOKEN`; errors are `ErrorBody` with the HTTP status. The dashboard's
/// page and scripts (`/`, `/assets/…`) need none: they hold no data, and ask for a token before any call.
public enum APIPath {
    public static let jobs = "/v1/jobs"
    public static let pool = "/v1/pool"
    public static let watch = "/v1/watch"
    public static let whoami = "/v1/whoami"
    public static let metrics = "/metrics"
    public static func job(_ id: Int64) -> String { "\(jobs)/\(id)" }
    public static func cancel(_ id: Int64) -> String { "\(jobs)/\(id)/cancel" }
    public static func events(_ id: Int64) -> String { "\(jobs)/\(id)/events" }
}

/// A job to submit: the config's text (as `train` reads it), `--set` overrides, and scheduling bounds.
public struct SubmitRequest: Codable, Sendable, Equatable {
    public var config: String
    public var overrides: [String]
    /// Where the config came from (its path), for error messages: they read as `train`'s do.
    public var source: String?
    public var name: String?
    public var priority: Int?
    public var minWorkers: Int?
    /// Absent: as many as the pool can give.
    public var maxWorkers: Int?

    public init(config: String, overrides: [String] = [], source: String? = nil, name: String? = nil, priority: Int? = nil,
                minWorkers: Int? = nil, maxWorkers: Int? = nil) {
        self.config = config
        self.overrides = overrides
        self.source = source
        self.name = name
        self.priority = priority
        self.minWorkers = minWorkers
        self.maxWorkers = maxWorkers
    }
}

/// A job as the API shows it.
public struct JobView: Codable, Sendable, Equatable {
    public var id: Int64
    public var name: String
    public var state: String
    public var submitter: String
    public var priority: Int
    public var minWorkers: Int
    public var maxWorkers: Int?
    public var cancelRequested: Bool
    public var submittedAt: Double
    public var startedAt: Double?
    public var endedAt: Double?
    public var step: Int
    public var loss: Double?
    public var accuracy: Double?
    public var weightsSha256: String?
    public var failure: String?
    // From the job's events while the daemon has them (running jobs and recently ended ones).
    public var totalSteps: Int?
    public var workers: Int?
    public var samplesPerSecond: Double?
    public var etaSeconds: Double?
    /// The latest evaluation's accuracy (the final one once completed).
    public var testAccuracy: Double?

    public init(_ record: JobRecord, live: RunMetrics? = nil) {
        id = record.id ?? 0
        name = record.name
        state = record.state.rawValue
        submitter = record.submitter
        priority = record.priority
        minWorkers = record.minWorkers
        maxWorkers = record.maxWorkers
        cancelRequested = record.cancelRequested
        submittedAt = record.submittedAt
        startedAt = record.startedAt
        endedAt = record.endedAt
        step = record.step
        loss = record.loss
        accuracy = record.accuracy
        weightsSha256 = record.weightsSHA256
        failure = record.failure
        totalSteps = live?["total_steps"].map { Int($0) }
        workers = live?["workers"].map { Int($0) }
        samplesPerSecond = live?["samples_per_second"]
        etaSeconds = record.state == .running ? live?.etaSeconds : nil
        testAccuracy = record.accuracy ?? live?["test_accuracy"]
        if record.state == .running, let step = live?["step"], Int(step) > self.step {
            self.step = Int(step)  // the store has it at most a second late
        }
        if record.state == .running, let loss = live?["loss"] { self.loss = loss }
    }
}

/// A pool worker as the API shows it.
public struct PoolMemberView: Codable, Sendable, Equatable {
    public var name: String
    public var host: String
    /// "idle", "job N" or "returning".
    public var state: String

    public init(name: String, host: String, state: String) {
        self.name = name
        self.host = host
        self.state = state
    }
}

/// What `/v1/watch` sends: the newest jobs (at most `Overview.jobsShown`) and the pool.
public struct Overview: Codable, Sendable, Equatable {
    public static let jobsShown = 200
    public var jobs: [JobView]
    public var pool: [PoolMemberView]
}

/// The caller's token: its name and role.
public struct WhoAmI: Codable, Sendable, Equatable {
    public var name: String
    public var role: String
}

public struct ErrorBody: Codable, Sendable, Equatable {
    public var error: String
    public init(error: String) { self.error = error }
}

extension JSONEncoder {
    /// snake_case keys, sorted: the API's encoding.
    public static var api: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}

extension JSONDecoder {
    public static var api: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }
}
