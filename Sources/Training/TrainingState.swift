import Checkpoint
import Foundation
import NN
import Optim

/// Everything needed to continue a run exactly: weights, optimizer state, and the step (the data cursor:
/// the next step's samples are a function of the seed and the step).
public struct TrainingState {
    public var step: Int
    public var parameters: [Float]
    public var optimizer: Optimizer

    public init(step: Int, parameters: [Float], optimizer: Optimizer) {
        self.step = step
        self.parameters = parameters
        self.optimizer = optimizer
    }
}

/// Checkpoint files in `DIR/checkpoints/step-NNNNNNNN.safetensors`: the weights under their PyTorch names,
/// optimizer state under `optimizer.<state>.<name>`, and metadata (step, seed, optimizer step count, config name,
/// and `content_sha256` over every tensor's bytes, so a damaged file is detected rather than trained on).
/// Loading the weights into PyTorch needs only `{k: v for k, v in f.items() if not k.startswith("optimizer.")}`.
public struct CheckpointStore {
    public let directory: String
    public let layout: ParameterLayout

    public init(runDirectory: String, layout: ParameterLayout) {
        directory = (runDirectory as NSString).appendingPathComponent("checkpoints")
        self.layout = layout
    }

    public func path(step: Int) -> String {
        (directory as NSString).appendingPathComponent(String(format: "step-%08d.safetensors", step))
    }

    /// Writes the checkpoint of `state` atomically and keeps only the newest `keep` files.
    @discardableResult
    public func save(_ state: TrainingState, seed: UInt64, jobName: String, keep: Int) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var tensors = weightEntries(state.parameters)
        for (stateName, values) in state.optimizer.stateTensors {
            for entry in layout.entries {
                tensors.append(.init(name: "optimizer.\(stateName).\(entry.name)", shape: entry.shape,
                                     values: Array(values[entry.range])))
            }
        }
        let metadata = [
            "format": "trainerd-checkpoint-1",
            "content_sha256": weightsSHA256(tensors.flatMap(\.values)),
            "step": String(state.step),
            "seed": String(seed),
            "job": jobName,
            "optimizer": state.optimizer.config.name,
            "optimizer_step": String(state.optimizer.stepCount),
            "weights_sha256": weightsSHA256(state.parameters),
        ]
        let file = path(step: state.step)
        try SafeTensors(tensors: tensors, metadata: metadata).write(to: file)
        for old in checkpointFiles().dropLast(keep) {
            try? FileManager.default.removeItem(atPath: old)
        }
        return file
    }

    /// The weights as safetensors entries with the model's names and shapes.
    public func weightEntries(_ parameters: [Float]) -> [SafeTensors.Entry] {
        layout.entries.map { .init(name: $0.name, shape: $0.shape, values: Array(parameters[$0.range])) }
    }

    /// Checkpoint paths, oldest first.
    public func checkpointFiles() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("step-") && $0.hasSuffix(".safetensors") }.sorted()
            .map { (directory as NSString).appendingPathComponent($0) }
    }

    /// Loads `file` into a state for `optimizer`'s configuration; throws a message naming what is wrong.
    public func load(_ file: String, optimizer template: Optimizer) throws -> TrainingState {
        let contents = try SafeTensors.read(file)
        guard contents.metadata["content_sha256"] == weightsSHA256(contents.tensors.flatMap(\.values)) else {
            throw CheckpointError.corruptHeader(file, reason: "tensor data does not match its recorded content_sha256")
        }
        guard let stepText = contents.metadata["step"], let step = Int(stepText),
              let optimizerStep = Int(contents.metadata["optimizer_step"] ?? "") else {
            throw CheckpointError.corruptHeader(file, reason: "metadata lacks step or optimizer_step")
        }
        guard contents.metadata["optimizer"] == template.config.name else {
            throw CheckpointError.corruptHeader(
                file, reason: "written by optimizer \(contents.metadata["optimizer"] ?? "?"), the config uses \(template.config.name)")
        }
        let parameters = try loadWeights(contents, file: file)
        var optimizer = template
        var tensors: [String: [Float]] = [:]
        for (stateName, _) in template.stateTensors {
            var flat: [Float] = []
            for entry in layout.entries {
                flat += try contents.values("optimizer.\(stateName).\(entry.name)", shape: entry.shape, file: file)
            }
            tensors[stateName] = flat
        }
        try optimizer.restore(stepCount: optimizerStep, tensors: tensors)
        return TrainingState(step: step, parameters: parameters, optimizer: optimizer)
    }

    /// The flat weights of `contents` in this layout, each tensor checked for presence and shape.
    public func loadWeights(_ contents: SafeTensors, file: String) throws -> [Float] {
        var flat: [Float] = []
        flat.reserveCapacity(layout.totalCount)
        for entry in layout.entries { flat += try contents.values(entry.name, shape: entry.shape, file: file) }
        return flat
    }

    /// The newest checkpoint that loads; corrupt newer ones are reported through `warn` and skipped.
    public func newestValid(optimizer: Optimizer, warn: (String) -> Void) -> TrainingState? {
        for file in checkpointFiles().reversed() {
            do {
                return try load(file, optimizer: optimizer)
            } catch {
                warn("skipping checkpoint: \(error)")
            }
        }
        return nil
    }
}
