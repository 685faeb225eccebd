import Cluster
import Foundation
import JobStore
import Training
import Transport

/// One running job of the daemon: its coordinator and trainer on a thread of their own, reading the job's
/// messages from its `JobSocket`. Built from the stored record; the run directory is the store's for the job.
///
/// Thread-safe where it says so: `lock` guards `coordinator` and `earlyReleases`; `workers` belongs to the
/// daemon's loop thread.
final class DaemonJob: @unchecked Sendable {
    let record: JobRecord
    let socket: JobSocket
    let stop = StopRequest()
    /// Continue from the newest checkpoint in the run directory (the daemon restarted while the job ran).
    let resume: Bool
    /// Names of the pool workers lent to the job, in the order they were given (the loop's thread only).
    var workers: [String] = []
    /// Names told to leave at the next step boundary and not gone yet (the loop's thread only).
    var releasing: Set<String> = []
    /// The job has trained its last step and is saying bye: it takes no more workers (the loop's thread only).
    var finishing = false
    /// Times a worker reported it could not run the job (the loop's thread only).
    var workerFailures = 0
    /// Why the daemon is ending the job as failed, once it is (the loop's thread only).
    var failure: String?
    /// What a worker's connection may send undelivered while it serves the job, once the coordinator exists
    /// (`Coordinator.workerConnectionLimit`; the loop's thread only).
    var workerConnectionLimit: Int?

    private let lock = NSLock()
    private var coordinator: Coordinator?
    private var earlyReleases: [String] = []

    var id: Int64 { record.id! }

    init(record: JobRecord, socket: JobSocket, resume: Bool) {
        self.record = record
        self.socket = socket
        self.resume = resume
    }

    /// The job as its workers see it: the submitted config and overrides, and the daemon's min workers.
    var description: JobDescription {
        JobDescription(yaml: record.config, overrides: record.overrides + ["cluster.min_workers=\(record.minWorkers)"])
    }

    /// Lets worker `name` go at the next step boundary. Thread-safe; before the coordinator exists the request
    /// waits for it.
    func release(_ name: String) {
        lock.lock()
        defer { lock.unlock() }
        if let coordinator { coordinator.release(name) } else { earlyReleases.append(name) }
    }

    /// Builds and runs the job on the calling thread (its own): the summary, or the error that ended it. Workers
    /// still in the job are told bye either way. `built` is told the coordinator's limit for a worker's connection
    /// before any worker is welcomed; `observe` sees every event the job logs.
    func run(runDirectory: String, datasets: DatasetCache, built: (_ workerConnectionLimit: Int) -> Void,
             observe: @escaping (String, [(String, JSONValue)]) -> Void) -> Result<RunSummary, Error> {
        var job: CoordinatedJob?
        do {
            let description = self.description
            let config = try description.parse()
            let training = try TrainingJob(config: config, loadDatasets: datasets.load)
            let coordinated = try CoordinatedJob(description, job: training, socket: socket, runDirectory: runDirectory,
                                           context: training.context(stop: stop))
            job = coordinated
            coordinated.trainer.events.observers.append(observe)
            built(coordinated.coordinator.workerConnectionLimit)
            attach(coordinated.coordinator)
            if resume { _ = coordinated.trainer.resume() }
            return .success(try coordinated.trainer.run())
        } catch {
            job?.coordinator.sayGoodbye()
            return .failure(error)
        }
    }

    private func attach(_ coordinator: Coordinator) {
        lock.lock()
        defer { lock.unlock() }
        self.coordinator = coordinator
        for name in earlyReleases { coordinator.release(name) }
        earlyReleases = []
    }
}
