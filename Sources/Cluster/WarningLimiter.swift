/// Bounds the warnings that peers can cause: at most `perSource` a window from each source (a remote address) and
/// `total` from all, the rest counted; when a window ends, one summary for each of the `perSource` sources that had
/// the most warnings left out, and one for all the others.
/// Memory is bounded too: at most `maximumSources` sources are told apart in a window, the others count as one.
public struct WarningLimiter {
    /// Seconds of a window.
    public static let window = 60.0
    public static let perSource = 20
    public static let total = 200
    public static let maximumSources = 1024
    public static let otherSources = "other addresses"

    private var windowStart: Double?
    private var logged: [String: Int] = [:]
    private var loggedTotal = 0
    private var suppressed: [String: Int] = [:]

    public init() {}

    /// Whether a warning from `source` is logged now.
    public mutating func admit(_ source: String, now: Double) -> Bool {
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
    public mutating func summaries(now: Double) -> [ClusterEvent] {
        guard let start = windowStart, now - start >= Self.window else { return [] }
        let bySize = suppressed.filter { $0.key != Self.otherSources }.sorted { ($0.value, $1.key) > ($1.value, $0.key) }
        var events = bySize.prefix(Self.perSource).map { ClusterEvent.warningsSuppressed(address: $0.key, count: $0.value) }
        let rest = bySize.dropFirst(Self.perSource).reduce(suppressed[Self.otherSources] ?? 0) { $0 + $1.value }
        if rest > 0 { events.append(.warningsSuppressed(address: Self.otherSources, count: rest)) }
        self = WarningLimiter()
        return events
    }
}
