import Checkpoint
import Foundation

/// The run's state as a Prometheus text-format file for node_exporter's textfile collector
/// (`--collector.textfile.directory`): rewritten atomically (temporary file, fsync, rename) as events arrive, at
/// most once a second for steps and at once for everything else. Every series carries the label `job`.
public final class MetricsFile {
    public let path: String
    private var job = "job"
    private var gauges: [String: Double] = ["up": 0]
    private var counters: [String: Double] = ["skipped_steps_total": 0, "gradient_bytes_total": 0, "checkpoints_total": 0]
    private var lastWrite = Date.distantPast
    /// The last write's failure (an unwritable directory), reported once by the caller.
    public private(set) var failure: Error?

    public init(path: String) { self.path = path }

    /// name, type, help — in the order written.
    static let series: [(String, String, String)] = [
        ("up", "gauge", "1 while the job runs, 0 once it has finished or stopped."),
        ("step", "gauge", "Steps done."),
        ("total_steps", "gauge", "Steps the job will run."),
        ("loss", "gauge", "The last step's training loss."),
        ("grad_norm", "gauge", "The last step's global gradient norm before clipping."),
        ("learning_rate", "gauge", "The last step's learning rate."),
        ("samples_per_second", "gauge", "Training throughput over the last half second or more."),
        ("workers", "gauge", "Workers in the job (the coordinator's view; 0 in a single process)."),
        ("test_loss", "gauge", "The last evaluation's loss on the test or validation split."),
        ("test_accuracy", "gauge", "The last evaluation's accuracy (0 to 1)."),
        ("skipped_steps_total", "counter", "Steps skipped for a non-finite gradient or loss."),
        ("gradient_bytes_total", "counter", "Gradient bytes received from workers."),
        ("checkpoints_total", "counter", "Checkpoints written."),
        ("last_event_timestamp_seconds", "gauge", "Unix time of the latest event."),
    ]

    public func observe(_ event: String, _ fields: [(String, JSONValue)]) {
        let value = Dictionary(fields, uniquingKeysWith: { first, _ in first })
        func set(_ name: String, _ key: String) { if let number = value[key]?.numberValue { gauges[name] = number } }
        switch event {
        case "job_start":
            if case let .string(name)? = value["job"] { job = name }
            gauges["up"] = 1
            set("total_steps", "steps")
            set("step", "start_step")
            gauges["workers"] = gauges["workers"] ?? 0
        case "step":
            set("step", "step"); set("total_steps", "total_steps"); set("loss", "loss"); set("grad_norm", "grad_norm")
            set("learning_rate", "lr"); set("samples_per_second", "samples_per_s"); set("workers", "workers")
            if case let .object(perWorker)? = value["worker_bytes"] {
                counters["gradient_bytes_total", default: 0] += perWorker.compactMap { $0.1.numberValue }.reduce(0, +)
            }
        case "eval": set("test_loss", "test_loss"); set("test_accuracy", "test_accuracy")
        case "skipped": counters["skipped_steps_total", default: 0] += 1
        case "checkpoint": counters["checkpoints_total", default: 0] += 1
        case "worker_joined", "worker_left", "worker_lost": set("workers", "workers")
        case "done", "stopped":
            gauges["up"] = 0
            set("step", "step")
        default: break
        }
        gauges["last_event_timestamp_seconds"] = Date().timeIntervalSince1970
        let now = Date()
        guard event != "step" || now.timeIntervalSince(lastWrite) >= 1 else { return }
        lastWrite = now
        do { try write() } catch { failure = error }
    }

    /// The file's text: `# HELP`, `# TYPE` and one sample per known series.
    public var text: String {
        let label = "{job=\"\(job.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\""))\"}"
        var lines: [String] = []
        for (name, type, help) in Self.series {
            guard let sample = gauges[name] ?? counters[name] else { continue }
            lines += ["# HELP trainerd_\(name) \(help)", "# TYPE trainerd_\(name) \(type)",
                      "trainerd_\(name)\(label) \(sample.isFinite ? String(sample) : sample.isNaN ? "NaN" : sample > 0 ? "+Inf" : "-Inf")"]
        }
        return lines.joined(separator: "\n") + "\n"
    }

    public func write() throws { try AtomicFile.write(Array(text.utf8), to: path) }
}

extension JSONValue {
    /// The value of an int or number, else nil.
    public var numberValue: Double? {
        switch self {
        case let .int(value): return Double(value)
        case let .number(value): return value
        default: return nil
        }
    }
}
