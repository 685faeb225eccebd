/// A job as the scheduler sees it: its place in the queue, its bounds, and the workers it holds.
public struct ScheduledJob: Sendable, Equatable {
    public enum State: Sendable, Equatable { case queued, running }

    /// Ids grow with submission: a smaller id was submitted earlier.
    public var id: Int64
    /// Higher runs first.
    public var priority: Int
    public var minWorkers: Int
    public var maxWorkers: Int
    public var state: State
    /// The workers in the job, in the order they were given to it.
    public var workers: [String]
    /// Workers told to leave at the job's next step boundary; they stay in `workers` until they have left.
    public var releasing: Set<String>

    public init(id: Int64, priority: Int = 0, minWorkers: Int = 1, maxWorkers: Int = .max, state: State = .queued,
                workers: [String] = [], releasing: Set<String> = []) {
        self.id = id
        self.priority = priority
        self.minWorkers = minWorkers
        self.maxWorkers = maxWorkers
        self.state = state
        self.workers = workers
        self.releasing = releasing
    }

    /// Workers that stay in the job: `workers` less those leaving.
    public var staying: [String] { workers.filter { !releasing.contains($0) } }
}

/// What the scheduler asks the daemon to do.
public enum Move: Sendable, Equatable {
    /// A queued job starts with these free workers.
    case start(job: Int64, workers: [String])
    /// A free worker joins a running job (at the job's next step boundary, as any joining worker does).
    case assign(worker: String, job: Int64)
    /// A worker leaves a running job at its next step boundary and becomes free; a later plan gives it on.
    case release(worker: String, job: Int64)
}

/// Who gets the pool's workers: a pure function of the jobs and the free workers, called again after every change
/// (a job submitted, started, ended; a worker joined, freed, lost). It reads no clock and touches no socket.
///
/// Priority levels are served from the highest down. At each level:
/// 1. running jobs below their max take free workers, oldest job first;
/// 2. queued jobs start, oldest first, when the free workers meet their min (taking up to their max);
/// 3. the oldest queued job that cannot start takes workers from lower-priority running jobs, down to their min, at
///    their next step boundary: the lowest priority gives first, and among equals the newest job, its
///    last-given worker first. Workers already leaving lower-priority jobs count towards its min. While it waits
///    for them, the free workers are kept for it and nothing below it is planned. A job that could not start even
///    with all those workers takes none, and the jobs below it may use the free workers.
public enum Scheduler {
    public static func plan(jobs: [ScheduledJob], freeWorkers: [String]) -> [Move] {
        var moves: [Move] = []
        var free = freeWorkers[...]
        let byAge = jobs.sorted { $0.id < $1.id }
        for level in Set(jobs.map(\.priority)).sorted(by: >) {
            for job in byAge where job.priority == level && job.state == .running && job.releasing.isEmpty {
                var size = job.workers.count
                while size < job.maxWorkers, let worker = free.popFirst() {
                    moves.append(.assign(worker: worker, job: job.id))
                    size += 1
                }
            }
            for job in byAge where job.priority == level && job.state == .queued {
                if free.count >= job.minWorkers {
                    let taken = free.prefix(job.maxWorkers)
                    free = free.dropFirst(taken.count)
                    moves.append(.start(job: job.id, workers: Array(taken)))
                    continue
                }
                let lower = byAge.filter { $0.priority < level && $0.state == .running }
                let leaving = lower.reduce(0) { $0 + $1.releasing.count }
                let spare = lower.reduce(0) { $0 + max(0, $1.staying.count - $1.minWorkers) }
                let needed = job.minWorkers - free.count - leaving
                guard needed <= spare else { continue }
                moves += releases(needed, from: lower)
                return moves
            }
        }
        return moves
    }

    /// `count` workers (none when `count` ≤ 0) from `jobs`, lowest priority and newest job first, each job down to
    /// its min, its last-given workers first.
    private static func releases(_ count: Int, from jobs: [ScheduledJob]) -> [Move] {
        var moves: [Move] = []
        let givers = jobs.sorted { ($0.priority, -$0.id) < ($1.priority, -$1.id) }
        for job in givers where moves.count < count {
            let staying = job.staying
            for worker in staying.suffix(max(0, staying.count - job.minWorkers)).reversed() where moves.count < count {
                moves.append(.release(worker: worker, job: job.id))
            }
        }
        return moves
    }
}
