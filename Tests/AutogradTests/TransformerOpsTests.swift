import Autograd
import TestSupport
import Foundation
import XCTest

/// What the fixtures cannot show: reductions over samples give the same bits however the samples are grouped
/// into passes, causal attention never looks ahead, and dropout's masks are seeded and grouping-independent.
final class TransformerOpsTests: XCTestCase {
    /// Gradients of the parameters of `op` for 4 samples as one pass of 4 micro-batches, and as 4 passes of one
    /// combined in the tree: they must be the same bits.
    func assertSegmentedEqualsSeparate(
        _ name: String, sampleShape: [Int], parameterShapes: [[Int]], _ op: (Tensor, [Tensor]) -> Tensor
    ) {
        let samples = 4, perSample = sampleShape.reduce(1, *)
        let x = testValues(samples * perSample, seed: 7)
        let parameterValues = parameterShapes.enumerated().map { testValues($1.reduce(1, *), seed: UInt64(20 + $0)) }
        func gradients(of rows: Range<Int>, segments: Int) -> [[Float]] {
            let parameters = zip(parameterShapes, parameterValues).map { Tensor(shape: $0, storage: $1).requiringGrad() }
            let input = Tensor(shape: [rows.count] + sampleShape,
                               storage: Array(x[(rows.lowerBound * perSample)..<(rows.upperBound * perSample)]))
            PassContext(segments: segments).apply {
                let out = op(input, parameters)
                (out * Tensor(shape: out.shape, storage: testValues(out.count, seed: UInt64(99 + rows.lowerBound)))).sum().backward()
            }
            return parameters.map { $0.grad!.storage }
        }
        // The upstream weights differ per pass above, so build the single pass's upstream the same way.
        let parameters = zip(parameterShapes, parameterValues).map { Tensor(shape: $0, storage: $1).requiringGrad() }
        PassContext(segments: samples).apply {
            let out = op(Tensor(shape: [samples] + sampleShape, storage: x), parameters)
            let perRow = out.count / samples
            let upstream = (0..<samples).flatMap { testValues(perRow, seed: UInt64(99 + $0)) }
            out.backward(seed: upstream)
        }
        let separate = (0..<samples).map { gradients(of: $0..<($0 + 1), segments: 1) }
        for index in parameterShapes.indices {
            assertBitIdentical(parameters[index].grad!.storage, treeSum(separate.map { $0[index] }),
                               "\(name) parameter \(index)")
        }
    }

    func testLayerNormParameterGradientsFollowTheTree() {
        assertSegmentedEqualsSeparate("layer norm", sampleShape: [3, 8], parameterShapes: [[8], [8]]) {
            $0.layerNorm(weight: $1[0], bias: $1[1])
        }
    }

    func testEmbeddingGradientFollowsTheTree() {
        // Sample s holds token ids derived from its values; every sample repeats id 2.
        assertSegmentedEqualsSeparate("embedding", sampleShape: [3], parameterShapes: [[5, 4]]) { input, table in
            let ids = input.storage.enumerated().map { Int32($0.offset % 3 == 0 ? 2 : Int(abs($0.element) * 4.99)) }
            return table[0].embedding(ids, shape: input.shape)
        }
    }

    func testCausalAttentionIgnoresLaterPositions() {
        let shape = [1, 2, 5, 4]
        let q = Tensor(shape: shape, storage: testValues(40, seed: 1))
        let k = Tensor(shape: shape, storage: testValues(40, seed: 2))
        var v = Tensor(shape: shape, storage: testValues(40, seed: 3))
        let before = Tensor.scaledDotProductAttention(query: q, key: k, value: v).storage
        // Changing position 4's value (in both heads) may change only position 4's outputs.
        for head in 0..<2 { for d in 0..<4 { v[flat: head * 20 + 16 + d] += 1 } }
        let after = Tensor.scaledDotProductAttention(query: q, key: k, value: v).storage
        for head in 0..<2 {
            let early = (head * 20)..<(head * 20 + 16)
            assertBitIdentical(Array(after[early]), Array(before[early]), "head \(head), positions 0–3")
            XCTAssertNotEqual(Array(after[(head * 20 + 16)..<(head * 20 + 20)]), Array(before[(head * 20 + 16)..<(head * 20 + 20)]))
        }
    }

    /// The tanh GELU's kernel computes exp and tanh by polynomial; over [−12, 12] it must agree with the formula
    /// in Double to a few float32 ulps, and its derivative (which crosses zero near x = −0.75) to a few ulps of 1.
    func testGELUTanhKernelAgainstTheFormulaInDouble() {
        let xs = stride(from: -12.0, through: 12.0, by: 0.00390625).map { Float($0) }
        let input = Tensor(shape: [xs.count], storage: xs).requiringGrad()
        let y = input.gelu(approximate: .tanh)
        y.backward(seed: [Float](repeating: 1, count: xs.count))
        let c = (2 / Double.pi).squareRoot()
        var worstValue = 0.0, worstSlope = 0.0
        for (index, x32) in xs.enumerated() {
            let x = Double(x32), t = Foundation.tanh(c * (x + 0.044715 * x * x * x))
            let value = 0.5 * x * (1 + t)
            let slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
            worstValue = max(worstValue, abs(Double(y.storage[index]) - value) / max(abs(value), 1e-3))
            worstSlope = max(worstSlope, abs(Double(input.grad!.storage[index]) - slope))  // slopes lie in [−0.17, 1.13]
        }
        print(String(format: "  gelu tanh kernel: worst relative error %.2e (value), worst absolute error %.2e (derivative)", worstValue, worstSlope))
        XCTAssertLessThan(worstValue, 2e-6)
        XCTAssertLessThan(worstSlope, 2e-6)
    }

    func testDropoutIsSeededScaledAndIndependentOfGrouping() {
        let x = Tensor(shape: [4, 500], storage: [Float](repeating: 1, count: 2000)).requiringGrad()
        XCTAssertEqual(x.dropout(0.25, site: 1).storage, x.storage, "no stream: the identity (evaluation)")
        let whole = PassContext(dropout: .init(seed: 42, firstSample: 10)).apply { x.dropout(0.25, site: 1) }
        let kept = whole.storage.filter { $0 != 0 }
        XCTAssertEqual(Set(kept), [Float(1) / 0.75], "kept values are scaled by 1/(1 − p)")
        let dropped = Double(2000 - kept.count) / 2000
        XCTAssertEqual(dropped, 0.25, accuracy: 0.04, "fraction dropped")
        // Samples 12 and 13 alone, as another worker would run them: the same masks.
        let tail = Tensor(shape: [2, 500], storage: [Float](repeating: 1, count: 1000))
        let part = PassContext(dropout: .init(seed: 42, firstSample: 12)).apply { tail.dropout(0.25, site: 1) }
        assertBitIdentical(part.storage, Array(whole.storage[1000...]), "samples 12–13")
        let otherSite = PassContext(dropout: .init(seed: 42, firstSample: 10)).apply { x.dropout(0.25, site: 2) }
        XCTAssertNotEqual(otherSite.storage, whole.storage, "another site draws another mask")
        let otherSeed = PassContext(dropout: .init(seed: 43, firstSample: 10)).apply { x.dropout(0.25, site: 1) }
        XCTAssertNotEqual(otherSeed.storage, whole.storage, "another seed draws another mask")
        // dx = dy · mask / (1 − p).
        let upstream = testValues(2000, seed: 5)
        whole.backward(seed: upstream)
        let expected = zip(upstream, whole.storage).map { $0 * $1 }
        assertBitIdentical(x.grad!.storage, expected, "dropout gradient")
    }
}

/// The fixed tree of `GradientTree` written out plainly: node(start, 2w) = node(start, w) + node(start + w, w).
private func treeSum(_ leaves: [[Float]]) -> [Float] {
    if leaves.count == 1 { return leaves[0] }
    var half = 1
    while half * 2 < leaves.count { half *= 2 }
    let left = treeSum(Array(leaves[..<half])), right = treeSum(Array(leaves[half...]))
    return zip(left, right).map { $0 + $1 }
}
