import Foundation
import Training

/// Runs a job's gradient computations one after another on a thread of its own and wakes the worker's loop
/// (through a pipe it can poll next to its socket) with every piece they hand on, and when one fails.
///
/// Thread-safe: `lock` guards `results`; `source` is set and used only on the serial `queue`.
final class ComputeThread: @unchecked Sendable {
    private let queue = DispatchQueue(label: "trainerd.compute")
    private let lock = NSLock()
    private var results: [ComputeResult] = []
    private let pipeDescriptors: [Int32]
    private var source: LocalGradientSource?

    init() {
        var descriptors: [Int32] = [0, 0]
        precondition(pipe(&descriptors) == 0, "cannot create a pipe")
        _ = fcntl(descriptors[0], F_SETFL, fcntl(descriptors[0], F_GETFL) | O_NONBLOCK)
        pipeDescriptors = descriptors
    }

    deinit { pipeDescriptors.forEach { close($0) } }

    /// Readable while finished work waits to be taken.
    var wakeDescriptor: Int32 { pipeDescriptors[0] }

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
        var byte: UInt8 = 1
        _ = write(pipeDescriptors[1], &byte, 1)
    }

    /// The finished work, oldest first.
    func takeResults() -> [ComputeResult] {
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(pipeDescriptors[0], &buffer, buffer.count) > 0 {}
        lock.lock()
        defer { lock.unlock() }
        let taken = results
        results = []
        return taken
    }
}
