import Foundation

/// `trainerd report`: one HTML file with a run's charts (those of the dashboard's job page, `run-charts.js`), its
/// heat map and its events, that opens with no server and no network: the chart library, the scripts, the style and
/// the events are all inside it.
public enum RunReport {
    /// The report of the run whose events.jsonl holds `eventLines`, titled `title`. Lines that are not JSON objects
    /// (a line cut short by a crash) are left out.
    public static func html(title: String, eventLines: [Substring], library: ChartLibrary) throws -> String {
        let events = eventLines.filter { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) is [String: Any]
        }
        let script = withoutSourceMap(String(decoding: try library.script(), as: UTF8.self))
        let chartStyle = withoutSourceMap(String(decoding: try library.style(), as: UTF8.self))
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>\(escapeHTML(title)) · trainerd report</title>
            <style>\(chartStyle)
            \(String(decoding: DashboardAssets.style.bytes, as: UTF8.self))</style>
            <script>\(inScript(script))</script>
            <script>\(inScript(String(decoding: DashboardAssets.runCharts.bytes, as: UTF8.self)))</script>
            </head>
            <body class="report">
            <header><h1>\(escapeHTML(title))</h1><p id="summary" class="summary"></p></header>
            <main id="run"></main>
            <script type="application/json" id="events">[\(inJSONScript(events.joined(separator: ",\n")))]</script>
            <script>
            const events = JSON.parse(document.getElementById("events").textContent);
            const charts = new RunCharts(document.getElementById("run"));
            charts.addAll(events);
            charts.renderNow();
            document.getElementById("summary").textContent = RunCharts.summary(events);
            </script>
            </body></html>

            """
    }

    /// JavaScript safe inside a `<script>` element: a `</script` (which would end it early; in a string or a
    /// comment, where it can be) becomes `<\/script`, which JavaScript strings read the same.
    static func inScript(_ text: String) -> String {
        text.replacingOccurrences(of: "</script", with: "<\\/script", options: .caseInsensitive)
    }

    /// JSON safe inside a `<script>` element: every `</` and `<!--` escaped (`<\/` and `\u003c!--` read the same in
    /// JSON strings, the only place they can be).
    static func inJSONScript(_ text: String) -> String {
        text.replacingOccurrences(of: "</", with: "<\\/").replacingOccurrences(of: "<!--", with: "\\u003c!--")
    }

    static func escapeHTML(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// Without the lines that are only a `sourceMappingURL` comment, which would send a browser's developer tools to fetch a map.
    static func withoutSourceMap(_ text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !($0.hasPrefix("//# sourceMappingURL=") || $0.hasPrefix("/*# sourceMappingURL=")) }.joined(separator: "\n")
    }
}
