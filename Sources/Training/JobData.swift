import Data
import Foundation

/// The training and evaluation sets of a job: images with their test set, or a text's next-token windows with
/// its validation split.
public typealias JobDatasets = (train: any SampleSource, test: any SampleSource)

/// The train and test sets a config names, checked against the model's input and output widths.
public func loadData(_ config: JobConfig) throws -> JobDatasets { try loadData(config, files: readFiles) }

/// The files of a config's datasets as read: images and labels, or a corpus's text.
enum LoadedFiles {
    case images(train: ImageDataset, test: ImageDataset)
    case text(FortunesCorpus)

    var bytes: Int {
        switch self {
        case let .images(train, test): train.pixels.count + test.pixels.count + 4 * (train.labels.count + test.labels.count)
        case let .text(corpus): corpus.train.utf8.count + corpus.validation.utf8.count
        }
    }
}

func readFiles(_ data: JobConfig.DataSection) throws -> LoadedFiles {
    if data.isText { return .text(try FortunesCorpus(directory: data.directory, validationEvery: data.validationEvery)) }
    let (train, test) = try ImageDataset.loadMNISTStyle(directory: data.directory)
    return .images(train: train, test: test)
}

/// Dataset files read once per process and reused by the jobs that follow (a pool worker's next job, a daemon's
/// next coordinator), up to `capacity` bytes; the least recently used go first. Thread-safe: `lock` guards
/// `entries` (two jobs asking at once for the same files may both read them).
public final class DatasetCache: @unchecked Sendable {
    public let capacity: Int
    private let lock = NSLock()
    private var entries: [String: (files: LoadedFiles, used: UInt64)] = [:]
    private var clock: UInt64 = 0

    /// `capacity`: bytes kept at most (default: a quarter of the memory this process may use).
    public init(capacity: Int = DatasetCache.availableMemory / 4) { self.capacity = capacity }

    /// The machine's memory, or less when the process's cgroup (v2: `memory.max`; a container's limit) allows less.
    public static var availableMemory: Int {
        let machine = Int(clamping: ProcessInfo.processInfo.physicalMemory)
        guard let membership = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8),
              let path = membership.split(separator: "\n").first(where: { $0.hasPrefix("0::") })?.dropFirst(3),
              let text = try? String(contentsOfFile: "/sys/fs/cgroup" + path + "/memory.max", encoding: .utf8),
              let limit = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return machine }
        return min(machine, limit)
    }

    /// The train and test sets of `config`, as `loadData` gives them, read from disk only when not kept.
    public func load(_ config: JobConfig) throws -> JobDatasets { try loadData(config, files: files) }

    /// What an entry stands for: where the files are and how they are split.
    public static func key(_ data: JobConfig.DataSection) -> String {
        data.isText ? "text \(data.validationEvery) \(data.directory)" : "images \(data.directory)"
    }

    /// Keys of the entries kept, least recently used first.
    public var keys: [String] {
        lock.lock()
        defer { lock.unlock() }
        return entries.sorted { $0.value.used < $1.value.used }.map(\.key)
    }

    private func files(_ data: JobConfig.DataSection) throws -> LoadedFiles {
        let key = Self.key(data)
        lock.lock()
        clock += 1
        if let entry = entries[key] {
            entries[key]!.used = clock
            lock.unlock()
            return entry.files
        }
        lock.unlock()
        let files = try readFiles(data)
        lock.lock()
        defer { lock.unlock() }
        clock += 1
        entries[key] = (files, clock)
        while entries.values.reduce(0, { $0 + $1.files.bytes }) > capacity,
              let oldest = entries.min(by: { $0.value.used < $1.value.used })?.key, oldest != key {
            entries[oldest] = nil
        }
        return files
    }
}

func loadData(_ config: JobConfig, files read: (JobConfig.DataSection) throws -> LoadedFiles) throws -> JobDatasets {
    var train: ImageDataset, test: ImageDataset
    switch try read(config.data) {
    case let .text(corpus): return try loadText(config, corpus: corpus)
    case let .images(trainImages, testImages): (train, test) = (trainImages, testImages)
    }
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
func loadText(_ config: JobConfig, corpus: FortunesCorpus) throws -> JobDatasets {
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
