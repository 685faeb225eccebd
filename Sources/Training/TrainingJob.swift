import Data
import Foundation
import NN

/// A job's parts, built from its config in one place for `train`, the worker, the coordinator and `bench`: its
/// datasets, the model initialised from the job's seed, the model's parameter layout and the batch plan.
public final class TrainingJob {
    public let config: JobConfig
    public let train: any SampleSource
    public let test: any SampleSource
    public let model: Module
    public let layout: ParameterLayout
    public let plan: BatchPlan

    /// `data` nil loads the datasets the config names with `loadDatasets`.
    public init(config: JobConfig, data: JobDatasets? = nil,
                loadDatasets: (JobConfig) throws -> JobDatasets = loadData) throws {
        self.config = config
        (train, test) = try data ?? loadDatasets(config)
        model = makeModel(config.model, seed: config.seed, data: train)
        layout = ParameterLayout(model)
        plan = BatchPlan(seed: config.seed, datasetSize: train.count, batchSize: config.training.batchSize,
                         microBatches: config.training.microBatches)
    }

    /// The job's run context with its configured threads (`training.threads`, 0: every core).
    public func context(stop: StopRequest = StopRequest(), trace: Trace? = nil) -> RunContext {
        RunContext(threads: config.training.threads, stop: stop, trace: trace)
    }

    /// A gradient source that computes every micro-batch in this process on the job's model.
    public func localGradientSource(_ context: RunContext) -> LocalGradientSource {
        LocalGradientSource(model: model, plan: plan, train: train, precision: config.training.precision, context: context)
    }
}

/// Builds the model a config describes, initialised from the job's seed; a GPT takes its vocabulary from the
/// training set.
public func makeModel(_ model: JobConfig.ModelSection, seed: UInt64, data: (any SampleSource)? = nil) -> Module {
    switch model.kind {
    case "gpt":
        guard let text = data as? TokenDataset else { preconditionFailure("a GPT needs its text dataset for the vocabulary") }
        let gpt = GPT(GPTShape(vocabulary: text.vocabulary.count, context: model.context, dim: model.dim, heads: model.heads,
                               layers: model.layers, dropout: model.dropout), seed: seed)
        gpt.checkpointsActivations = model.checkpointActivations
        return gpt
    default:
        return makeMLP(sizes: model.sizes, activation: model.activation, residual: model.residual, seed: seed)
    }
}

