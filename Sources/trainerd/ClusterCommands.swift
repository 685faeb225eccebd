import ArgumentParser
import Cluster
import Foundation
import NN
import Training
import Transport

/// Binds the coordinator's sockets (with CURVE when the config has `security`) and runs the training loop with
/// gradients from workers, exactly as `train` runs it. `configure` runs once the sockets are bound, with the
/// workers' endpoint (`launch` starts its workers there).
func coordinate(options: JobOptions, bind: String, logBind: String?, startWorkers: Int?, runDir: String, resume: Bool,
                metricsFile: String?, configure: (Coordinator, _ endpoint: String, CoordinatorSecurity?) throws -> Void = { _, _, _ in }) throws -> Int32 {
    let yaml = try String(contentsOfFile: options.config, encoding: .utf8)
    let job = JobDescription(yaml: yaml, overrides: options.overrides)
    let config = try options.load()
    let context = ZMQContext()
    let router = try ZMQSocket(context, .router)
    let publisher = try logBind.map { _ in try ZMQSocket(context, .xpublisher) }
    let security = try config.security.map {
        try CoordinatorSecurity(secretKeyFile: $0.secretKey, allowedKeys: $0.allowedKeys, context: context,
                                sockets: [router] + (publisher.map { [$0] } ?? []))
    }
    try router.bind(bind)
    let endpoint = try router.lastEndpoint
    var coordinator: Coordinator?
    let trainer = try Trainer(config: config, runDirectory: runDir) { model, plan, _ in
        let created = Coordinator(socket: router, job: job, layout: ParameterLayout(model), microBatches: plan.microBatches,
                                  cluster: config.cluster, startWorkers: startWorkers, events: try! EventLog(path: nil))
        coordinator = created
        return created
    }
    // The coordinator reports joins, losses and dropped messages through the run's event log.
    coordinator!.events.observers.append { event, fields in trainer.events.emit(event, fields) }
    try coordinator!.harden(router)
    if let publisher, let logBind {
        try publisher.bind(logBind)
        let log = LogPublisher(socket: publisher)
        trainer.events.observers.append(log.publish)
        coordinator!.whileWaiting = log.serveNewSubscribers
    }
    if let security { coordinator!.whileWaiting = reportingRefusals(of: security.gatekeeper, to: trainer.events, then: coordinator!.whileWaiting) }
    try configure(coordinator!, endpoint, security)
    return try runTraining(trainer, runDir: runDir, resume: resume, metricsFile: metricsFile) {
        FileHandle.standardError.write(Data("coordinator on \(endpoint)\(security == nil ? "" : " (CURVE)"), job \(String(coordinator!.jobID, radix: 16)), waiting for \(max(startWorkers ?? 0, config.cluster.minWorkers)) worker(s)\n".utf8))
    }
}

/// Logs each peer the gatekeeper turns away as a `peer_refused` event, once a minute per address and reason.
func reportingRefusals(of gatekeeper: Gatekeeper, to events: EventLog, then next: @escaping () -> Void) -> () -> Void {
    var lastReported: [String: Date] = [:]
    return {
        for refusal in gatekeeper.takeRefusals() {
            let key = refusal.address + " " + refusal.reason
            if let last = lastReported[key], Date().timeIntervalSince(last) < 60 { continue }
            lastReported[key] = Date()
            events.emit("peer_refused", [("address", .string(refusal.address)), ("reason", .string(refusal.reason))])
        }
        next()
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
            status = try tracing(to: trace, as: "coordinator") {
                try coordinate(options: options, bind: bind, logBind: logBind, startWorkers: workers, runDir: runDir, resume: resume,
                               metricsFile: metricsFile)
            }
        } catch {
            fail(error)
        }
        if status != 0 { throw ExitCode(status) }
    }
}

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker", abstract: "Compute gradients for a coordinator (the job's config comes from it).")

    @Option(help: "The coordinator's endpoint, e.g. tcp://10.0.0.1:5555.") var connect: String
    @Option(help: "A stable name (the ZeroMQ identity); default host-pid.") var name: String?
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
            let worker = try Worker(connect: {
                let (dealer, watching) = try keys.connect(.dealer, connect, context: context, identity: identity, keys: curve)
                monitor = watching
                return dealer
            }, name: identity, joinTimeout: joinTimeout, retryTimeout: retryTimeout, threads: threads, log: { line in
                FileHandle.standardError.write(Data("worker \(identity): \(line)\n".utf8))
            })
            installStopHandler()
            worker.leaveRequested = { Trainer.stopRequested }
            worker.stopReason = {
                if let refused = monitor?.nextFailure() { return "\(connect): the coordinator \(refused.reason); add this worker's public key to its allowed_keys" }
                if let parentPid, getppid() != parentPid { return "the launch process \(parentPid) is gone" }
                return nil
            }
            try tracing(to: trace, as: identity) { try worker.run() }
        } catch let error as CoordinatorError where error.description.hasPrefix("no answer") {
            fail(CoordinatorError("\(connect): \(error)"))
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
        var children: [LocalWorker] = []
        let status: Int32
        do {
            _ = try options.load()  // report config errors before starting anything
            let threads = max(1, ProcessInfo.processInfo.activeProcessorCount / workers)
            // Workers write their traces next to the file; they are merged into it once the workers have exited.
            status = try tracing(to: trace, as: "coordinator", merging: {
                children.forEach { $0.waitForExit(timeout: 30) }
                return children.map { "\(trace!).\($0.name)" }
            }) { try coordinate(options: options, bind: "tcp://127.0.0.1:*", logBind: logBind, startWorkers: workers,
                                    runDir: runDir, resume: resume, metricsFile: metricsFile) { coordinator, endpoint, security in
                func startWorker(_ name: String) throws -> LocalWorker {
                    var environment: [String: String] = [:]
                    if let security {
                        // Each local worker gets a key of its own, allowed for this run only.
                        let keys = try CurveKeyPair.generate()
                        security.gatekeeper.allow(keys.publicKey, name: name)
                        environment = ["TRAINERD_CURVE_SECRET_KEY": keys.secretKey, "TRAINERD_CURVE_SERVER_KEY": security.keys.publicKey]
                    }
                    return try LocalWorker(name: name, arguments: ["worker", "--connect", endpoint, "--name", name, "--threads", String(threads),
                                                                   "--parent-pid", String(getpid())]
                                                                + (trace.map { ["--trace", "\($0).\(name)"] } ?? []), environment: environment)
                }
                children = try (0..<workers).map { try startWorker("worker-\($0)") }
                // A worker process that exits is lost at once (its micro-batches go to the others), and a new one
                // takes its place, joining at the next step, while restarts remain.
                var reported = Set<String>()
                var restarts = 0
                let previous = coordinator.whileWaiting
                coordinator.whileWaiting = {
                    previous()
                    for child in children where !reported.contains(child.name) {
                        guard let failure = child.failure else { continue }
                        reported.insert(child.name)
                        coordinator.declareLost(name: child.name, reason: failure)
                        guard restarts < maxRestarts else { continue }
                        restarts += 1
                        let name = "\(child.name.split(separator: ".")[0]).\(restarts)"
                        if let replacement = try? startWorker(name) {
                            children.append(replacement)
                            coordinator.events.emit("worker_restarted", [("worker", .string(name)), ("replaces", .string(child.name)),
                                                                         ("restarts", .int(restarts)), ("max_restarts", .int(maxRestarts))])
                        }
                    }
                }
                coordinator.abortReason = {
                    children.allSatisfy { $0.failure != nil } ? "every worker process exited: \(children.last!.failure!)" : nil
                }
            } }
        } catch {
            children.forEach { $0.stop() }
            fail(error)
        }
        for child in children { child.waitForExit(timeout: 30) }
        if status != 0 { throw ExitCode(status) }
    }
}

/// A worker child process of `launch`, in a process group of its own so that Ctrl-C reaches only `launch`,
/// which finishes the step, checkpoints and then sends every worker bye.
final class LocalWorker: @unchecked Sendable {
    let name: String
    let pid: pid_t
    private let lock = NSLock()
    private var exitStatus: Int32?

    init(name: String, arguments: [String], environment: [String: String] = [:]) throws {
        self.name = name
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attributes, 0)
        let executable = "/proc/self/exe"
        let argv = ([CommandLine.arguments[0]] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        var variables = ProcessInfo.processInfo.environment
        variables.merge(environment) { $1 }
        let envp = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        let result = posix_spawn(&child, executable, nil, &attributes, argv, envp)
        guard result == 0 else { throw CoordinatorError("cannot start a worker process: \(String(cString: strerror(result)))") }
        pid = child
        Thread.detachNewThread { [self] in
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            lock.lock()
            exitStatus = status
            lock.unlock()
        }
    }

    /// Why the job cannot go on, if this worker has exited.
    var failure: String? {
        lock.lock()
        defer { lock.unlock() }
        guard let status = exitStatus else { return nil }
        return "worker process \(name) (pid \(pid)) exited (status \(status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))) before the job finished"
    }

    func stop() { kill(pid, SIGTERM) }

    /// The process's peak resident set (VmHWM) in MB while it runs; nil once it has exited.
    var peakResidentMegabytes: Double? {
        // Read to the end: /proc files report a size of 0, which String(contentsOfFile:) believes.
        let path = "/proc/\(pid)/status"
        guard let file = FileHandle(forReadingAtPath: path) else {
            FileHandle.standardError.write(Data("trainerd: cannot open \(path): \(String(cString: strerror(errno)))\n".utf8))
            return nil
        }
        defer { try? file.close() }
        guard let status = String(data: file.readDataToEndOfFile(), encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kilobytes = Double(line.split(whereSeparator: \.isWhitespace).dropFirst().first ?? "") else { return nil }
        return kilobytes / 1024
    }

    func waitForExit(timeout: Double) {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            lock.lock()
            let done = exitStatus != nil
            lock.unlock()
            if done { return }
            usleep(20_000)
        }
        kill(pid, SIGKILL)
    }
}
