import ArgumentParser
import Cluster
import Foundation
import NN
import Transport
import Kernels
import Training

/// `cblas_sgemm`, looked up at run time in OpenBLAS when it is installed (libopenblas-dev), as the reference.
struct OpenBLAS {
    typealias SGEMM = @convention(c) (Int32, Int32, Int32, Int32, Int32, Int32, Float, UnsafePointer<Float>, Int32,
                                      UnsafePointer<Float>, Int32, Float, UnsafeMutablePointer<Float>, Int32) -> Void
    typealias SetThreads = @convention(c) (Int32) -> Void
    let sgemm: SGEMM
    let library: String

    init?() {
        for name in ["libopenblas.so.0", "libopenblas.so", "libopenblasp-r0.3.21.so"] {
            guard let handle = dlopen(name, RTLD_NOW), let symbol = dlsym(handle, "cblas_sgemm") else { continue }
            sgemm = unsafeBitCast(symbol, to: SGEMM.self)
            library = name
            if let setter = dlsym(handle, "openblas_set_num_threads") {
                unsafeBitCast(setter, to: SetThreads.self)(Int32(Parallel.threadCount))
            }
            return
        }
        return nil
    }

    /// C[n, n] = A[n, n] · B[n, n], row-major.
    func multiply(_ n: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>) {
        sgemm(101, 111, 111, Int32(n), Int32(n), Int32(n), 1, a, Int32(n), b, Int32(n), 0, c, Int32(n))
    }
}

/// One line of the bench table: a trainerd figure, the reference it is compared with, and the issue's target.
struct BenchRow {
    var what: String
    var unit: String
    var value: Double
    var reference: (name: String, value: Double)?
    /// trainerd / reference, or for times trainerd's time over the reference's (lower is better).
    var ratio: Double?
    var target: BenchTarget?

    var met: Bool? {
        guard let target else { return nil }
        switch target {
        case let .ratioAtLeast(bound): return ratio.map { $0 >= bound }
        case let .ratioAtMost(bound): return ratio.map { $0 <= bound }
        case let .valueAtMost(bound): return value <= bound
        }
    }

    var json: JSONValue {
        .object([("what", .string(what)), ("unit", .string(unit)), ("value", .number(value)),
                 ("reference", reference.map { .string($0.name) } ?? .null),
                 ("reference_value", reference.map { .number($0.value) } ?? .null),
                 ("ratio", ratio.map(JSONValue.number) ?? .null),
                 ("target", target.map { .string($0.description) } ?? .null),
                 ("met", met.map(JSONValue.bool) ?? .null)])
    }
}

enum BenchTarget: CustomStringConvertible {
    case ratioAtLeast(Double), ratioAtMost(Double), valueAtMost(Double)

    var description: String {
        switch self {
        case let .ratioAtLeast(bound): return String(format: "ratio ≥ %.2f", bound)
        case let .ratioAtMost(bound): return String(format: "ratio ≤ %.2f", bound)
        case let .valueAtMost(bound): return String(format: "≤ %.0f", bound)
        }
    }
}

/// The PyTorch side of the bench, measured by running a user-supplied script (PyTorch stays out of the project):
/// `PYTHON SCRIPT --hidden W W --threads T --world N --max-steps S` must print `samples/s=X step_ms=Y`.
struct PyTorchReference {
    let python: String
    let script: String
    let threads: Int
    let steps: Int

    init?(python: String?, script: String?, threads: Int, steps: Int) throws {
        guard python != nil || script != nil else { return nil }
        guard let python, let script else { throw ValidationError("--pytorch and --pytorch-script go together") }
        guard FileManager.default.isExecutableFile(atPath: python) else { throw ValidationError("--pytorch: \(python) is not an executable") }
        guard FileManager.default.fileExists(atPath: script) else { throw ValidationError("--pytorch-script: \(script) does not exist") }
        (self.python, self.script, self.threads, self.steps) = (python, script, threads, steps)
    }

    /// Samples/s of one run with `world` processes (1 thread each when world > 1).
    func samplesPerSecond(width: Int, world: Int) throws -> Double {
        try field("samples/s", of: run(["--hidden", "\(width)", "\(width)", "--world", "\(world)", "--max-steps", "\(steps + 20)"]))
    }

    /// Seconds of training in the default job's 10 epochs (timed steps × step time; start-up excluded).
    func secondsForDefaultJob() throws -> Double {
        let output = try run(["--epochs", "10"])
        return try field("step_ms", of: output) / 1000 * (try field("steps", of: output))
    }

    private func run(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script, "--threads", "\(threads)"] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ValidationError("\(python) \(script) \(arguments.joined(separator: " ")) exited with status \(process.terminationStatus)")
        }
        return output
    }

    private func field(_ name: String, of output: String) throws -> Double {
        for word in output.split(whereSeparator: \.isWhitespace) where word.hasPrefix("\(name)=") {
            if let value = Double(word.dropFirst(name.count + 1)) { return value }
        }
        throw ValidationError("the PyTorch script printed no \(name)=…: \(output)")
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "One table of kernel, training, convergence, memory and network figures against their references.",
        discussion: """
            Every figure is the median of --repeats runs, each side measured alternately in the same run. GEMM is             compared with OpenBLAS when libopenblas-dev is installed. With --pytorch and --pytorch-script (a Python             with torch, and a script printing `samples/s=… step_ms=…` such as the PyTorch peer of the docs), the             PyTorch rows are measured in the same run too.
            """)

    enum Section: String, ExpressibleByArgument, CaseIterable {
        case gemm, single, distributed, converge, network
    }

    @Option(help: "Config whose training is measured (hidden widths 256 and 1024; the default job for convergence).") var config = "configs/fmnist-mlp.yaml"
    @Option(help: "Timed training steps per run.") var steps = 200
    @Option(help: "Runs of each measurement (the median is reported).") var repeats = 5
    @Option(help: "Kernel threads (0: one per core).") var threads = 0
    @Option(help: "Sections to run, comma-separated: \(Section.allCases.map(\.rawValue).joined(separator: ",")).") var only: String?
    @Option(help: "Python interpreter with torch, for the PyTorch reference rows.") var pytorch: String?
    @Option(help: "PyTorch training script for the reference rows (see the discussion).") var pytorchScript: String?
    @Flag(help: "Print one JSON object instead of the table.") var json = false

    func run() throws {
        try Parallel.withThreads(threads > 0 ? threads : ProcessInfo.processInfo.activeProcessorCount) { try measure() }
    }

    /// Every section asked for, on the bench's threads.
    func measure() throws {
        let sections = try only.map { list in
            try list.split(separator: ",").map { name -> Section in
                guard let section = Section(rawValue: String(name)) else {
                    throw ValidationError("--only: unknown section \(name); expected \(Section.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return section
            }
        } ?? Section.allCases
        let reference = try PyTorchReference(python: pytorch, script: pytorchScript, threads: Parallel.threadCount, steps: steps)
        var rows: [BenchRow] = []
        var notes: [String] = []
        let blas = OpenBLAS()
        if sections.contains(.gemm) {
            rows += gemmRows(blas)
            if blas == nil { notes.append("OpenBLAS not found: apt-get install libopenblas-dev for the GEMM reference") }
        }
        for width in [256, 1024] where sections.contains(.single) || sections.contains(.distributed) {
            let runs = try measureTraining(width: width, single: sections.contains(.single),
                                           distributed: sections.contains(.distributed), reference: reference)
            let shape = "784-\(width)-\(width)-10"
            if !runs.single.isEmpty {
                rows.append(BenchRow(what: "one process \(shape), \(Parallel.threadCount) threads", unit: "samples/s",
                                     value: median(runs.single), reference: runs.torch.isEmpty ? nil : ("PyTorch", median(runs.torch)),
                                     ratio: medianRatio(runs.single, runs.torch), target: .ratioAtLeast(1.5)))
            }
            if !runs.distributed.isEmpty {
                rows.append(BenchRow(what: "2 workers + coordinator \(shape)", unit: "samples/s", value: median(runs.distributed),
                                     reference: runs.single.isEmpty ? nil : ("one process", median(runs.single)),
                                     ratio: medianRatio(runs.distributed, runs.single), target: runs.single.isEmpty ? nil : .ratioAtLeast(0.75)))
                if !runs.ddp.isEmpty {
                    rows.append(BenchRow(what: "2 workers + coordinator \(shape)", unit: "samples/s", value: median(runs.distributed),
                                         reference: ("PyTorch DDP", median(runs.ddp)), ratio: medianRatio(runs.distributed, runs.ddp),
                                         target: .ratioAtLeast(2)))
                }
                if let rss = runs.workerPeakRSS, width == 256 {
                    rows.append(BenchRow(what: "worker peak RSS \(shape)", unit: "MB", value: rss, target: .valueAtMost(150)))
                }
            }
        }
        if sections.contains(.converge) {
            let seconds = try measureTimeToAccuracy(0.88)
            let torch = try reference.map { try $0.secondsForDefaultJob() }
            rows.append(BenchRow(what: "time to 88 % test accuracy (\(config))", unit: "s", value: seconds,
                                 reference: torch.map { ("PyTorch, 10 epochs", $0) }, ratio: torch.map { seconds / $0 },
                                 target: .ratioAtMost(0.5)))
        }
        if sections.contains(.network) {
            let bandwidth = median((0..<repeats).map { _ in (try? measureLoopbackBandwidth()) ?? 0 })
            rows.append(BenchRow(what: "ZeroMQ TCP loopback, 1 MB frames", unit: "MB/s", value: bandwidth / 1e6))
            let parameters = ParameterLayout(makeModel(try JobConfig.load(path: config).model, seed: 0)).totalCount
            let bytesPerWorker = 4 * parameters
            notes.append(String(format: "cost model, %d parameters: each worker gets %.2f MB of weights and returns %.2f MB of gradients a step;",
                                parameters, Double(bytesPerWorker) / 1e6, Double(bytesPerWorker) / 1e6))
            notes.append(String(format: "the coordinator's link makes a step with W workers last at least W × %.2f ms each way",
                                Double(bytesPerWorker) / bandwidth * 1e3))
        }
        if json {
            print(JSONValue.object([
                ("threads", .int(Parallel.threadCount)), ("isa", .string(VectorISA.active.name)),
                ("repeats", .int(repeats)), ("openblas", blas.map { .string($0.library) } ?? .null),
                ("rows", .array(rows.map(\.json))), ("notes", .array(notes.map { .string($0) })),
            ]).serialized)
        } else {
            print("trainerd bench: \(Parallel.threadCount) threads, ISA \(VectorISA.active.name), median of \(repeats) runs\n")
            print(table(rows))
            notes.forEach { print("  \($0)") }
        }
    }

    func table(_ rows: [BenchRow]) -> String {
        func number(_ value: Double) -> String { String(format: value >= 100 ? "%.0f" : "%.2f", value) }
        let header = ["what", "trainerd", "reference", "ratio", "target", "met"]
        let cells: [[String]] = [header] + rows.map { (row: BenchRow) -> [String] in
            let reference: String = row.reference.map { "\($0.name) \(number($0.value))" } ?? "—"
            let ratio: String = row.ratio.map { String(format: "%.2f", $0) } ?? "—"
            let met: String = row.met.map { $0 ? "yes" : "NO" } ?? "—"
            return [row.what, "\(number(row.value)) \(row.unit)", reference, ratio, row.target?.description ?? "—", met]
        }
        let widths = (0..<6).map { column in cells.map { $0[column].count }.max()! }
        return cells.map { line in
            zip(line, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    func gemmRows(_ blas: OpenBLAS?) -> [BenchRow] {
        [128, 256, 512, 1024].map { n in
            // Alternate the two in every repeat so that drift on a noisy machine hits both alike.
            var mine: [Double] = [], theirs: [Double] = []
            for _ in 0..<repeats {
                mine.append(measureGEMM(n) { a, b, c in GEMM.multiply(GEMMShape(m: n, n: n, k: n), a, b, c) })
                if let blas { theirs.append(measureGEMM(n) { blas.multiply(n, $0, $1, $2) }) }
            }
            return BenchRow(what: "GEMM \(n)×\(n)×\(n)", unit: "GFLOP/s", value: median(mine),
                            reference: theirs.isEmpty ? nil : ("OpenBLAS", median(theirs)),
                            ratio: medianRatio(mine, theirs),
                            target: n >= 256 ? .ratioAtLeast(0.9) : nil)
        } + [512, 1024].map { n in
            // Mixed precision beside trainerd's own float32 product.
            var mixed: [Double] = [], float32: [Double] = []
            for _ in 0..<repeats {
                mixed.append(measureGEMM(n) { a, b, c in GEMM.multiply(GEMMShape(m: n, n: n, k: n, precision: .bf16), a, b, c) })
                float32.append(measureGEMM(n) { a, b, c in GEMM.multiply(GEMMShape(m: n, n: n, k: n), a, b, c) })
            }
            return BenchRow(what: "GEMM \(n)×\(n)×\(n), bf16 inputs (\(VectorISA.active.name))", unit: "GFLOP/s",
                            value: median(mixed), reference: ("float32", median(float32)), ratio: medianRatio(mixed, float32),
                            target: nil)
        }
    }

    /// Samples/s of the config with hidden layers `width` wide, per repeat: in one process, and with 2 local worker
    /// processes (1 thread each) and a coordinator, each beside PyTorch's single process and DDP when `reference`
    /// is given, all measured alternately in every repeat; and the workers' peak RSS in MB.
    func measureTraining(width: Int, single: Bool, distributed: Bool, reference: PyTorchReference?) throws
        -> (single: [Double], torch: [Double], distributed: [Double], ddp: [Double], workerPeakRSS: Double?) {
        // The coordinator is silent while PyTorch runs between trainerd's: long heartbeat timeouts keep the workers.
        let overrides = ["model.sizes=[784, \(width), \(width), 10]", "training.threads=\(Parallel.threadCount)",
                         "cluster.heartbeat_timeout=3600", "cluster.step_deadline=3600"]
        let job = try JobConfig.load(path: config, overrides: overrides)
        func rate(_ trainer: Trainer) throws -> Double {
            for _ in 0..<10 { _ = try trainer.step() }  // warm-up
            let start = Date()
            for _ in 0..<steps { _ = try trainer.step() }
            return Double(steps * job.training.batchSize) / Date().timeIntervalSince(start)
        }
        let local = single ? try Trainer(config: job, runDirectory: nil) : nil
        var cluster: (job: CoordinatedJob, workers: LocalWorkerPool)?
        if distributed {
            let description = JobDescription(yaml: try String(contentsOfFile: config, encoding: .utf8), overrides: overrides)
            let coordinated = try CoordinatedJob.bound(description, config: job, bind: "tcp://127.0.0.1:*", logBind: nil,
                                                       runDirectory: nil, startWorkers: 2)
            let endpoint = coordinated.endpoint!
            let workers = try LocalWorkerPool(names: ["bench-0", "bench-1"], maxRestarts: 0, abortOnAnyExit: true) { name in
                try LocalWorker(name: name, arguments: ["worker", "--connect", endpoint, "--name", name, "--threads", "1",
                                                        "--parent-pid", String(getpid())])
            }
            coordinated.coordinator.companions.append(workers)
            cluster = (coordinated, workers)
        }
        defer {
            if let cluster {
                cluster.job.coordinator.sayGoodbye()
                cluster.workers.waitForExit(timeout: 10)
            }
        }
        var runs: (single: [Double], torch: [Double], distributed: [Double], ddp: [Double], workerPeakRSS: Double?) = ([], [], [], [], nil)
        for _ in 0..<repeats {
            if let local {
                runs.single.append(try rate(local))
                if let reference { runs.torch.append(try reference.samplesPerSecond(width: width, world: 1)) }
            }
            if let cluster {
                runs.distributed.append(try rate(cluster.job.trainer))
                runs.workerPeakRSS = (cluster.workers.workers.compactMap(\.peakResidentMegabytes) + (runs.workerPeakRSS.map { [$0] } ?? [])).max()
                if let reference { runs.ddp.append(try reference.samplesPerSecond(width: width, world: 2)) }
            }
        }
        return runs
    }

    /// Seconds from loading the config's job to its first evaluation at or above `accuracy` (the whole job
    /// runs in this process, as `trainerd train` does).
    func measureTimeToAccuracy(_ accuracy: Double) throws -> Double {
        let start = Date()
        var reached: Double?
        let trainer = try Trainer(config: try JobConfig.load(path: config), runDirectory: nil)
        trainer.events.observers.append { event, fields in
            guard event == "eval", reached == nil,
                  let value = fields.first(where: { $0.0 == "test_accuracy" })?.1, case let .number(score) = value,
                  score >= accuracy else { return }
            reached = Date().timeIntervalSince(start)
        }
        let summary = try trainer.run()
        guard let reached else {
            throw ValidationError("\(config) ended at \(String(format: "%.2f", summary.testAccuracy * 100)) % test accuracy, below \(accuracy * 100) %")
        }
        return reached
    }

    /// Bytes per second a DEALER pushes to a ROUTER over TCP loopback in 1 MB frames (256 MB after a warm-up).
    func measureLoopbackBandwidth() throws -> Double {
        let context = ZMQContext()
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint
        let frame = [UInt8](repeating: 7, count: 1 << 20), frames = 256, warmUp = 8
        let sender = Thread {
            guard let dealer = try? ZMQSocket(context, .dealer) else { return }
            try? dealer.connect(endpoint)
            for _ in 0..<(frames + warmUp) { try? dealer.send([frame]) }
            _ = try? dealer.receive(timeout: 30)  // keeps the socket open until the receiver has everything
        }
        sender.start()
        var identity: [UInt8] = []
        for _ in 0..<warmUp { identity = try router.receive(timeout: 30)?.first ?? identity }
        let start = Date()
        var received = 0
        for _ in 0..<frames {
            guard let message = try router.receive(timeout: 30), message.count == 2 else { break }
            received += message[1].count
        }
        let seconds = Date().timeIntervalSince(start)
        try router.send([identity, []])
        return Double(received) / seconds
    }

    /// GFLOP/s of `multiply` on n×n matrices over enough calls for about 0.25 s, after one warm-up call.
    func measureGEMM(_ n: Int, _ multiply: (UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void) -> Double {
        let a = (0..<(n * n)).map { Float(($0 * 7) % 13) / 13 - 0.5 }
        let b = (0..<(n * n)).map { Float(($0 * 5) % 11) / 11 - 0.5 }
        var c = [Float](repeating: 0, count: n * n)
        let flops = 2 * Double(n) * Double(n) * Double(n)
        let calls = max(3, Int(4e10 / flops))
        c.withUnsafeMutableBufferPointer { pc in multiply(a, b, pc.baseAddress!) }
        let start = Date()
        for _ in 0..<calls { c.withUnsafeMutableBufferPointer { pc in multiply(a, b, pc.baseAddress!) } }
        return flops * Double(calls) / Date().timeIntervalSince(start) / 1e9
    }

    /// The median of per-repeat ratios, each pair measured side by side; nil without a reference.
    func medianRatio(_ mine: [Double], _ theirs: [Double]) -> Double? {
        theirs.isEmpty || mine.isEmpty ? nil : median(zip(mine, theirs).map { $0 / $1 })
    }

    func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }
}
