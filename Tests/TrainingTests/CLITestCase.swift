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

    override func tearDown() { try? FileManager.default.removeItem(atPath: scratch) }

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

    func doneEvent(_ runDirectory: String) throws -> [String: Any] {
        let text = try String(contentsOfFile: runDirectory + "/events.jsonl", encoding: .utf8)
        let last = try XCTUnwrap(text.split(separator: "\n").last)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
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

    /// Starts trainerd; its stderr goes to the file `log` when given (to read when a check fails), else nowhere.
    func start(_ arguments: [String], log: String? = nil) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        if let log {
            FileManager.default.createFile(atPath: log, contents: nil)
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        } else {
            process.standardError = FileHandle.nullDevice
        }
        try process.run()
        return process
    }

    /// The events logged so far in `run`'s events.jsonl.
    func events(_ run: String) -> [[String: Any]] {
        let text = (try? String(contentsOfFile: run + "/events.jsonl", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// Waits (at most `timeout` s, or until `process` exits) for an event in `run`'s log that satisfies `match`.
    func waitForEvent(_ run: String, while process: Process? = nil, timeout: Double = 120, _ match: ([String: Any]) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline && process?.isRunning ?? true {
            if events(run).contains(where: match) { return }
            usleep(20_000)
        }
        XCTFail("no matching event in \(run) within \(timeout) s")
    }

    /// Starts trainerd, sends it SIGINT once its first checkpoint is logged (or after 120 s), and returns its exit status.
    func interruptAfterFirstCheckpoint(_ arguments: [String], _ runDirectory: String) throws -> Int32 {
        let process = try start(arguments)
        let deadline = Date().addingTimeInterval(120)
        while process.isRunning && Date() < deadline
            && !((try? String(contentsOfFile: runDirectory + "/events.jsonl", encoding: .utf8))?.contains("\"checkpoint\"") ?? false) {
            usleep(20_000)
        }
        process.interrupt()
        process.waitUntilExit()
        return process.terminationStatus
    }

    func assertFails(_ arguments: [String], _ expected: String, line: UInt = #line) throws {
        let result = try trainerd(arguments)
        XCTAssertEqual(result.status, 1, "exit status; stderr: \(result.stderr)", line: line)
        XCTAssertEqual(result.stderr, "trainerd: error: \(expected)\n", line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/run/final.safetensors"), line: line)
    }
}
