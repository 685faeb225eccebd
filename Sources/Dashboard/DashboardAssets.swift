import Foundation

/// The dashboard's own files, embedded in the binary (`Assets/`), and the charting library, read from Debian's
/// `libjs-dygraphs` (never from a CDN, never copied into the repository).
///
///     /                          index.html: the login, the jobs table and a job's page (dashboard.js)
///     /assets/dashboard.css      the dashboard's and the report's style
///     /assets/run-charts.js      a run's charts, heat map and events from its events.jsonl (the report's too)
///     /assets/dashboard.js       the token, the API calls and the live streams
///     /assets/dygraph.min.js     dygraphs, from ChartLibrary.directory
///     /assets/dygraph.min.css
public enum DashboardAssets {
    public struct File: Sendable {
        public let bytes: [UInt8]
        public let contentType: String
    }

    public static let index = File(bytes: PackageResources.index_html, contentType: "text/html; charset=utf-8")
    static let style = File(bytes: PackageResources.dashboard_css, contentType: "text/css; charset=utf-8")
    static let runCharts = File(bytes: PackageResources.run_charts_js, contentType: "text/javascript; charset=utf-8")
    static let dashboard = File(bytes: PackageResources.dashboard_js, contentType: "text/javascript; charset=utf-8")

    /// The URL path of every asset under `/assets/`.
    public static let prefix = "/assets/"

    /// The asset named `name` (the path after `/assets/`), the chart library's from `library`; nil: none such.
    public static func file(_ name: String, library: ChartLibrary) throws -> File? {
        switch name {
        case "dashboard.css": return style
        case "run-charts.js": return runCharts
        case "dashboard.js": return dashboard
        case "dygraph.min.js": return File(bytes: try library.script(), contentType: "text/javascript; charset=utf-8")
        case "dygraph.min.css": return File(bytes: try library.style(), contentType: "text/css; charset=utf-8")
        default: return nil
        }
    }
}

/// dygraphs (dygraphs.com: interactive charts for long time series), as Debian's `libjs-dygraphs` installs it.
public struct ChartLibrary: Sendable {
    /// Where Debian puts it.
    public static let debianDirectory = "/usr/share/javascript/dygraphs"
    public let directory: String

    public init(directory: String = ChartLibrary.debianDirectory) { self.directory = directory }

    public func script() throws -> [UInt8] { try read("dygraph.min.js") }
    public func style() throws -> [UInt8] { try read("dygraph.min.css") }

    /// Whether the library is there (the daemon warns at start-up when it is not).
    public var isInstalled: Bool { FileManager.default.isReadableFile(atPath: directory + "/dygraph.min.js") }

    private func read(_ name: String) throws -> [UInt8] {
        let path = directory + "/" + name
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ChartLibraryMissing(path: path)
        }
        return [UInt8](data)
    }
}

public struct ChartLibraryMissing: Error, CustomStringConvertible {
    public let path: String
    public init(path: String) { self.path = path }
    public var description: String {
        "\(path): the charting library is missing; install Debian's libjs-dygraphs (deploy/setup.sh does)"
    }
}
