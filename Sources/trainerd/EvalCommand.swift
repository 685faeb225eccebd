import ArgumentParser
import Checkpoint
import Foundation
import NN
import Training

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Test loss and accuracy of saved weights.")

    @Argument(help: "The job's YAML config (model and data).") var config: String
    @Option(name: .long, help: "A safetensors file: final.safetensors or a checkpoint.") var weights: String
    @Option(name: .customLong("set"), help: "Override a config field: key.path=value.") var overrides: [String] = []

    func run() throws {
        do {
            let job = try JobConfig.load(path: config, overrides: overrides)
            let data = try loadData(job)
            let model = makeModel(job.model, seed: job.seed)
            let store = CheckpointStore(runDirectory: ".", layout: ParameterLayout(model))
            model.load(flatValues: try store.loadWeights(try SafeTensors.read(weights), file: weights))
            let (loss, accuracy) = try evaluate(model, on: data.test)
            print(String(format: "test loss %.4f  accuracy %.2f%%  (%d samples)", loss, accuracy * 100, data.test.count))
        } catch {
            fail(error)
        }
    }
}
