import Autograd
import NN
import Optim
import TestSupport
import XCTest

/// gpt.json: a 2-layer pre-LayerNorm GPT computed by PyTorch in float64. The model built from its `init` must give
/// its logits, loss and every parameter's gradient, then its 5 AdamW steps with clipping at 1.0.
final class GPTFixtureTests: XCTestCase {
    var cases: [String: Any] = [:]

    override func setUpWithError() throws { cases = try loadFixtureCases("gpt") }

    func model() throws -> GPT {
        let spec = try XCTUnwrap(cases["model"] as? [String: Any])
        let shape = GPTShape(vocabulary: try XCTUnwrap(spec["vocab"] as? Int), context: try XCTUnwrap(spec["context"] as? Int),
                             dim: try XCTUnwrap(spec["dim"] as? Int), heads: try XCTUnwrap(spec["heads"] as? Int),
                             layers: try XCTUnwrap(spec["layers"] as? Int))
        let model = GPT(shape, seed: 1)
        let initial = try XCTUnwrap(cases["init"] as? [String: Any])
        XCTAssertEqual(Set(model.namedParameters.map(\.name)), Set(initial.keys), "parameter names")
        for (name, parameter) in model.namedParameters {
            let values = try tensor(initial[name])
            XCTAssertEqual(parameter.shape, values.shape, "\(name) shape")
            parameter.value.withMutableStorage { $0 = values.floats }
        }
        return model
    }

    /// Mean cross-entropy over every position, as F.cross_entropy(logits.view(-1, V), targets.view(-1)).
    func loss(_ model: GPT) throws -> (logits: Tensor, loss: Tensor) {
        let tokens = try tensor(cases["tokens"]), targets = try tensor(cases["targets"])
        let logits = model(Tensor(shape: tokens.shape, storage: tokens.floats))
        let vocabulary = logits.shape.last!
        return (logits, try logits.reshaped([-1, vocabulary]).crossEntropy(labels: targets.ints, reduction: .mean))
    }

    func testLogitsLossAndEveryGradient() throws {
        let model = try model()
        let (logits, loss) = try loss(model)
        print("gpt.json forward and backward:")
        let expectedLogits = try tensor(cases["logits"])
        XCTAssertEqual(logits.shape, expectedLogits.shape)
        assertClose(logits.storage, expectedLogits.values, "logits")
        assertClose([loss.item], [try XCTUnwrap(cases["loss"] as? Double)], "loss")
        loss.backward()
        let grads = try XCTUnwrap(cases["grads"] as? [String: Any])
        for (name, parameter) in model.namedParameters {
            let grad = try XCTUnwrap(parameter.grad, "\(name) got no gradient")
            assertClose(grad.storage, try tensor(grads[name]).values, "grad \(name)")
        }
    }

    func testFiveAdamWStepsWithClipping() throws {
        let run = try XCTUnwrap(cases["adamw"] as? [String: Any])
        let config = try XCTUnwrap(run["config"] as? [String: Double])
        let model = try model()
        let layout = ParameterLayout(model)
        var optimizer = Optimizer(.adamw(beta1: Float(config["beta1"]!), beta2: Float(config["beta2"]!),
                                         eps: Float(config["eps"]!), weightDecay: Float(config["weight_decay"]!)),
                                  parameterCount: layout.totalCount)
        var parameters = model.flatValues()
        var losses: [Float] = [], largestKeyBiasGradient: Float = 0
        // The key bias adds q·b_k to every score of a query, which the softmax ignores: its gradient is exactly 0,
        // and gpt.json (float64) has ~1e-19 there. float32 leaves rounding noise (~1e-9), which Adam divides by
        // √v + eps ≈ 1e-8 and so turns into steps of up to lr·|g|/(|g| + eps) each: those entries are checked
        // against that bound rather than the relative tolerance.
        let keyBiasRanges = layout.entries.filter { $0.name.hasSuffix("qkv.bias") }.map { entry in
            (entry.offset + entry.count / 3)..<(entry.offset + 2 * entry.count / 3)
        }
        for _ in 0..<5 {
            model.zeroGrad()
            let loss = try loss(model).loss
            losses.append(loss.item)
            loss.backward()
            var gradient = model.flatGradients()
            for range in keyBiasRanges { largestKeyBiasGradient = max(largestKeyBiasGradient, gradient[range].map(abs).max()!) }
            clipGradientNorm(&gradient, tensors: layout.entries.map(\.range), maxNorm: Float(config["clip_max_norm"]!))
            optimizer.step(parameters: &parameters, gradients: gradient, lr: Float(config["lr"]!))
            model.load(flatValues: parameters)
        }
        print("gpt.json 5 AdamW steps:")
        assertClose(losses, try XCTUnwrap(run["losses"] as? [Double]), rel: 1e-3, "losses")
        let final = try XCTUnwrap(run["final"] as? [String: Any])
        print(String(format: "  largest key-bias gradient %.2e (exactly 0 in exact arithmetic)", largestKeyBiasGradient))
        XCTAssertLessThan(largestKeyBiasGradient, 1e-7)
        let noise = Double(largestKeyBiasGradient), lr = config["lr"]!, eps = config["eps"]!
        let keyBiasBound = 5 * lr * noise / (noise + eps)
        for entry in layout.entries {
            let expected = try tensor(final[entry.name]).values, actual = Array(parameters[entry.range])
            guard entry.name.hasSuffix("qkv.bias") else {
                assertClose(actual, expected, rel: 1e-3, abs: 1e-5, "final \(entry.name)")
                continue
            }
            let third = entry.count / 3
            for (part, range) in [("q", 0..<third), ("k", third..<(2 * third)), ("v", (2 * third)..<entry.count)] {
                assertClose(Array(actual[range]), Array(expected[range]), rel: part == "k" ? 0 : 1e-3,
                            abs: part == "k" ? keyBiasBound : 1e-5, "final \(entry.name) [\(part)]")
            }
        }
    }
}

/// Activation checkpointing recomputes each block during backward: the loss and every gradient must be the plain
/// run's bits, with dropout on and three micro-batches in the pass, and every parameter must still be reported
/// to a streaming backward.
final class ActivationCheckpointTests: XCTestCase {
    func gradients(checkpointing: Bool) throws -> (loss: Float, gradients: [[Float]], reported: Set<Int>) {
        let model = GPT(GPTShape(vocabulary: 11, context: 6, dim: 8, heads: 2, layers: 2, dropout: 0.1), seed: 5)
        model.checkpointsActivations = checkpointing
        let tokens = (0..<18).map { Float(($0 * 7 + 3) % 11) }
        let labels = (0..<18).map { Int32(($0 * 5 + 1) % 11) }
        var reported = Set<Int>()
        let loss = try PassContext(segments: 3, dropout: .init(seed: 9, firstSample: 3)).apply {
            let logits = model(Tensor(shape: [3, 6], storage: tokens))
            let loss = try logits.reshaped([-1, 11]).crossEntropy(labels: labels, reduction: .sum)
            loss.backward(reporting: model.parameters.map(\.value)) { index, _ in reported.insert(index) }
            return loss.item
        }
        return (loss, model.parameters.map { $0.grad?.storage ?? [] }, reported)
    }

    func testGradientsAreThePlainRunsBits() throws {
        let plain = try gradients(checkpointing: false), checkpointed = try gradients(checkpointing: true)
        XCTAssertEqual(plain.loss.bitPattern, checkpointed.loss.bitPattern)
        XCTAssertEqual(checkpointed.reported, Set(0..<plain.gradients.count), "every parameter reported")
        for (index, (a, b)) in zip(plain.gradients, checkpointed.gradients).enumerated() {
            XCTAssertFalse(a.isEmpty)
            assertBitIdentical(b, a, "parameter \(index)")
        }
    }
}
