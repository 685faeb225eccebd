import Foundation
import XCTest

/// The web dashboard and `trainerd report` in a real browser (Debian's headless Chromium, `HeadlessChromium`), and
/// `/metrics` read by Prometheus' own parser. Every wait is for something the page or the job does; the jobs are
/// open-ended and stopped by the test, so nothing depends on how fast the machine trains.
///
/// With `TRAINERD_SCREENSHOTS=DIR` the tests leave PNGs of the pages there.
final class DashboardInBrowserTests: DaemonTestCase {
    var screenshots: String? { ProcessInfo.processInfo.environment["TRAINERD_SCREENSHOTS"] }

    func browser() throws -> HeadlessChromium {
        try HeadlessChromium(directory: scratch, log: scratch + "/chromium.log")
    }

    /// A job's tensors in forward order: the keys of a step's `grad_norms` as events.jsonl writes them.
    func tensors(_ run: String) throws -> [String] {
        let text = try String(contentsOfFile: run + "/events.jsonl", encoding: .utf8)
        let line = try XCTUnwrap(text.split(separator: "\n").first { $0.contains("\"event\":\"step\"") && $0.contains("grad_norms") })
        let norms = try XCTUnwrap(line.range(of: "\"grad_norms\":{")).upperBound
        let object = line[norms...].prefix { $0 != "}" }
        return object.split(separator: ",").map { String($0.split(separator: ":")[0].dropFirst().dropLast()) }
    }

    /// `serve` with 2 pool workers and an open-ended job. Without a token the page shows only the login and asks
    /// the API nothing. With a read token (from the URL's fragment, which the page then removes) the job's row is
    /// there with its state, and no cancel button; the job's page draws a loss chart whose points grow while the job
    /// runs, a heat map with one row per parameter tensor in forward order, and the workers' joins. An admin's page
    /// has the stop button, and pressing it cancels the job; its submit form refuses a bad config naming the field,
    /// and queues a good one.
    func testTheDashboardFollowsAJobLive() throws {
        try requireDataset()
        let daemon = try startDaemon(state: scratch + "/state")
        let admin = try token(daemon.state, "alice", role: "admin"), reader = try token(daemon.state, "rita", role: "read")
        _ = try startWorkers(daemon, ["w0", "w1"])
        let id = try submit(daemon, admin, job + openEnded + ["--set", "training.eval_every=20"])
        try waitForEvent(run(daemon, id), while: daemon.process, step(workers: 2))
        let page = try browser()

        try page.navigate(daemon.server + "/")
        try page.waitFor("!document.getElementById('login').classList.contains('hidden')", timeout: 30)
        XCTAssertEqual(try page.evaluate("document.getElementById('app').classList.contains('hidden')") as? Bool, true)
        XCTAssertEqual(try page.evaluate("document.querySelectorAll('#jobs tr').length") as? Int, 0)
        XCTAssertEqual(try page.evaluate("performance.getEntriesByType('resource').filter(e => e.name.includes('/v1/')).length") as? Int, 0,
                       "without a token the page asks the API nothing")
        if let screenshots { try page.screenshot(to: screenshots + "/dashboard-login.png") }

        try page.navigate(daemon.server + "/#token=" + reader)
        let row = "document.querySelector('tr[data-job-id=\"\(id)\"]')"
        try page.waitFor("\(row) && \(row).dataset.state === 'running'", timeout: 60, "the jobs table: \(String(describing: try? page.evaluate("document.getElementById('jobs').innerText")))")
        XCTAssertEqual(try page.evaluate("location.hash") as? String, "", "the token leaves the address bar")
        XCTAssertEqual(try page.evaluate("document.getElementById('who').textContent") as? String, "rita (read)")
        let cells = try XCTUnwrap(try page.evaluate("[...\(row).cells].map(c => c.textContent)") as? [String])
        XCTAssertEqual(cells[1], "fmnist-mlp")
        XCTAssertEqual(cells[10], "alice")
        XCTAssertEqual(try page.evaluate("\(row).querySelectorAll('button').length") as? Int, 0, "a read token cannot cancel")
        try page.waitFor("document.getElementById('pool').textContent.startsWith('Pool: 2 workers, 2 busy')", timeout: 60)
        if let screenshots { try page.screenshot(to: screenshots + "/dashboard-jobs.png") }

        _ = try page.evaluate("location.hash = '#/jobs/\(id)'")
        let loss = "document.querySelector('[data-chart=loss]')"
        try page.waitFor("\(loss) && Number(\(loss).dataset.points) > 0 && \(loss).querySelector('canvas')", timeout: 60)
        let first = try XCTUnwrap(try page.evaluate("following.charts.graphs.loss.numRows()") as? Int)
        try page.waitFor("following.charts.graphs.loss.numRows() > \(first) + 5", timeout: 120, "the loss chart gains points while the job runs")
        XCTAssertGreaterThan(try XCTUnwrap(try page.evaluate("Number(\(loss).dataset.points)") as? Int), first)
        let expected = try tensors(run(daemon, id))
        XCTAssertEqual(expected.count, 6, "784-256-256-10: three weights and three biases")
        try page.waitFor("document.querySelector('.heatmap').dataset.rows === '\(expected.count)'", timeout: 60)
        XCTAssertEqual(try page.evaluate("[...document.querySelectorAll('.heat-row')].map(r => r.dataset.tensor)") as? [String], expected)
        try page.waitFor("document.querySelectorAll('.event-list li[data-event=worker_joined]').length === 2", timeout: 60)
        try page.waitFor("Number(document.querySelector('[data-chart=accuracy]').dataset.points) > 0", timeout: 120,
                         "the accuracy chart gets the job's evaluations (every 20 steps)")
        if let screenshots { try page.screenshot(to: screenshots + "/dashboard-job.png") }

        try page.navigate(daemon.server + "/#token=" + admin)
        try page.waitFor("document.getElementById('who').textContent === 'alice (admin)' && \(row) && \(row).querySelector('button.danger')", timeout: 60)
        _ = try page.evaluate("\(row).querySelector('button.danger').click()")
        try waitForEvent(run(daemon, id), while: daemon.process) { $0["event"] as? String == "job_end" && $0["state"] as? String == "cancelled" }
        try page.waitFor("\(row) && \(row).dataset.state === 'cancelled'", timeout: 60)
        XCTAssertTrue(try String(contentsOfFile: daemon.log, encoding: .utf8).contains("api: job \(id) cancelled by alice"))

        // The submit form: a bad config is refused with `train`'s message, naming the field; a good one is queued
        // (it needs 3 workers; the pool has 2) and its row appears.
        let config = try String(contentsOfFile: self.config, encoding: .utf8)
        func submitForm(_ text: String, minWorkers: Int) throws {
            _ = try page.evaluate("""
                document.getElementById('submit-config').value = \(try javaScriptString(text));
                document.getElementById('submit-min').value = '\(minWorkers)';
                document.getElementById('submit-result').textContent = '';
                document.querySelector('#submit-form button[type=submit]').click()
                """)
            try page.waitFor("!['', 'submitting…'].includes(document.getElementById('submit-result').textContent)", timeout: 60)
        }
        try submitForm(config.replacingOccurrences(of: "lr: 0.001", with: "lr: -1"), minWorkers: 1)
        XCTAssertEqual(try page.evaluate("document.getElementById('submit-result').textContent") as? String,
                       "the dashboard's config: optimizer.lr must be positive, got -1.0")
        try submitForm(config, minWorkers: 3)
        let queued = id + 1
        XCTAssertEqual(try page.evaluate("document.getElementById('submit-result').textContent") as? String, "job \(queued) submitted")
        try page.waitFor("document.querySelector('tr[data-job-id=\"\(queued)\"]')?.dataset.state === 'queued'", timeout: 60)
        XCTAssertEqual(try show(daemon, admin, queued)["submitter"] as? String, "alice")
    }

    /// `text` as a JavaScript string literal.
    func javaScriptString(_ text: String) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: [text]), as: UTF8.self).dropFirst().dropLast().description
    }

    /// `trainerd report` of an `mlp-deep` run (8 sigmoid layers, no skip connections), opened from the file with no
    /// server: it loads nothing from the network, its charts have every step (a line cut short left out, a message
    /// with `</script>` shown as text and run as nothing), and its heat map has the 18 tensors with
    /// the first layer's weight marked vanishing at its norm in events.jsonl (below `monitor`'s 1e-6), the last
    /// layer's not. (The tensors are named by module index: the sigmoids between the layers have none.)
    func testAReportOfTheDeepMLPShowsItsVanishingFirstLayer() throws {
        try requireDataset()
        let run = scratch + "/deep", steps = 20
        let trained = try trainerd(["train", repository.appendingPathComponent("configs/mlp-deep.yaml").path, "--run-dir", run,
                                    "--set", "training.max_steps=\(steps)"])
        XCTAssertEqual(trained.status, 0, trained.stderr)
        // A message that tries to end the report's script, and a line cut short (as a crash leaves it).
        let hostile = #"{"event":"warning","time":1,"message":"</script><script>window.injected = 1</script><!--"}"#
        let file = try FileHandle(forWritingTo: URL(fileURLWithPath: run + "/events.jsonl"))
        file.seekToEndOfFile()
        file.write(Data((hostile + "\n" + #"{"event":"step","time":2,"step":21,"lo"#).utf8))
        try file.close()
        let made = try trainerd(["report", run])
        XCTAssertEqual(made.status, 0, made.stderr)
        XCTAssertTrue(made.stdout.hasPrefix("report \(run)/report.html"), made.stdout)
        let lastStep = try XCTUnwrap(events(run).last { $0["event"] as? String == "step" })
        let norms = try XCTUnwrap(lastStep["grad_norms"] as? [String: Double])
        let expected = try tensors(run), lastWeight = expected[expected.count - 2]
        XCTAssertEqual(expected.count, 18, "9 linear layers")
        let firstNorm = try XCTUnwrap(norms["0.weight"]), lastNorm = try XCTUnwrap(norms[lastWeight])
        XCTAssertLessThan(firstNorm, 1e-6, "mlp-deep's first layer vanishes (the config's point)")
        XCTAssertGreaterThan(lastNorm, 1e-3)

        let page = try browser()
        try page.navigate("file://\(run)/report.html")
        try page.waitFor("document.querySelector('[data-chart=loss]').dataset.points === '\(steps)'", timeout: 60)
        XCTAssertEqual(try page.evaluate("performance.getEntriesByType('resource').length") as? Int, 0, "the report loads nothing")
        XCTAssertEqual(try page.evaluate("document.querySelector('[data-chart=gradnorm]').dataset.points") as? String, "\(steps)")
        XCTAssertEqual(try page.evaluate("document.querySelectorAll('[data-chart=loss] canvas').length > 0") as? Bool, true)
        XCTAssertEqual(try page.evaluate("[...document.querySelectorAll('.heat-row')].map(r => r.dataset.tensor)") as? [String], expected)
        let first = "document.querySelector('.heat-row[data-tensor=\"0.weight\"]')"
        XCTAssertEqual(try page.evaluate("\(first).classList.contains('vanishing')") as? Bool, true)
        XCTAssertEqual(try page.evaluate("\(first).querySelector('.flag').textContent") as? String, "↓ vanishing")
        let shown = try XCTUnwrap(try page.evaluate("Number(\(first).dataset.latest)") as? Double)
        XCTAssertEqual(shown, firstNorm, accuracy: firstNorm * 1e-9)
        let stepsBelow = events(run).filter { ($0["grad_norms"] as? [String: Double])?["0.weight"].map { $0 < 1e-6 } ?? false }.count
        XCTAssertEqual(try page.evaluate("\(first).dataset.vanishingSteps") as? String, "\(stepsBelow)")
        XCTAssertEqual(try page.evaluate("document.querySelector('.heat-row[data-tensor=\"\(lastWeight)\"]').classList.contains('vanishing')") as? Bool, false)
        XCTAssertTrue((try page.evaluate("document.getElementById('summary').textContent") as? String ?? "").contains("done at step \(steps)"))
        XCTAssertEqual(try page.evaluate("typeof window.injected") as? String, "undefined")
        XCTAssertEqual(try page.evaluate("document.querySelector('.event-list li[data-event=warning] span').textContent") as? String,
                       "</script><script>window.injected = 1</script><!--", "shown as text")
        if let screenshots { try page.screenshot(to: screenshots + "/report-mlp-deep.png") }
    }

    /// `/metrics` while a job runs, read by prometheus_client's parser: the job's series carry `job_id` and
    /// `job_name` (never `job`) and agree with the API's view; the pool's workers are busy; requests and refusals
    /// are counted. Without a token it is refused like the API.
    func testPrometheusReadsTheDaemonsMetrics() throws {
        try requireDataset()
        let daemon = try startDaemon(state: scratch + "/state")
        let reader = try token(daemon.state, "rita", role: "read"), admin = try token(daemon.state, "alice", role: "admin")
        _ = try startWorkers(daemon, ["w0", "w1"])
        let id = try submit(daemon, admin, job + openEnded)
        try waitForEvent(run(daemon, id), while: daemon.process, step(workers: 2))
        let refused = try run("/usr/bin/env", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", daemon.server + "/metrics"], timeout: 60)
        XCTAssertEqual(refused.stdout, "401")
        let scraped = try run("/usr/bin/env", ["curl", "-sf", "-H", "Authorization: Bearer \(reader)", daemon.server + "/metrics"], timeout: 60)
        XCTAssertEqual(scraped.status, 0, scraped.stderr)
        let path = scratch + "/metrics.txt"
        try scraped.stdout.write(toFile: path, atomically: true, encoding: .utf8)
        let parsed = try run("/usr/bin/env", ["python3", "-c", """
            import json, sys
            from prometheus_client.parser import text_string_to_metric_families
            samples = []
            for family in text_string_to_metric_families(open(sys.argv[1]).read()):
                assert family.documentation, family.name
                for sample in family.samples:
                    assert "job" not in sample.labels, sample
                    samples.append([sample.name, sample.labels, sample.value])
            print(json.dumps(samples))
            """, path], timeout: 60)
        if parsed.stderr.contains("No module named 'prometheus_client'") {
            throw XCTSkip("prometheus_client is not installed (deploy/setup.sh --tests installs it)")
        }
        XCTAssertEqual(parsed.status, 0, parsed.stderr + scraped.stdout)
        let samples = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(parsed.stdout.utf8)) as? [[Any]])
        func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
            samples.first { $0[0] as? String == name && ($0[1] as? [String: String]) == labels }?[2] as? Double
        }
        let job = ["job_id": "\(id)", "job_name": "fmnist-mlp"]
        XCTAssertEqual(value("trainerd_up", job), 1)
        XCTAssertEqual(value("trainerd_workers", job), 2)
        XCTAssertGreaterThan(value("trainerd_step", job) ?? 0, 0)
        XCTAssertGreaterThan(value("trainerd_gradient_bytes_total", job) ?? 0, 0)
        XCTAssertEqual(value("trainerd_jobs", ["state": "running"]), 1)
        XCTAssertEqual(value("trainerd_pool_workers"), 2)
        XCTAssertEqual(value("trainerd_pool_busy_workers"), 2)
        XCTAssertEqual(value("trainerd_pool_idle_workers"), 0)
        XCTAssertEqual(value("trainerd_api_refusals_total", ["code": "401"]), 1)
        XCTAssertEqual(value("trainerd_api_requests_total", ["method": "POST", "code": "201"]), 1, "the submit")
        let shown = try show(daemon, reader, id)
        XCTAssertGreaterThanOrEqual(shown["step"] as? Int ?? 0, Int(value("trainerd_step", job) ?? 0))
        XCTAssertEqual(shown["total_steps"] as? Int, value("trainerd_total_steps", job).map { Int($0) })
    }
}
