import Data
import Foundation

/// The training and evaluation sets of a job: images with their test set, or a text's next-token windows with
/// its validation split.
public typealias JobDatasets = (train: any SampleSource, test: any SampleSource)

/// The train and test sets a config names, checked against the model's input and output widths.
public func loadData(_ config: JobConfig) throws -> JobDatasets {
    if config.data.isText { return try loadText(config) }
    var (train, test) = try ImageDataset.loadMNISTStyle(directory: config.data.directory)
    (train.mean, train.std) = (config.data.mean, config.data.std)
    (test.mean, test.std) = (config.data.mean, config.data.std)
    let sizes = config.model.sizes
    guard sizes[0] == train.features else {
        throw ConfigError("model.sizes[0] is \(sizes[0]) but \(config.data.directory) has \(train.features) features per sample")
    }
    let classes = Int((train.labels.max() ?? 0) + 1)
    guard sizes.last! >= classes else {
        throw ConfigError("model.sizes ends in \(sizes.last!) outputs but the labels have \(classes) classes")
    }
    try checkBatch(config, trainingSamples: train.count)
    return (train, test)
}

/// The fortunes corpus as windows of model.context characters: the vocabulary is every character of both splits.
func loadText(_ config: JobConfig) throws -> JobDatasets {
    let corpus = try FortunesCorpus(directory: config.data.directory, validationEvery: config.data.validationEvery)
    let vocabulary = CharacterVocabulary(text: corpus.train + corpus.validation)
    let train = TokenDataset(tokens: try vocabulary.encode(corpus.train), context: config.model.context, vocabulary: vocabulary)
    let validation = TokenDataset(tokens: try vocabulary.encode(corpus.validation), context: config.model.context,
                                  vocabulary: vocabulary)
    try checkBatch(config, trainingSamples: train.count)
    return (train, validation)
}

private func checkBatch(_ config: JobConfig, trainingSamples: Int) throws {
    guard trainingSamples >= config.training.batchSize else {
        throw ConfigError("training.batch_size \(config.training.batchSize) exceeds the \(trainingSamples) training samples")
    }
}
