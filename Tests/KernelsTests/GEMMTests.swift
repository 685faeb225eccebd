import Kernels
import TestSupport
import XCTest

final class GEMMTests: XCTestCase {
    override func tearDown() {
        VectorISA.force(VectorISA.detected)
    }

    /// Runs the fast path for `shape` with inputs from `seed`.
    private func multiply(_ shape: GEMMShape, seed: UInt64, accumulate: Bool = false, partitions: Int? = nil,
                          reference: Bool = false) -> [Float] {
        let a = testValues(shape.m * shape.k, seed: seed)
        let b = testValues(shape.k * shape.n, seed: seed + 1)
        var c = testValues(shape.m * shape.n, seed: seed + 2)
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                c.withUnsafeMutableBufferPointer { pc in
                    if reference {
                        GEMM.reference(shape, pa.baseAddress!, pb.baseAddress!, pc.baseAddress!, accumulate: accumulate)
                    } else {
                        GEMM.multiply(shape, pa.baseAddress!, pb.baseAddress!, pc.baseAddress!, accumulate: accumulate,
                                      partitions: partitions)
                    }
                }
            }
        }
        return c
    }

    private let awkwardShapes: [(Int, Int, Int)] = [
        (1, 1, 1), (1, 37, 5), (7, 1, 300), (8, 32, 16), (9, 33, 257), (17, 65, 3), (6, 16, 512), (64, 10, 256),
        (100, 70, 530), (13, 300, 1),
    ]

    /// Every form, shape and ISA gives exactly the reference's bits (same fma chain per element).
    func testFastPathMatchesReferenceBitForBitOnEveryISA() {
        let isas = VectorISA.allCases.filter { $0.rawValue <= VectorISA.detected.rawValue }
        print("ISAs tested: \(isas.map(\.name)) (detected \(VectorISA.detected.name))")
        for isa in isas {
            XCTAssertEqual(VectorISA.force(isa), isa)
            for (m, n, k) in awkwardShapes {
                for transposeA in [false, true] {
                    for transposeB in [false, true] {
                        for accumulate in [false, true] {
                            let shape = GEMMShape(m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB)
                            let fast = multiply(shape, seed: 7, accumulate: accumulate)
                            let slow = multiply(shape, seed: 7, accumulate: accumulate, reference: true)
                            assertBitIdentical(fast, slow, "\(isa.name) \(shape) accumulate \(accumulate)")
                        }
                    }
                }
            }
        }
    }

    /// The reference itself against a Double-precision product: it is a correct matrix product.
    func testReferenceAgreesWithDoublePrecisionProduct() {
        let (m, n, k) = (5, 7, 300)
        let a = testValues(m * k, seed: 1), b = testValues(k * n, seed: 2)
        var c = [Float](repeating: 0, count: m * n)
        GEMM.reference(GEMMShape(m: m, n: n, k: k), a, b, &c)
        for i in 0..<m {
            for j in 0..<n {
                let exact = (0..<k).reduce(0.0) { $0 + Double(a[i * k + $1]) * Double(b[$1 * n + j]) }
                XCTAssertEqual(Double(c[i * n + j]), exact, accuracy: 1e-4)
            }
        }
    }

    /// Cutting C into any number of blocks across threads leaves every bit unchanged.
    func testResultDoesNotDependOnPartition() {
        for (m, n, k) in [(300, 200, 129), (40, 1000, 64), (513, 20, 33)] {
            for (ta, tb) in [(false, false), (false, true), (true, false)] {
                let shape = GEMMShape(m: m, n: n, k: k, transposeA: ta, transposeB: tb)
                let single = Parallel.withThreads(1) { multiply(shape, seed: 3, partitions: 1) }
                for threads in [2, 3] {
                    Parallel.withThreads(threads) {
                        for partitions in [2, 3, 7, 16] {
                            assertBitIdentical(multiply(shape, seed: 3, partitions: partitions), single,
                                               "\(shape) threads \(threads) partitions \(partitions)")
                        }
                        assertBitIdentical(multiply(shape, seed: 3), single, "\(shape) threads \(threads) default partition")
                    }
                }
            }
        }
    }

    func testZeroInnerDimensionClearsOrKeepsC() {
        let shape = GEMMShape(m: 3, n: 4, k: 0)
        XCTAssertEqual(multiply(shape, seed: 1), [Float](repeating: 0, count: 12))
        XCTAssertEqual(multiply(shape, seed: 1, accumulate: true), testValues(12, seed: 3))
    }
}

final class ParallelTests: XCTestCase {
    func testEveryChunkRunsOnceAndNestedRegionsRunInline() {
        Parallel.withThreads(2) {
            var counts = [Int](repeating: 0, count: 40)
            var nestedInside = [Bool](repeating: false, count: 40)
            counts.withUnsafeMutableBufferPointer { slots in
                nestedInside.withUnsafeMutableBufferPointer { flags in
                    Parallel.forEach(40) { chunk in
                        slots[chunk] += 1
                        Parallel.forEach(3) { _ in flags[chunk] = Parallel.isInsideRegion }
                    }
                }
            }
            XCTAssertEqual(counts, [Int](repeating: 1, count: 40))
            XCTAssertTrue(nestedInside.allSatisfy { $0 })
            XCTAssertFalse(Parallel.isInsideRegion)
        }
    }
}

final class GradientTreeTests: XCTestCase {
    func testAlignedBlocksCoverRangesWithMaximalDyadicBlocks() {
        XCTAssertEqual(GradientTree.alignedBlocks(0..<8), [0..<8])
        XCTAssertEqual(GradientTree.alignedBlocks(0..<3), [0..<2, 2..<3])
        XCTAssertEqual(GradientTree.alignedBlocks(3..<8), [3..<4, 4..<8])
        XCTAssertEqual(GradientTree.alignedBlocks(1..<7), [1..<2, 2..<4, 4..<6, 6..<7])
    }

    /// Any split of 0..<K into contiguous worker ranges, summed block by block in the tree, gives the bits of
    /// one process summing all K leaves: the determinism scheme across worker counts.
    func testBlockSumsCombineToTheSameBitsAsTheFullTree() {
        for k in [1, 2, 3, 5, 8, 12] {
            let leaves = (0..<k).map { testValues(33, seed: UInt64(100 + $0)).map { $0 * 1000 } }
            let full = GradientTree.sum(leaves)
            for workers in 1...k {
                // Contiguous ranges as the coordinator assigns them.
                let cuts = (0...workers).map { $0 * k / workers }
                var partial: [Int: [Float]] = [:]  // block start → sum, keyed by aligned blocks
                var blocks: [Range<Int>] = []
                for w in 0..<workers {
                    for block in GradientTree.alignedBlocks(cuts[w]..<cuts[w + 1]) {
                        partial[block.lowerBound] = GradientTree.sum(Array(leaves[block]))
                        blocks.append(block)
                    }
                }
                let combined = combine(blocks: blocks, partial: partial, k: k)
                assertBitIdentical(combined, full, "K=\(k) workers=\(workers)")
            }
        }
    }

    /// Completes the tree from aligned partial sums, as a coordinator does.
    private func combine(blocks: [Range<Int>], partial: [Int: [Float]], k: Int) -> [Float] {
        var width = 1
        while width < k { width *= 2 }
        func node(_ start: Int, _ size: Int) -> [Float] {
            if let block = blocks.first(where: { $0.lowerBound == start && $0.count == size }) {
                return partial[block.lowerBound]!
            }
            let half = size / 2
            var left = node(start, half)
            if start + half < k {
                let right = node(start + half, half)
                for i in left.indices { left[i] += right[i] }
            }
            return left
        }
        return node(0, width)
    }
}

final class SegmentedGEMMTests: XCTestCase {
    override func tearDown() { VectorISA.force(VectorISA.detected) }

    /// The fused kernel equals one reference GEMM per segment combined by `GradientTree.sum`, bit for bit, on
    /// every ISA and column partition.
    func testSegmentedTransposedProductEqualsPerSegmentProductsInTheTree() {
        Parallel.withThreads(2) {
            for isa in VectorISA.allCases where isa.rawValue <= VectorISA.detected.rawValue {
                VectorISA.force(isa)
                for (m, n, segmentRows, segments) in [(10, 784, 16, 8), (256, 70, 3, 5), (7, 33, 1, 7), (64, 256, 32, 4),
                                                     (9, 600, 5, 1), (33, 40, 2, 12)] {
                    let rows = segmentRows * segments
                    let a = testValues(rows * m, seed: 11), b = testValues(rows * n, seed: 12)
                    var parts: [[Float]] = (0..<segments).map { s in
                        var part = [Float](repeating: 0, count: m * n)
                        GEMM.reference(GEMMShape(m: m, n: n, k: segmentRows, transposeA: true),
                                       Array(a[(s * segmentRows * m)...]), Array(b[(s * segmentRows * n)...]), &part)
                        return part
                    }
                    let expected = GradientTree.sum(consuming: &parts)
                    for partitions in [1, 2, 3] {
                        var c = [Float](repeating: .nan, count: m * n)
                        GEMM.multiplyTransposedSegmented(m: m, n: n, segmentRows: segmentRows, segments: segments, a, b, &c,
                                                         partitions: partitions)
                        assertBitIdentical(c, expected, "\(isa.name) m \(m) n \(n) segments \(segments)×\(segmentRows) partitions \(partitions)")
                    }
                }
            }
        }
    }

    /// Mixed precision: on every ISA (AVX512-BF16's vdpbf16ps included) and form, the bf16 product is the chain
    /// over k pairs that an independent implementation here computes, c = fma(a_odd, b_odd, c) then
    /// fma(a_even, b_even, c), inputs rounded to bfloat16 (nearest, ties to even; a missing odd element is 0), bit
    /// for bit; the segmented weight-gradient product equals per-segment products in the tree.
    func testBF16ProductsFollowThePairChainOnEveryISA() {
        func bf16(_ value: Float) -> Float {
            let bits = value.bitPattern
            return Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000)
        }
        func pairChain(_ shape: GEMMShape, _ a: [Float], _ b: [Float]) -> [Float] {
            func at(_ x: [Float], _ transposed: Bool, _ row: Int, _ column: Int, _ rows: Int, _ columns: Int) -> Float {
                transposed ? x[column * rows + row] : x[row * columns + column]
            }
            var c = [Float](repeating: 0, count: shape.m * shape.n)
            for i in 0..<shape.m {
                for j in 0..<shape.n {
                    var sum: Float = 0
                    for k in stride(from: 0, to: shape.k, by: 2) {
                        let aEven = bf16(at(a, shape.transposeA, i, k, shape.m, shape.k))
                        let bEven = bf16(at(b, shape.transposeB, k, j, shape.k, shape.n))
                        let aOdd = k + 1 < shape.k ? bf16(at(a, shape.transposeA, i, k + 1, shape.m, shape.k)) : 0
                        let bOdd = k + 1 < shape.k ? bf16(at(b, shape.transposeB, k + 1, j, shape.k, shape.n)) : 0
                        sum = sum.addingProduct(aOdd, bOdd).addingProduct(aEven, bEven)
                    }
                    c[i * shape.n + j] = sum
                }
            }
            return c
        }
        let isas = VectorISA.allCases.filter { $0.rawValue <= VectorISA.detected.rawValue }
        print("bf16 ISAs tested: \(isas.map(\.name))")
        for isa in isas {
            VectorISA.force(isa)
            for (m, n, k) in [(1, 1, 1), (7, 1, 301), (9, 33, 257), (17, 65, 3), (64, 10, 256), (100, 70, 530), (13, 40, 600)] {
                for (transposeA, transposeB) in [(false, false), (false, true), (true, false)] {
                    let a = testValues(m * k, seed: 3), b = testValues(k * n, seed: 4)
                    let shape = GEMMShape(m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB, precision: .bf16)
                    let expected = pairChain(shape, a, b)
                    for partitions in [1, 3] {
                        var c = [Float](repeating: .nan, count: m * n)
                        GEMM.multiply(shape, a, b, &c, partitions: partitions)
                        assertBitIdentical(c, expected, "\(isa.name) \(shape) partitions \(partitions)")
                    }
                    var reference = [Float](repeating: 0, count: m * n)
                    GEMM.reference(shape, a, b, &reference)
                    assertBitIdentical(reference, expected, "reference \(shape)")
                }
            }
            for (m, n, segmentRows, segments) in [(10, 100, 16, 8), (33, 40, 3, 5)] {
                let a = testValues(segmentRows * segments * m, seed: 5), b = testValues(segmentRows * segments * n, seed: 6)
                var parts = (0..<segments).map { s in
                    pairChain(GEMMShape(m: m, n: n, k: segmentRows, transposeA: true, precision: .bf16),
                              Array(a[(s * segmentRows * m)..<((s + 1) * segmentRows * m)]),
                              Array(b[(s * segmentRows * n)..<((s + 1) * segmentRows * n)]))
                }
                var c = [Float](repeating: .nan, count: m * n)
                GEMM.multiplyTransposedSegmented(m: m, n: n, segmentRows: segmentRows, segments: segments, a, b, &c,
                                                 precision: .bf16)
                assertBitIdentical(c, GradientTree.sum(consuming: &parts), "\(isa.name) segmented \(segments)×\(segmentRows)")
            }
        }
        VectorISA.force(VectorISA.detected)
    }
}
