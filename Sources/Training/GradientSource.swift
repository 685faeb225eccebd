import Foundation

/// What a finished run reports (also the `done` event).
public struct RunSummary {
    public var steps: Int
    public var loss: Float
    public var testLoss: Float
    public var testAccuracy: Double
    public var weightsSHA256: String
    public var seconds: Double
    public var samplesPerSecond: Double
    /// False when a stop request ended the run early (a checkpoint holds its state).
    public var finished: Bool
}

/// A step's sums over its samples, as a gradient source returns them.
public struct StepSums {
    /// Σ ∂ℓ/∂θ (flat, canonical order), combined over the micro-batches in the gradient tree.
    public var gradientSum: [Float]
    /// Σ ℓ, combined the same way.
    public var lossSum: Float
    /// Fields for the step event.
    public var fields: [(String, JSONValue)]
    /// The workers that sent NaN or infinite values, by parameter block (nil: the loss).
    public var nonFiniteSources: [Int?: [String]]

    public init(gradientSum: [Float], lossSum: Float, fields: [(String, JSONValue)] = [], nonFiniteSources: [Int?: [String]] = [:]) {
        self.gradientSum = gradientSum
        self.lossSum = lossSum
        self.fields = fields
        self.nonFiniteSources = nonFiniteSources
    }
}

/// Where a step's gradient sums come from: this process's threads, or workers over the network.
public protocol GradientSource: AnyObject {
    /// The sums of global step `step` at weights `parameters` (which the trainer's model holds too when
    /// `computesOnModel`).
    func sums(step: Int, parameters: [Float]) throws -> StepSums
    /// Whether `sums` runs the trainer's model, which must then hold the weights before every step. Otherwise
    /// the trainer loads them into its model only when it evaluates.
    var computesOnModel: Bool { get }
    /// Called once when the run ends (finished or stopped).
    func finish(summary: RunSummary)
}

extension GradientSource {
    public var computesOnModel: Bool { true }
}
