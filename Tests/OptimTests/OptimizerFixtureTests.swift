import Autograd
import NN
import Optim
import TestSupport
import XCTest

/// mlp.json's clipping and 3-step optimizer runs: (zero grads, forward, CE mean, backward, clip to 0.5, step).
final class OptimizerFixtureTests: XCTestCase {
    var cases: [String: Any] = [:]

    override func setUpWithError() throws { cases = try loadFixtureCases("mlp") }

    func model() throws -> Sequential {
        let model = makeMLP(sizes: [8, 6, 5, 4], activation: .relu, seed: 0)
        let initial = try XCTUnwrap(cases["init"] as? [String: Any])
        model.load(flatValues: try model.namedParameters.flatMap { try tensor(initial[$0.name]).floats })
        return model
    }

    func lossAndGradient(_ model: Sequential) throws -> (Float, [Float]) {
        let x = try tensor(cases["x"])
        model.zeroGrad()
        let loss = try model(Tensor(shape: x.shape, storage: x.floats)).crossEntropy(labels: try tensor(cases["labels"]).ints)
        loss.backward()
        return (loss.item, model.flatGradients())
    }

    func testGlobalNormClippingMatchesPyTorch() throws {
        let model = try model()
        var (_, gradient) = try lossAndGradient(model)
        let clip = try XCTUnwrap(cases["clip"] as? [String: Any])
        let result = clipGradientNorm(&gradient, tensors: ParameterLayout(model).entries.map(\.range), maxNorm: 0.5)
        print("mlp.json clipping:")
        assertClose([result.totalNorm], [try XCTUnwrap(clip["total_norm"] as? Double)], "total_norm")
        XCTAssertTrue(result.clipped)
        let expected = try XCTUnwrap(clip["clipped_grads"] as? [String: Any])
        for entry in ParameterLayout(model).entries {
            assertClose(Array(gradient[entry.range]), try tensor(expected[entry.name]).values, "clipped \(entry.name)")
        }
    }

    func testNoClippingBelowTheThreshold() {
        var gradient: [Float] = [0.3, 0.4]
        let result = clipGradientNorm(&gradient, tensors: [0..<1, 1..<2], maxNorm: 1)
        XCTAssertEqual(result.totalNorm, 0.5, accuracy: 1e-7)
        XCTAssertFalse(result.clipped)
        XCTAssertEqual(gradient, [0.3, 0.4])
    }

    func run(_ name: String, _ config: OptimizerConfig, lr: Float) throws {
        let optimizers = try XCTUnwrap(cases["optimizers"] as? [String: Any])
        let run = try XCTUnwrap(optimizers[name] as? [String: Any])
        let expectedLosses = try XCTUnwrap(run["losses"] as? [Double])
        let model = try model()
        let layout = ParameterLayout(model)
        var optimizer = Optimizer(config, parameterCount: layout.totalCount)
        var parameters = model.flatValues()
        var losses: [Float] = []
        for _ in 0..<(run["steps"] as? Int ?? 3) {
            var (loss, gradient) = try lossAndGradient(model)
            losses.append(loss)
            clipGradientNorm(&gradient, tensors: layout.entries.map(\.range), maxNorm: 0.5)
            optimizer.step(parameters: &parameters, gradients: gradient, lr: lr)
            model.load(flatValues: parameters)
        }
        print("mlp.json \(name):")
        assertClose(losses, expectedLosses, rel: 1e-3, abs: 1e-5, "\(name) losses")
        let final = try XCTUnwrap(run["final"] as? [String: Any])
        for entry in layout.entries {
            assertClose(Array(parameters[entry.range]), try tensor(final[entry.name]).values, rel: 1e-3, abs: 1e-5,
                        "\(name) final \(entry.name)")
        }
    }

    func testSGDWithMomentum() throws { try run("sgd", .sgd(momentum: 0.9), lr: 0.1) }
    func testSGDNesterovWithWeightDecay() throws {
        try run("sgd_nesterov_wd", .sgd(momentum: 0.9, nesterov: true, weightDecay: 0.01), lr: 0.1)
    }
    func testAdam() throws { try run("adam", .adam(beta1: 0.9, beta2: 0.999, eps: 1e-8), lr: 0.01) }
    func testAdamW() throws { try run("adamw", .adamw(beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1), lr: 0.01) }

    func testFrozenRangesAreLeftUntouched() {
        var parameters: [Float] = [1, 2, 3, 4]
        var optimizer = Optimizer(.adamw(weightDecay: 0.1), parameterCount: 4, trainable: [2..<4])
        optimizer.step(parameters: &parameters, gradients: [1, 1, 1, 1], lr: 0.1)
        XCTAssertEqual(Array(parameters[0..<2]), [1, 2])
        XCTAssertNotEqual(parameters[2], 3)
        XCTAssertEqual(optimizer.firstMoment[0], 0)
    }

    func testStateRoundTripsAndRejectsWrongLengths() throws {
        var optimizer = Optimizer(.adam(), parameterCount: 3)
        var parameters: [Float] = [1, 2, 3]
        optimizer.step(parameters: &parameters, gradients: [0.1, 0.2, 0.3], lr: 0.01)
        var restored = Optimizer(.adam(), parameterCount: 3)
        try restored.restore(stepCount: optimizer.stepCount, tensors: Dictionary(uniqueKeysWithValues: optimizer.stateTensors.map { ($0.name, $0.values) }))
        var a = parameters, b = parameters
        optimizer.step(parameters: &a, gradients: [0.3, 0.1, 0.2], lr: 0.01)
        restored.step(parameters: &b, gradients: [0.3, 0.1, 0.2], lr: 0.01)
        XCTAssertEqual(a, b)
        XCTAssertThrowsError(try restored.restore(stepCount: 1, tensors: ["exp_avg": [0], "exp_avg_sq": [0, 0, 0]])) {
            XCTAssertEqual("\($0)", "optimizer state 'exp_avg' has 1 values, expected 3")
        }
    }
}

final class ScheduleTests: XCTestCase {
    func testConstantWarmupCosineAndStep() {
        XCTAssertEqual(LearningRateSchedule.constant.learningRate(base: 0.1, step: 1000), 0.1)
        let cosine = LearningRateSchedule.warmupCosine(warmupSteps: 10, totalSteps: 110, minLR: 0.001)
        XCTAssertEqual(cosine.learningRate(base: 0.1, step: 0), 0.01, accuracy: 1e-7)
        XCTAssertEqual(cosine.learningRate(base: 0.1, step: 9), 0.1, accuracy: 1e-7)
        XCTAssertEqual(cosine.learningRate(base: 0.1, step: 10), 0.1, accuracy: 1e-7)
        XCTAssertEqual(cosine.learningRate(base: 0.1, step: 60), 0.001 + 0.099 * 0.5, accuracy: 1e-6)
        XCTAssertEqual(cosine.learningRate(base: 0.1, step: 110), 0.001, accuracy: 1e-7)
        let step = LearningRateSchedule.step(stepSize: 30, gamma: 0.1)
        XCTAssertEqual(step.learningRate(base: 1, step: 29), 1)
        XCTAssertEqual(step.learningRate(base: 1, step: 30), 0.1, accuracy: 1e-7)
        XCTAssertEqual(step.learningRate(base: 1, step: 65), 0.01, accuracy: 1e-8)
    }
}
