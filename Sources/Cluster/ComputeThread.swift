import Foundation
import Training

/// Runs gradient computations one after another on a thread of its own and wakes the worker's loop (through a
/// pipe it can poll next to its socket) with every piece they hand on, and when one fails.
///
/// Thread-safe: `lock` guards `results`; the work itself runs on the serial `queue`.
final class ComputeThread: @unchecked Sendable {
    private let queue = DispatchQueue(label: "trainerd.compute")
    private let lock = NSLock()
    private var results: [ComputeResult] = []
    private let pipeDescriptors: [Int32]

    init() {
        var descriptors: [Int32] = [0, 0]
        precondition(pipe(&descriptors) == 0, "cannot create a pipe")
        _ = fcntl(descriptors[0], F_SETFL, fcntl(descriptors[0], F_GETFL) | O_NONBLOCK)
        pipeDescriptors = descriptors
    }

    deinit { pipeDescriptors.forEach { close($0) } }

    /// Readable while finished work waits to be taken.
    var wakeDescriptor: Int32 { pipeDescriptors[0] }

    /// Runs `work` after the work already submitted; what it emits (from any thread) reaches `takeResults`.
    func submit(generation: Int, step: UInt64, work: @escaping (_ emit: (GradientEngine.Piece) -> Void) throws -> Void) {
        queue.async { [self] in
            do {
                try work { post(ComputeResult(generation: generation, step: step, outcome: .success($0))) }
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
