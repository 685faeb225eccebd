import Dispatch
import Foundation

/// The one place that spreads work across threads (`DispatchQueue.concurrentPerform`).
///
/// Callers split work into independent chunks whose results never depend on which thread ran them or how many
/// chunks there are; kernels never split a reduction. A call made from inside a parallel region runs inline on
/// the calling thread, so nesting (micro-batches in parallel, each calling a GEMM) never oversubscribes the cores.
///
/// How many threads a region may use belongs to the job that runs it: `withThreads` sets it for the calling
/// thread (a job's loop, a worker's compute thread), so two jobs in one process keep their own counts.
public enum Parallel {
    /// This thread's job's thread count; 0 outside `withThreads`.
    private static let jobThreads = ThreadLocalInt()
    private static let machineThreads = ProcessInfo.processInfo.activeProcessorCount

    /// Threads the calling thread's parallel regions use (every core outside `withThreads`); 1 runs everything
    /// on the calling thread.
    public static var threadCount: Int {
        let count = jobThreads.value
        return count > 0 ? count : machineThreads
    }

    /// Runs `body` with parallel regions on the calling thread using `count` threads (at least 1).
    public static func withThreads<R>(_ count: Int, _ body: () throws -> R) rethrows -> R {
        try jobThreads.with(max(1, count), body)
    }

    private static let insideRegion = ThreadLocalInt()

    /// Whether the current thread is already running a chunk of a parallel region.
    public static var isInsideRegion: Bool { insideRegion.value != 0 }

    /// Runs `body(chunk)` for every chunk in 0..<count, on up to `threadCount` threads; returns when all are done.
    public static func forEach(_ count: Int, _ body: (Int) -> Void) {
        guard count > 0 else { return }
        if count == 1 || threadCount == 1 || isInsideRegion {
            for chunk in 0..<count { body(chunk) }
            return
        }
        let lanes = min(count, threadCount)
        withoutActuallyEscaping(body) { body in
            DispatchQueue.concurrentPerform(iterations: lanes) { lane in
                insideRegion.with(1) {
                    for chunk in stride(from: lane, to: count, by: lanes) { body(chunk) }
                }
            }
        }
    }
}
