import Autograd
import Data
import Foundation
import NN
import Random

/// What `trainerd sample` needs beside the weights: the GPT's shape (`model.json`) and the character vocabulary
/// (`vocabulary.json`), written into the run directory when a language-model job starts.
public enum LanguageModelFiles {
    public static let vocabularyName = "vocabulary.json"
    public static let modelName = "model.json"

    public static func write(shape: GPTShape, vocabulary: CharacterVocabulary, runDirectory: String) throws {
        try vocabulary.write(to: (runDirectory as NSString).appendingPathComponent(vocabularyName))
        let object: [String: Any] = ["kind": "gpt", "vocabulary": shape.vocabulary, "context": shape.context,
                                     "dim": shape.dim, "heads": shape.heads, "layers": shape.layers]
        try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            .write(to: URL(fileURLWithPath: (runDirectory as NSString).appendingPathComponent(modelName)), options: .atomic)
    }

    public static func read(runDirectory: String) throws -> (shape: GPTShape, vocabulary: CharacterVocabulary) {
        let modelPath = (runDirectory as NSString).appendingPathComponent(modelName)
        guard let data = FileManager.default.contents(atPath: modelPath) else {
            throw DataError.missingFile("\(modelPath) (only language-model runs can be sampled)")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any], object["kind"] as? String == "gpt",
              let vocabularySize = object["vocabulary"] as? Int, let context = object["context"] as? Int,
              let dim = object["dim"] as? Int, let heads = object["heads"] as? Int, let layers = object["layers"] as? Int,
              vocabularySize > 0, context > 0, dim > 0, heads > 0, layers > 0, dim % heads == 0 else {
            throw DataError.unsupported(modelPath, reason: "not a trainerd GPT description")
        }
        let vocabulary = try CharacterVocabulary.read((runDirectory as NSString).appendingPathComponent(vocabularyName))
        guard vocabulary.count == vocabularySize else {
            throw DataError.mismatch("\(modelPath) has a vocabulary of \(vocabularySize), \(vocabularyName) \(vocabulary.count)")
        }
        return (GPTShape(vocabulary: vocabularySize, context: context, dim: dim, heads: heads, layers: layers), vocabulary)
    }
}

/// The validation loss (nats per character) of a bigram model counted on the training tokens with add-α
/// smoothing, α the best of 1, 0.1, 0.01 and 0.001 on the validation split itself (which favours the baseline).
/// Scored on the same next-token positions as the language model: every position of every validation window.
public func bigramValidationLoss(train: TokenDataset, validation: TokenDataset) -> (loss: Double, alpha: Double) {
    let v = train.vocabulary.count
    var counts = [Double](repeating: 0, count: v * v)
    for (a, b) in zip(train.tokens, train.tokens.dropFirst()) { counts[Int(a) * v + Int(b)] += 1 }
    var rowTotals = [Double](repeating: 0, count: v)
    for a in 0..<v { rowTotals[a] = counts[(a * v)..<((a + 1) * v)].reduce(0, +) }
    let windows = validation.batch(Array(0..<validation.count)[...])
    var best = (loss: Double.infinity, alpha: 1.0)
    for alpha in [1.0, 0.1, 0.01, 0.001] {
        var total = 0.0
        for (input, label) in zip(windows.inputs, windows.labels) {
            let a = Int(input), b = Int(label)
            total -= log((counts[a * v + b] + alpha) / (rowTotals[a] + alpha * Double(v)))
        }
        let loss = total / Double(max(1, windows.labels.count))
        if loss < best.loss { best = (loss, alpha) }
    }
    return best
}

/// Generates `count` characters after `prompt`: each from softmax(logits/temperature) at the last position of
/// the latest `context` tokens (greedy at temperature 0), drawn with a generator seeded by `seed`.
public func sampleText(_ model: GPT, vocabulary: CharacterVocabulary, prompt: String, count: Int, temperature: Float,
                       seed: UInt64) throws -> String {
    var tokens: [Int32]
    do { tokens = try vocabulary.encode(prompt.isEmpty ? "\n" : prompt) } catch { throw DataError.mismatch("the prompt: \(error)") }
    var rng = Xoshiro256(seed: seed, stream: 0x5A3B1E)
    var generated: [Int32] = []
    for _ in 0..<count {
        let window = Array(tokens.suffix(model.shape.context))
        let logits = withNoGrad { model(Tensor(shape: [1, window.count], storage: window.map(Float.init))) }
        let last = Array(logits.storage.suffix(model.shape.vocabulary))
        let next: Int
        if temperature <= 0 {
            next = last.indices.max { last[$0] < last[$1] }!
        } else {
            let top = last.max()!
            let weights = last.map { Double(exp(($0 - top) / temperature)) }
            var draw = Double(rng.nextUnitFloat()) * weights.reduce(0, +)
            next = weights.indices.first { draw -= weights[$0]; return draw < 0 } ?? weights.count - 1
        }
        tokens.append(Int32(next))
        generated.append(Int32(next))
    }
    return vocabulary.decode(generated)
}
