import Kernels

/// Collects one step's gradient sums from workers and completes the gradient tree (`GradientTree`), one parameter
/// block at a time.
///
/// Each piece is the sum over an aligned block of micro-batches (width a power of two, starting at a multiple of
/// it) for one parameter block. A block is complete when its pieces tile 0..<K; its sum is then the tree's, the
/// same bits however the micro-batches were split among workers. Pieces that cannot belong to the step — not
/// aligned, out of range, overlapping one already taken, the wrong length — are refused with the reason and change
/// nothing. Non-finite values are taken and recorded: the trainer skips such a step (README "Failure modes").
public struct StepReducer {
    public let step: UInt64
    public let microBatches: Int
    /// Number of values of each parameter block.
    public let blockSizes: [Int]
    private var pieces: [[(range: Range<Int>, sum: [Float])]]
    private var lossPieces: [(range: Range<Int>, sum: [Float])] = []
    /// Pieces that hold a NaN or an infinity: (parameter block, or nil for the loss; micro-batches).
    public private(set) var nonFinite: [(block: Int?, range: Range<Int>)] = []

    public init(step: UInt64, microBatches: Int, blockSizes: [Int]) {
        precondition(microBatches > 0)
        self.step = step
        self.microBatches = microBatches
        self.blockSizes = blockSizes
        pieces = Array(repeating: [], count: blockSizes.count)
    }

    /// Takes the gradient sum of parameter block `block` over `range`.
    public mutating func add(block: Int, range: Range<Int>, values: [Float]) throws {
        guard blockSizes.indices.contains(block) else {
            throw ReducerError("parameter block \(block) does not exist (the model has \(blockSizes.count))")
        }
        try check(range, against: pieces[block].map(\.range), what: "gradients of block \(block)")
        guard values.count == blockSizes[block] else {
            throw ReducerError("block \(block) of micro-batches \(range) has \(values.count) values, expected \(blockSizes[block])")
        }
        if Reductions.countNonFinite(values) > 0 { nonFinite.append((block, range)) }
        pieces[block].append((range, values))
    }

    /// Takes the summed loss over `range`.
    public mutating func addLoss(range: Range<Int>, sum: Float) throws {
        try check(range, against: lossPieces.map(\.range), what: "the loss")
        if !sum.isFinite { nonFinite.append((nil, range)) }
        lossPieces.append((range, [sum]))
    }

    private func check(_ range: Range<Int>, against taken: [Range<Int>], what: String) throws {
        let width = range.count
        guard width > 0, width & (width - 1) == 0, range.lowerBound % width == 0 else {
            throw ReducerError("micro-batches \(range) are not an aligned block (a power-of-two width at a multiple of it)")
        }
        guard range.lowerBound >= 0, range.upperBound <= microBatches else {
            throw ReducerError("micro-batches \(range) lie outside 0..<\(microBatches) of step \(step)")
        }
        if let other = taken.first(where: { $0.overlaps(range) }) {
            throw ReducerError("duplicate \(what) for micro-batches \(range) of step \(step) (\(other) already received)")
        }
    }

    /// The micro-batches whose loss has arrived (the coordinator commits a range's blocks and loss together).
    public var received: [Range<Int>] { lossPieces.map(\.range) }

    private func covers(_ ranges: [Range<Int>]) -> Bool { ranges.reduce(0) { $0 + $1.count } == microBatches }

    /// Whether every parameter block and the loss cover all micro-batches.
    public var isComplete: Bool { pieces.allSatisfy { covers($0.map(\.range)) } && covers(lossPieces.map(\.range)) }

    /// The flat gradient sum (blocks concatenated in order) and the loss sum, once complete.
    public func reduced() -> (gradientSum: [Float], lossSum: Float)? {
        guard isComplete else { return nil }
        let gradient = GradientTree.sum(perTensor: pieces, leaves: microBatches)
        return (gradient, GradientTree.sum(blocks: lossPieces, leaves: microBatches)[0])
    }
}

public struct ReducerError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
