import GRDB

/// Where a job is in its life. `queued` and `running` jobs are the daemon's to continue after a restart; the others
/// have ended.
public enum JobState: String, Codable, Sendable, CaseIterable {
    case queued, running, completed, failed, cancelled

    public var hasEnded: Bool { self == .completed || self == .failed || self == .cancelled }
}

/// What a user submits: the config text as written, `--set` overrides, and the scheduling bounds.
public struct JobSubmission: Sendable, Equatable {
    public var name: String
    public var config: String
    public var overrides: [String]
    public var submitter: String
    public var priority: Int
    public var minWorkers: Int
    /// nil: as many workers as the pool can give.
    public var maxWorkers: Int?

    public init(name: String, config: String, overrides: [String] = [], submitter: String, priority: Int = 0,
                minWorkers: Int = 1, maxWorkers: Int? = nil) {
        self.name = name
        self.config = config
        self.overrides = overrides
        self.submitter = submitter
        self.priority = priority
        self.minWorkers = minWorkers
        self.maxWorkers = maxWorkers
    }
}

/// One row of the `job` table: a submission and what has become of it. Times are seconds since 1970.
public struct JobRecord: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "job"

    public var id: Int64?
    public var name: String
    public var config: String
    public var overrides: [String]
    public var submitter: String
    public var priority: Int
    public var minWorkers: Int
    public var maxWorkers: Int?
    public var state: JobState
    /// A cancel was asked for while the job ran: it ends at its next step boundary, with a checkpoint.
    public var cancelRequested: Bool
    public var submittedAt: Double
    public var startedAt: Double?
    public var endedAt: Double?
    /// The last step completed (0 before the first).
    public var step: Int
    public var loss: Double?
    public var accuracy: Double?
    public var weightsSHA256: String?
    public var failure: String?

    init(_ submission: JobSubmission, submittedAt: Double) {
        name = submission.name
        config = submission.config
        overrides = submission.overrides
        submitter = submission.submitter
        priority = submission.priority
        minWorkers = submission.minWorkers
        maxWorkers = submission.maxWorkers
        state = .queued
        cancelRequested = false
        self.submittedAt = submittedAt
        step = 0
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}
