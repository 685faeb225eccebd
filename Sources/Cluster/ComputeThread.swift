import Foundation
import Training
import Transport

/// Runs a job's gradient computations one after another on a thread of its own and wakes the worker's loop
/// (through a pipe it can poll next to its socket) with every piece they hand on, and when one fails.
///
/// Thread-safe: `lock` guards `results`; `source` is set and used only on the serial `queue`.
final class ComputeThread: @unchecked Sendable {
    private let queue = DispatchQueue(label: "trainerd.compute")
    private let lock = NSLock()
    private var results: [ComputeResult] = []
    private let wake = WakePipe()
    private var source: LocalGradientSource?

    /// Readable while finished work waits to be taken.
    var wakeDescriptor: Int32 { wake.descriptor }

    /// Computes with `source` from the next submission on; it moves to the compute thread, which alone uses it.
    func load(_ source: LocalGradientSource) {
        queue.async { [self] in self.source = source }
    }

    /// Computes micro-batches `range` of `step` at the weights `feed` delivers, after the work already submitted
    /// (on the source's threads); every piece (from any of them) reaches `takeResults`.
    func submit(generation: Int, step: UInt64, range: Range<Int>, weights feed: WeightFeed) {
        queue.async { [self] in
            guard let source else { return }
            do {
                try source.streamBlockSums(step: Int(step), range: range, weights: feed) {
                    post(ComputeResult(generation: generation, step: step, outcome: .success($0)))
                }
            } catch {
                post(ComputeResult(generation: generation, step: step, outcome: .failure(error)))
            }
        }
    }

    private func post(_ result: ComputeResult) {
        lock.lock()
        results.append(result)
        lock.unlock()
        wake.signal()
    }

    /// The finished work, oldest first.
    func takeResults() -> [ComputeResult] {
        wake.drain()
        lock.lock()
        defer { lock.unlock() }
        let taken = results
        results = []
        return taken
    }
}
