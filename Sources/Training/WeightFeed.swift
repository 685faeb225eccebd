import Foundation

/// One step's weights as they arrive, a parameter tensor at a time (canonical order), for a forward pass that
/// waits for each layer's tensors. Thread-safe (`condition` guards `tensors` and `cancelled`): the worker's loop
/// provides, the compute threads take.
public final class WeightFeed: @unchecked Sendable {
    public let step: UInt64
    private var tensors: [[Float]?]
    private var cancelled: String?
    private let condition = NSCondition()

    public init(step: UInt64, count: Int) {
        self.step = step
        tensors = Array(repeating: nil, count: count)
    }

    /// All tensors at once (a feed that never waits).
    public convenience init(step: UInt64, tensors: [[Float]]) {
        self.init(step: step, count: tensors.count)
        for (index, values) in tensors.enumerated() { provide(index, values) }
    }

    public func provide(_ index: Int, _ values: [Float]) {
        condition.lock()
        tensors[index] = values
        condition.broadcast()
        condition.unlock()
    }

    /// Which tensors have arrived.
    public var received: [Bool] {
        condition.lock()
        defer { condition.unlock() }
        return tensors.map { $0 != nil }
    }

    /// Wakes every waiting pass with an error (the step was abandoned).
    public func cancel(_ reason: String) {
        condition.lock()
        cancelled = reason
        condition.broadcast()
        condition.unlock()
    }

    /// Tensor `index`, waiting until it has arrived; throws once the feed is cancelled.
    public func tensor(_ index: Int) throws -> [Float] {
        condition.lock()
        defer { condition.unlock() }
        while tensors[index] == nil {
            if let cancelled { throw WeightsAbandoned(description: "weights of step \(step) abandoned: \(cancelled)") }
            condition.wait()
        }
        return tensors[index]!
    }
}

/// A pass gave up waiting for weights that will not come: its work is void, which is not a failure.
public struct WeightsAbandoned: Error, CustomStringConvertible {
    public var description: String
}

extension WeightFeed: Equatable {
    /// The same feed (identity).
    public static func == (a: WeightFeed, b: WeightFeed) -> Bool { a === b }
}
