import Foundation

/// Learning rate as a function of the optimizer step (0 for the first update).
public enum LearningRateSchedule: Equatable, Sendable {
    case constant
    /// Linear warmup from base·1/warmup to base over `warmupSteps`, then cosine decay to `minLR` at `totalSteps`.
    case warmupCosine(warmupSteps: Int, totalSteps: Int, minLR: Float)
    /// base · gamma^⌊step / stepSize⌋ (torch.optim.lr_scheduler.StepLR).
    case step(stepSize: Int, gamma: Float)

    public func learningRate(base: Float, step: Int) -> Float {
        switch self {
        case .constant:
            return base
        case let .warmupCosine(warmup, total, minLR):
            if step < warmup { return base * Float(step + 1) / Float(warmup) }
            let span = max(1, total - warmup)
            let progress = min(1, Double(step - warmup) / Double(span))
            return minLR + (base - minLR) * Float(0.5 * (1 + cos(Double.pi * progress)))
        case let .step(stepSize, gamma):
            return base * pow(gamma, Float(step / stepSize))
        }
    }
}
