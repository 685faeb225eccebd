import Foundation
import Kernels
import NN
import Optim
import Yams

/// A configuration error: names the file, the field path and what was expected.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A training job, as read from YAML. Every field is validated up front; see README "Config reference".
public struct JobConfig: Equatable, Sendable {
    public struct DataSection: Equatable, Sendable {
        /// `fashion-mnist` or `mnist` (IDX files as Debian's dataset-fashion-mnist ships them), or `fortunes`
        /// (the text files of Debian's fortunes package, for a character-level language model).
        public var kind = "fashion-mnist"
        public var directory = "/usr/share/datasets/fashion-mnist"
        /// Inputs are (pixel/255 − mean) / std.
        public var mean: Float = 0
        public var std: Float = 1
        /// fortunes: every this-many-th fortune (in file-name order) goes to the validation split.
        public var validationEvery = 10

        public var isText: Bool { kind == "fortunes" }
    }

    public struct ModelSection: Equatable, Sendable {
        public var kind = "mlp"
        public var sizes: [Int] = [784, 256, 256, 10]
        public var activation: Activation.Kind = .relu
        /// Wrap equal-width hidden layers in skip connections.
        public var residual = false
        /// gpt: positions per sample, width, attention heads, blocks, dropout probability.
        public var context = 64
        public var dim = 128
        public var heads = 4
        public var layers = 4
        public var dropout: Float = 0
        /// gpt: recompute each block's activations during backward (less memory, the same gradients).
        public var checkpointActivations = false
    }

    public struct OptimizerSection: Equatable, Sendable {
        public var config: OptimizerConfig = .adamw()
        public var lr: Float = 1e-3
    }

    public struct TrainingSection: Equatable, Sendable {
        public var epochs = 10
        /// Stop after this many steps instead (0: run all epochs).
        public var maxSteps = 0
        public var batchSize = 128
        /// The global batch is cut into this many equal micro-batches (the unit of determinism and of
        /// thread and worker parallelism).
        public var microBatches = 8
        /// Global-norm clipping threshold; 0 disables clipping.
        public var clipNorm: Float = 1.0
        /// Evaluate on the test set every this many steps (0: only at the end).
        public var evalEvery = 0
        /// Write a checkpoint every this many steps (0: only at the end).
        public var checkpointEvery = 500
        /// Checkpoints kept in the run directory.
        public var keepCheckpoints = 3
        /// Kernel threads (0: one per core).
        public var threads = 0
        /// Steps skipped for a non-finite gradient or loss before the job stops with an error.
        public var maxSkippedSteps = 10
        /// The inputs of matrix products in forward and backward: float32, or bf16 (mixed precision: float32
        /// sums, weights and optimizer state).
        public var precision: MatmulPrecision = .float32
    }

    /// How the coordinator watches its workers (seconds). See README "Failure modes".
    public struct ClusterSection: Equatable, Sendable {
        /// The coordinator waits for this many workers before every step.
        public var minWorkers = 1
        /// Heartbeats go both ways this often.
        public var heartbeatInterval = 1.0
        /// A peer silent this long is lost: a worker's micro-batches go to the others; a worker reconnects.
        public var heartbeatTimeout = 10.0
        /// A worker that has not returned its micro-batches this long after they were assigned is lost.
        public var stepDeadline = 300.0
        /// A worker's micro-batches are re-issued to an idle worker after this long (0: never).
        public var stragglerDelay = 5.0
        /// How long the coordinator waits for `min_workers` before failing.
        public var waitTimeout = 600.0
        /// How weights and gradients travel: float32 (lossless, the same bits for every worker count) or bf16
        /// (half the bytes; rounding makes the result depend on how micro-batches were split among workers).
        public var wireDType: WireDType = .float32

        public enum WireDType: String, Sendable, CaseIterable {
            case float32, bf16
        }

        public init() {}
    }

    /// CURVE encryption and an allow-list of worker and monitor public keys (files written by `trainerd keygen`).
    public struct SecuritySection: Equatable, Sendable {
        /// The coordinator's secret key file.
        public var secretKey: String
        /// A directory of allowed public keys (`*.pub`).
        public var allowedKeys: String

        public init(secretKey: String, allowedKeys: String) {
            self.secretKey = secretKey
            self.allowedKeys = allowedKeys
        }
    }

    public var name = "job"
    public var seed: UInt64 = 0
    public var data = DataSection()
    public var model = ModelSection()
    public var optimizer = OptimizerSection()
    public var schedule: LearningRateSchedule = .constant
    public var training = TrainingSection()
    public var cluster = ClusterSection()
    public var security: SecuritySection?

    public init() {}
}

// MARK: loading

extension JobConfig {
    /// Reads and validates `path`, after applying `overrides` ("a.b.c=value", value in YAML syntax).
    public static func load(path: String, overrides: [String] = []) throws -> JobConfig {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError("\(path): cannot read the config file (missing or not UTF-8)")
        }
        return try parse(yaml: text, source: path, overrides: overrides)
    }

    public static func parse(yaml text: String, source: String = "config", overrides: [String] = []) throws -> JobConfig {
        let root: Any?
        do {
            root = try Yams.load(yaml: text)
        } catch {
            throw ConfigError("\(source): invalid YAML: \(error)")
        }
        guard var tree = (root ?? [String: Any]()) as? [String: Any] else {
            throw ConfigError("\(source): the top level must be a mapping of sections")
        }
        for override in overrides { try apply(override: override, to: &tree, source: source) }
        return try JobConfig(tree: Fields(tree, path: "", source: source))
    }

    static func apply(override: String, to tree: inout [String: Any], source: String) throws {
        guard let equals = override.firstIndex(of: "="), equals != override.startIndex else {
            throw ConfigError("--set \(override): expected key.path=value")
        }
        let path = override[..<equals].split(separator: ".").map(String.init)
        let valueText = String(override[override.index(after: equals)...])
        let value: Any
        do {
            value = try Yams.load(yaml: valueText) ?? valueText
        } catch {
            throw ConfigError("--set \(override): the value is not valid YAML: \(error)")
        }
        func set(_ node: inout [String: Any], _ keys: ArraySlice<String>) throws {
            let key = keys.first!
            if keys.count == 1 { node[key] = value; return }
            var child = node[key] as? [String: Any] ?? [:]
            if node[key] != nil && !(node[key] is [String: Any]) {
                throw ConfigError("--set \(override): '\(key)' is not a section")
            }
            try set(&child, keys.dropFirst())
            node[key] = child
        }
        try set(&tree, path[...])
    }

    init(tree: Fields) throws {
        self.init()
        try tree.allowOnly(["name", "seed", "data", "model", "optimizer", "schedule", "training", "cluster", "security"])
        name = try tree.string("name") ?? name
        if let seed = try tree.int("seed") {
            guard seed >= 0 else { throw tree.error("seed", "must be a non-negative integer, got \(seed)") }
            self.seed = UInt64(seed)
        }
        if let section = try tree.section("data") {
            try section.allowOnly(["kind", "directory", "mean", "std", "validation_every"])
            data.kind = try section.string("kind") ?? data.kind
            guard ["fashion-mnist", "mnist", "fortunes"].contains(data.kind) else {
                throw section.error("kind", "must be fashion-mnist, mnist or fortunes, got '\(data.kind)'")
            }
            if data.isText { data.directory = "/usr/share/games/fortunes" }
            data.directory = try section.string("directory") ?? data.directory
            data.mean = try section.float("mean") ?? data.mean
            data.std = try section.float("std") ?? data.std
            guard data.std > 0 else { throw section.error("std", "must be positive, got \(data.std)") }
            data.validationEvery = try section.int("validation_every") ?? data.validationEvery
            guard data.validationEvery >= 2 else {
                throw section.error("validation_every", "must be at least 2, got \(data.validationEvery)")
            }
        }
        if let section = try tree.section("model") {
            try section.allowOnly(["kind", "sizes", "activation", "residual", "context", "dim", "heads", "layers", "dropout",
                                   "checkpoint_activations"])
            model.checkpointActivations = try section.bool("checkpoint_activations") ?? model.checkpointActivations
            model.kind = try section.string("kind") ?? model.kind
            guard model.kind == "mlp" || model.kind == "gpt" else {
                throw section.error("kind", "must be mlp or gpt, got '\(model.kind)'")
            }
            model.sizes = try section.intList("sizes") ?? model.sizes
            guard model.sizes.count >= 2, model.sizes.allSatisfy({ $0 > 0 }) else {
                throw section.error("sizes", "must list at least two positive layer widths, got \(model.sizes)")
            }
            if let name = try section.string("activation") {
                guard let kind = Activation.Kind(rawValue: name) else {
                    throw section.error("activation", "must be one of relu, tanh, sigmoid, got '\(name)'")
                }
                model.activation = kind
            }
            model.residual = try section.bool("residual") ?? model.residual
            for (key, path) in [("context", \ModelSection.context), ("dim", \.dim), ("heads", \.heads), ("layers", \.layers)] {
                model[keyPath: path] = try section.int(key) ?? model[keyPath: path]
                guard model[keyPath: path] > 0 else { throw section.error(key, "must be positive, got \(model[keyPath: path])") }
            }
            guard model.dim % model.heads == 0 else {
                throw section.error("heads", "must divide dim \(model.dim), got \(model.heads)")
            }
            model.dropout = try section.float("dropout") ?? model.dropout
            guard model.dropout >= 0 && model.dropout < 1 else {
                throw section.error("dropout", "must be in [0, 1), got \(model.dropout)")
            }
        }
        if data.isText != (model.kind == "gpt") {
            throw ConfigError("\(tree.source): model.kind \(model.kind) cannot train on data.kind \(data.kind) (gpt needs fortunes, mlp images)")
        }
        if let section = try tree.section("optimizer") {
            optimizer = try Self.optimizer(section)
        }
        if let section = try tree.section("training") {
            try section.allowOnly(["epochs", "max_steps", "batch_size", "micro_batches", "clip_norm", "eval_every",
                                   "checkpoint_every", "keep_checkpoints", "threads", "max_skipped_steps", "precision"])
            training.epochs = try section.int("epochs") ?? training.epochs
            training.maxSteps = try section.int("max_steps") ?? training.maxSteps
            training.batchSize = try section.int("batch_size") ?? training.batchSize
            training.microBatches = try section.int("micro_batches") ?? training.microBatches
            training.clipNorm = try section.float("clip_norm") ?? training.clipNorm
            training.evalEvery = try section.int("eval_every") ?? training.evalEvery
            training.checkpointEvery = try section.int("checkpoint_every") ?? training.checkpointEvery
            training.keepCheckpoints = try section.int("keep_checkpoints") ?? training.keepCheckpoints
            training.threads = try section.int("threads") ?? training.threads
            training.maxSkippedSteps = try section.int("max_skipped_steps") ?? training.maxSkippedSteps
            if let name = try section.string("precision") {
                guard let precision = MatmulPrecision(rawValue: name) else {
                    throw section.error("precision", "must be float32 or bf16, got '\(name)'")
                }
                training.precision = precision
            }
            let t = training
            guard t.epochs > 0 else { throw section.error("epochs", "must be positive, got \(t.epochs)") }
            guard t.maxSteps >= 0 else { throw section.error("max_steps", "must be 0 or positive, got \(t.maxSteps)") }
            guard t.batchSize > 0 else { throw section.error("batch_size", "must be positive, got \(t.batchSize)") }
            guard t.microBatches > 0, t.batchSize % t.microBatches == 0 else {
                throw section.error("micro_batches", "must be positive and divide batch_size \(t.batchSize), got \(t.microBatches)")
            }
            guard t.clipNorm >= 0 else { throw section.error("clip_norm", "must be 0 (off) or positive, got \(t.clipNorm)") }
            guard t.evalEvery >= 0 else { throw section.error("eval_every", "must be 0 or positive, got \(t.evalEvery)") }
            guard t.checkpointEvery >= 0 else {
                throw section.error("checkpoint_every", "must be 0 or positive, got \(t.checkpointEvery)")
            }
            guard t.keepCheckpoints > 0 else {
                throw section.error("keep_checkpoints", "must be positive, got \(t.keepCheckpoints)")
            }
            guard t.threads >= 0 else { throw section.error("threads", "must be 0 (all cores) or positive, got \(t.threads)") }
            guard t.maxSkippedSteps >= 0 else {
                throw section.error("max_skipped_steps", "must be 0 (stop at the first) or positive, got \(t.maxSkippedSteps)")
            }
        }
        if let section = try tree.section("cluster") {
            cluster = try Self.cluster(section)
        }
        if let section = try tree.section("security") {
            try section.allowOnly(["secret_key", "allowed_keys"])
            guard let secretKey = try section.string("secret_key") else {
                throw section.error("secret_key", "is required: the coordinator's secret key file (trainerd keygen)")
            }
            guard let allowedKeys = try section.string("allowed_keys") else {
                throw section.error("allowed_keys", "is required: a directory of allowed public keys (*.pub)")
            }
            security = SecuritySection(secretKey: secretKey, allowedKeys: allowedKeys)
        }
        if let section = try tree.section("schedule") {
            schedule = try Self.schedule(section)
        }
    }

    static func optimizer(_ section: Fields) throws -> OptimizerSection {
        let kind = try section.string("kind") ?? "adamw"
        var result = OptimizerSection()
        result.lr = try section.float("lr") ?? result.lr
        guard result.lr > 0 else { throw section.error("lr", "must be positive, got \(result.lr)") }
        let weightDecay = try section.float("weight_decay")
        if let weightDecay, weightDecay < 0 {
            throw section.error("weight_decay", "must be 0 or positive, got \(weightDecay)")
        }
        switch kind {
        case "sgd":
            try section.allowOnly(["kind", "lr", "momentum", "dampening", "nesterov", "weight_decay"])
            let momentum = try section.float("momentum") ?? 0
            let dampening = try section.float("dampening") ?? 0
            let nesterov = try section.bool("nesterov") ?? false
            guard momentum >= 0 else { throw section.error("momentum", "must be 0 or positive, got \(momentum)") }
            if nesterov && (momentum == 0 || dampening != 0) {
                throw section.error("nesterov", "needs momentum > 0 and dampening 0")
            }
            result.config = .sgd(momentum: momentum, dampening: dampening, nesterov: nesterov,
                                 weightDecay: weightDecay ?? 0)
        case "adam", "adamw":
            try section.allowOnly(["kind", "lr", "betas", "eps", "weight_decay"])
            let betas = try section.floatList("betas") ?? [0.9, 0.999]
            guard betas.count == 2, betas.allSatisfy({ $0 >= 0 && $0 < 1 }) else {
                throw section.error("betas", "must be two numbers in [0, 1), got \(betas)")
            }
            let eps = try section.float("eps") ?? 1e-8
            guard eps > 0 else { throw section.error("eps", "must be positive, got \(eps)") }
            result.config = kind == "adam"
                ? .adam(beta1: betas[0], beta2: betas[1], eps: eps, weightDecay: weightDecay ?? 0)
                : .adamw(beta1: betas[0], beta2: betas[1], eps: eps, weightDecay: weightDecay ?? 0.01)
        default:
            throw section.error("kind", "must be sgd, adam or adamw, got '\(kind)'")
        }
        return result
    }

    static func cluster(_ section: Fields) throws -> ClusterSection {
        try section.allowOnly(["min_workers", "heartbeat_interval", "heartbeat_timeout", "step_deadline",
                               "straggler_delay", "wait_timeout", "wire_dtype"])
        var result = ClusterSection()
        if let name = try section.string("wire_dtype") {
            guard let dtype = ClusterSection.WireDType(rawValue: name) else {
                throw section.error("wire_dtype", "must be float32 or bf16, got '\(name)'")
            }
            result.wireDType = dtype
        }
        result.minWorkers = try section.int("min_workers") ?? result.minWorkers
        guard result.minWorkers > 0 else { throw section.error("min_workers", "must be positive, got \(result.minWorkers)") }
        func seconds(_ key: String, _ value: inout Double, allowZero: Bool = false) throws {
            guard let given = try section.float(key) else { return }
            guard given > 0 || (allowZero && given == 0) else {
                throw section.error(key, "must be \(allowZero ? "0 (off) or " : "")a positive number of seconds, got \(given)")
            }
            value = Double(given)
        }
        try seconds("heartbeat_interval", &result.heartbeatInterval)
        try seconds("heartbeat_timeout", &result.heartbeatTimeout)
        try seconds("step_deadline", &result.stepDeadline)
        try seconds("straggler_delay", &result.stragglerDelay, allowZero: true)
        try seconds("wait_timeout", &result.waitTimeout)
        guard result.heartbeatTimeout >= 2 * result.heartbeatInterval else {
            throw section.error("heartbeat_timeout", "must be at least twice heartbeat_interval (\(result.heartbeatInterval) s), got \(result.heartbeatTimeout)")
        }
        return result
    }

    static func schedule(_ section: Fields) throws -> LearningRateSchedule {
        let kind = try section.string("kind") ?? "constant"
        switch kind {
        case "constant":
            try section.allowOnly(["kind"])
            return .constant
        case "warmup_cosine":
            try section.allowOnly(["kind", "warmup_steps", "total_steps", "min_lr"])
            let warmup = try section.int("warmup_steps") ?? 0
            let total = try section.int("total_steps") ?? 0
            let minLR = try section.float("min_lr") ?? 0
            guard warmup >= 0 else { throw section.error("warmup_steps", "must be 0 or positive, got \(warmup)") }
            guard total >= 0 else { throw section.error("total_steps", "must be 0 (the whole run) or positive") }
            guard minLR >= 0 else { throw section.error("min_lr", "must be 0 or positive, got \(minLR)") }
            return .warmupCosine(warmupSteps: warmup, totalSteps: total, minLR: minLR)
        case "step":
            try section.allowOnly(["kind", "step_size", "gamma"])
            guard let stepSize = try section.int("step_size"), stepSize > 0 else {
                throw section.error("step_size", "must be a positive integer")
            }
            let gamma = try section.float("gamma") ?? 0.1
            guard gamma > 0 else { throw section.error("gamma", "must be positive, got \(gamma)") }
            return .step(stepSize: stepSize, gamma: gamma)
        default:
            throw section.error("kind", "must be constant, warmup_cosine or step, got '\(kind)'")
        }
    }

    /// The schedule with a total of 0 steps resolved to the run's length.
    public func resolvedSchedule(totalSteps: Int) -> LearningRateSchedule {
        if case let .warmupCosine(warmup, 0, minLR) = schedule {
            return .warmupCosine(warmupSteps: warmup, totalSteps: totalSteps, minLR: minLR)
        }
        return schedule
    }
}

/// A mapping from the YAML tree with typed, path-naming accessors.
struct Fields {
    let values: [String: Any]
    let path: String
    let source: String

    init(_ values: [String: Any], path: String, source: String) {
        self.values = values
        self.path = path
        self.source = source
    }

    func qualified(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func error(_ key: String, _ message: String) -> ConfigError {
        ConfigError("\(source): \(qualified(key)) \(message)")
    }

    func allowOnly(_ keys: Set<String>) throws {
        for key in values.keys.sorted() where !keys.contains(key) {
            throw ConfigError("\(source): unknown field '\(qualified(key))' (expected one of: \(keys.sorted().joined(separator: ", ")))")
        }
    }

    private func typeName(_ value: Any) -> String {
        switch value {
        case is Bool: return "a boolean"
        case is Int: return "an integer"
        case is Double: return "a number"
        case is String: return "a string"
        case is [Any]: return "a list"
        case is [String: Any]: return "a mapping"
        default: return "\(type(of: value))"
        }
    }

    func section(_ key: String) throws -> Fields? {
        guard let value = values[key] else { return nil }
        guard let mapping = value as? [String: Any] else {
            throw error(key, "must be a mapping, got \(typeName(value))")
        }
        return Fields(mapping, path: qualified(key), source: source)
    }

    func string(_ key: String) throws -> String? {
        guard let value = values[key] else { return nil }
        guard let string = value as? String else { throw error(key, "must be a string, got \(typeName(value)) \(value)") }
        return string
    }

    func bool(_ key: String) throws -> Bool? {
        guard let value = values[key] else { return nil }
        guard let flag = value as? Bool else { throw error(key, "must be true or false, got \(typeName(value)) \(value)") }
        return flag
    }

    func int(_ key: String) throws -> Int? {
        guard let value = values[key] else { return nil }
        guard !(value is Bool), let number = value as? Int else {
            throw error(key, "must be an integer, got \(typeName(value)) \(value)")
        }
        return number
    }

    func float(_ key: String) throws -> Float? {
        guard let value = values[key] else { return nil }
        guard let number = Self.number(value), number.isFinite else {
            throw error(key, "must be a number, got \(typeName(value)) \(value)")
        }
        return Float(number)
    }

    func intList(_ key: String) throws -> [Int]? {
        guard let value = values[key] else { return nil }
        guard let list = value as? [Any], let ints = list.map({ $0 is Bool ? nil : $0 as? Int }) as? [Int] else {
            throw error(key, "must be a list of integers, got \(value)")
        }
        return ints
    }

    func floatList(_ key: String) throws -> [Float]? {
        guard let value = values[key] else { return nil }
        guard let list = value as? [Any], let numbers = list.map(Self.number) as? [Double] else {
            throw error(key, "must be a list of numbers, got \(value)")
        }
        return numbers.map { Float($0) }
    }

    static func number(_ value: Any) -> Double? {
        if value is Bool { return nil }
        if let int = value as? Int { return Double(int) }
        return value as? Double
    }
}
