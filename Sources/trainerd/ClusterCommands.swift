import ArgumentParser
import Cluster
import Foundation
import Training
import Transport
import Wire

/// Binds the coordinator's sockets and runs the training loop with gradients from workers, exactly as `train`
/// runs it. `configure` runs once the sockets are bound (`launch` starts its workers there).
func coordinate(options: JobOptions, bind: String, logBind: String?, startWorkers: Int?, runDir: String, resume: Bool,
                metricsFile: String?, trace: Trace?, configure: (CoordinatedJob) throws -> Void = { _ in }) throws -> Int32 {
    let description = JobDescription(yaml: try String(contentsOfFile: options.config, encoding: .utf8), overrides: options.overrides)
    let config = try options.load()
    let context = RunContext(threads: config.training.threads, stop: stopRequestOnSignals(), trace: trace)
    let job = try CoordinatedJob.bound(description, config: config, bind: bind, logBind: logBind, runDirectory: runDir,
                                       startWorkers: startWorkers, context: context)
    try configure(job)
    return try runTraining(job.trainer, runDir: runDir, resume: resume, metricsFile: metricsFile) {
        FileHandle.standardError.write(Data("coordinator on \(job.endpoint ?? bind)\(job.security == nil ? "" : " (CURVE)"), job \(String(job.coordinator.jobID, radix: 16)), waiting for \(job.coordinator.startWorkers) worker(s)\n".utf8))
    }
}

struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator", abstract: "Own the weights of a job and train with workers that connect to it.")

    @OptionGroup var options: JobOptions
    @Option(help: "Endpoint for workers, e.g. tcp://0.0.0.0:5555.") var bind: String
    @Option(help: "Endpoint for the log stream (PUB), e.g. tcp://0.0.0.0:5556.") var logBind: String?
    @Option(help: "Workers to wait for before the first step (default: cluster.min_workers).") var workers: Int?
    @Option(help: metricsHelp) var metricsFile: String?
    @Option(help: "Directory for events.jsonl, checkpoints/ and final.safetensors.") var runDir = "runs/coordinator"
    @Flag(help: "Continue from the newest valid checkpoint in the run directory.") var resume = false
    @Option(help: traceHelp) var trace: String?

    func run() throws {
        let status: Int32
        do {
            status = try tracing(to: trace, as: "coordinator") { trace in
                try coordinate(options: options, bind: bind, logBind: logBind, startWorkers: workers, runDir: runDir, resume: resume,
                               metricsFile: metricsFile, trace: trace)
            }
        } catch {
            fail(error)
        }
        if status != 0 { throw ExitCode(status) }
    }
}

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Compute gradients for a coordinator (the job's config comes from it), or join a daemon's pool and stay.")

    @Option(help: "The coordinator's or the daemon's (trainerd serve --bind) endpoint, e.g. tcp://10.0.0.1:5555.") var connect: String
    @Option(help: "A name unique among the job's connected workers; default host-pid.") var name: String?
    @Option(help: "Kernel threads (default: the job's training.threads).") var threads: Int?
    @Option(help: "Seconds to wait for the coordinator's welcome.") var joinTimeout = 30.0
    @Option(help: "Seconds to keep reconnecting to a coordinator that was lost.") var retryTimeout = 600.0
    @Option(help: .hidden) var parentPid: Int32?
    @OptionGroup var keys: ClientKeyOptions
    @Option(help: traceHelp) var trace: String?

    func run() throws {
        do {
            let identity = name ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())"
            let context = ZMQContext()
            let curve = try keys.load()
            var monitor: HandshakeMonitor?
            try tracing(to: trace, as: identity) { trace in
                let worker = try Worker(connect: {
                    let (dealer, watching) = try keys.connect(.dealer, connect, context: context,
                                                              limits: SocketLimits(maximumFrame: WireProtocol.maximumFrame), keys: curve)
                    monitor = watching
                    return dealer
                }, name: identity, endpoint: connect, joinTimeout: joinTimeout, retryTimeout: retryTimeout, threads: threads,
                   loadDatasets: DatasetCache().load, stop: stopRequestOnSignals(), trace: trace, log: { line in
                    FileHandle.standardError.write(Data("worker \(identity): \(line)\n".utf8))
                })
                worker.stopReason = {
                    if let refused = monitor?.nextFailure() { return "\(connect): the coordinator \(refused.reason); add this worker's public key to its allowed_keys" }
                    if let parentPid, getppid() != parentPid { return "the launch process \(parentPid) is gone" }
                    return nil
                }
                try worker.run()
            }
        } catch {
            fail(error)
        }
    }
}

struct Launch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train with a coordinator and N worker processes on this machine (like torchrun).")

    @OptionGroup var options: JobOptions
    @Option(help: "Worker processes to start.") var workers = 2
    @Option(help: "Directory for events.jsonl, checkpoints/ and final.safetensors.") var runDir = "runs/launch"
    @Option(help: "Endpoint for the log stream (PUB), e.g. tcp://127.0.0.1:5556.") var logBind: String?
    @Flag(help: "Continue from the newest valid checkpoint in the run directory.") var resume = false
    @Option(help: "Worker processes started in place of ones that exit during the run.") var maxRestarts = 3
    @Option(help: metricsHelp) var metricsFile: String?
    @Option(help: ArgumentHelp("Write a Chrome trace of the coordinator and every worker (chrome://tracing, Perfetto) to this file."))
    var trace: String?

    func validate() throws {
        guard workers > 0 else { throw ValidationError("--workers must be at least 1") }
        guard maxRestarts >= 0 else { throw ValidationError("--max-restarts must be 0 or more") }
    }

    func run() throws {
        var pool: LocalWorkerPool?
        let status: Int32
        do {
            _ = try options.load()  // report config errors before starting anything
            let threads = max(1, ProcessInfo.processInfo.activeProcessorCount / workers)
            // Workers write their traces next to the file; they are merged into it once the workers have exited.
            status = try tracing(to: trace, as: "coordinator", merging: {
                pool?.waitForExit(timeout: 30)
                return (pool?.workers ?? []).map { "\(trace!).\($0.name)" }
            }) { traceRecorder in
                try coordinate(options: options, bind: "tcp://127.0.0.1:*", logBind: logBind, startWorkers: workers,
                               runDir: runDir, resume: resume, metricsFile: metricsFile, trace: traceRecorder) { job in
                    let endpoint = job.endpoint!
                    pool = try LocalWorkerPool(names: (0..<workers).map { "worker-\($0)" }, maxRestarts: maxRestarts) { name in
                        var environment: [String: String] = [:]
                        if let security = job.security {
                            // Each local worker gets a key of its own, allowed for this run only.
                            let keys = try CurveKeyPair.generate()
                            security.gatekeeper.allow(keys.publicKey, name: name)
                            environment = ["TRAINERD_CURVE_SECRET_KEY": keys.secretKey, "TRAINERD_CURVE_SERVER_KEY": security.keys.publicKey]
                        }
                        return try LocalWorker(name: name, arguments: ["worker", "--connect", endpoint, "--name", name,
                                                                       "--threads", String(threads), "--parent-pid", String(getpid())]
                                               + (trace.map { ["--trace", "\($0).\(name)"] } ?? []), environment: environment)
                    }
                    job.coordinator.companions.append(pool!)
                }
            }
        } catch {
            pool?.stopAll()
            fail(error)
        }
        pool?.waitForExit(timeout: 30)
        if status != 0 { throw ExitCode(status) }
    }
}
