import Foundation
import Transport

/// Work for the daemon's loop thread, from any other thread: `async` posts a closure, `sync` posts one and waits
/// for its result. The loop polls `wake.descriptor` beside its socket and calls `runPending` each turn, so its
/// socket and state are only ever touched on its thread.
///
/// Thread-safe: `lock` guards `pending` and `closed`.
final class LoopQueue: @unchecked Sendable {
    private final class Request: @unchecked Sendable {
        let work: () -> Void
        let cancel: () -> Void
        init(work: @escaping () -> Void, cancel: @escaping () -> Void) {
            self.work = work
            self.cancel = cancel
        }
    }

    let wake = WakePipe()
    private let lock = NSLock()
    private var pending: [Request] = []
    private var closed = false

    /// Runs `work` on the loop's thread, later; dropped once the queue is closed.
    func async(_ work: @escaping () -> Void) {
        post(Request(work: work, cancel: {}))
    }

    /// Runs `work` on the loop's thread and returns what it returned or throws what it threw; throws at once when
    /// the loop has stopped. Never call it from the loop's own thread.
    func sync<T>(_ work: @escaping () throws -> T) throws -> T {
        let outcome = Outcome<T>(), done = DispatchSemaphore(value: 0)
        post(Request(work: {
            outcome.result = Result(catching: work)
            done.signal()
        }, cancel: {
            outcome.result = .failure(DaemonError("the daemon is stopping"))
            done.signal()
        }))
        done.wait()
        return try outcome.result!.get()
    }

    /// On the loop's thread: runs what was posted, oldest first.
    func runPending() {
        wake.drain()
        lock.lock()
        let taken = pending
        pending = []
        lock.unlock()
        for request in taken { request.work() }
    }

    /// Nothing more runs; waiting `sync` callers are released with an error.
    func close() {
        lock.lock()
        closed = true
        let taken = pending
        pending = []
        lock.unlock()
        for request in taken { request.cancel() }
    }

    private func post(_ request: Request) {
        lock.lock()
        guard !closed else {
            lock.unlock()
            request.cancel()
            return
        }
        pending.append(request)
        lock.unlock()
        wake.signal()
    }
}

/// A result handed from the loop's thread to the one waiting in `sync` (after the semaphore: no lock needed).
private final class Outcome<T>: @unchecked Sendable { var result: Result<T, Error>? }

/// A clear error from the daemon, naming the job, worker or file.
public struct DaemonError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
