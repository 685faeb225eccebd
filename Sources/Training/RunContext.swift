import Foundation

/// How one job runs in this process, handed to everything that runs it (trainer, gradient source, coordinator,
/// worker): its kernel threads, its stop request and its trace. Nothing of it is process-wide, so one process can
/// host several jobs.
public struct RunContext: Sendable {
    /// Threads of the job's parallel regions (gradient passes, evaluation, optimizer, GEMMs).
    public var threads: Int
    public var stop: StopRequest
    /// The job's Chrome trace, when one is recorded.
    public var trace: Trace?

    /// `threads` 0 means every core of this machine.
    public init(threads: Int = 0, stop: StopRequest = StopRequest(), trace: Trace? = nil) {
        self.threads = threads > 0 ? threads : ProcessInfo.processInfo.activeProcessorCount
        self.stop = stop
        self.trace = trace
    }
}

/// A request to stop a job after its current step (Ctrl-C, SIGTERM, a scheduler's cancel), safe from any thread.
/// `signalled`, when given, is polled as well: a command-line process maps its signals onto it. Thread-safe:
/// `lock` guards `requested`.
public final class StopRequest: @unchecked Sendable {
    private let lock = NSLock()
    private var requested = false
    private let signalled: @Sendable () -> Bool

    public init(signalled: @escaping @Sendable () -> Bool = { false }) { self.signalled = signalled }

    public func request() {
        lock.lock()
        requested = true
        lock.unlock()
    }

    public var isRequested: Bool {
        lock.lock()
        defer { lock.unlock() }
        return requested || signalled()
    }
}
