import Kernels

/// How the ops of one forward and backward pass run: the micro-batch segmentation of its sample rows, the dropout
/// stream, and the matrix products' input precision. A job's gradient engine sets it around each pass with
/// `apply`; ops read `current` when they record; a checkpointed block recomputes under the context it captured.
/// It is the calling thread's, so passes of different jobs on different threads keep their own.
public struct PassContext: Equatable, Sendable {
    /// Where dropout draws its masks: the mask of element e of sample s (dimension 0 of the dropped tensor) at a
    /// site is a hash of (seed, site, firstSample + s, e), so it depends neither on how samples are grouped into
    /// passes nor on threads.
    public struct DropoutStream: Equatable, Sendable {
        public var seed: UInt64
        /// The global index, in the step, of the pass's first sample.
        public var firstSample: Int

        public init(seed: UInt64, firstSample: Int) {
            self.seed = seed
            self.firstSample = firstSample
        }
    }

    /// Equal micro-batches among the pass's leading (sample) rows (`SampleSegments`).
    public var segments: Int
    /// Dropout's masks; nil: dropout is the identity (evaluation, sampling), like a PyTorch module in `eval()`.
    public var dropout: DropoutStream?
    public var precision: MatmulPrecision

    public init(segments: Int = 1, dropout: DropoutStream? = nil, precision: MatmulPrecision = .float32) {
        precondition(segments >= 1)
        self.segments = segments
        self.dropout = dropout
        self.precision = precision
    }

    // This thread's context, one field a slot (0 in a slot that was never set: the defaults).
    private static let storedSegments = ThreadLocalInt()
    private static let storedDropout = ThreadLocalInt()
    private static let storedSeed = ThreadLocalInt()
    private static let storedFirstSample = ThreadLocalInt()
    private static let storedPrecision = ThreadLocalInt()

    /// The calling thread's context (the defaults outside `apply`).
    public static var current: PassContext {
        PassContext(segments: currentSegments, dropout: currentDropout, precision: currentPrecision)
    }

    // Ops read the one field they need (each a thread-local read) when they record.
    static var currentSegments: Int { max(1, storedSegments.value) }
    static var currentPrecision: MatmulPrecision { storedPrecision.value == 1 ? .bf16 : .float32 }
    static var currentDropout: DropoutStream? {
        storedDropout.value == 0 ? nil
            : DropoutStream(seed: UInt64(UInt(bitPattern: storedSeed.value)), firstSample: storedFirstSample.value)
    }

    /// Runs `body` with this context on the calling thread, then restores the one before.
    public func apply<R>(_ body: () throws -> R) rethrows -> R {
        try Self.storedSegments.with(segments) {
            try Self.storedDropout.with(dropout == nil ? 0 : 1) {
                try Self.storedSeed.with(Int(bitPattern: UInt(dropout?.seed ?? 0))) {
                    try Self.storedFirstSample.with(dropout?.firstSample ?? 0) {
                        try Self.storedPrecision.with(precision == .bf16 ? 1 : 0, body)
                    }
                }
            }
        }
    }
}
