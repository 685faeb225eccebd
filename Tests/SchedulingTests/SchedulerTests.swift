import Scheduling
import XCTest

/// The scheduler's rules, case by case (each expectation worked out by hand from the rules in `Scheduler`'s doc
/// comment), then a simulated pool driven by random events whose invariants must hold after every plan.
final class SchedulerTests: XCTestCase {
    func running(_ id: Int64, priority: Int = 0, min: Int = 1, max: Int = .max, _ workers: [String],
                 releasing: Set<String> = []) -> ScheduledJob {
        ScheduledJob(id: id, priority: priority, minWorkers: min, maxWorkers: max, state: .running, workers: workers,
                     releasing: releasing)
    }

    func queued(_ id: Int64, priority: Int = 0, min: Int = 1, max: Int = .max) -> ScheduledJob {
        ScheduledJob(id: id, priority: priority, minWorkers: min, maxWorkers: max)
    }

    func testFreeWorkersStartTheOldestQueuedJobUpToItsMax() {
        XCTAssertEqual(Scheduler.plan(jobs: [queued(2, max: 2), queued(1, max: 3)], freeWorkers: ["a", "b", "c", "d"]),
                       [.start(job: 1, workers: ["a", "b", "c"]), .start(job: 2, workers: ["d"])])
    }

    func testRunningJobsBelowTheirMaxAreFilledBeforeQueuedJobsOfTheirPriorityStart() {
        XCTAssertEqual(Scheduler.plan(jobs: [running(1, max: 3, ["a"]), queued(2)], freeWorkers: ["b", "c", "d"]),
                       [.assign(worker: "b", job: 1), .assign(worker: "c", job: 1), .start(job: 2, workers: ["d"])])
    }

    func testAHigherPriorityQueuedJobStartsBeforeALowerRunningJobGrows() {
        XCTAssertEqual(Scheduler.plan(jobs: [running(1, max: 3, ["a"]), queued(2, priority: 5, min: 2)], freeWorkers: ["b", "c"]),
                       [.start(job: 2, workers: ["b", "c"])])
    }

    func testAQueuedJobWhoseMinCannotBeMetWaitsWithoutPreemptingItsOwnPriority() {
        XCTAssertEqual(Scheduler.plan(jobs: [running(1, max: 3, ["a", "b", "c"]), queued(2, min: 2)], freeWorkers: []), [])
        XCTAssertEqual(Scheduler.plan(jobs: [queued(1, min: 3), queued(2, min: 1)], freeWorkers: ["a", "b"]),
                       [.start(job: 2, workers: ["a", "b"])], "the younger job backfills")
    }

    func testAHigherPriorityJobTakesWorkersDownToTheLowerJobsMinLastGivenFirst() {
        let jobs = [running(1, min: 1, max: 3, ["a", "b", "c"]), queued(2, priority: 1, min: 2)]
        XCTAssertEqual(Scheduler.plan(jobs: jobs, freeWorkers: []),
                       [.release(worker: "c", job: 1), .release(worker: "b", job: 1)])
    }

    func testTheLowestPriorityAndThenTheNewestJobGiveFirst() {
        let jobs = [running(1, priority: 1, min: 1, ["a", "b"]), running(2, priority: 0, min: 1, ["c", "d"]),
                    running(3, priority: 0, min: 1, ["e", "f"]), queued(4, priority: 2, min: 3)]
        XCTAssertEqual(Scheduler.plan(jobs: jobs, freeWorkers: []),
                       [.release(worker: "f", job: 3), .release(worker: "d", job: 2), .release(worker: "b", job: 1)])
    }

    func testFreeWorkersAndWorkersAlreadyLeavingCountTowardsTheWaitingJobsMin() {
        let leaving = running(1, min: 1, ["a", "b", "c"], releasing: ["c"])
        // One free and one leaving: one more release is needed, and the free worker is kept for job 2.
        XCTAssertEqual(Scheduler.plan(jobs: [leaving, queued(2, priority: 1, min: 3), queued(3)], freeWorkers: ["x"]),
                       [.release(worker: "b", job: 1)])
        // Enough already leaving: nothing new, and nothing else gets the free worker.
        XCTAssertEqual(Scheduler.plan(jobs: [leaving, queued(2, priority: 1, min: 2), queued(3)], freeWorkers: ["x"]), [])
        // Once they have left, the job starts.
        XCTAssertEqual(Scheduler.plan(jobs: [running(1, min: 1, ["a"]), queued(2, priority: 1, min: 2)], freeWorkers: ["x", "c"]),
                       [.start(job: 2, workers: ["x", "c"])])
    }

    func testAJobThatCouldNotStartEvenByPreemptingTakesNothingAndLowerJobsUseTheFreeWorkers() {
        let jobs = [running(1, min: 2, max: 2, ["a", "b"]), queued(2, priority: 1, min: 4), queued(3)]
        XCTAssertEqual(Scheduler.plan(jobs: jobs, freeWorkers: ["x"]), [.start(job: 3, workers: ["x"])])
    }

    func testAJobThatIsLeavingWorkersGetsNoNewOnes() {
        let jobs = [running(1, max: 4, ["a", "b"], releasing: ["b"])]
        XCTAssertEqual(Scheduler.plan(jobs: jobs, freeWorkers: ["x"]), [])
    }

    /// The scenario: 3 workers; A (min 1, max 3) and B (min 1, max 2), then C (higher priority, min 2).
    func testTheStandingClusterScenario() {
        let workers = ["w0", "w1", "w2"]
        XCTAssertEqual(Scheduler.plan(jobs: [queued(1, max: 3), queued(2, max: 2)], freeWorkers: workers),
                       [.start(job: 1, workers: workers)])
        let a = running(1, max: 3, workers)
        XCTAssertEqual(Scheduler.plan(jobs: [a, queued(2, max: 2), queued(3, priority: 1, min: 2)], freeWorkers: []),
                       [.release(worker: "w2", job: 1), .release(worker: "w1", job: 1)])
        let leavingA = running(1, max: 3, workers, releasing: ["w1", "w2"])
        XCTAssertEqual(Scheduler.plan(jobs: [leavingA, queued(2, max: 2), queued(3, priority: 1, min: 2)], freeWorkers: []), [])
        XCTAssertEqual(Scheduler.plan(jobs: [running(1, max: 3, ["w0"]), queued(2, max: 2), queued(3, priority: 1, min: 2)],
                                      freeWorkers: ["w2", "w1"]),
                       [.start(job: 3, workers: ["w2", "w1"])])
        // A ends: its worker goes to C, the higher-priority running job below its max, not to B.
        XCTAssertEqual(Scheduler.plan(jobs: [queued(2, max: 2), running(3, priority: 1, min: 2, ["w2", "w1"])], freeWorkers: ["w0"]),
                       [.assign(worker: "w0", job: 3)])
        // C ends: B starts with its max, and one worker stays free.
        XCTAssertEqual(Scheduler.plan(jobs: [queued(2, max: 2)], freeWorkers: ["w2", "w1", "w0"]),
                       [.start(job: 2, workers: ["w2", "w1"])])
    }

    /// A pool of 6 workers and random submissions, job ends and worker losses, each followed by plans carried out
    /// until nothing changes (a release completes at the "next step boundary", before the next event). After
    /// every plan: no worker is in two places, no running job is above its max, every job started with at least
    /// its min, and once the plans settle no worker is free while a job could use it.
    func testARandomPoolKeepsTheInvariants() {
        var random = SystemRandomNumberGenerator()
        for trial in 0..<200 {
            var jobs: [ScheduledJob] = []
            var free = (0..<6).map { "w\($0)" }
            var nextID: Int64 = 1
            for event in 0..<40 {
                switch Int.random(in: 0..<10, using: &random) {
                case 0..<5:
                    let min = Int.random(in: 1...3, using: &random)
                    jobs.append(queued(nextID, priority: Int.random(in: 0...2, using: &random), min: min,
                                       max: Bool.random(using: &random) ? .max : min + Int.random(in: 0...2, using: &random)))
                    nextID += 1
                case 5..<8:
                    guard let index = jobs.indices.filter({ jobs[$0].state == .running }).randomElement(using: &random) else { break }
                    free += jobs.remove(at: index).workers
                default:
                    guard let index = jobs.indices.filter({ !jobs[$0].staying.isEmpty }).randomElement(using: &random) else { break }
                    jobs[index].workers.removeLast()  // lost; the pool has one worker fewer until another joins
                    jobs[index].releasing = jobs[index].releasing.intersection(jobs[index].workers)
                    free.append("n\(trial)-\(event)")
                }
                for _ in 0..<10 {
                    let moves = Scheduler.plan(jobs: jobs, freeWorkers: free)
                    if moves.isEmpty { break }
                    for move in moves {
                        switch move {
                        case let .start(id, workers):
                            let index = jobs.firstIndex { $0.id == id }!
                            XCTAssertEqual(jobs[index].state, .queued)
                            XCTAssertGreaterThanOrEqual(workers.count, jobs[index].minWorkers)
                            XCTAssertLessThanOrEqual(workers.count, jobs[index].maxWorkers)
                            XCTAssertTrue(workers.allSatisfy(free.contains))
                            jobs[index].state = .running
                            jobs[index].workers = workers
                            free.removeAll(where: workers.contains)
                        case let .assign(worker, id):
                            let index = jobs.firstIndex { $0.id == id }!
                            XCTAssertEqual(jobs[index].state, .running)
                            XCTAssertTrue(free.contains(worker))
                            jobs[index].workers.append(worker)
                            free.removeAll { $0 == worker }
                            XCTAssertLessThanOrEqual(jobs[index].workers.count, jobs[index].maxWorkers)
                        case let .release(worker, id):
                            let index = jobs.firstIndex { $0.id == id }!
                            XCTAssertTrue(jobs[index].workers.contains(worker))
                            XCTAssertFalse(jobs[index].releasing.contains(worker), "released twice")
                            jobs[index].releasing.insert(worker)
                            XCTAssertGreaterThanOrEqual(jobs[index].staying.count, jobs[index].minWorkers)
                        }
                    }
                    // The step boundary: released workers leave and are free.
                    for index in jobs.indices {
                        free += jobs[index].workers.filter(jobs[index].releasing.contains)
                        jobs[index].workers.removeAll(where: jobs[index].releasing.contains)
                        jobs[index].releasing = []
                    }
                }
                let held = jobs.flatMap(\.workers) + free
                XCTAssertEqual(held.count, Set(held).count, "a worker in two places")
                XCTAssertEqual(Scheduler.plan(jobs: jobs, freeWorkers: free), [], "the plans settle")
                if !free.isEmpty {
                    for job in jobs where job.state == .running {
                        XCTAssertGreaterThanOrEqual(job.workers.count, job.maxWorkers, "a worker idles while job \(job.id) could use it")
                    }
                    for job in jobs where job.state == .queued {
                        XCTAssertGreaterThan(job.minWorkers, free.count, "job \(job.id) could start")
                    }
                }
            }
        }
    }
}
