import ArgumentParser
import Foundation
import Cluster
import Training
import Transport

/// A health check for scripts and probes: asks a coordinator's log stream for its state (the `snapshot` a new
/// subscriber gets) and prints one line. Exit status 0 when the coordinator answered, 1 when it did not.
struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a job through its coordinator's log stream (--log-bind): one line and status 0 if it answers, 1 if not.")

    @Argument(help: "The coordinator's log endpoint (its --log-bind), e.g. tcp://10.0.0.1:5556.") var endpoint: String
    @Option(help: "On a daemon's log port: the job to check (without it: the first job that answers).") var job: Int64?
    @Option(help: "Seconds to wait for an answer.") var timeout = 5.0
    @Flag(help: "Print the coordinator's snapshot as JSON instead.") var json = false
    @OptionGroup var keys: ClientKeyOptions

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be positive, got \(timeout)") }
    }

    func run() throws {
        do {
            let subscription = try LogSubscription(endpoint: endpoint, keys: keys, job: job)
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                guard let (line, event, name, _) = try subscription.next(timeout: 0.2), name == "snapshot" else { continue }
                print(json ? String(decoding: line, as: UTF8.self) : Self.summary(event))
                return
            }
            let curveHint = subscription.encrypted ? "" : "; if it uses CURVE, give --key and --server-key"
            throw ClusterError("\(endpoint): no answer within \(timeout) s (is the coordinator running, with --log-bind there?)\(curveHint)")
        } catch {
            fail(error)
        }
    }

    /// "running: job NAME, step S/T, loss L, W workers, test accuracy A% at step E".
    static func summary(_ snapshot: [String: Any]) -> String {
        let start = snapshot["job_start"] as? [String: Any] ?? [:], step = snapshot["step"] as? [String: Any]
        var parts = ["running: job \(start["job"] ?? "?")"]
        if let step {
            let number = { (key: String) in (step[key] as? NSNumber)?.doubleValue ?? .nan }
            parts.append(String(format: "step %d/%d, loss %.4f", Int(number("step")), Int(number("total_steps")), number("loss")))
            if let workers = step["workers"] { parts.append("\(workers) workers") }
        } else {
            parts.append("no step yet (\(start["steps"] ?? "?") to run)")
        }
        if let eval = snapshot["eval"] as? [String: Any], let accuracy = (eval["test_accuracy"] as? NSNumber)?.doubleValue {
            parts.append(String(format: "test accuracy %.2f%% at step %d", accuracy * 100, (eval["step"] as? Int) ?? 0))
        }
        return parts.joined(separator: ", ")
    }
}
