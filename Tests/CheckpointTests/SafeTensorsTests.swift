import Checkpoint
import Foundation
import TestSupport
import XCTest

final class SafeTensorsTests: XCTestCase {
    var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "trainerd-st-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        chmod(directory, 0o755)
        try? FileManager.default.removeItem(atPath: directory)
    }

    let sample = SafeTensors(tensors: [
        .init(name: "0.weight", shape: [2, 3], values: [1, 2, 3, 4, 5, 6]),
        .init(name: "0.bias", shape: [2], values: [-0.5, 0.25]),
    ], metadata: ["step": "7"])

    func testRoundTripKeepsOrderShapesValuesAndMetadata() throws {
        let path = directory + "/a.safetensors"
        try sample.write(to: path)
        XCTAssertEqual(try SafeTensors.read(path), sample)
    }

    /// The layout the format specifies: u64 LE header length, JSON header (8-byte aligned), F32 LE data.
    func testLayoutFollowsTheSafetensorsSpecification() throws {
        let bytes = sample.encoded()
        let headerLength = Int(bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        XCTAssertEqual(headerLength % 8, 0)
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + headerLength)])) as? [String: Any])
        let weight = try XCTUnwrap(header["0.weight"] as? [String: Any])
        XCTAssertEqual(weight["dtype"] as? String, "F32")
        XCTAssertEqual(weight["shape"] as? [Int], [2, 3])
        XCTAssertEqual(weight["data_offsets"] as? [Int], [0, 24])
        XCTAssertEqual((header["0.bias"] as? [String: Any])?["data_offsets"] as? [Int], [24, 32])
        XCTAssertEqual((header["__metadata__"] as? [String: String])?["step"], "7")
        XCTAssertEqual(Array(bytes[(8 + headerLength)..<(8 + headerLength + 4)]), [0, 0, 0x80, 0x3F])  // 1.0f
        XCTAssertEqual(bytes.count, 8 + headerLength + 32)
    }

    func testCorruptHeadersAndWrongTensorsAreNamed() throws {
        var bytes = sample.encoded()
        bytes[0] = 0xFF
        XCTAssertThrowsError(try SafeTensors.decode(bytes, path: "x")) {
            XCTAssertTrue("\($0)".hasPrefix("x: not a valid safetensors file (header length"), "\($0)")
        }
        var garbled = sample.encoded()
        garbled[9] = UInt8(ascii: "#")
        XCTAssertThrowsError(try SafeTensors.decode(garbled, path: "y")) {
            XCTAssertEqual("\($0)", "y: not a valid safetensors file (header is not a JSON object)")
        }
        XCTAssertThrowsError(try SafeTensors.decode(Array(sample.encoded().dropLast(4)), path: "z")) {
            XCTAssertTrue("\($0)".contains("lie outside"), "\($0)")
        }
        XCTAssertThrowsError(try sample.values("2.weight", shape: [1], file: "f")) {
            XCTAssertEqual("\($0)", "f: tensor '2.weight' is missing")
        }
        XCTAssertThrowsError(try sample.values("0.weight", shape: [3, 2], file: "f")) {
            XCTAssertEqual("\($0)", "f: tensor '0.weight' has shape [2, 3], expected [3, 2]")
        }
    }

    func testFailedWriteLeavesThePreviousFileIntact() throws {
        let path = directory + "/keep.safetensors"
        try sample.write(to: path)
        chmod(directory, 0o555)
        defer { chmod(directory, 0o755) }
        let other = SafeTensors(tensors: [.init(name: "x", shape: [1], values: [9])])
        if getuid() == 0 {
            // root ignores directory permissions; a missing directory fails the same way.
            XCTAssertThrowsError(try other.write(to: directory + "/missing/keep.safetensors"))
        } else {
            XCTAssertThrowsError(try other.write(to: path))
        }
        XCTAssertEqual(try SafeTensors.read(path), sample)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory), ["keep.safetensors"])
    }

    /// Known digests computed with Python's hashlib over the same float32 little-endian bytes.
    func testWeightsSHA256MatchesHashlib() {
        XCTAssertEqual(weightsSHA256([1.0, -2.5, 0.1]), "2f9cc761bc2594fa578868daeedc59b0fc115513fae3e5dc09c4e86e50b8aaf6")
        XCTAssertEqual(weightsSHA256([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }
}
