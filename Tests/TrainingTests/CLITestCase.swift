import Foundation
import TestSupport
import XCTest

/// Runs the `trainerd` executable built next to the test bundle, with a scratch directory per test and helpers
/// for events, ports and processes. Test classes that drive the CLI inherit from it.
class CLITestCase: XCTestCase {
    static let dataset = "/usr/share/datasets/fashion-mnist"
    var repository: URL { fixturesDirectory().deletingLastPathComponent().deletingLastPathComponent() }
    var config: String { repository.appendingPathComponent("configs/fmnist-mlp.yaml").path }
    var scratch: String!

    override func setUpWithError() throws {
        scratch = NSTemporaryDirectory() + "trainerd-cli-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    /// Processes `start` started: any still running when the test ends (it failed part-way) is killed.
    private var started: [Process] = []

    /// Kills what the test left running and, when it failed, prints the end of each log it wrote (the scratch
    /// directory is removed).
    override func tearDown() {
        for process in started where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        if (testRun?.failureCount ?? 0) > 0 {
            let logs = ((try? FileManager.default.contentsOfDirectory(atPath: scratch)) ?? []).filter { $0.hasSuffix(".log") }.sorted()
            for name in logs {
                let lines = ((try? String(contentsOfFile: scratch + "/" + name, encoding: .utf8)) ?? "").split(separator: "\n")
                print("--- last \(min(lines.count, 40)) lines of \(name)\n" + lines.suffix(40).joined(separator: "\n"))
            }
        }
        try? FileManager.default.removeItem(atPath: scratch)
    }

    /// The trainerd binary built next to this test bundle.
    var executable: String {
        URL(fileURLWithPath: ProcessInfo.processInfo.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("trainerd").path
    }

    struct Result { var status: Int32; var stdout: String; var stderr: String }

    func trainerd(_ arguments: [String], timeout: TimeInterval = 300) throws -> Result {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: executable), "trainerd not built at \(executable)")
        return try run(executable, arguments, timeout: timeout)
    }

    /// Runs `program` to its end (terminated after `timeout`), with `environment` added to this process's.
    func run(_ program: String, _ arguments: [String], timeout: TimeInterval, environment: [String: String] = [:]) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Read both pipes while the process runs so neither can fill up and block it.
        final class Capture: @unchecked Sendable { var data = Data() }
        let stdout = Capture(), stderr = Capture()
        let group = DispatchGroup()
        for (pipe, capture) in [(out, stdout), (err, stderr)] {
            group.enter()
            DispatchQueue.global().async {
                capture.data = pipe.fileHandleForReading.readDataToEndOfFile()
                group.leave()
            }
        }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            XCTFail("\(program) \(arguments) did not finish within \(timeout) s")
        }
        process.waitUntilExit()
        group.wait()
        return Result(status: process.terminationStatus, stdout: String(decoding: stdout.data, as: UTF8.self),
                      stderr: String(decoding: stderr.data, as: UTF8.self))
    }

    func requireDataset() throws {
        try XCTSkipUnless(FileManager.default.fileExists(atPath: Self.dataset + "/train-images-idx3-ubyte.gz"),
                          "Fashion-MNIST is not installed (deploy/setup.sh installs dataset-fashion-mnist)")
    }

    /// The run's last event from the trainer (`done`, or `stopped`).
    func doneEvent(_ runDirectory: String) throws -> [String: Any] {
        let text = try String(contentsOfFile: runDirectory + "/events.jsonl", encoding: .utf8)
        // A daemon's job ends its log with `job_end`; the trainer's last event is the one before.
        let lines = text.split(separator: "\n").filter { !$0.hasPrefix("{\"event\":\"job_end\"") }
        let last = try XCTUnwrap(lines.last)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
    }

    /// `count` network namespaces, each a host with one address, 10.203.`subnet`.(i + 1)/24, on a bridge in a
    /// namespace of its own: a real network stack between them. Removed when the test ends; the test is skipped
    /// where they cannot be made (not root, no `ip`).
    func networkNamespaces(_ count: Int, subnet: Int) throws -> [(name: String, address: String)] {
        try XCTSkipUnless(getuid() == 0, "network namespaces need root")
        let tag = String(getpid() % 100_000) + "s\(subnet)"
        let bridge = "trd\(tag)sw"
        let hosts = (0..<count).map { (name: "trd\(tag)h\($0)", address: "10.203.\(subnet).\($0 + 1)") }
        func ip(_ arguments: [String]) throws {
            let result = try run("/usr/bin/env", ["ip"] + arguments, timeout: 20)
            if result.status != 0 { throw XCTSkip("cannot set up network namespaces here: ip \(arguments.joined(separator: " ")): \(result.stderr)") }
        }
        addTeardownBlock { [self] in
            for name in [bridge] + hosts.map(\.name) { _ = try? run("/usr/bin/env", ["ip", "netns", "del", name], timeout: 20) }
        }
        for name in [bridge] + hosts.map(\.name) { try ip(["netns", "add", name]) }
        try ip(["-n", bridge, "link", "add", "br0", "type", "bridge"])
        try ip(["-n", bridge, "link", "set", "br0", "up"])
        for (index, host) in hosts.enumerated() {
            let (inside, outside) = ("t\(tag)h\(index)", "t\(tag)b\(index)")
            try ip(["link", "add", inside, "type", "veth", "peer", "name", outside])
            try ip(["link", "set", inside, "netns", host.name])
            try ip(["link", "set", outside, "netns", bridge])
            try ip(["-n", host.name, "addr", "add", host.address + "/24", "dev", inside])
            try ip(["-n", host.name, "link", "set", inside, "up"])
            try ip(["-n", host.name, "link", "set", "lo", "up"])
            try ip(["-n", bridge, "link", "set", outside, "master", "br0"])
            try ip(["-n", bridge, "link", "set", outside, "up"])
        }
        return hosts
    }

    /// A TCP listener on a free loopback port; the caller closes it.
    func loopbackListener() throws -> (socket: Int32, port: UInt16) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, length) == 0 && listen(listener, 1) == 0 && getsockname(listener, $0, &length) == 0
            }
        }
        guard ok else {
            close(listener)
            throw XCTSkip("no loopback TCP socket here")
        }
        return (listener, UInt16(bigEndian: address.sin_port))
    }

    /// A loopback port that was free a moment ago.
    func freePort() throws -> UInt16 {
        let (listener, port) = try loopbackListener()
        close(listener)
        return port
    }

    /// Starts trainerd (in `directory`, in network namespace `namespace`, when given); its stderr goes to the file
    /// `log` and its stdout to `output` when given, else nowhere.
    func start(_ arguments: [String], log: String? = nil, output: String? = nil, directory: String? = nil,
               namespace: String? = nil) throws -> Process {
        func file(_ path: String?) throws -> FileHandle {
            guard let path else { return FileHandle.nullDevice }
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            return try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: namespace == nil ? executable : "/usr/bin/env")
        process.arguments = namespace.map { ["ip", "netns", "exec", $0, executable] + arguments } ?? arguments  // ip execs it
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.standardOutput = try file(output)
        process.standardError = try file(log)
        try process.run()
        started.append(process)
        return process
    }

    /// Waits for `process` to exit (at most `timeout` s, then kills it) and returns its status.
    @discardableResult
    func finish(_ process: Process, timeout: Double = 180) -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            XCTFail("\(process.arguments ?? []) still running after \(timeout) s")
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// Overrides that make the default job longer than any test waits (10⁵ epochs, constant learning rate), so
    /// that no disturbance a test makes can come after the job's end: the test stops the job with `interrupt`
    /// once it has seen what it waits for, and compares the weights it stopped with to `train`'s at that step.
    let openEnded = ["--set", "training.epochs=100000"]

    /// Ctrl-C to a running job (`train`, `launch` or `coordinator` writing to `run`): it finishes the step, writes a
    /// checkpoint and exits with 130. Returns the step it stopped at and the weights it stopped with.
    func interrupt(_ process: Process, _ run: String, logs: @autoclosure () -> String = "") throws -> (step: Int, hash: String) {
        process.interrupt()
        XCTAssertEqual(finish(process), 130, logs())
        let stopped = try doneEvent(run)
        XCTAssertEqual(stopped["event"] as? String, "stopped", logs())
        return (try XCTUnwrap(stopped["step"] as? Int), try XCTUnwrap(stopped["weights_sha256"] as? String))
    }

    /// The weights of an undisturbed `train` of the job with `overrides`, run to `step` (a fresh run directory).
    func trainedHash(_ overrides: [String], to step: Int) throws -> String {
        let run = scratch + "/train-\(step)-\(UUID().uuidString)"
        let result = try trainerd(["train", config, "--run-dir", run] + overrides + ["--set", "training.max_steps=\(step)"])
        XCTAssertEqual(result.status, 0, result.stderr)
        return try XCTUnwrap(try doneEvent(run)["weights_sha256"] as? String)
    }

    /// Events already read from each events.jsonl, the bytes of it read and its first line (which tells one run's
    /// file from the next one's in the same place), so that a wait reads only what is new.
    private var eventCache: [String: (bytes: UInt64, firstLine: Data, events: [[String: Any]])] = [:]

    /// The events logged so far in `run`'s events.jsonl (whole lines only).
    func events(_ run: String) -> [[String: Any]] {
        let path = run + "/events.jsonl"
        guard let file = FileHandle(forReadingAtPath: path) else { return [] }
        defer { try? file.close() }
        let head = (try? file.read(upToCount: 4096)) ?? Data()
        let firstLine = head.firstIndex(of: UInt8(ascii: "\n")).map { head[..<$0] } ?? Data()
        var cached = eventCache[path] ?? (0, Data(), [])
        if firstLine.isEmpty || cached.firstLine != firstLine || (try? file.seekToEnd()) ?? 0 < cached.bytes {
            cached = (0, Data(firstLine), [])
        }
        try? file.seek(toOffset: cached.bytes)
        let new = (try? file.readToEnd()) ?? Data()
        guard let lastNewline = new.lastIndex(of: UInt8(ascii: "\n")) else { return cached.events }
        let whole = new[new.startIndex...lastNewline]
        cached.events += whole.split(separator: UInt8(ascii: "\n")).compactMap {
            try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any]
        }
        cached.bytes += UInt64(whole.count)
        eventCache[path] = cached
        return cached.events
    }

    /// Waits (at most `timeout` s, or until `process` exits) for an event in `run`'s log that satisfies `match`
    /// (with `after`, one that comes after the last event satisfying `after`).
    func waitForEvent(_ run: String, while process: Process? = nil, timeout: Double = 120,
                      after: (([String: Any]) -> Bool)? = nil, _ match: ([String: Any]) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline && process?.isRunning ?? true {
            var logged = events(run)[...]
            if let after { logged = logged.lastIndex(where: after).map { logged[($0 + 1)...] } ?? [] }
            if logged.contains(where: match) { return }
            usleep(20_000)
        }
        XCTFail("no matching event in \(run) within \(timeout) s")
    }

    /// Waits (at most `timeout` s, or until `process` exits) until the text file at `path` contains `text` (any
    /// text when nil); returns what it holds.
    @discardableResult
    func waitForText(_ path: String, containing text: String? = nil, while process: Process, timeout: Double = 60) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline && process.isRunning {
            if let written = try? String(contentsOfFile: path, encoding: .utf8), !written.isEmpty,
               text.map(written.contains) ?? true { return written }
            usleep(20_000)
        }
        XCTFail("\(path) did not show \(text.map { "\"\($0)\"" } ?? "any text") within \(timeout) s")
        return ""
    }

    /// The last step logged in `run` so far.
    func lastStep(_ run: String) throws -> Int {
        try XCTUnwrap(events(run).last { $0["event"] as? String == "step" }?["step"] as? Int, "no step in \(run)")
    }

    /// A `coordinator` of `config` with `arguments` and a log stream, a `monitor` with `monitorArguments`
    /// subscribed to it before any worker starts (it has printed the snapshot of the waiting job), then `workers`
    /// workers of one thread each. Returns the monitor's output once all have ended.
    func monitoredRun(_ arguments: [String], config: String? = nil, monitor monitorArguments: [String], workers: Int) throws -> String {
        let endpoint = "tcp://127.0.0.1:\(try freePort())", logEndpoint = "tcp://127.0.0.1:\(try freePort())"
        let id = UUID().uuidString, log = scratch + "/coordinator-\(id).log", output = scratch + "/monitor-\(id).out"
        let coordinator = try start(["coordinator", config ?? self.config, "--bind", endpoint, "--log-bind", logEndpoint] + arguments,
                                    log: log)
        defer { if coordinator.isRunning { kill(coordinator.processIdentifier, SIGKILL) } }
        let monitor = try start(["monitor", logEndpoint, "--idle-timeout", "120"] + monitorArguments, output: output)
        defer { if monitor.isRunning { kill(monitor.processIdentifier, SIGKILL) } }
        try waitForText(output, while: monitor)
        let started = try (0..<workers).map {
            try start(["worker", "--connect", endpoint, "--name", "w\($0)", "--threads", "1"])
        }
        XCTAssertEqual(finish(monitor), 0, "monitor")
        XCTAssertEqual(finish(coordinator), 0, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
        XCTAssertEqual(started.map { finish($0, timeout: 30) }, Array(repeating: 0, count: workers), "workers")
        return try String(contentsOfFile: output, encoding: .utf8)
    }

    /// Starts an open-ended job writing to `run`, stops it with Ctrl-C once its first checkpoint is logged, and
    /// returns where it stopped.
    func interruptAfterFirstCheckpoint(_ arguments: [String], _ run: String) throws -> (step: Int, hash: String) {
        let process = try start(arguments + openEnded)
        try waitForEvent(run, while: process) { $0["event"] as? String == "checkpoint" }
        return try interrupt(process, run)
    }

    func assertFails(_ arguments: [String], _ expected: String, line: UInt = #line) throws {
        let result = try trainerd(arguments)
        XCTAssertEqual(result.status, 1, "exit status; stderr: \(result.stderr)", line: line)
        XCTAssertEqual(result.stderr, "trainerd: error: \(expected)\n", line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/run/final.safetensors"), line: line)
    }
}
