import Foundation
import GRDB

/// A clear error about the store or a request to it, naming the job, token or file.
public struct StoreError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// What survives the daemon: every job and every access token, in `DIR/trainerd.sqlite` (SQLite in WAL mode,
/// `synchronous = FULL`, so a write that has returned is on disk), and each job's run directory `DIR/jobs/ID/`.
///
/// Thread-safe: GRDB's `DatabasePool` serialises writes and lets reads run beside them.
public final class JobStore: Sendable {
    public let directory: String
    private let database: DatabasePool

    public init(directory: String) throws {
        self.directory = directory
        let path = directory + "/trainerd.sqlite"
        do {
            try FileManager.default.createDirectory(atPath: directory + "/jobs", withIntermediateDirectories: true)
            var configuration = Configuration()
            configuration.busyMode = .timeout(10)
            configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
            database = try DatabasePool(path: path, configuration: configuration)
            try Self.migrator.migrate(database)
        } catch {
            throw StoreError("cannot open the state directory's database \(path): \(error)")
        }
    }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("jobs and tokens") { db in
            try db.create(table: JobRecord.databaseTableName) { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("name", .text).notNull()
                table.column("config", .text).notNull()
                table.column("overrides", .text).notNull()
                table.column("submitter", .text).notNull()
                table.column("priority", .integer).notNull()
                table.column("minWorkers", .integer).notNull()
                table.column("maxWorkers", .integer)
                table.column("state", .text).notNull().indexed()
                table.column("cancelRequested", .boolean).notNull()
                table.column("submittedAt", .double).notNull()
                table.column("startedAt", .double)
                table.column("endedAt", .double)
                table.column("step", .integer).notNull()
                table.column("loss", .double)
                table.column("accuracy", .double)
                table.column("weightsSHA256", .text)
                table.column("failure", .text)
            }
            try db.create(table: AccessToken.databaseTableName) { table in
                table.primaryKey("name", .text)
                table.column("role", .text).notNull()
                table.column("hash", .text).notNull()
                table.column("createdAt", .double).notNull()
            }
        }
        return migrator
    }

    /// The run directory of job `id` (events.jsonl, checkpoints, final.safetensors).
    public func runDirectory(_ id: Int64) -> String { directory + "/jobs/\(id)" }

    // MARK: Jobs

    /// Stores a new queued job; it is on disk when this returns.
    public func submit(_ submission: JobSubmission, now: Double) throws -> JobRecord {
        try database.write { db in
            var record = JobRecord(submission, submittedAt: now)
            try record.insert(db)
            return record
        }
    }

    public func job(_ id: Int64) throws -> JobRecord? {
        try database.read { try JobRecord.fetchOne($0, key: id) }
    }

    /// Jobs in submission order, only those in `states` when given.
    public func jobs(in states: [JobState]? = nil) throws -> [JobRecord] {
        try database.read { db in
            var request = JobRecord.order(Column("id"))
            if let states { request = request.filter(states.map(\.rawValue).contains(Column("state"))) }
            return try request.fetchAll(db)
        }
    }

    /// The `limit` newest jobs, newest first.
    public func newestJobs(_ limit: Int) throws -> [JobRecord] {
        try database.read { try JobRecord.order(Column("id").desc).limit(limit).fetchAll($0) }
    }

    /// How many jobs are in each state (every state, 0 included).
    public func jobCounts() throws -> [JobState: Int] {
        let rows = try database.read { try Row.fetchAll($0, sql: "SELECT state, COUNT(*) AS count FROM job GROUP BY state") }
        var counts = Dictionary(uniqueKeysWithValues: JobState.allCases.map { ($0, 0) })
        for row in rows { if let state = JobState(rawValue: row["state"]) { counts[state] = row["count"] } }
        return counts
    }

    public func markRunning(_ id: Int64, now: Double) throws {
        try update(id) { job in
            job.state = .running
            job.startedAt = job.startedAt ?? now
        }
    }

    public func recordProgress(_ id: Int64, step: Int, loss: Double?) throws {
        try update(id) { job in
            job.step = step
            if let loss { job.loss = loss }
        }
    }

    /// The job's end, with the last step's figures when it has them.
    public func finish(_ id: Int64, as state: JobState, now: Double, step: Int? = nil, loss: Double? = nil,
                       accuracy: Double? = nil, weightsSHA256: String? = nil, failure: String? = nil) throws {
        precondition(state.hasEnded)
        try update(id) { job in
            job.state = state
            job.endedAt = now
            if let step { job.step = step }
            if let loss { job.loss = loss }
            if let accuracy { job.accuracy = accuracy }
            if let weightsSHA256 { job.weightsSHA256 = weightsSHA256 }
            job.failure = failure
        }
    }

    /// Cancels job `id`: a queued job is cancelled at once, a running one at its next step boundary; an ended job
    /// is left as it is. Returns the job as it now stands.
    public func cancel(_ id: Int64, now: Double) throws -> JobRecord {
        try database.write { db in
            guard var job = try JobRecord.fetchOne(db, key: id) else { throw StoreError("no job \(id)") }
            switch job.state {
            case .queued:
                job.state = .cancelled
                job.endedAt = now
            case .running:
                job.cancelRequested = true
            case .completed, .failed, .cancelled:
                return job
            }
            try job.update(db)
            return job
        }
    }

    private func update(_ id: Int64, _ change: (inout JobRecord) -> Void) throws {
        try database.write { db in
            guard var job = try JobRecord.fetchOne(db, key: id) else { throw StoreError("no job \(id)") }
            change(&job)
            try job.update(db)
        }
    }

    // MARK: Tokens

    /// Makes a token called `name` with `role` and returns its text, which is not kept (only its hash is).
    public func createToken(name: String, role: Role, now: Double) throws -> String {
        guard !name.isEmpty, name.count <= 64, name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.@".contains($0) }) else {
            throw StoreError("token name \"\(name)\": 1 to 64 letters, digits, '-', '_', '.' or '@'")
        }
        let token = AccessToken.generate()
        try database.write { db in
            guard try AccessToken.fetchOne(db, key: name) == nil else { throw StoreError("a token named \(name) exists") }
            try AccessToken(name: name, role: role, hash: AccessToken.hash(token), createdAt: now).insert(db)
        }
        return token
    }

    /// The token whose text is `token`, or nil. Every stored hash is compared in constant time.
    public func authenticate(_ token: String) throws -> AccessToken? {
        let hash = AccessToken.hash(token)
        let tokens = try database.read { try AccessToken.fetchAll($0) }
        var found: AccessToken?
        for candidate in tokens where AccessToken.constantTimeEqual(candidate.hash, hash) { found = candidate }
        return found
    }
}
