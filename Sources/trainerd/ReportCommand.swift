import ArgumentParser
import Dashboard
import Foundation

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make one self-contained HTML file of a run's charts (opens with no server and no network).",
        discussion: "RUN_DIR is any run directory: train's or launch's --run-dir, or a daemon's STATE_DIR/jobs/ID.")

    @Argument(help: "The run directory (it holds events.jsonl).") var runDir: String
    @Option(help: "Where to write the report (default: RUN_DIR/report.html).") var output: String?
    @Option(help: "Where dygraphs is (Debian's libjs-dygraphs).") var chartLibrary = ChartLibrary.debianDirectory

    func run() throws {
        do {
            let events = (runDir as NSString).appendingPathComponent("events.jsonl")
            guard let data = FileManager.default.contents(atPath: events) else {
                throw ValidationError("\(events): no such file; RUN_DIR must be a run directory (train's --run-dir, or STATE_DIR/jobs/ID)")
            }
            let lines = String(decoding: data, as: UTF8.self).split(separator: "\n")
            let title = ((runDir as NSString).standardizingPath as NSString).lastPathComponent
            let html = try RunReport.html(title: "\(title): \(jobName(lines) ?? "run")", eventLines: lines,
                                          library: ChartLibrary(directory: chartLibrary))
            let path = output ?? (runDir as NSString).appendingPathComponent("report.html")
            guard FileManager.default.createFile(atPath: path, contents: Data(html.utf8)) else {
                throw ValidationError("\(path): cannot write the report")
            }
            print("report \(path) (\(lines.count) events, \(html.utf8.count / 1024) KiB)")
        } catch {
            fail(error)
        }
    }

    /// The job's name, from the first `job_start`.
    private func jobName(_ lines: [Substring]) -> String? {
        for line in lines where line.contains("\"job_start\"") {
            if let event = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] { return event["job"] as? String }
        }
        return nil
    }
}
