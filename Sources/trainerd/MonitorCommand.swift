import ArgumentParser
import Foundation
import Cluster
import Training
import Transport
import Wire

/// Publishes the run's events on a ZeroMQ XPUB socket. A monitor that subscribes mid-run first gets a
/// `snapshot` event with the latest job, step and eval fields (the last-value cache of the zguide), then every
/// event as it happens.
final class LogPublisher {
    private let socket: ZMQSocket
    private var latest: [String: [(String, JSONValue)]] = [:]

    /// Publishes on `socket` (an XPUB socket, bound).
    init(socket: ZMQSocket) {
        self.socket = socket
    }

    func publish(_ event: String, _ fields: [(String, JSONValue)]) {
        serveNewSubscribers()
        if ["job_start", "worker_joined", "eval", "step"].contains(event) { latest[event] = fields }
        send(event, fields)
    }

    /// A subscription message (first byte 1) means a new monitor: bring it up to date at once.
    func serveNewSubscribers() {
        var newSubscriber = false
        while let frames = try? socket.receive(timeout: 0), let first = frames.first?.first {
            if first == 1 { newSubscriber = true }
        }
        if newSubscriber && !latest.isEmpty {
            let snapshot = ["job_start", "worker_joined", "eval", "step"].compactMap { name in latest[name].map { (name, JSONValue.object($0)) } }
            send("snapshot", snapshot)
        }
    }

    private func send(_ event: String, _ fields: [(String, JSONValue)]) {
        let line = JSONValue.object([("event", .string(event)), ("time", .number(Date().timeIntervalSince1970))] + fields)
        try? socket.send([Array(line.serialized.utf8)])
    }
}

struct Monitor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow a job's log stream: step, loss, accuracy, throughput, workers and per-layer gradient norms.")

    @Argument(help: "The coordinator's log endpoint (its --log-bind), e.g. tcp://10.0.0.1:5556.") var endpoint: String
    @Flag(help: "Print the raw JSON events, one a line.") var json = false
    @Option(help: "A layer whose gradient norm is below this is marked as vanishing.") var vanishing = 1e-6
    @Option(help: "A layer whose gradient norm is above this is marked as exploding.") var exploding = 1e2
    @Option(help: "Give up after this many seconds without an event (0: never).") var idleTimeout = 0.0
    @Option(help: "Seconds between step reports (0: every step).") var every = 1.0
    @OptionGroup var keys: ClientKeyOptions

    func run() throws {
        do {
            let subscription = try LogSubscription(endpoint: endpoint, keys: keys)
            var lastEvent = Date()
            var lastStepShown = Date.distantPast
            while true {
                guard let (line, event, name) = try subscription.next(timeout: 1) else {
                    if idleTimeout > 0 && Date().timeIntervalSince(lastEvent) > idleTimeout {
                        throw ClusterError("\(endpoint): no events for \(Int(idleTimeout)) s")
                    }
                    continue
                }
                lastEvent = Date()
                if json {
                    print(String(decoding: line, as: UTF8.self))
                } else if name != "step" || Date().timeIntervalSince(lastStepShown) >= every {
                    if name == "step" { lastStepShown = Date() }
                    show(name, event)
                }
                fflush(nil)  // every stream: stdout is a C global
                if name == "done" || name == "stopped" { return }
            }
        } catch {
            fail(error)
        }
    }

    func show(_ name: String, _ event: [String: Any]) {
        switch name {
        case "snapshot":
            for key in ["job_start", "worker_joined", "eval", "step"] {
                if let fields = event[key] as? [String: Any] { show(key, fields) }
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

/// A subscription to a coordinator's log stream (its --log-bind), with CURVE when keys are given: what `monitor`
/// and `status` read.
struct LogSubscription {
    let endpoint: String
    /// Whether this subscription uses CURVE (keys were given).
    let encrypted: Bool
    private let socket: ZMQSocket
    private let handshakes: HandshakeMonitor?

    init(endpoint: String, keys: ClientKeyOptions) throws {
        self.endpoint = endpoint
        let curve = try keys.load()
        encrypted = curve != nil
        (socket, handshakes) = try keys.connect(.subscriber, endpoint, context: ZMQContext(),
                                                limits: SocketLimits(maximumFrame: WireProtocol.maximumMetadata), keys: curve)
        try socket.subscribe()
    }

    /// The next event within `timeout` seconds (its line, fields and name), or nil; throws when the coordinator
    /// refused this client's key.
    func next(timeout: Double) throws -> (line: [UInt8], event: [String: Any], name: String)? {
        if let refused = handshakes?.nextFailure() {
            throw ClusterError("\(endpoint): the coordinator \(refused.reason); add this monitor's public key to its allowed_keys")
        }
        guard let frames = try socket.receive(timeout: timeout), let line = frames.first,
              let event = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
              let name = event["event"] as? String else { return nil }
        return (Array(line), event, name)
    }
}
