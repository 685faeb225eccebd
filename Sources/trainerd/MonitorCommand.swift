import ArgumentParser
import Foundation
import Cluster
import Training
import Transport
import Wire

struct Monitor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow a job's log stream: step, loss, accuracy, throughput, workers and per-layer gradient norms.")

    @Argument(help: "The coordinator's or the daemon's log endpoint (its --log-bind), e.g. tcp://10.0.0.1:5556.") var endpoint: String
    @Option(help: "On a daemon's log port: follow this job alone, to its end (without it: every job, each line marked with its job).")
    var job: Int64?
    @Flag(help: "Print the raw JSON events, one a line.") var json = false
    @Option(help: "A layer whose gradient norm is below this is marked as vanishing.") var vanishing = 1e-6
    @Option(help: "A layer whose gradient norm is above this is marked as exploding.") var exploding = 1e2
    @Option(help: "Give up after this many seconds without an event (0: never).") var idleTimeout = 0.0
    @Option(help: "Seconds between step reports (0: every step).") var every = 1.0
    @OptionGroup var keys: ClientKeyOptions

    func run() throws {
        do {
            let subscription = try LogSubscription(endpoint: endpoint, keys: keys, job: job)
            var lastEvent = Date()
            var lastStepShown = Date.distantPast
            while true {
                guard let (line, event, name, topic) = try subscription.next(timeout: 1) else {
                    if idleTimeout > 0 && Date().timeIntervalSince(lastEvent) > idleTimeout {
                        throw ClusterError("\(endpoint): no events for \(Int(idleTimeout)) s")
                    }
                    continue
                }
                lastEvent = Date()
                if json {
                    let text = String(decoding: line, as: UTF8.self)
                    // Every job's stream: each line says whose it is (the topic is digits; a line starts with `{`).
                    print(job == nil ? topic.map { "{\"job_id\":\($0)," + text.dropFirst() } ?? text : text)
                } else if name != "step" || Date().timeIntervalSince(lastStepShown) >= every {
                    if name == "step" { lastStepShown = Date() }
                    show(name, event, prefix: job == nil ? topic.map { "[job \($0)] " } ?? "" : "")
                }
                fflush(nil)  // every stream: stdout is a C global
                // A coordinator's stream ends with its job, and so does one job's on a daemon's (--job), at its
                // `job_end`: a job stopped with the daemon goes on when the daemon is back. Every job's does not end.
                guard job != nil || topic == nil else { continue }
                let last: Set = topic == nil ? ["done", "stopped"] : ["job_end"]
                if last.contains(name) || (name == "snapshot" && last.contains { event[$0] != nil }) { return }
            }
        } catch {
            fail(error)
        }
    }

    func show(_ name: String, _ event: [String: Any], prefix: String = "") {
        let print = { (text: String) in Swift.print(prefix + text) }
        switch name {
        case "snapshot":
            for key in LogPublisher.cached {
                if let fields = event[key] as? [String: Any] { show(key, fields, prefix: prefix) }
            }
        case "job_start":
            print("job \(event["job"] ?? "?"): \(event["model"] ?? "?"), \(event["parameters"] ?? "?") parameters, \(event["steps"] ?? "?") steps")
        case "worker_joined":
            print("worker \(event["worker"] ?? "?") joined (\(event["workers"] ?? "?") workers)")
        case "step":
            let number = { (key: String) in (event[key] as? NSNumber)?.doubleValue ?? .nan }
            var line = String(format: "step %d/%d  loss %.4f  |g| %.3f%@  %.0f samples/s", Int(number("step")),
                              Int(number("total_steps")), number("loss"), number("grad_norm"),
                              (event["clipped"] as? Bool) == true ? " (clipped)" : "", number("samples_per_s"))
            if let workers = event["workers"] { line += "  \(workers) workers" }
            if let slowest = event["slowest_worker"] as? String {
                line += String(format: "  slowest %@ (+%.1f ms)", slowest, number("waited_for_slowest_s") * 1000)
            }
            print(line)
            if let norms = event["grad_norms"] as? [String: Any] {
                let rows = norms.keys.sorted(by: layerOrder).map { key -> String in
                    let norm = (norms[key] as? NSNumber)?.doubleValue ?? .nan
                    let mark = norm < vanishing ? " ↓ vanishing" : norm > exploding ? " ↑ exploding" : ""
                    return "    " + key.padding(toLength: 18, withPad: " ", startingAt: 0) + String(format: "%.3e", norm) + mark
                }
                print(rows.joined(separator: "\n"))
            }
        case "eval":
            print(String(format: "eval at step %d: test loss %.4f, accuracy %.2f%%", (event["step"] as? Int) ?? 0,
                         (event["test_loss"] as? NSNumber)?.doubleValue ?? .nan,
                         ((event["test_accuracy"] as? NSNumber)?.doubleValue ?? .nan) * 100))
        case "warning":
            print("warning: \(event["message"] ?? "")")
        case "done":
            print("done: step \(event["step"] ?? "?"), test accuracy \(event["test_accuracy"] ?? "?"), weights_sha256 \(event["weights_sha256"] ?? "?")")
        case "stopped":
            print("stopped at step \(event["step"] ?? "?")")
        case "worker_failed":
            print("worker \(event["worker"] ?? "?") cannot run the job: \(event["reason"] ?? "?")")
        case "job_end":
            print("job \(event["job_id"] ?? "?") \(event["state"] ?? "?") at step \(event["step"] ?? "?")"
                  + ((event["failure"] as? String).map { ": \($0)" } ?? ""))
        default:
            break
        }
    }

    /// Parameter names in model order: numeric path components compare as numbers ("10.weight" after "2.bias"),
    /// and a layer's weight comes before its bias.
    /// Parameter names in forward order: numeric parts by value (`2.weight` before `10.weight`), the GPT's parts as
    /// a token meets them (`wte`, `wpe`, `blocks`, in each block `ln1` … `out`, then `lnf`, `head`), weight before bias.
    func layerOrder(_ a: String, _ b: String) -> Bool {
        let (x, y) = (a.split(separator: "."), b.split(separator: "."))
        let forward = ["weight", "bias", "wte", "wpe", "blocks", "ln1", "qkv", "proj", "ln2", "fc", "out", "lnf", "head"]
        func rank(_ part: Substring) -> String {
            forward.firstIndex(of: String(part)).map { String(format: "0%02d", $0) } ?? "1" + part
        }
        for (p, q) in zip(x, y) where p != q {
            if let i = Int(p), let j = Int(q) { return i < j }
            return rank(p) < rank(q)
        }
        return x.count < y.count
    }
}

/// A subscription to a coordinator's or a daemon's log stream (its --log-bind), with CURVE when keys are given: what
/// `monitor` and `status` read. On a daemon's stream each event comes under its job's id; `job` picks one.
struct LogSubscription {
    let endpoint: String
    let job: Int64?
    /// Whether this subscription uses CURVE (keys were given).
    let encrypted: Bool
    private let socket: ZMQSocket
    private let handshakes: HandshakeMonitor?

    init(endpoint: String, keys: ClientKeyOptions, job: Int64? = nil) throws {
        self.endpoint = endpoint
        self.job = job
        let curve = try keys.load()
        encrypted = curve != nil
        (socket, handshakes) = try keys.connect(.subscriber, endpoint, context: ZMQContext(),
                                                limits: SocketLimits(maximumFrame: WireProtocol.maximumMetadata), keys: curve)
        try socket.subscribe(prefix: job.map { Array(String($0).utf8) } ?? [])
    }

    /// The next event within `timeout` seconds (its line, fields, name, and job id on a daemon's stream), or nil;
    /// throws when the coordinator refused this client's key.
    func next(timeout: Double) throws -> (line: [UInt8], event: [String: Any], name: String, job: String?)? {
        if let refused = handshakes?.nextFailure() {
            throw ClusterError("\(endpoint): the coordinator \(refused.reason); add this monitor's public key to its allowed_keys")
        }
        guard let frames = try socket.receive(timeout: timeout), let line = frames.last,
              let event = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
              let name = event["event"] as? String else { return nil }
        let topic = frames.count == 2 ? String(decoding: frames[0], as: UTF8.self) : nil
        // A subscription is a prefix: job 1's also brings jobs 10 to 19.
        if let job, let topic, topic != String(job) { return nil }
        return (Array(line), event, name, topic)
    }
}
