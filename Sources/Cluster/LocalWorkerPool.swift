import Foundation

/// The worker processes a coordinator supervises on its own machine (`launch`, `bench`): a process that exits
/// during the run is declared lost at once (its micro-batches go to the others) and, while restarts remain, a
/// new one takes its place and joins at the next step. The job stops when every process has exited (or, with
/// `abortOnAnyExit`, when one has).
public final class LocalWorkerPool: CoordinatorCompanion {
    public private(set) var workers: [LocalWorker]
    let start: (_ name: String) throws -> LocalWorker
    let maxRestarts: Int
    let abortOnAnyExit: Bool
    private var restarts = 0
    private var reported = Set<String>()

    /// Starts `names.count` workers with `start`, which is called again with a new name for each replacement.
    public init(names: [String], maxRestarts: Int, abortOnAnyExit: Bool = false,
                start: @escaping (_ name: String) throws -> LocalWorker) throws {
        self.start = start
        self.maxRestarts = maxRestarts
        self.abortOnAnyExit = abortOnAnyExit
        workers = []
        do {
            for name in names { workers.append(try start(name)) }
        } catch {
            stopAll()
            throw error
        }
    }

    public func poll(_ coordinator: Coordinator) throws {
        if abortOnAnyExit, let failure = workers.lazy.compactMap(\.failure).first { throw ClusterError(failure) }
        if workers.allSatisfy({ $0.failure != nil }) {
            throw ClusterError("every worker process exited: \(workers.last!.failure!)")
        }
        for child in workers where !reported.contains(child.name) {
            guard let failure = child.failure else { continue }
            reported.insert(child.name)
            coordinator.declareLost(name: child.name, reason: failure)
            guard restarts < maxRestarts else { continue }
            restarts += 1
            let name = "\(child.name.split(separator: ".")[0]).\(restarts)"
            if let replacement = try? start(name) {
                workers.append(replacement)
                coordinator.events.emit(.workerRestarted(worker: name, replaces: child.name, restarts: restarts, maxRestarts: maxRestarts))
            }
        }
    }

    /// Asks every worker process to leave (SIGTERM).
    public func stopAll() { workers.forEach { $0.stop() } }

    /// Waits up to `timeout` s for each process to exit, then kills it.
    public func waitForExit(timeout: Double) { workers.forEach { $0.waitForExit(timeout: timeout) } }
}

/// A worker child process (this executable's `worker` command), in a process group of its own so that Ctrl-C
/// reaches only the coordinator's process, which finishes the step, checkpoints and then sends every worker bye.
///
/// Thread-safe: `lock` guards `exitStatus`, which a thread of its own sets when the process exits.
public final class LocalWorker: @unchecked Sendable {
    public let name: String
    public let pid: pid_t
    private let lock = NSLock()
    private var exitStatus: Int32?

    /// Starts `/proc/self/exe` with `arguments`, and `environment` added to this process's.
    public init(name: String, arguments: [String], environment: [String: String] = [:]) throws {
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
        guard result == 0 else { throw ClusterError("cannot start a worker process: \(String(cString: strerror(result)))") }
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
    public var failure: String? {
        lock.lock()
        defer { lock.unlock() }
        guard let status = exitStatus else { return nil }
        return "worker process \(name) (pid \(pid)) exited (status \(status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))) before the job finished"
    }

    public func stop() { kill(pid, SIGTERM) }

    /// The process's peak resident set (VmHWM) in MB while it runs; nil once it has exited.
    public var peakResidentMegabytes: Double? {
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

    /// Waits up to `timeout` s for the process to exit, then kills it.
    public func waitForExit(timeout: Double) {
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
