/// Bounds the warnings that peers can cause: at most `perSource` a window from each source (a remote address) and
/// `total` from all, the rest counted; when a window ends, one summary per source that had warnings left out.
/// Memory is bounded too: at most `maximumSources` sources are told apart in a window, the others count as one.
struct WarningLimiter {
    /// Seconds of a window.
    static let window = 60.0
    static let perSource = 20
    static let total = 200
    static let maximumSources = 1024
    static let otherSources = "other addresses"

    private var windowStart: Double?
    private var logged: [String: Int] = [:]
    private var loggedTotal = 0
    private var suppressed: [String: Int] = [:]

    /// Whether a warning from `source` is logged now.
    mutating func admit(_ source: String, now: Double) -> Bool {
        if windowStart == nil { windowStart = now }
        let known = logged[source] != nil || suppressed[source] != nil || logged.count + suppressed.count < Self.maximumSources
        let source = known ? source : Self.otherSources
        if loggedTotal < Self.total, logged[source, default: 0] < Self.perSource {
            logged[source, default: 0] += 1
            loggedTotal += 1
            return true
        }
        suppressed[source, default: 0] += 1
        return false
    }

    /// The summaries of a window that has ended at `now` (and starts the next), or none.
    mutating func summaries(now: Double) -> [ClusterEvent] {
        guard let start = windowStart, now - start >= Self.window else { return [] }
        let events = suppressed.sorted { $0.key < $1.key }.map { ClusterEvent.warningsSuppressed(address: $0.key, count: $0.value) }
        self = WarningLimiter()
        return events
    }
}
