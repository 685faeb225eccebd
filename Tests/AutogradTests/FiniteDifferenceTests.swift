import Autograd
import TestSupport
import XCTest

/// Ops and forms that ops.json does not cover, checked against central finite differences of a scalar loss
/// L = Σ op(inputs) · weights computed in Double from the float32 op.
final class FiniteDifferenceTests: XCTestCase {
    /// Compares the autograd gradient of each input with (L(x + h) − L(x − h)) / 2h.
    func checkGradients(_ name: String, shapes: [[Int]], h: Float = 1e-2, tolerance: Double = 2e-3,
                        positive: Bool = false, _ op: @escaping ([Tensor]) throws -> Tensor) throws {
        var values = shapes.enumerated().map { index, shape in
            testValues(shape.reduce(1, *), seed: UInt64(40 + index)).map { positive ? abs($0) + 0.5 : $0 }
        }
        func loss(_ inputs: [Tensor]) throws -> Tensor {
            let out = try op(inputs)
            let weights = Tensor(shape: out.shape, storage: testValues(out.count, seed: 99))
            return (out * weights).sum()
        }
        let leaves = zip(shapes, values).map { Tensor(shape: $0, storage: $1).requiringGrad() }
        try loss(leaves).backward()
        for input in values.indices {
            let analytic = try XCTUnwrap(leaves[input].grad, "\(name): no gradient for input \(input)").storage
            var worst = 0.0
            for i in values[input].indices {
                let original = values[input][i]
                values[input][i] = original + h
                let plus = Double(try loss(zip(shapes, values).map { Tensor(shape: $0, storage: $1) }).item)
                values[input][i] = original - h
                let minus = Double(try loss(zip(shapes, values).map { Tensor(shape: $0, storage: $1) }).item)
                values[input][i] = original
                let numeric = (plus - minus) / Double(2 * h)
                let difference = abs(numeric - Double(analytic[i])) / max(1, abs(numeric))
                worst = max(worst, difference)
            }
            print(String(format: "  %@ input %d: worst relative difference to finite differences %.2e", name, input, worst))
            XCTAssertLessThan(worst, tolerance, "\(name) input \(input)")
        }
    }

    func testSubtractNegateAndDivideWithBroadcasting() throws {
        try checkGradients("sub", shapes: [[3, 4], [4]]) { $0[0] - $0[1] }
        try checkGradients("neg", shapes: [[5]]) { -$0[0] }
        try checkGradients("div", shapes: [[2, 3], [2, 1]], positive: true) { $0[0] / $0[1] }
    }

    func testSumAndMeanAlongAnyDimension() throws {
        try checkGradients("sum dim 0", shapes: [[3, 4, 2]]) { $0[0].sum(dim: 0) }
        try checkGradients("sum dim 1", shapes: [[3, 4, 2]]) { $0[0].sum(dim: 1) }
        try checkGradients("mean dim 0", shapes: [[3, 4]]) { $0[0].mean(dim: 0) }
        try checkGradients("mean all", shapes: [[3, 4]]) { $0[0].mean() }
    }

    func testLossesWithSumReductionAndMSEAgainstATensorTarget() throws {
        try checkGradients("cross-entropy sum", shapes: [[4, 5]]) {
            try $0[0].crossEntropy(labels: [4, 0, 2, 2], reduction: .sum)
        }
        try checkGradients("mse sum, both sides", shapes: [[3, 2], [3, 2]]) { $0[0].mse($0[1], reduction: .sum) }
    }

    func testTransposeOfOuterDimensionsAndMatmulWithSharedMatrix() throws {
        try checkGradients("transpose 0,2", shapes: [[2, 3, 4]]) { $0[0].transposed(0, 2) }
        try checkGradients("batched · shared", shapes: [[2, 3, 4], [4, 5]]) { $0[0].matmul($0[1]) }
        try checkGradients("linear without bias", shapes: [[3, 4], [2, 4]]) { $0[0].linear(weight: $0[1]) }
    }

    func testActivationsAwayFromTheFixtureRange() throws {
        try checkGradients("sigmoid", shapes: [[6]]) { ($0[0] * 4).sigmoid() }
        try checkGradients("softmax 3-d", shapes: [[2, 2, 3]]) { $0[0].softmax() }
    }

    func testTransformerOpsAwayFromTheFixtures() throws {
        try checkGradients("layer norm, no affine", shapes: [[3, 5]]) { $0[0].layerNorm(weight: nil, bias: nil) }
        try checkGradients("layer norm", shapes: [[4, 6], [6], [6]]) { $0[0].layerNorm(weight: $0[1], bias: $0[2]) }
        try checkGradients("gelu erf", shapes: [[12]]) { ($0[0] * 3).gelu(approximate: .none) }
        try checkGradients("gelu tanh", shapes: [[12]]) { ($0[0] * 3).gelu(approximate: .tanh) }
        try checkGradients("attention, not causal", shapes: [[1, 2, 4, 3], [1, 2, 4, 3], [1, 2, 4, 3]]) {
            Tensor.scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], causal: false)
        }
        try checkGradients("attention, causal, one head", shapes: [[2, 1, 5, 2], [2, 1, 5, 2], [2, 1, 5, 2]]) {
            Tensor.scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], causal: true)
        }
    }
}
