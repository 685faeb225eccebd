import CZlib
import Data
import Foundation
import TestSupport
import XCTest

final class IDXTests: XCTestCase {
    var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "trainerd-idx-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: directory) }

    /// Writes `bytes` gzip-compressed, as Debian ships the datasets.
    func writeGzip(_ name: String, _ bytes: [UInt8]) -> String {
        let path = directory + "/" + name
        let file = gzopen(path, "wb")!
        _ = bytes.withUnsafeBytes { gzwrite(file, $0.baseAddress, UInt32($0.count)) }
        gzclose(file)
        return path
    }

    func idx(_ dims: [UInt32], _ values: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = [0, 0, 8, UInt8(dims.count)]
        for d in dims { bytes += [UInt8(d >> 24), UInt8((d >> 16) & 255), UInt8((d >> 8) & 255), UInt8(d & 255)] }
        return bytes + values
    }

    func testReadsGzippedAndPlainIDX() throws {
        let values = (0..<24).map { UInt8($0 * 10) }
        let gz = try IDXArray.read(writeGzip("a.gz", idx([2, 3, 4], values)))
        XCTAssertEqual(gz.dimensions, [2, 3, 4])
        XCTAssertEqual(gz.bytes, values)
        let plain = directory + "/plain"
        XCTAssertTrue(FileManager.default.createFile(atPath: plain, contents: Data(idx([24], values))))
        XCTAssertEqual(try IDXArray.read(plain).bytes, values)
    }

    func testRejectsWrongMagicTruncationAndMissingFiles() throws {
        let wrong = writeGzip("wrong.gz", [0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0])
        XCTAssertThrowsError(try IDXArray.read(wrong)) {
            XCTAssertEqual("\($0)", "\(wrong): wrong magic 0x00000d01, expected 0x000008NN (unsigned bytes, rank 1–4)")
        }
        let short = writeGzip("short.gz", idx([10, 4], Array(repeating: 1, count: 30)))
        XCTAssertThrowsError(try IDXArray.read(short)) {
            XCTAssertEqual("\($0)", "\(short): truncated, expected 40 bytes of data, found 30")
        }
        // A gzip stream cut in the middle.
        let full = try Data(contentsOf: URL(fileURLWithPath: writeGzip("full.gz", idx([5000], (0..<5000).map { UInt8($0 % 251) }))))
        let cut = directory + "/cut.gz"
        XCTAssertTrue(FileManager.default.createFile(atPath: cut, contents: full.prefix(full.count / 2)))
        XCTAssertThrowsError(try IDXArray.read(cut)) { XCTAssertTrue("\($0)".hasPrefix("\(cut): "), "\($0)") }
        XCTAssertThrowsError(try IDXArray.read(directory + "/none.gz")) {
            XCTAssertEqual("\($0)", "\(self.directory!)/none.gz: file not found")
        }
    }

    func testImagesAndLabelsLoadAsBytesAndConvertPerBatch() throws {
        let images = writeGzip("i.gz", idx([3, 2, 2], [0, 255, 51, 102, 1, 2, 3, 4, 5, 6, 7, 8]))
        let labels = writeGzip("l.gz", idx([3], [9, 0, 4]))
        let set = try ImageDataset.loadIDX(images: images, labels: labels)
        XCTAssertEqual(set.features, 4)
        let batch = set.batch([2, 0])
        XCTAssertEqual(batch.labels, [4, 9])
        XCTAssertEqual(Array(batch.inputs[4..<8]), [0, 1, 0.2, 0.4])
        let fewerLabels = writeGzip("l2.gz", idx([2], [1, 2]))
        XCTAssertThrowsError(try ImageDataset.loadIDX(images: images, labels: fewerLabels)) {
            XCTAssertEqual("\($0)", "\(fewerLabels) has [2] labels for 3 images in \(images)")
        }
    }
}

final class NPYTests: XCTestCase {
    /// Files written by NumPy itself (Tests/Fixtures/small-*.npy).
    func testReadsNumPyWrittenFiles() throws {
        let f4 = try NPYArray.read(fixturesDirectory().appendingPathComponent("small-f4.npy").path)
        XCTAssertEqual(f4.shape, [2, 3])
        XCTAssertEqual(f4.values, [-1, -0.5, 0, 0.5, 1, 1.5])
        let u1 = try NPYArray.read(fixturesDirectory().appendingPathComponent("small-u1.npy").path)
        XCTAssertEqual(u1.shape, [1, 3])
        XCTAssertEqual(u1.values, [0, 7, 255])
        let i8 = try NPYArray.read(fixturesDirectory().appendingPathComponent("small-i8.npy").path)
        XCTAssertEqual(i8.values, [3, -4, 5])
    }

    func testRejectsBadMagicAndTruncatedData() throws {
        XCTAssertThrowsError(try NPYArray.parse(Array("not numpy".utf8), path: "x.npy")) {
            XCTAssertTrue("\($0)".hasPrefix("x.npy: wrong magic"))
        }
        let data = try [UInt8](Data(contentsOf: fixturesDirectory().appendingPathComponent("small-f4.npy")))
        XCTAssertThrowsError(try NPYArray.parse(Array(data.dropLast(3)), path: "t.npy")) {
            XCTAssertEqual("\($0)", "t.npy: truncated, expected 24 bytes of data, found 21")
        }
    }
}

final class BatchPlanTests: XCTestCase {
    func testEpochsArePermutationsFixedBySeedAndEpoch() {
        let plan = BatchPlan(seed: 7, datasetSize: 1000, batchSize: 64, microBatches: 4)
        let first = plan.permutation(epoch: 0)
        XCTAssertEqual(first.sorted(), Array(0..<1000))
        XCTAssertEqual(plan.permutation(epoch: 0), first)
        XCTAssertNotEqual(plan.permutation(epoch: 1), first)
        XCTAssertNotEqual(BatchPlan(seed: 8, datasetSize: 1000, batchSize: 64, microBatches: 4).permutation(epoch: 0), first)
        XCTAssertEqual(plan.stepsPerEpoch, 15)  // the last partial batch is dropped
    }

    func testStepsCoverAnEpochWithoutRepeatsAndMicroBatchesTileTheStep() {
        let plan = BatchPlan(seed: 1, datasetSize: 100, batchSize: 20, microBatches: 4)
        var seen = Set<Int>()
        for step in 0..<plan.stepsPerEpoch {
            let samples = plan.samples(step: step)
            XCTAssertEqual(samples.count, 20)
            seen.formUnion(samples)
            let micro = (0..<4).flatMap { plan.microBatch($0, of: samples) }
            XCTAssertEqual(micro, Array(samples))
        }
        XCTAssertEqual(seen.count, 100)
        XCTAssertEqual(Array(plan.samples(step: 5)), Array(plan.permutation(epoch: 1)[0..<20]))
    }
}

/// The fortunes reader and the next-token windows, on a small corpus written here.
final class TextDataTests: XCTestCase {
    func testFortunesSplitVocabularyAndWindows() throws {
        let directory = NSTemporaryDirectory() + "fortunes-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Two files with .dat indexes, read in name order; a file without one is not a fortune file.
        try "one\n%\ntwo\nlines\n%\nthree\n".write(toFile: directory + "/b", atomically: true, encoding: .utf8)
        try "zero\n%\n".write(toFile: directory + "/a", atomically: true, encoding: .utf8)
        for name in ["a.dat", "b.dat"] { FileManager.default.createFile(atPath: directory + "/" + name, contents: Data([0])) }
        try "ignored\n".write(toFile: directory + "/README", atomically: true, encoding: .utf8)
        let corpus = try FortunesCorpus(directory: directory, validationEvery: 2)
        XCTAssertEqual(corpus.files, ["a", "b"])
        XCTAssertEqual(corpus.train, "zero\n%\ntwo\nlines")
        XCTAssertEqual(corpus.validation, "one\n%\nthree")

        let vocabulary = CharacterVocabulary(text: corpus.train + corpus.validation)
        XCTAssertEqual(vocabulary.characters, ["\n", "%", "e", "h", "i", "l", "n", "o", "r", "s", "t", "w", "z"])
        let tokens = try vocabulary.encode("zero\n%\ntwo")
        XCTAssertEqual(vocabulary.decode(tokens), "zero\n%\ntwo")
        XCTAssertThrowsError(try vocabulary.encode("q")) { XCTAssertEqual("\($0)", "character \"q\" (U+71) is not in the vocabulary") }
        let path = directory + "/vocabulary.json"
        try vocabulary.write(to: path)
        XCTAssertEqual(try CharacterVocabulary.read(path), vocabulary)

        // Windows of 3: sample i is tokens[3i..<3i+3], labels shifted by one; the partial last window is dropped.
        let dataset = TokenDataset(tokens: [0, 1, 2, 3, 4, 5, 6, 7], context: 3, vocabulary: vocabulary)
        XCTAssertEqual(dataset.count, 2)
        let batch = dataset.batch([1, 0])
        XCTAssertEqual(batch.samples, 2)
        XCTAssertEqual(batch.inputs, [3, 4, 5, 0, 1, 2])
        XCTAssertEqual(batch.labels, [4, 5, 6, 1, 2, 3])
    }
}
