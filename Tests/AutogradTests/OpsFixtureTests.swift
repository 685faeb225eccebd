import Autograd
import TestSupport
import XCTest

/// Every ops.json case for the ops of the core trainer, against PyTorch's float64 values: outputs and
/// grads[i] = d(sum(output · upstream)) / d(inputs[i]).
final class OpsFixtureTests: XCTestCase {
    struct Case {
        var inputs: [Tensor]
        var upstream: [Float]?
        var output: FixtureTensor
        var grads: [FixtureTensor]
        var raw: [String: Any]
    }

    func load(_ name: String) throws -> Case {
        let cases = try loadFixtureCases("ops")
        let raw = try XCTUnwrap(cases[name] as? [String: Any], "ops.json has no case \(name)")
        let inputs = try XCTUnwrap(raw["inputs"] as? [Any]).map { json -> Tensor in
            let t = try tensor(json)
            return Tensor(shape: t.shape, storage: t.floats).requiringGrad()
        }
        let upstream = raw["upstream"].flatMap(FixtureTensorBox.init)?.value.floats
        let grads = try XCTUnwrap(raw["grads"] as? [Any]).map { try tensor($0) }
        return Case(inputs: inputs, upstream: upstream, output: try tensor(raw["output"]), grads: grads, raw: raw)
    }

    /// Runs `op` on the case's inputs, backpropagates the upstream gradient and compares everything.
    func check(_ name: String, _ op: ([Tensor]) throws -> Tensor) throws {
        print("ops.json \(name):")
        let c = try load(name)
        let output = try op(c.inputs)
        XCTAssertEqual(output.count, c.output.values.count, "\(name): output size")
        assertClose(output.storage, c.output.values, "\(name) output")
        output.backward(seed: c.upstream ?? [1])
        for (index, expected) in c.grads.enumerated() {
            let grad = try XCTUnwrap(c.inputs[index].grad, "\(name): input \(index) got no gradient")
            XCTAssertEqual(grad.shape, expected.shape, "\(name): grad \(index) shape")
            assertClose(grad.storage, expected.values, "\(name) grad[\(index)]")
        }
    }

    func testAddBroadcast() throws { try check("add_broadcast") { $0[0] + $0[1] } }
    func testMulBroadcast() throws { try check("mul_broadcast") { $0[0] * $0[1] } }
    func testMatmul() throws { try check("matmul") { $0[0].matmul($0[1]) } }
    func testBatchedMatmul() throws { try check("batched_matmul") { $0[0].matmul($0[1]) } }
    func testLinear() throws { try check("linear") { $0[0].linear(weight: $0[1], bias: $0[2]) } }
    func testReLU() throws { try check("relu") { $0[0].relu() } }
    func testTanh() throws { try check("tanh") { $0[0].tanh() } }
    func testSigmoid() throws { try check("sigmoid") { $0[0].sigmoid() } }
    func testSoftmax() throws { try check("softmax_lastdim") { $0[0].softmax() } }
    func testLogSoftmax() throws { try check("log_softmax_lastdim") { $0[0].logSoftmax() } }
    func testSumAll() throws { try check("sum_all") { $0[0].sum() } }
    func testMeanLastDim() throws { try check("mean_lastdim") { $0[0].mean(dim: -1) } }
    func testTransposeLast2() throws { try check("transpose_last2") { $0[0].transposed(-2, -1) } }
    func testReshape() throws { try check("reshape") { $0[0].reshaped([4, 6]) } }
    func testResidualBlock() throws {
        try check("residual_block") { $0[0] + $0[0].linear(weight: $0[1], bias: $0[2]).relu() }
    }

    func testGELUTanh() throws { try check("gelu_tanh") { $0[0].gelu(approximate: .tanh) } }
    func testGELUErf() throws { try check("gelu_erf") { $0[0].gelu(approximate: .none) } }

    func testLayerNorm() throws {
        let c = try load("layer_norm")
        let eps = try XCTUnwrap((c.raw["params"] as? [String: Any])?["eps"] as? Double)
        try check("layer_norm") { $0[0].layerNorm(weight: $0[1], bias: $0[2], eps: Float(eps)) }
    }

    func testCausalScaledDotProductAttention() throws {
        try check("scaled_dot_product_attention_causal") {
            Tensor.scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], causal: true)
        }
    }

    func testEmbeddingWithARepeatedIndex() throws {
        let c = try load("embedding")
        let indices = try tensor(c.raw["indices"])
        XCTAssertLessThan(Set(indices.ints).count, indices.ints.count, "the case repeats an index")
        try check("embedding") { $0[0].embedding(indices.ints, shape: indices.shape) }
    }

    func testCrossEntropyMean() throws {
        let c = try load("cross_entropy_mean")
        let labels = try tensor(c.raw["labels"]).ints
        try check("cross_entropy_mean") { try $0[0].crossEntropy(labels: labels, reduction: .mean) }
    }

    func testMSEMean() throws {
        try check("mse_mean") { $0[0].mse($0[1].detached(), reduction: .mean) }
    }
}

/// Optional fixture tensor for fields that may be absent.
struct FixtureTensorBox {
    var value: FixtureTensor
    init?(_ json: Any) {
        guard let t = try? tensor(json) else { return nil }
        value = t
    }
}
