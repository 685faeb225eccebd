import Autograd
import NN
import Random
import TestSupport
import XCTest

/// The MLP 8→6→5→4 of mlp.json: loss and every gradient against PyTorch.
final class MLPFixtureTests: XCTestCase {
    func testLossAndGradientsMatchPyTorch() throws {
        let cases = try loadFixtureCases("mlp")
        let model = try fixtureModel(cases)
        let x = try tensor(cases["x"])
        let labels = try tensor(cases["labels"]).ints
        let loss = try model(Tensor(shape: x.shape, storage: x.floats)).crossEntropy(labels: labels)
        print("mlp.json:")
        assertClose([loss.item], [try XCTUnwrap(cases["loss"] as? Double)], "loss")
        loss.backward()
        let grads = try XCTUnwrap(cases["grads"] as? [String: Any])
        for (name, parameter) in model.namedParameters {
            assertClose(try XCTUnwrap(parameter.grad).storage, try tensor(grads[name]).values, "grad \(name)")
        }
    }

    func testParameterNamesAndShapesFollowPyTorchSequential() {
        let model = makeMLP(sizes: [8, 6, 5, 4], activation: .relu, seed: 1)
        XCTAssertEqual(model.namedParameters.map(\.name), ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"])
        XCTAssertEqual(model.parameters.map(\.shape), [[6, 8], [6], [5, 6], [5], [4, 5], [4]])
        let residual = makeMLP(sizes: [8, 6, 6, 4], activation: .relu, residual: true, seed: 1)
        XCTAssertEqual(residual.namedParameters.map(\.name),
                       ["0.weight", "0.bias", "2.body.0.weight", "2.body.0.bias", "3.weight", "3.bias"])
    }

    /// PyTorch's nn.Linear default: weight and bias uniform in ±1/√in; a seed gives the same weights every time.
    func testInitialisationIsKaimingUniformAndSeeded() {
        let a = makeMLP(sizes: [784, 256, 10], activation: .relu, seed: 42)
        let b = makeMLP(sizes: [784, 256, 10], activation: .relu, seed: 42)
        let c = makeMLP(sizes: [784, 256, 10], activation: .relu, seed: 43)
        XCTAssertEqual(a.flatValues(), b.flatValues())
        XCTAssertNotEqual(a.flatValues(), c.flatValues())
        for (name, parameter) in a.namedParameters {
            let fanIn = name.hasPrefix("0.") ? 784 : 256
            let bound = 1 / Float(fanIn).squareRoot()
            let values = parameter.value.storage
            XCTAssertLessThanOrEqual(values.map(abs).max()!, bound, name)
            // Uniform on ±bound has standard deviation bound/√3.
            let mean = values.reduce(0, +) / Float(values.count)
            let std = (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(values.count)).squareRoot()
            if values.count > 1000 { XCTAssertEqual(std, bound / Float(3).squareRoot(), accuracy: bound * 0.02, name) }
        }
    }

    func testFrozenParametersGetNoGradientAndOthersStillDo() throws {
        let model = makeMLP(sizes: [4, 3, 2], activation: .tanh, seed: 3)
        let first = model.namedParameters[0].parameter
        first.isFrozen = true
        let x = Tensor(shape: [2, 4], storage: testValues(8, seed: 5))
        try model(x).crossEntropy(labels: [0, 1]).backward()
        XCTAssertNil(first.grad)
        XCTAssertNotNil(model.namedParameters[1].parameter.grad)
        XCTAssertNotNil(model.namedParameters[2].parameter.grad)
        XCTAssertEqual(ParameterLayout(model).entries.map(\.trainable), [false, true, true, true])
        XCTAssertEqual(model.flatGradients()[0..<12].allSatisfy { $0 == 0 }, true)
    }
}

/// The fixture's model with PyTorch's initial weights loaded by name.
func fixtureModel(_ cases: [String: Any]) throws -> Sequential {
    let model = makeMLP(sizes: [8, 6, 5, 4], activation: .relu, seed: 0)
    let initial = try XCTUnwrap(cases["init"] as? [String: Any])
    var flat: [Float] = []
    for (name, parameter) in model.namedParameters {
        let t = try tensor(initial[name])
        XCTAssertEqual(t.shape, parameter.shape, name)
        flat += t.floats
    }
    model.load(flatValues: flat)
    return model
}
