import Foundation
import TestSupport
import XCTest

/// The per-layer gradient norms of the log stream show what skip connections do: in configs/mlp-deep.yaml (8
/// sigmoid layers) the first layer's gradient vanishes and `monitor` marks it; with skips (mlp-deep-residual.yaml)
/// and in the pre-LayerNorm GPT, the first layers' gradients stay within a small factor of the last ones'.
final class GradientFlowTests: CLITestCase {
    func configPath(_ name: String) -> String { repository.appendingPathComponent("configs/\(name).yaml").path }

    /// The first step's gradient norms of a 3-step `train` run.
    func firstStepNorms(_ config: String, _ overrides: [String] = []) throws -> [String: Double] {
        let run = scratch + "/" + UUID().uuidString
        let result = try trainerd(["train", config, "--run-dir", run, "--set", "training.max_steps=3"] + overrides)
        XCTAssertEqual(result.status, 0, result.stderr)
        let step = try XCTUnwrap(events(run).first { $0["event"] as? String == "step" })
        let norms = try XCTUnwrap(step["grad_norms"] as? [String: NSNumber])
        return norms.mapValues(\.doubleValue)
    }

    /// `monitor`'s report of a job with one worker, every step shown.
    func monitorOutput(_ config: String) throws -> String {
        try monitoredRun(["--workers", "1", "--run-dir", scratch + "/" + UUID().uuidString, "--set", "training.max_steps=40",
                          "--set", "optimizer.lr=1e-5"], config: config, monitor: ["--every", "0"], workers: 1)
    }

    func testSkipConnectionsKeepTheFirstLayersGradientsAlive() throws {
        try requireDataset()
        let plain = try firstStepNorms(configPath("mlp-deep")), residual = try firstStepNorms(configPath("mlp-deep-residual"))
        let plainRatio = try XCTUnwrap(plain["0.weight"]) / XCTUnwrap(plain["16.weight"])
        let residualRatio = try XCTUnwrap(residual["0.weight"]) / XCTUnwrap(residual["9.weight"])
        print(String(format: "first/last layer gradient norm at step 1: %.2e without skips (%.2e / %.2e), %.2e with them (%.2e / %.2e)",
                     plainRatio, plain["0.weight"]!, plain["16.weight"]!, residualRatio, residual["0.weight"]!, residual["9.weight"]!))
        XCTAssertLessThan(plainRatio, 1e-4, "without skips the first layer's gradient vanishes")
        XCTAssertGreaterThan(residualRatio, 1e-2, "with skips it stays alive")

        let plainReport = try monitorOutput(configPath("mlp-deep"))
        let firstLayer = plainReport.split(separator: "\n").filter { $0.trimmingCharacters(in: .whitespaces).hasPrefix("0.weight") }
        XCTAssertFalse(firstLayer.isEmpty, plainReport)
        XCTAssertTrue(firstLayer.allSatisfy { $0.hasSuffix("↓ vanishing") }, firstLayer.joined(separator: "\n"))
        let residualReport = try monitorOutput(configPath("mlp-deep-residual"))
        XCTAssertTrue(residualReport.contains("0.weight"), residualReport)
        XCTAssertFalse(residualReport.contains("vanishing"), residualReport)
    }

    func testTheGPTsFirstBlockKeepsItsGradient() throws {
        try XCTSkipUnless(FileManager.default.fileExists(atPath: "/usr/share/games/fortunes/fortunes"),
                          "Debian's fortunes package is not installed (deploy/setup.sh installs it)")
        let norms = try firstStepNorms(configPath("fortunes-gpt"), ["--set", "training.eval_every=0"])
        let first = try XCTUnwrap(norms["blocks.0.fc.weight"]), last = try XCTUnwrap(norms["blocks.3.fc.weight"])
        print(String(format: "GPT fc.weight gradient norms at step 1: block 0 %.3e, block 3 %.3e", first, last))
        XCTAssertGreaterThan(first / last, 0.5, "the residual stream carries the gradient to the first block")
    }
}
