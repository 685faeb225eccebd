import Foundation

/// A Chrome trace (the JSON "Trace Event Format" that chrome://tracing and Perfetto open): one complete event
/// (`"ph":"X"`) per span, with wall-clock microseconds so that traces of several processes line up when merged.
///
/// A job holds its trace in its `RunContext` (nil unless `--trace FILE` was given); `span` on a nil trace costs
/// one nil check. Thread-safe: `lock` guards `events` and `threadIDs`.
public final class Trace: @unchecked Sendable {
    /// Names this process in the trace (`coordinator`, `worker-0`, `train`).
    public let process: String
    private let processID = Int(getpid())
    private let lock = NSLock()
    private var events: [String] = []
    private var threadIDs: [UInt: Int] = [:]

    public init(process: String) { self.process = process }

    /// Runs `body` as a span named `name` in category `category` on the calling thread.
    @inline(__always)
    public func span<T>(_ name: String, _ category: String, _ body: () throws -> T) rethrows -> T {
        let start = Date().timeIntervalSince1970
        defer { record(name, category, start: start, end: Date().timeIntervalSince1970) }
        return try body()
    }

    func record(_ name: String, _ category: String, start: Double, end: Double) {
        let thread = UInt(pthread_self())
        lock.lock()
        defer { lock.unlock() }
        let tid = threadIDs[thread] ?? threadIDs.count
        threadIDs[thread] = tid
        let timing = String(format: #""ts":%.1f,"dur":%.1f"#, start * 1e6, (end - start) * 1e6)
        events.append(#"{"name":"\#(name)","cat":"\#(category)","ph":"X","pid":\#(processID),"tid":\#(tid),\#(timing)}"#)
    }

    /// The events as JSON array elements, with the process's name as metadata.
    public var eventLines: [String] {
        lock.lock()
        defer { lock.unlock() }
        return [#"{"name":"process_name","ph":"M","pid":\#(processID),"args":{"name":"\#(process)"}}"#] + events
    }

    /// Writes `{"traceEvents": [...]}` with this trace's events and those of `others` (files written by other
    /// processes of the job, merged and then removed).
    public func write(to path: String, merging others: [String] = []) throws {
        var lines = eventLines
        for other in others {
            guard let text = try? String(contentsOfFile: other, encoding: .utf8),
                  let start = text.range(of: "[\n"), let end = text.range(of: "\n]", options: .backwards) else { continue }
            lines += text[start.upperBound..<end.lowerBound].split(separator: "\n").map { String($0.dropLast($0.hasSuffix(",") ? 1 : 0)) }
            try? FileManager.default.removeItem(atPath: other)
        }
        let text = "{\"traceEvents\": [\n" + lines.joined(separator: ",\n") + "\n]}\n"
        guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8)) else {
            throw ConfigError("\(path): cannot write the trace file")
        }
    }
}

extension Optional where Wrapped == Trace {
    /// `body`, as a span when there is a trace.
    @inline(__always)
    public func span<T>(_ name: String, _ category: String, _ body: () throws -> T) rethrows -> T {
        guard let trace = self else { return try body() }
        return try trace.span(name, category, body)
    }
}
