import ArgumentParser
import Checkpoint
import Foundation
import NN
import Training

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Test loss and accuracy of saved weights.")

    @OptionGroup var options: JobOptions
    @Option(name: .long, help: "A safetensors file: final.safetensors or a checkpoint.") var weights: String

    func run() throws {
        do {
            let job = try options.load()
            let data = try loadData(job)
            let model = makeModel(job.model, seed: job.seed, data: data.train)
            let store = CheckpointStore(runDirectory: ".", layout: ParameterLayout(model))
            model.load(flatValues: try store.loadWeights(try SafeTensors.read(weights), file: weights))
            let (loss, accuracy) = try evaluate(model, on: data.test)
            print(String(format: "test loss %.4f  accuracy %.2f%%  (%d samples)", loss, accuracy * 100, data.test.count))
        } catch {
            fail(error)
        }
    }
}
