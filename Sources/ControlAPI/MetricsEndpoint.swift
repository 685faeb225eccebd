import Daemon
import Foundation
import HTTPTypes
import Hummingbird
import JobStore
import Prometheus
import Telemetry

/// `/metrics`: the daemon's state in Prometheus' text format, from one `PrometheusCollectorRegistry`.
///
///     trainerd_<series>{job_id, job_name}      every `RunMetrics` series of each running or recently ended job
///     trainerd_jobs{state}                     jobs in the store in each state
///     trainerd_pool_workers / _busy_workers / _idle_workers
///     trainerd_api_requests_total{method, code}
///     trainerd_api_refusals_total{code}        401 (no token, unknown token) and 403 (the role does not allow it)
///
/// Jobs are labelled `job_id` and `job_name`, never `job`, which Prometheus sets to the scrape target's name.
final class APIMetrics: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()
    private let lock = NSLock()
    private var jobSeries: [Int64: RunSeries] = [:]

    /// Counts a request answered with `status`.
    func count(method: HTTPRequest.Method, status: HTTPResponse.Status) {
        let code = String(status.code)
        registry.makeCounter(descriptor: Self.requests, labels: [("method", method.rawValue), ("code", code)]).increment()
        if status == .unauthorized || status == .forbidden {
            registry.makeCounter(descriptor: Self.refusals, labels: [("code", code)]).increment()
        }
    }

    /// The exposition, with the jobs' and the pool's series brought up to date from `daemon`.
    func text(daemon: Daemon) throws -> String {
        let live = daemon.metrics.all
        let counts = try daemon.store.jobCounts()
        let pool = try daemon.poolMembers()
        return try lock.withLock {
            for (id, metrics) in live {
                // A job's name is looked up once, when its series are made: it does not change.
                let series = try jobSeries[id] ?? RunSeries(registry: registry, labels: [
                    ("job_id", String(id)), ("job_name", try daemon.store.job(id)?.name ?? metrics.jobName ?? ""),
                ])
                jobSeries[id] = series
                series.update(from: metrics)
            }
            for (id, series) in jobSeries where live[id] == nil {
                series.unregister()
                jobSeries[id] = nil
            }
            for (state, count) in counts {
                registry.makeGauge(descriptor: Self.jobs, labels: [("state", state.rawValue)]).set(to: Double(count))
            }
            let busy = pool.filter { $0.state.hasPrefix("job") }.count, idle = pool.filter { $0.state == "idle" }.count
            registry.makeGauge(descriptor: Self.poolWorkers).set(to: Double(pool.count))
            registry.makeGauge(descriptor: Self.poolBusy).set(to: Double(busy))
            registry.makeGauge(descriptor: Self.poolIdle).set(to: Double(idle))
            return registry.emitToString()
        }
    }

    private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    static var requests: MetricNameDescriptor { descriptor("trainerd_api_requests_total", "API requests answered, by method and status code.") }
    static var refusals: MetricNameDescriptor { descriptor("trainerd_api_refusals_total", "API requests refused: 401 without a known token, 403 when its role does not allow it.") }
    static var jobs: MetricNameDescriptor { descriptor("trainerd_jobs", "Jobs in the store in each state.") }
    static var poolWorkers: MetricNameDescriptor { descriptor("trainerd_pool_workers", "Workers in the pool.") }
    static var poolBusy: MetricNameDescriptor { descriptor("trainerd_pool_busy_workers", "Pool workers lent to a job.") }
    static var poolIdle: MetricNameDescriptor { descriptor("trainerd_pool_idle_workers", "Pool workers waiting for a job.") }
}

/// Counts every request by its answer (`APIMetrics.count`), refusals included; the outermost middleware.
struct RequestCounter: RouterMiddleware {
    let metrics: APIMetrics

    func handle(_ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response) async throws -> Response {
        do {
            let response = try await next(request, context)
            metrics.count(method: request.method, status: response.status)
            return response
        } catch let error as HTTPResponseError {
            metrics.count(method: request.method, status: error.status)
            throw error
        } catch {
            metrics.count(method: request.method, status: .internalServerError)
            throw error
        }
    }
}
