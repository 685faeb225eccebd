import Autograd
import Data
import Foundation
import Kernels
import NN

/// Test-set loss and accuracy of `model` (no graph recorded), in chunks spread over threads. A prediction is
/// the first class with the highest logit, as `torch.argmax`.
public func evaluate(_ model: Module, on dataset: any SampleSource) throws -> (loss: Float, accuracy: Double) {
    let chunk = dataset.evaluationChunk
    let chunks = (dataset.count + chunk - 1) / chunk
    var results = [Result<(lossSum: Double, correct: Int, labels: Int), Error>?](repeating: nil, count: chunks)
    results.withUnsafeMutableBufferPointer { slots in
        Parallel.forEach(chunks) { index in
            slots[index] = Result {
                try withNoGrad {
                    let range = (index * chunk)..<min(dataset.count, (index + 1) * chunk)
                    let batch = dataset.batch(Array(range)[...])
                    let output = model(Tensor(shape: [batch.samples, batch.inputs.count / max(batch.samples, 1)],
                                              storage: batch.inputs))
                    let lossSum = Double(try summedLoss(output, labels: batch.labels).item)
                    let classes = output.shape.last!
                    var correct = 0
                    for row in 0..<batch.labels.count {
                        let scores = output.storage[(row * classes)..<((row + 1) * classes)]
                        let predicted = scores.indices.max { scores[$0] < scores[$1] }! - row * classes
                        if predicted == Int(batch.labels[row]) { correct += 1 }
                    }
                    return (lossSum, correct, batch.labels.count)
                }
            }
        }
    }
    let totals = try results.map { try $0!.get() }
    return (Float(totals.map(\.lossSum).reduce(0, +) / Double(dataset.count)),
            Double(totals.map(\.correct).reduce(0, +)) / Double(max(1, totals.map(\.labels).reduce(0, +))))
}
