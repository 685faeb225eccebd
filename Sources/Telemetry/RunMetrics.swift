import Training

/// A run's metrics as its events leave them: the latest value of each gauge and the running total of each counter.
/// Fed every event of the run's log (`observe`), in order; read by the metrics file (`MetricsFile`), the daemon's
/// `/metrics` (`RunSeries`) and the API's job views.
public struct RunMetrics: Sendable, Equatable {
    public enum Kind: String, Sendable { case gauge, counter }

    /// One series: its name after `trainerd_`, its Prometheus type and its help text.
    public struct Series: Sendable {
        public let name: String
        public let kind: Kind
        public let help: String
    }

    /// Every series, in the order exposed.
    public static let series: [Series] = [
        .init(name: "up", kind: .gauge, help: "1 while the job runs, 0 once it has finished or stopped."),
        .init(name: "step", kind: .gauge, help: "Steps done."),
        .init(name: "total_steps", kind: .gauge, help: "Steps the job will run."),
        .init(name: "loss", kind: .gauge, help: "The last step's training loss."),
        .init(name: "grad_norm", kind: .gauge, help: "The last step's global gradient norm before clipping."),
        .init(name: "learning_rate", kind: .gauge, help: "The last step's learning rate."),
        .init(name: "samples_per_second", kind: .gauge, help: "Training throughput over the last half second or more."),
        .init(name: "workers", kind: .gauge, help: "Workers in the job (the coordinator's view; 0 in a single process)."),
        .init(name: "test_loss", kind: .gauge, help: "The last evaluation's loss on the test or validation split."),
        .init(name: "test_accuracy", kind: .gauge, help: "The last evaluation's accuracy (0 to 1)."),
        .init(name: "skipped_steps_total", kind: .counter, help: "Steps skipped for a non-finite gradient or loss."),
        .init(name: "gradient_bytes_total", kind: .counter, help: "Gradient bytes received from workers."),
        .init(name: "checkpoints_total", kind: .counter, help: "Checkpoints written."),
        .init(name: "last_event_timestamp_seconds", kind: .gauge, help: "Unix time of the latest event."),
    ]

    /// The job's name (`job_start`'s `job`, the config's `name`).
    public private(set) var jobName: String?
    /// Samples in a step (`job_start`'s `batch_size`), for the ETA.
    public private(set) var batchSize: Int?
    /// The values known so far, by series name; a gauge no event has set is absent.
    public private(set) var values: [String: Double] = ["up": 0, "skipped_steps_total": 0, "gradient_bytes_total": 0,
                                                        "checkpoints_total": 0]

    public init() {}

    public subscript(_ name: String) -> Double? { values[name] }

    /// Seconds to the last step at the current throughput, while the job runs.
    public var etaSeconds: Double? {
        guard values["up"] == 1, let step = values["step"], let total = values["total_steps"],
              let rate = values["samples_per_second"], rate > 0, let batchSize else { return nil }
        return max(total - step, 0) * Double(batchSize) / rate
    }

    /// Takes in one event at Unix time `time`.
    public mutating func observe(_ event: String, _ fields: [(String, JSONValue)], time: Double) {
        let value = Dictionary(fields, uniquingKeysWith: { first, _ in first })
        func set(_ name: String, _ key: String) { if let number = value[key]?.numberValue { values[name] = number } }
        switch event {
        case "job_start":
            if case let .string(name)? = value["job"] { jobName = name }
            if case let .int(size)? = value["batch_size"] { batchSize = size }
            values["up"] = 1
            set("total_steps", "steps")
            set("step", "start_step")
            values["workers"] = values["workers"] ?? 0
        case "step":
            set("step", "step"); set("total_steps", "total_steps"); set("loss", "loss"); set("grad_norm", "grad_norm")
            set("learning_rate", "lr"); set("samples_per_second", "samples_per_s"); set("workers", "workers")
            if case let .object(perWorker)? = value["worker_bytes"] {
                values["gradient_bytes_total", default: 0] += perWorker.compactMap { $0.1.numberValue }.reduce(0, +)
            }
        case "eval": set("test_loss", "test_loss"); set("test_accuracy", "test_accuracy")
        case "skipped": values["skipped_steps_total", default: 0] += 1
        case "checkpoint": values["checkpoints_total", default: 0] += 1
        case "worker_joined", "worker_left", "worker_lost": set("workers", "workers")
        case "done", "stopped", "job_end":
            values["up"] = 0
            set("step", "step")
        default: break
        }
        values["last_event_timestamp_seconds"] = time
    }
}
