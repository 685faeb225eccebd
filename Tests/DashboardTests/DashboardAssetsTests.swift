import Dashboard
import Foundation
import XCTest

final class DashboardAssetsTests: XCTestCase {
    /// Every `/assets/…` that the page names is served; other names are not.
    func testThePageNamesOnlyAssetsThatAreServed() throws {
        let page = String(decoding: DashboardAssets.index.bytes, as: UTF8.self)
        let names = page.components(separatedBy: "\"/assets/").dropFirst().map { String($0.prefix { $0 != "\"" }) }
        XCTAssertEqual(Set(names), ["dygraph.min.css", "dashboard.css", "dygraph.min.js", "run-charts.js", "dashboard.js"])
        let library = ChartLibrary()
        for name in names where !name.hasPrefix("dygraph") {
            XCTAssertFalse(try XCTUnwrap(try DashboardAssets.file(name, library: library)).bytes.isEmpty, name)
        }
        XCTAssertNil(try DashboardAssets.file("../../etc/passwd", library: library))
    }

    func testAMissingChartLibraryIsNamedWithItsPackage() {
        let library = ChartLibrary(directory: "/nonexistent/dygraphs")
        XCTAssertFalse(library.isInstalled)
        XCTAssertThrowsError(try DashboardAssets.file("dygraph.min.js", library: library)) { error in
            XCTAssertEqual("\(error)", "/nonexistent/dygraphs/dygraph.min.js: the charting library is missing; install Debian's libjs-dygraphs (deploy/setup.sh does)")
        }
        XCTAssertThrowsError(try RunReport.html(title: "t", eventLines: [], library: library))
    }
}
