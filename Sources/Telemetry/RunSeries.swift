import Prometheus

/// One run's `RunMetrics` as series of a `PrometheusCollectorRegistry`, `trainerd_NAME{labels}`: gauges are set to
/// the latest values, counters advanced by what they gained since the last `update`. A series appears once an event
/// has given it a value. Not thread-safe: one caller at a time.
public final class RunSeries {
    private let registry: PrometheusCollectorRegistry
    private let labels: [(String, String)]
    private var gauges: [String: Gauge] = [:]
    private var counters: [String: (counter: Counter, exposed: Double)] = [:]

    /// `labels` name the run: `job_name` for a `train` or `launch`, `job_id` and `job_name` for a daemon's job. Never
    /// `job`, which Prometheus sets to the scrape target's name (and renames a target's own to `exported_job`).
    public init(registry: PrometheusCollectorRegistry, labels: [(String, String)]) {
        self.registry = registry
        self.labels = labels
    }

    public func update(from metrics: RunMetrics) {
        for series in RunMetrics.series {
            guard let value = metrics[series.name] else { continue }
            let name = "trainerd_" + series.name
            switch series.kind {
            case .gauge:
                let gauge = gauges[series.name] ?? registry.makeGauge(descriptor: Self.descriptor(series, name), labels: labels)
                gauges[series.name] = gauge
                gauge.set(to: value)
            case .counter:
                var entry = counters[series.name]
                    ?? (registry.makeCounter(descriptor: Self.descriptor(series, name), labels: labels), 0)
                if value > entry.exposed {
                    entry.counter.increment(by: value - entry.exposed)
                    entry.exposed = value
                }
                counters[series.name] = entry
            }
        }
    }

    /// Takes the run's series out of the registry.
    public func unregister() {
        for gauge in gauges.values { registry.unregisterGauge(gauge) }
        for entry in counters.values { registry.unregisterCounter(entry.counter) }
        gauges = [:]
        counters = [:]
    }

    static func descriptor(_ series: RunMetrics.Series, _ name: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: series.help)
    }
}
