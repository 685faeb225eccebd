import Foundation
import JobStore
import XCTest

/// The store against a second reader of its file (Python's sqlite3 and hashlib), and across reopening.
final class JobStoreTests: XCTestCase {
    var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "trainerd-store-\(UUID().uuidString)"
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    /// Runs a Python program with the database's path as its argument; its stdout, trimmed.
    func python(_ program: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", program, directory + "/trainerd.sqlite"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func testASubmittedJobIsOnDiskInWALModeAndSurvivesReopening() throws {
        let submission = JobSubmission(name: "mlp", config: "name: mlp\nseed: 3\n", overrides: ["training.max_steps=5"],
                                       submitter: "alice", priority: 2, minWorkers: 1, maxWorkers: 3)
        let id = try JobStore(directory: directory).submit(submission, now: 1000).id
        XCTAssertEqual(id, 1)
        // Another SQLite reads it while the writer's store is gone, and the journal is a write-ahead log.
        XCTAssertEqual(try python("""
            import sqlite3, sys, json
            db = sqlite3.connect(sys.argv[1])
            row = db.execute("select name, config, overrides, submitter, priority, minWorkers, maxWorkers, state from job where id = 1").fetchone()
            print(db.execute("pragma journal_mode").fetchone()[0], row[0], repr(row[1]), json.loads(row[2]), *row[3:])
            """), "wal mlp 'name: mlp\\nseed: 3\\n' ['training.max_steps=5'] alice 2 1 3 queued")
        let reopened = try JobStore(directory: directory)
        let job = try XCTUnwrap(reopened.job(1))
        XCTAssertEqual(job.config, submission.config)
        XCTAssertEqual(job.overrides, submission.overrides)
        XCTAssertEqual(job.state, .queued)
        XCTAssertEqual(job.submittedAt, 1000)
        XCTAssertEqual(try reopened.submit(submission, now: 1001).id, 2, "ids keep growing")
    }

    func testAJobsLifeIsRecordedAndListedByState() throws {
        let store = try JobStore(directory: directory)
        let first = try store.submit(JobSubmission(name: "a", config: "a", submitter: "x"), now: 1).id!
        let second = try store.submit(JobSubmission(name: "b", config: "b", submitter: "x"), now: 2).id!
        try store.markRunning(first, now: 3)
        try store.recordProgress(first, step: 40, loss: 0.5)
        XCTAssertEqual(try store.jobs(in: [.running]).map(\.id), [first])
        XCTAssertEqual(try store.jobs(in: [.queued]).map(\.id), [second])
        try store.finish(first, as: .completed, now: 9, step: 50, loss: 0.25, accuracy: 0.8, weightsSHA256: "ab")
        let done = try XCTUnwrap(store.job(first))
        XCTAssertEqual([done.state.rawValue, "\(done.step)", "\(done.loss!)", "\(done.accuracy!)", done.weightsSHA256!],
                       ["completed", "50", "0.25", "0.8", "ab"])
        XCTAssertEqual(done.startedAt, 3)
        XCTAssertEqual(done.endedAt, 9)
        XCTAssertEqual(try store.jobs().map(\.id), [first, second])
    }

    func testCancelEndsAQueuedJobAtOnceAndAsksARunningOneToStop() throws {
        let store = try JobStore(directory: directory)
        let queued = try store.submit(JobSubmission(name: "q", config: "q", submitter: "x"), now: 1).id!
        let running = try store.submit(JobSubmission(name: "r", config: "r", submitter: "x"), now: 1).id!
        try store.markRunning(running, now: 2)
        XCTAssertEqual(try store.cancel(queued, now: 5).state, .cancelled)
        let asked = try store.cancel(running, now: 5)
        XCTAssertEqual(asked.state, .running)
        XCTAssertTrue(asked.cancelRequested)
        XCTAssertThrowsError(try store.cancel(99, now: 5)) { XCTAssertEqual("\($0)", "no job 99") }
    }

    func testTokensAreKeptOnlyAsTheirSHA256AndAuthenticateByTheirText() throws {
        let store = try JobStore(directory: directory)
        let token = try store.createToken(name: "alice", role: .submit, now: 1)
        XCTAssertTrue(token.hasPrefix("trainerd_"))
        XCTAssertEqual(token.count, 9 + 64)
        XCTAssertNotEqual(try store.createToken(name: "bob", role: .read, now: 1), token)
        XCTAssertEqual(try python("""
            import sqlite3, sys, hashlib
            db = sqlite3.connect(sys.argv[1])
            stored = dict(db.execute("select name, hash from token").fetchall())
            print(stored["alice"] == hashlib.sha256(b"\(token)").hexdigest(), "\(token)" in str(db.execute("select * from token").fetchall()))
            """), "True False")
        XCTAssertEqual(try store.authenticate(token)?.name, "alice")
        XCTAssertEqual(try store.authenticate(token)?.role, .submit)
        XCTAssertNil(try store.authenticate(String(token.dropLast()) + (token.last == "0" ? "1" : "0")))
        XCTAssertNil(try store.authenticate(""))
        XCTAssertThrowsError(try store.createToken(name: "alice", role: .admin, now: 2)) {
            XCTAssertEqual("\($0)", "a token named alice exists")
        }
        XCTAssertThrowsError(try store.createToken(name: "no spaces", role: .admin, now: 2))
    }
}
