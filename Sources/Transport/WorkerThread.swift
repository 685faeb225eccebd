import Foundation

/// A detached thread that runs a loop until `stop`: the running flag and the wait for the loop's end, in one place.
///
/// Thread-safe: `lock` guards `running`.
final class WorkerThread: @unchecked Sendable {
    private let lock = NSLock()
    private var running = true
    private let done = DispatchSemaphore(value: 0)

    /// Starts `loop`, which runs until `isRunning` turns false.
    init(_ loop: @escaping @Sendable (WorkerThread) -> Void) {
        Thread.detachNewThread { [self] in
            loop(self)
            done.signal()
        }
    }

    var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    /// Ends the loop and waits for it; calling again does nothing.
    func stop() {
        lock.lock()
        let wasRunning = running
        running = false
        lock.unlock()
        if wasRunning { done.wait() }
    }
}
