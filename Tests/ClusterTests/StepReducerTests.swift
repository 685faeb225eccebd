import Cluster
import Kernels
import TestSupport
import XCTest

final class StepReducerTests: XCTestCase {
    let blockSizes = [5, 3]

    /// Per-micro-batch gradients of the two parameter blocks, and losses.
    func leaves(_ k: Int) -> (blocks: [[[Float]]], losses: [Float]) {
        let blocks = blockSizes.enumerated().map { b, size in
            (0..<k).map { j in testValues(size, seed: UInt64(100 * b + j)).map { $0 * 1000 } }
        }
        return (blocks, testValues(k, seed: 7).map { abs($0) * 50 })
    }

    /// Any split of 0..<K among workers, pieces arriving in any order, gives the single-process tree's bits.
    func testEveryWorkerSplitReducesToTheSameBits() throws {
        for k in [1, 3, 6, 8] {
            let (blocks, losses) = leaves(k)
            let expected = blocks.flatMap { GradientTree.sum($0) }
            let expectedLoss = GradientTree.sum(losses.map { [$0] })[0]
            for workers in 1...k {
                let cuts = (0...workers).map { $0 * k / workers }
                var arrivals: [(Int, Range<Int>)] = []
                for w in 0..<workers {
                    for range in GradientTree.alignedBlocks(cuts[w]..<cuts[w + 1]) {
                        for b in blockSizes.indices { arrivals.append((b, range)) }
                    }
                }
                var reducer = StepReducer(step: 4, microBatches: k, blockSizes: blockSizes)
                for (b, range) in arrivals.reversed() {
                    XCTAssertNil(reducer.reduced())
                    try reducer.add(block: b, range: range, values: GradientTree.sum(Array(blocks[b][range])))
                }
                for w in 0..<workers {
                    for range in GradientTree.alignedBlocks(cuts[w]..<cuts[w + 1]) {
                        try reducer.addLoss(range: range, sum: GradientTree.sum(losses[range].map { [$0] })[0])
                    }
                }
                let result = try XCTUnwrap(reducer.reduced(), "K=\(k) workers=\(workers) incomplete")
                assertBitIdentical(result.gradientSum, expected, "K=\(k) workers=\(workers)")
                XCTAssertEqual(result.lossSum.bitPattern, expectedLoss.bitPattern)
            }
        }
    }

    func testPiecesThatCannotBelongAreRefusedAndChangeNothing() throws {
        var reducer = StepReducer(step: 9, microBatches: 6, blockSizes: blockSizes)
        func refuse(_ block: Int, _ range: Range<Int>, _ values: [Float], _ message: String, line: UInt = #line) {
            XCTAssertThrowsError(try reducer.add(block: block, range: range, values: values), line: line) {
                XCTAssertEqual("\($0)", message, line: line)
            }
        }
        try reducer.add(block: 0, range: 4..<6, values: [1, 2, 3, 4, 5])
        refuse(0, 4..<6, [1, 2, 3, 4, 5], "duplicate gradients of block 0 for micro-batches 4..<6 of step 9 (4..<6 already received)")
        refuse(0, 5..<6, [1, 2, 3, 4, 5], "duplicate gradients of block 0 for micro-batches 5..<6 of step 9 (4..<6 already received)")
        refuse(0, 1..<3, [1, 2, 3, 4, 5], "micro-batches 1..<3 are not an aligned block (a power-of-two width at a multiple of it)")
        refuse(0, 0..<3, [1, 2, 3, 4, 5], "micro-batches 0..<3 are not an aligned block (a power-of-two width at a multiple of it)")
        refuse(0, 6..<7, [1, 2, 3, 4, 5], "micro-batches 6..<7 lie outside 0..<6 of step 9")
        refuse(1, 0..<4, [1, 2], "block 1 of micro-batches 0..<4 has 2 values, expected 3")
        refuse(2, 0..<4, [1], "parameter block 2 does not exist (the model has 2)")
        try reducer.add(block: 0, range: 0..<4, values: [1, 1, 1, 1, 1])
        try reducer.add(block: 1, range: 0..<4, values: [1, 1, 1])
        try reducer.add(block: 1, range: 4..<6, values: [2, 2, 2])
        XCTAssertFalse(reducer.isComplete)  // the loss is still missing
        try reducer.addLoss(range: 0..<4, sum: 1)
        try reducer.addLoss(range: 4..<6, sum: 2)
        XCTAssertEqual(reducer.reduced()?.gradientSum, [2, 3, 4, 5, 6, 3, 3, 3])
        XCTAssertEqual(reducer.reduced()?.lossSum, 3)
        XCTAssertTrue(reducer.nonFinite.isEmpty)
    }

    /// NaN and infinite values are taken (the trainer skips the step) and recorded with their block and range.
    func testNonFiniteValuesAreRecorded() throws {
        var reducer = StepReducer(step: 2, microBatches: 2, blockSizes: [2])
        try reducer.add(block: 0, range: 0..<1, values: [1, .nan])
        try reducer.add(block: 0, range: 1..<2, values: [1, 2])
        try reducer.addLoss(range: 0..<1, sum: 1)
        try reducer.addLoss(range: 1..<2, sum: .infinity)
        XCTAssertEqual(reducer.nonFinite.map { "\($0.block.map(String.init) ?? "loss") \($0.range)" }, ["0 0..<1", "loss 1..<2"])
        XCTAssertTrue(reducer.reduced()!.gradientSum[1].isNaN)
    }
}
