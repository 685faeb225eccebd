import Dispatch
import Foundation

/// The one place that spreads work across threads (`DispatchQueue.concurrentPerform`).
///
/// Callers split work into independent chunks whose results never depend on which thread ran them or how many
/// chunks there are; kernels never split a reduction. A call made from inside a parallel region runs inline on
/// the calling thread, so nesting (micro-batches in parallel, each calling a GEMM) never oversubscribes the cores.
public enum Parallel {
    nonisolated(unsafe) private static var configuredThreads = ProcessInfo.processInfo.activeProcessorCount

    /// Threads used by parallel regions; 1 runs everything on the calling thread. Set before work starts.
    public static var threadCount: Int {
        get { configuredThreads }
        set { configuredThreads = max(1, newValue) }
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
