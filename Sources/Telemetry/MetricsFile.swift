import Checkpoint
import Foundation
import Prometheus
import Training

/// The run's state as a Prometheus text-format file for node_exporter's textfile collector
/// (`--collector.textfile.directory`): rewritten atomically (temporary file, fsync, rename) as events arrive, at
/// most once a second for steps and at once for everything else. Every series carries the label `job_name`.
public final class MetricsFile {
    public let path: String
    private var metrics = RunMetrics()
    private let registry = PrometheusCollectorRegistry()
    private let series: RunSeries
    private var lastWrite = Date.distantPast
    /// The last write's failure (an unwritable directory), reported once by the caller.
    public private(set) var failure: Error?

    public init(path: String, jobName: String) {
        self.path = path
        series = RunSeries(registry: registry, labels: [("job_name", jobName)])
    }

    public func observe(_ event: String, _ fields: [(String, JSONValue)]) {
        let now = Date()
        metrics.observe(event, fields, time: now.timeIntervalSince1970)
        guard event != "step" || now.timeIntervalSince(lastWrite) >= 1 else { return }
        lastWrite = now
        do { try write() } catch { failure = error }
    }

    /// The file's text: `# HELP`, `# TYPE` and one sample per series known so far.
    public var text: String {
        series.update(from: metrics)
        return registry.emitToString()
    }

    public func write() throws { try AtomicFile.write(Array(text.utf8), to: path) }
}
