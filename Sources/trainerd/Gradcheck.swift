import ArgumentParser
import Data
import NN
import Foundation
import Training

struct Gradcheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare backpropagation with central finite differences (Double), per parameter tensor.")

    @OptionGroup var options: JobOptions
    @Option(help: "Training samples to use.") var samples = 4
    @Option(help: "Entries checked per parameter tensor.") var entries = 16
    @Option(help: "Worst relative error allowed before the check fails.") var tolerance = 1e-3

    func run() throws {
        do {
            let job = try options.load()
            let data = try loadData(job)
            guard let model = makeModel(job.model, seed: job.seed, data: data.train) as? Sequential else {
                throw ValidationError("gradcheck checks MLP configs; for the GPT, the test suite checks every gradient against PyTorch (gpt.json)")
            }
            let batch = data.train.batch(Array(0..<min(samples, data.train.count))[...])
            let rows = try GradientCheck.run(model: model, inputs: batch.inputs, labels: batch.labels, entriesPerTensor: entries)
            print("gradcheck: \(job.name), \(batch.labels.count) samples, central differences h = 1e-6 in Double")
            print("tensor".padding(toLength: 18, withPad: " ", startingAt: 0) + "shape".padding(toLength: 14, withPad: " ", startingAt: 0)
                  + "checked  worst rel. error  worst abs. error")
            for row in rows {
                print(row.name.padding(toLength: 18, withPad: " ", startingAt: 0)
                      + "\(row.shape)".padding(toLength: 14, withPad: " ", startingAt: 0)
                      + String(format: "%7d  %16.3e  %16.3e", row.checked, row.worstRelativeError, row.worstAbsoluteError))
            }
            let worst = rows.map(\.worstRelativeError).max() ?? 0
            if worst > tolerance {
                print(String(format: "FAIL: worst relative error %.3e exceeds %.1e", worst, tolerance))
                throw ExitCode(1)
            }
            print(String(format: "PASS: worst relative error %.3e (tolerance %.1e)", worst, tolerance))
        } catch let exit as ExitCode {
            throw exit
        } catch {
            fail(error)
        }
    }
}
