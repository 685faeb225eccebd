import Foundation
import XCTest

/// A tensor from the PyTorch-computed fixtures in Tests/Fixtures (values are float64 in the file).
public struct FixtureTensor {
    public var shape: [Int]
    public var values: [Double]

    public var floats: [Float] { values.map { Float($0) } }
    public var ints: [Int32] { values.map { Int32($0) } }

    init?(_ json: Any?) {
        guard let object = json as? [String: Any], let shape = object["shape"] as? [Int],
              let data = object["data"] as? [NSNumber] else { return nil }
        self.shape = shape
        self.values = data.map(\.doubleValue)
    }
}

/// Reads Tests/Fixtures/NAME.json (copied from the PyTorch golden files) and returns its `cases`.
public func loadFixtureCases(_ name: String, file: StaticString = #filePath) throws -> [String: Any] {
    let url = fixturesDirectory().appendingPathComponent("\(name).json")
    let data = try Data(contentsOf: url)
    let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    XCTAssertEqual(root["format"] as? String, "trainerd-golden")
    return try XCTUnwrap(root["cases"] as? [String: Any])
}

public func fixturesDirectory() -> URL {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
}

public func tensor(_ json: Any?, file: StaticString = #filePath, line: UInt = #line) throws -> FixtureTensor {
    try XCTUnwrap(FixtureTensor(json), "not a fixture tensor", file: file, line: line)
}

/// Checks |actual − expected| ≤ abs + rel·|expected| for every element and prints the worst difference, so the
/// test log carries the per-tensor figures. Returns the worst absolute difference.
@discardableResult
public func assertClose(
    _ actual: [Float], _ expected: [Double], rel: Double = 1e-4, abs: Double = 1e-5, _ name: String,
    file: StaticString = #filePath, line: UInt = #line
) -> Double {
    XCTAssertEqual(actual.count, expected.count, "\(name): element count", file: file, line: line)
    var worst = 0.0, worstRelative = 0.0, failures = 0
    for (a, e) in zip(actual, expected) {
        let difference = Swift.abs(Double(a) - e)
        worst = max(worst, difference)
        worstRelative = max(worstRelative, difference / max(Swift.abs(e), 1e-12))
        if !(difference <= abs + rel * Swift.abs(e)) { failures += 1 }
    }
    print(String(format: "  worst |diff| %-40@ abs %.3e  rel %.3e", name as NSString, worst, worstRelative))
    XCTAssertEqual(failures, 0, "\(name): \(failures) of \(expected.count) values outside tolerance (worst abs \(worst))",
                   file: file, line: line)
    return worst
}

/// Bit-level equality of float buffers, reporting the first difference.
public func assertBitIdentical(_ a: [Float], _ b: [Float], _ name: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "\(name): element count", file: file, line: line)
    if let index = a.indices.first(where: { $0 < b.count && a[$0].bitPattern != b[$0].bitPattern }) {
        XCTFail("\(name): first difference at \(index): \(a[index]) vs \(b[index])", file: file, line: line)
    }
}

/// Deterministic pseudo-random floats in [-1, 1) for test inputs (independent of the code under test).
public func testValues(_ count: Int, seed: UInt64) -> [Float] {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    return (0..<count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Float(Int32(truncatingIfNeeded: state >> 32)) / Float(1 << 31)
    }
}
