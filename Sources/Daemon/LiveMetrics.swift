import Foundation
import Telemetry
import Training

/// Every job's `RunMetrics` as its events arrive, for the API's job views and `/metrics`: those of the running jobs
/// and of the `kept` most recently ended ones. Thread-safe: the jobs' threads write, the API's tasks read.
public final class LiveMetrics: @unchecked Sendable {
    private let lock = NSLock()
    private var metrics: [Int64: RunMetrics] = [:]
    /// Ended jobs, oldest first.
    private var ended: [Int64] = []
    let kept: Int

    init(kept: Int) { self.kept = kept }

    func observe(_ id: Int64, _ event: String, _ fields: [(String, JSONValue)]) {
        let time = Date().timeIntervalSince1970
        lock.withLock { metrics[id, default: RunMetrics()].observe(event, fields, time: time) }
    }

    /// Job `id` has ended; the oldest ended job past `kept` is forgotten.
    func end(_ id: Int64) {
        lock.withLock {
            ended.removeAll { $0 == id }
            ended.append(id)
            while ended.count > kept { metrics[ended.removeFirst()] = nil }
        }
    }

    public func of(_ id: Int64) -> RunMetrics? { lock.withLock { metrics[id] } }

    public var all: [Int64: RunMetrics] { lock.withLock { metrics } }
}
