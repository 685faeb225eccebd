import Foundation
import XCTest

/// Debian's Chromium, headless, driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: the
/// browser reads commands from fd 3 and writes answers to fd 4, each a JSON object ended by a NUL byte). One page;
/// JavaScript is evaluated in it and its values returned, so a test reads what the page rendered.
final class HeadlessChromium {
    private let pid: pid_t
    private let commands: FileHandle
    private let answers: Int32
    private var buffer = Data()
    private var nextID = 0
    private var session = ""
    let profile: String

    /// Starts Chromium with a new profile under `directory` (so no token is stored yet) and opens a blank page; skips
    /// the test, saying why, only when Chromium is not installed or does not start.
    init(directory: String, log: String) throws {
        let path = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let path else { throw XCTSkip("Chromium is not installed (deploy/setup.sh --tests installs Debian's chromium)") }
        profile = directory + "/chromium-profile-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: profile, withIntermediateDirectories: true)
        var toBrowser: [Int32] = [0, 0], fromBrowser: [Int32] = [0, 0]
        guard pipe(&toBrowser) == 0, pipe(&fromBrowser) == 0 else { throw XCTSkip("no pipes for Chromium") }
        let logFile = open(log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toBrowser[0], 3)
        posix_spawn_file_actions_adddup2(&actions, fromBrowser[1], 4)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, logFile, 1)
        posix_spawn_file_actions_adddup2(&actions, logFile, 2)
        for descriptor in [toBrowser[1], fromBrowser[0]] { posix_spawn_file_actions_addclose(&actions, descriptor) }
        let arguments = [path, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                         "--disable-extensions", "--disable-background-networking", "--remote-debugging-pipe",
                         "--user-data-dir=\(profile)", "--window-size=1400,1000", "about:blank"]
        var argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var child: pid_t = 0
        let spawned = posix_spawn(&child, path, &actions, nil, &argv, environ)
        Glibc.close(toBrowser[0]); Glibc.close(fromBrowser[1]); Glibc.close(logFile)
        guard spawned == 0 else { throw XCTSkip("Chromium did not start: \(String(cString: strerror(spawned)))") }
        pid = child
        commands = FileHandle(fileDescriptor: toBrowser[1], closeOnDealloc: true)
        answers = fromBrowser[0]
        let targets: [String: Any]
        do {
            targets = try send("Target.getTargets", [:], inSession: false, timeout: 60)
        } catch {
            close()
            throw XCTSkip("Chromium started but does not answer on its DevTools pipe: \(error)")
        }
        let page = ((targets["targetInfos"] as? [[String: Any]]) ?? []).first { $0["type"] as? String == "page" }
        let targetID = try XCTUnwrap(page?["targetId"] as? String, "Chromium has no page: \(targets)")
        let attached = try send("Target.attachToTarget", ["targetId": targetID, "flatten": true], inSession: false)
        session = try XCTUnwrap(attached["sessionId"] as? String)
        _ = try send("Page.enable", [:])
        _ = try send("Runtime.enable", [:])
    }

    deinit { close() }

    func close() {
        guard kill(pid, 0) == 0 else { return }
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        try? FileManager.default.removeItem(atPath: profile)
    }

    /// Goes to `url` and waits for its load event.
    func navigate(_ url: String, timeout: Double = 60) throws {
        _ = try send("Page.navigate", ["url": url])
        try waitFor("document.readyState === 'complete'", timeout: timeout)
    }

    /// The value of `expression` in the page (JSON-like: numbers, strings, arrays, objects), promises awaited.
    func evaluate(_ expression: String) throws -> Any? {
        let answer = try send("Runtime.evaluate", ["expression": expression, "returnByValue": true, "awaitPromise": true])
        if let exception = answer["exceptionDetails"] as? [String: Any] {
            throw BrowserError("\(expression): \((exception["exception"] as? [String: Any])?["description"] ?? exception)")
        }
        return (answer["result"] as? [String: Any])?["value"]
    }

    /// Waits until `condition` (a JavaScript expression) is true in the page: for something the page does, bounded
    /// only so that a broken page fails instead of hanging.
    @discardableResult
    func waitFor(_ condition: String, timeout: Double = 120, _ message: @autoclosure () -> String = "") throws -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if (try evaluate("!!(\(condition))")) as? Bool == true { return true }
            usleep(100_000)
        }
        throw BrowserError("\(condition) was still false after \(Int(timeout)) s. \(message())")
    }

    /// A PNG of the page as rendered, the whole page's height.
    func screenshot(to path: String) throws {
        let answer = try send("Page.captureScreenshot", ["format": "png", "captureBeyondViewport": true])
        let data = try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(answer["data"] as? String)))
        try data.write(to: URL(fileURLWithPath: path))
    }

    /// Sends one command and returns its result; the browser's other messages (events) are passed over.
    private func send(_ method: String, _ parameters: [String: Any], inSession: Bool = true, timeout: Double = 60) throws -> [String: Any] {
        nextID += 1
        var message: [String: Any] = ["id": nextID, "method": method, "params": parameters]
        if inSession { message["sessionId"] = session }
        commands.write(try JSONSerialization.data(withJSONObject: message) + Data([0]))
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            while let end = buffer.firstIndex(of: 0) {
                let frame = buffer[buffer.startIndex..<end]
                buffer = Data(buffer[(end + 1)...])
                guard let answer = try JSONSerialization.jsonObject(with: frame) as? [String: Any],
                      answer["id"] as? Int == nextID else { continue }
                if let error = answer["error"] { throw BrowserError("\(method): \(error)") }
                return (answer["result"] as? [String: Any]) ?? [:]
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { throw BrowserError("\(method): no answer within \(Int(timeout)) s") }
            var poller = pollfd(fd: answers, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, Int32(min(left, 1) * 1000)) >= 0 else { throw BrowserError("poll: \(errno)") }
            guard poller.revents != 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            let count = read(answers, &chunk, chunk.count)
            guard count > 0 else { throw BrowserError("\(method): Chromium closed its DevTools pipe") }
            buffer.append(contentsOf: chunk[0..<count])
        }
    }
}

struct BrowserError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
