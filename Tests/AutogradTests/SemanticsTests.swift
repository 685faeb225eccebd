import Autograd
import TestSupport
import XCTest

/// The backpropagation study note's worked examples and PyTorch's autograd semantics.
final class StudyNoteExampleTests: XCTestCase {
    /// L = (3x + 1)² at x = 2: dL/d(3x+1) = 2·7 = 14 on the way, dL/dx = 14·3 = 42.
    func testSquareOfAffineAtTwo() {
        let x = Tensor(2).requiringGrad()
        let u = 3 * x + 1
        u.retainGrad()
        let loss = u * u
        loss.backward()
        XCTAssertEqual(loss.item, 49)
        XCTAssertEqual(u.grad?.item, 14)
        XCTAssertEqual(x.grad?.item, 42)
    }

    /// L = (2x + 3)² at x = 1: dL/dx = 2·5·2 = 20.
    func testSquareOfAffineAtOne() {
        let x = Tensor(1).requiringGrad()
        let u = 2 * x + 3
        (u * u).backward()
        XCTAssertEqual(x.grad?.item, 20)
    }

    /// ReLU on [−3, 2, −1, 5] passes the upstream gradient only at the 2nd and 4th positions.
    func testReLUGatesTheUpstreamGradient() {
        let x = Tensor(shape: [4], storage: [-3, 2, -1, 5]).requiringGrad()
        let y = x.relu()
        XCTAssertEqual(y.storage, [0, 2, 0, 5])
        y.backward(seed: [10, 20, 30, 40])
        XCTAssertEqual(x.grad?.storage, [0, 20, 0, 40])
    }

    /// y = f(x) + x gives dL/dx = dL/dy · (f′(x) + 1): the skip path adds the upstream gradient unchanged.
    func testSkipConnectionAddsTheUpstreamGradient() {
        let values: [Float] = [-1.5, -0.2, 0.3, 2.0]
        let upstream: [Float] = [0.5, -2, 3, 1.25]
        let x = Tensor(shape: [4], storage: values).requiringGrad()
        let y = x.tanh() + x
        y.backward(seed: upstream)
        for i in 0..<4 {
            let derivative = 1 - Foundation.tanh(values[i]) * Foundation.tanh(values[i])
            XCTAssertEqual(x.grad!.storage[i], upstream[i] * (derivative + 1), accuracy: 1e-6)
        }
        // Without the skip path only f′(x) remains.
        let z = Tensor(shape: [4], storage: values).requiringGrad()
        z.tanh().backward(seed: upstream)
        for i in 0..<4 { XCTAssertEqual(x.grad!.storage[i] - z.grad!.storage[i], upstream[i], accuracy: 1e-6) }
    }
}

final class AutogradSemanticsTests: XCTestCase {
    func testBackwardTwiceWithoutZeroGradDoublesTheGradient() {
        let w = Tensor(shape: [3], storage: [1, 2, 3]).requiringGrad()
        let x = Tensor(shape: [3], storage: [4, 5, 6])
        (w * x).sum().backward()
        XCTAssertEqual(w.grad?.storage, [4, 5, 6])
        (w * x).sum().backward()
        XCTAssertEqual(w.grad?.storage, [8, 10, 12])
        w.zeroGrad()
        XCTAssertNil(w.grad)
        (w * x).sum().backward()
        XCTAssertEqual(w.grad?.storage, [4, 5, 6])
    }

    func testNoGradScopeRecordsNothing() {
        let w = Tensor(shape: [2], storage: [1, 2]).requiringGrad()
        let y = withNoGrad { (w * w).sum() }
        XCTAssertFalse(y.requiresGrad)
        XCTAssertEqual(y.item, 5)
        y.backward()
        XCTAssertNil(w.grad)
        // Recording resumes after the scope.
        XCTAssertTrue((w * w).sum().requiresGrad)
    }

    func testDetachStopsTheGradient() {
        let x = Tensor(shape: [2], storage: [3, 4]).requiringGrad()
        // y = x · detach(x): only the first factor carries a gradient, so dy/dx = detach(x).
        (x * x.detached()).sum().backward()
        XCTAssertEqual(x.grad?.storage, [3, 4])
    }

    func testGradientAccumulationOverMicroBatchesEqualsTheFullBatch() throws {
        let w = Tensor(shape: [3, 4], storage: testValues(12, seed: 1)).requiringGrad()
        let b = Tensor(shape: [3], storage: testValues(3, seed: 2)).requiringGrad()
        let inputs = testValues(8 * 4, seed: 3)
        let labels: [Int32] = [0, 1, 2, 1, 0, 2, 2, 1]
        try Tensor(shape: [8, 4], storage: inputs).linear(weight: w, bias: b)
            .crossEntropy(labels: labels, reduction: .sum).backward()
        let full = (w.grad!.storage, b.grad!.storage)
        w.zeroGrad(); b.zeroGrad()
        for start in stride(from: 0, to: 8, by: 2) {
            let x = Tensor(shape: [2, 4], storage: Array(inputs[(start * 4)..<((start + 2) * 4)]))
            try x.linear(weight: w, bias: b).crossEntropy(labels: Array(labels[start..<(start + 2)]), reduction: .sum)
                .backward()
        }
        for (a, e) in zip(w.grad!.storage, full.0) { XCTAssertEqual(a, e, accuracy: 1e-5) }
        for (a, e) in zip(b.grad!.storage, full.1) { XCTAssertEqual(a, e, accuracy: 1e-5) }
    }

    func testMutatingAnInputAfterUseDoesNotCorruptTheGraph() {
        var x = Tensor(shape: [2], storage: [1, 2]).requiringGrad()
        let w = Tensor(shape: [2], storage: [5, 7]).requiringGrad()
        let y = (w * x).sum()
        x[flat: 0] = 100  // a leaf keeps its identity; the graph kept the old values
        var copy = y
        copy[flat: 0] = -1  // writing a non-leaf detaches the copy only
        XCTAssertFalse(copy.requiresGrad)
        y.backward()
        XCTAssertEqual(w.grad?.storage, [1, 2])
        XCTAssertEqual(x.grad?.storage, [5, 7])
        XCTAssertEqual(y.item, 19)
    }

    func testRequiresGradOnlyWhereAsked() {
        let constant = Tensor(shape: [2], storage: [1, 2])
        XCTAssertFalse((constant * constant).requiresGrad)
        XCTAssertTrue(constant.isLeaf)
        let leaf = constant.requiringGrad()
        XCTAssertTrue((leaf * constant).requiresGrad)
        XCTAssertFalse((leaf * constant).isLeaf)
    }

    func testCrossEntropyRejectsLabelsOutsideTheClasses() {
        let logits = Tensor(shape: [2, 3], storage: [0, 1, 2, 3, 4, 5])
        XCTAssertThrowsError(try logits.crossEntropy(labels: [0, 3])) { error in
            XCTAssertEqual("\(error)", "label 3 in row 1 is outside 0..<3")
        }
    }
}

/// `backward(reporting:)` hands each leaf's gradient on as soon as it is final, so a worker can send it while
/// backward goes on.
final class GradientReportTests: XCTestCase {
    func testEachLeafIsReportedOnceRightAfterItsLayersBackwardWithThePlainBackwardsBits() {
        let widths = [5, 4, 3, 2]
        func leaves() -> [Tensor] {
            var result: [Tensor] = []
            for layer in 0..<3 {
                let (inputs, outputs) = (widths[layer], widths[layer + 1])
                let weight = Tensor(shape: [outputs, inputs], storage: testValues(outputs * inputs, seed: UInt64(layer)))
                let bias = Tensor(shape: [outputs], storage: testValues(outputs, seed: UInt64(10 + layer)))
                result += [weight.requiringGrad(), bias.requiringGrad()]
            }
            return result
        }
        func loss(_ p: [Tensor]) -> Tensor {
            var h = Tensor(shape: [6, 5], storage: testValues(30, seed: 99))
            for layer in 0..<3 {
                h = h.linear(weight: p[2 * layer], bias: p[2 * layer + 1])
                if layer < 2 { h = h.tanh() }
            }
            // The first layer's weight is used again at the end (tied), so its gradient is final only then.
            return (h * h).sum() + (p[0] * p[0]).sum()
        }
        let plain = leaves()
        loss(plain).backward()

        let streamed = leaves()
        var reports: [(index: Int, values: [Float], firstLayerDone: Bool)] = []
        loss(streamed).backward(reporting: streamed) { index, gradient in
            reports.append((index, gradient, streamed[1].grad != nil))
        }
        XCTAssertEqual(reports.map(\.index).sorted(), Array(0..<6))
        XCTAssertEqual(Array(reports.map(\.index).prefix(2)).sorted(), [4, 5], "the last layer's gradients come first")
        XCTAssertFalse(reports[0].firstLayerDone, "reported before backward reached the first layer")
        for report in reports {
            assertBitIdentical(report.values, plain[report.index].grad!.storage, "leaf \(report.index)")
            assertBitIdentical(streamed[report.index].grad!.storage, plain[report.index].grad!.storage, "leaf \(report.index)")
        }
    }
}

/// The fused op against its composition: the same values and gradients, bit for bit.
final class FusedLinearReLUTests: XCTestCase {
    func testLinearReLUEqualsLinearThenReLU() {
        for withBias in [true, false] {
            func leaves() -> (x: Tensor, w: Tensor, b: Tensor) {
                (Tensor(shape: [6, 5], storage: testValues(30, seed: 1)).requiringGrad(),
                 Tensor(shape: [4, 5], storage: testValues(20, seed: 2)).requiringGrad(),
                 Tensor(shape: [4], storage: testValues(4, seed: 3)).requiringGrad())
            }
            let upstream = testValues(24, seed: 4)
            let plain = leaves(), fused = leaves()
            let y1 = plain.x.linear(weight: plain.w, bias: withBias ? plain.b : nil).relu()
            let y2 = fused.x.linearReLU(weight: fused.w, bias: withBias ? fused.b : nil)
            XCTAssertTrue(y1.storage.contains(0) && y1.storage.contains { $0 > 0 }, "both sides of the ReLU are exercised")
            assertBitIdentical(y2.storage, y1.storage, "forward, bias \(withBias)")
            y1.backward(seed: upstream)
            y2.backward(seed: upstream)
            assertBitIdentical(fused.x.grad!.storage, plain.x.grad!.storage, "dx")
            assertBitIdentical(fused.w.grad!.storage, plain.w.grad!.storage, "dW")
            if withBias { assertBitIdentical(fused.b.grad!.storage, plain.b.grad!.storage, "db") }
        }
    }
}
