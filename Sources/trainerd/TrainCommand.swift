import ArgumentParser
import Foundation
import Synchronization
import Telemetry
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Train in one process (no network).")

    @OptionGroup var options: JobOptions
    @Option(name: .long, help: "Directory for events.jsonl, checkpoints/ and final.safetensors.") var runDir: String = "runs/train"
    @Flag(help: "Continue from the newest valid checkpoint in the run directory.") var resume = false
    @Option(help: traceHelp) var trace: String?
    @Option(help: metricsHelp) var metricsFile: String?

    func run() throws {
        let status: Int32
        do {
            status = try tracing(to: trace, as: "train") { trace in
                let job = try TrainingJob(config: try options.load())
                let trainer = try Trainer(job: job, runDirectory: runDir, context: job.context(stop: stopRequestOnSignals(), trace: trace))
                return try runTraining(trainer, runDir: runDir, resume: resume, metricsFile: metricsFile)
            }
        } catch {
            fail(error)
        }
        if status != 0 { throw ExitCode(status) }
    }
}

let traceHelp = ArgumentHelp("Write a Chrome trace (chrome://tracing, Perfetto) of the run's spans to this file.")
let metricsHelp = ArgumentHelp("Keep a Prometheus text-format file of the run's metrics here (rewritten atomically, for node_exporter's textfile collector: name it *.prom).")

/// Runs `body` with a Chrome trace for process `name` when `path` is given, then writes it there with the files
/// of `merging` (written by the job's other processes) merged in.
func tracing<T>(to path: String?, as name: String, merging: () -> [String] = { [] }, _ body: (Trace?) throws -> T) throws -> T {
    guard let path else { return try body(nil) }
    let trace = Trace(process: name)
    let result = try body(trace)
    try trace.write(to: path, merging: merging())
    return result
}

/// Resumes or refuses to overwrite checkpoints, runs `trainer` with a progress line and Ctrl-C handling, and
/// prints how it ended. Returns the exit status: 0 finished, 130 stopped by a signal.
func runTraining(_ trainer: Trainer, runDir: String, resume: Bool, metricsFile: String? = nil,
                 beforeRun: () throws -> Void = {}) throws -> Int32 {
    if !resume, !(trainer.checkpoints?.checkpointFiles().isEmpty ?? true) {
        throw ConfigError("\(runDir) already holds checkpoints; pass --resume to continue or choose another --run-dir")
    }
    if resume, let step = trainer.resume() {
        FileHandle.standardError.write(Data("resuming at step \(step)\n".utf8))
    }
    let progress = ProgressLine()
    trainer.events.observers.append(progress.observe)
    if let metricsFile {
        let metrics = MetricsFile(path: metricsFile, jobName: trainer.config.name)
        try metrics.write()  // an unwritable path fails here, before training
        var reported = false
        trainer.events.observers.append { event, fields in
            metrics.observe(event, fields)
            if let failure = metrics.failure, !reported {
                reported = true
                FileHandle.standardError.write(Data("warning: metrics file not written: \(failure)\n".utf8))
            }
        }
    }
    try beforeRun()
    let summary = try trainer.run()
    progress.finish()
    guard summary.finished else {
        print("stopped at step \(summary.steps); continue with --resume and the same --run-dir \(runDir)")
        return 130
    }
    // The last loss is NaN only when no step was trained in this run (a resumed run that had already finished).
    let loss = summary.loss.isNaN ? "no step trained in this run" : String(format: "loss %.4f", summary.loss)
    print("done: \(summary.steps) steps, \(loss), " + String(format: "test accuracy %.2f%%, %.0f samples/s, %.1f s",
                 summary.testAccuracy * 100, summary.samplesPerSecond, summary.seconds))
    print("weights_sha256 \(summary.weightsSHA256)")
    print("run directory \(runDir)")
    return 0
}

/// Ctrl-C and SIGTERM received by this process.
private let stopSignals = Atomic<Int>(0)

/// A stop request for this process's job that Ctrl-C or SIGTERM sets: the job finishes its step, writes a
/// checkpoint and ends (exit 130); a second signal exits at once.
func stopRequestOnSignals() -> StopRequest {
    for sig in [SIGINT, SIGTERM] {
        signal(sig) { _ in
            if stopSignals.add(1, ordering: .relaxed).newValue > 1 { _exit(130) }
        }
    }
    return StopRequest(signalled: { stopSignals.load(ordering: .relaxed) > 0 })
}

/// The progress line on stderr: step, loss, samples/s and ETA; redrawn in place on a terminal.
final class ProgressLine {
    private let isTerminal = isatty(STDERR_FILENO) != 0
    private var lastPrint = Date.distantPast
    private var started = Date()

    func observe(_ event: String, _ fields: [(String, JSONValue)]) {
        let value = Dictionary(fields, uniquingKeysWith: { a, _ in a })
        switch event {
        case "job_start":
            started = Date()
            write("\(text(value["job"])): \(text(value["model"])), \(text(value["parameters"])) parameters, \(text(value["steps"])) steps, \(text(value["threads"])) threads (\(text(value["isa"])))\n")
        case "step":
            guard case let .int(step)? = value["step"], case let .int(total)? = value["total_steps"] else { return }
            let now = Date()
            guard now.timeIntervalSince(lastPrint) >= (isTerminal ? 0.2 : 5) || step == total else { return }
            lastPrint = now
            let rate = number(value["samples_per_s"])
            let perStep = now.timeIntervalSince(started) / Double(max(step, 1))
            let eta = Double(total - step) * perStep
            let line = String(format: "step %d/%d  epoch %d  loss %.4f  %.0f samples/s  ETA %@",
                              step, total, Int(number(value["epoch"])), number(value["loss"]), rate, duration(eta))
            write(isTerminal ? "\r\u{1B}[K" + line : line + "\n")
        case "eval":
            write((isTerminal ? "\r\u{1B}[K" : "") + String(format: "eval at step %d: test loss %.4f, accuracy %.2f%%\n",
                                                          Int(number(value["step"])), number(value["test_loss"]), number(value["test_accuracy"]) * 100))
        case "warning", "error":
            write((isTerminal ? "\r\u{1B}[K" : "") + "\(event): \(text(value["message"]))\n")
        default:
            break
        }
    }

    func finish() { if isTerminal { write("\n") } }

    private func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }

    private func text(_ value: JSONValue?) -> String {
        switch value {
        case let .string(s)?: return s
        case let .int(i)?: return String(i)
        case let .number(d)?: return String(d)
        default: return "?"
        }
    }

    private func number(_ value: JSONValue?) -> Double { value?.numberValue ?? .nan }

    private func duration(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "?" }
        let s = Int(seconds.rounded())
        return s >= 60 ? "\(s / 60)m\(String(format: "%02d", s % 60))s" : "\(s)s"
    }
}
