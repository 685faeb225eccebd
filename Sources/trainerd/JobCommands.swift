import ArgumentParser
import ControlAPI
import Foundation
import Training

/// Where the daemon's API is and the token to show it: options, or TRAINERD_SERVER and TRAINERD_TOKEN.
struct ServerOptions: ParsableArguments {
    @Option(help: "The daemon's API (default: $TRAINERD_SERVER, else http://127.0.0.1:8470).") var server: String?
    @Option(help: "Access token (default: $TRAINERD_TOKEN).") var token: String?
    @Flag(help: "JSON for scripts instead of a table.") var json = false

    func client() throws -> APIClient {
        let environment = ProcessInfo.processInfo.environment
        return try APIClient(server: server ?? environment["TRAINERD_SERVER"] ?? "http://127.0.0.1:8470",
                             token: token ?? environment["TRAINERD_TOKEN"])
    }

    func printJSON(_ value: some Encodable) throws {
        print(String(decoding: try JSONEncoder.api.encode(value), as: UTF8.self))
    }
}

/// A job id argument: a positive integer.
func jobID(_ text: String) throws -> Int64 {
    guard let id = Int64(text), id > 0 else { throw ValidationError("job \"\(text)\": expected a job id such as 12") }
    return id
}

struct Submit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Submit a job to the daemon; prints its id alone as the last line.")

    @OptionGroup var job: JobOptions
    @Option(help: "Higher runs first and may take workers from lower-priority jobs.") var priority = 0
    @Option(help: "MIN or MIN:MAX workers (default 1: as many as the pool gives; MIN alone is exactly MIN).") var workers: String?
    @Option(help: "A name for the job (default: the config's name).") var name: String?
    @Flag(help: "Then follow the job's events until it ends.") var follow = false
    @OptionGroup var server: ServerOptions

    func run() throws {
        do {
            let (minimum, maximum) = try workerBounds()
            let config = try String(contentsOfFile: job.config, encoding: .utf8)
            let client = try server.client()
            let submitted = try client.submit(SubmitRequest(config: config, overrides: job.overrides, source: job.config, name: name, priority: priority,
                                                            minWorkers: minimum, maxWorkers: maximum))
            if server.json { try server.printJSON(submitted) }
            if follow {
                try followEvents(client, submitted.id, fromStep: nil)
                let ended = try client.job(submitted.id)
                FileHandle.standardError.write(Data("job \(ended.id) \(ended.state)\(ended.weightsSha256.map { ", weights_sha256 \($0)" } ?? "")\(ended.failure.map { ": \($0)" } ?? "")\n".utf8))
            }
            print(submitted.id)
        } catch let error as CocoaError where error.code == .fileReadNoSuchFile {
            fail(ConfigError("\(job.config): no such file"))
        } catch {
            fail(error)
        }
    }

    func workerBounds() throws -> (Int?, Int?) {
        guard let workers else { return (nil, nil) }
        let parts = workers.split(separator: ":", omittingEmptySubsequences: false).map { Int($0) }
        switch parts.count {
        case 1 where parts[0] != nil: return (parts[0], parts[0])
        case 2 where parts[0] != nil && parts[1] != nil: return (parts[0], parts[1])
        default: throw ValidationError("--workers \(workers): expected MIN or MIN:MAX, e.g. 2 or 1:4")
        }
    }
}

/// Prints each event line of job `id` as it comes, until the job ends.
func followEvents(_ client: APIClient, _ id: Int64, fromStep: Int?) throws {
    try client.events(id, fromStep: fromStep, follow: true) { _, line in
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}

struct Jobs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the daemon's jobs.")
    @OptionGroup var server: ServerOptions

    func run() throws {
        do {
            let jobs = try server.client().jobs()
            if server.json { return try server.printJSON(jobs) }
            print(table([["ID", "NAME", "STATE", "PRIORITY", "WORKERS", "STEP", "LOSS", "SUBMITTER"]] + jobs.map { job in
                ["\(job.id)", job.name, job.state + (job.cancelRequested && job.state == "running" ? " (cancelling)" : ""), "\(job.priority)",
                 "\(job.minWorkers):\(job.maxWorkers.map(String.init) ?? "")", "\(job.step)",
                 job.loss.map { String(format: "%.4f", $0) } ?? "-", job.submitter]
            }))
        } catch {
            fail(error)
        }
    }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one job.")
    @Argument(help: "The job's id.") var job: String
    @OptionGroup var server: ServerOptions

    func run() throws {
        do {
            let view = try server.client().job(try jobID(job))
            if server.json { return try server.printJSON(view) }
            let fields: [(String, String?)] = [
                ("id", "\(view.id)"), ("name", view.name), ("state", view.state), ("submitter", view.submitter),
                ("priority", "\(view.priority)"), ("workers", "\(view.minWorkers):\(view.maxWorkers.map(String.init) ?? "")"),
                ("step", "\(view.step)"), ("loss", view.loss.map { String(format: "%.4f", $0) }),
                ("accuracy", view.accuracy.map { String(format: "%.2f%%", $0 * 100) }), ("weights_sha256", view.weightsSha256),
                ("failure", view.failure), ("submitted", timestamp(view.submittedAt)), ("started", view.startedAt.map(timestamp)),
                ("ended", view.endedAt.map(timestamp)),
            ]
            print(table(fields.compactMap { name, value in value.map { [name, $0] } }))
        } catch {
            fail(error)
        }
    }
}

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a job's events (events.jsonl lines).")
    @Argument(help: "The job's id.") var job: String
    @Option(help: "Start at the first event of this step or later.") var fromStep: Int?
    @Flag(name: [.short, .long], help: "Keep following until the job ends.") var follow = false
    @OptionGroup var server: ServerOptions

    func run() throws {
        do {
            let client = try server.client(), id = try jobID(job)
            if follow { return try followEvents(client, id, fromStep: fromStep) }
            try client.events(id, fromStep: fromStep, follow: false) { _, line in
                FileHandle.standardOutput.write(Data((line + "\n").utf8))
            }
        } catch {
            fail(error)
        }
    }
}

struct Cancel: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cancel a job: a queued one at once, a running one at its next step boundary (with a checkpoint).")
    @Argument(help: "The job's id.") var job: String
    @OptionGroup var server: ServerOptions

    func run() throws {
        do {
            let view = try server.client().cancel(try jobID(job))
            if server.json { return try server.printJSON(view) }
            print("job \(view.id): \(view.state == "running" ? "cancelling at its next step boundary" : view.state)")
        } catch {
            fail(error)
        }
    }
}

/// Rows as left-aligned columns, two spaces apart.
func table(_ rows: [[String]]) -> String {
    let widths = (0..<(rows.map(\.count).max() ?? 0)).map { column in rows.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
    return rows.map { row in
        row.enumerated().map { index, cell in index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}

func timestamp(_ seconds: Double) -> String {
    let formatter = ISO8601DateFormatter()
    return formatter.string(from: Date(timeIntervalSince1970: seconds))
}
