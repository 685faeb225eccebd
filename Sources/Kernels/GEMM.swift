import CKernels

/// The vector instruction set of the GEMM micro-kernel, chosen at start-up from the CPU.
public enum VectorISA: Int32, CaseIterable, Sendable {
    case scalar = 0, avx2 = 1, avx512 = 2
    /// AVX-512 with AVX512-BF16: mixed-precision products on vdpbf16ps.
    case avx512bf16 = 3

    public var name: String { String(cString: tk_isa_name(tk_isa(rawValue: UInt32(rawValue)))) }

    public static var detected: VectorISA { VectorISA(rawValue: Int32(tk_isa_detected().rawValue))! }
    public static var active: VectorISA { VectorISA(rawValue: Int32(tk_isa_active().rawValue))! }

    /// Uses `isa` (or the best the CPU has, if lower) from now on; returns the one now active.
    @discardableResult
    public static func force(_ isa: VectorISA) -> VectorISA {
        VectorISA(rawValue: Int32(tk_isa_force(tk_isa(rawValue: UInt32(isa.rawValue))).rawValue))!
    }
}

/// Shape of one matrix product C[m, n] (+)= op(A)[m, k] · op(B)[k, n], row-major.
///
/// `transposeA`: A is stored [k, m] and used as Aᵀ. `transposeB`: B is stored [n, k] and used as Bᵀ. The three
/// forms backward needs are A·B, A·Bᵀ and Aᵀ·B.
public struct GEMMShape: Sendable, Equatable {
    public var m: Int, n: Int, k: Int
    public var transposeA: Bool, transposeB: Bool
    public var precision: MatmulPrecision

    public init(m: Int, n: Int, k: Int, transposeA: Bool = false, transposeB: Bool = false,
                precision: MatmulPrecision = .float32) {
        self.m = m; self.n = n; self.k = k
        self.transposeA = transposeA; self.transposeB = transposeB
        self.precision = precision
    }

    var lda: Int { transposeA ? m : k }
    var ldb: Int { transposeB ? k : n }
    public var flops: Double { 2 * Double(m) * Double(n) * Double(k) }
}

/// The inputs of a matrix product: float32, or rounded to bfloat16 (mixed precision; the sums stay float32).
public enum MatmulPrecision: String, Sendable, CaseIterable {
    case float32, bf16

    /// The C kernels' flag.
    var isBF16: Int32 { self == .bf16 ? 1 : 0 }
}

public enum GEMM {
    /// Work (multiply-adds) below which a product stays on the calling thread.
    public static let minimumParallelWork = 1 << 17

    /// C = (accumulate ? C : 0) + op(A)·op(B), with C's tiles spread over threads.
    ///
    /// `partitions` forces how many column (then row) blocks C is cut into; by default it follows the work and
    /// `Parallel.threadCount`. Every element is one fixed fma chain, so the bits never depend on the partition.
    public static func multiply(
        _ shape: GEMMShape, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
        accumulate: Bool = false, partitions: Int? = nil
    ) {
        let blocks = partitions ?? defaultPartitions(shape)
        if blocks <= 1 {
            run(shape, a, b, c, rows: 0..<shape.m, columns: 0..<shape.n, accumulate: accumulate)
            return
        }
        // Each block packs all of the operand it does not cut: cutting columns repeats A's packing (m·k per
        // block), cutting rows repeats B's (k·n), so cut the larger of m and n.
        let alongColumns = shape.n >= shape.m
        let extent = alongColumns ? shape.n : shape.m
        let quantum = alongColumns ? 32 : 8
        let cuts = cutPoints(extent: extent, blocks: blocks, quantum: quantum)
        Parallel.forEach(cuts.count - 1) { block in
            let range = cuts[block]..<cuts[block + 1]
            if alongColumns {
                run(shape, a, b, c, rows: 0..<shape.m, columns: range, accumulate: accumulate)
            } else {
                run(shape, a, b, c, rows: range, columns: 0..<shape.n, accumulate: accumulate)
            }
        }
    }

    /// Weight gradient summed per micro-batch in the gradient tree: C[m, n] = tree over s of A_sᵀ · B_s, with
    /// A [segments·segmentRows, m] and B [segments·segmentRows, n] cut into row segments (see
    /// `tk_sgemm_tn_segmented`). Equal to one `multiply` per segment followed by `GradientTree.sum`, without
    /// writing the per-segment products to memory. Columns of C are spread over threads.
    public static func multiplyTransposedSegmented(
        m: Int, n: Int, segmentRows: Int, segments: Int,
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, partitions: Int? = nil,
        precision: MatmulPrecision = .float32
    ) {
        let shape = GEMMShape(m: m, n: n, k: segmentRows * segments, transposeA: true)
        let cuts = cutPoints(extent: n, blocks: partitions ?? defaultPartitions(shape), quantum: 32)
        Parallel.forEach(cuts.count - 1) { block in
            let columns = cuts[block]..<cuts[block + 1]
            guard !columns.isEmpty else { return }
            tk_sgemm_tn_segmented(Int32(m), Int32(columns.count), Int32(segmentRows), Int32(segments), a, Int32(m),
                                  b + columns.lowerBound, Int32(n), c + columns.lowerBound, Int32(n), precision.isBF16)
        }
    }

    /// The plain triple loop with the same fma chain, for tests.
    public static func reference(
        _ shape: GEMMShape, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
        accumulate: Bool = false
    ) {
        tk_sgemm_reference(shape.transposeA ? 1 : 0, shape.transposeB ? 1 : 0, Int32(shape.m), Int32(shape.n),
                           Int32(shape.k), a, Int32(shape.lda), b, Int32(shape.ldb), c, Int32(shape.n),
                           accumulate ? 1 : 0, shape.precision.isBF16)
    }

    static func defaultPartitions(_ shape: GEMMShape) -> Int {
        let work = shape.m * shape.n * shape.k
        guard Parallel.threadCount > 1, !Parallel.isInsideRegion, work >= minimumParallelWork else { return 1 }
        return min(Parallel.threadCount, work / minimumParallelWork)
    }

    static func cutPoints(extent: Int, blocks: Int, quantum: Int) -> [Int] {
        let units = (extent + quantum - 1) / quantum
        let count = max(1, min(blocks, units))
        return (0...count).map { min(extent, ($0 * units / count) * quantum) }
    }

    private static func run(
        _ shape: GEMMShape, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
        rows: Range<Int>, columns: Range<Int>, accumulate: Bool
    ) {
        guard !rows.isEmpty, !columns.isEmpty else { return }
        let aStart = shape.transposeA ? rows.lowerBound : rows.lowerBound * shape.lda
        let bStart = shape.transposeB ? columns.lowerBound * shape.ldb : columns.lowerBound
        tk_sgemm(shape.transposeA ? 1 : 0, shape.transposeB ? 1 : 0, Int32(rows.count), Int32(columns.count),
                 Int32(shape.k), a + aStart, Int32(shape.lda), b + bStart, Int32(shape.ldb),
                 c + rows.lowerBound * shape.n + columns.lowerBound, Int32(shape.n), accumulate ? 1 : 0,
                 shape.precision.isBF16)
    }
}
