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

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "GEMM GFLOP/s (against OpenBLAS when installed) and training throughput of a config.")

    @Option(help: "Config whose training throughput is measured (hidden widths 256 and 1024).") var config = "configs/fmnist-mlp.yaml"
    @Option(help: "Timed training steps per run.") var steps = 200
    @Option(help: "Runs of each measurement (the median is reported).") var repeats = 5
    @Option(help: "Kernel threads (0: one per core).") var threads = 0
    @Flag(help: "Print one JSON object instead of the table.") var json = false

    func run() throws {
        Parallel.threadCount = threads > 0 ? threads : ProcessInfo.processInfo.activeProcessorCount
        let blas = OpenBLAS()
        var gemmRows: [JSONValue] = []
        var lines: [String] = [
            "trainerd bench: \(Parallel.threadCount) threads, ISA \(VectorISA.active.name), median of \(repeats) runs",
            "",
            "GEMM (square, A·B)     trainerd GFLOP/s   OpenBLAS GFLOP/s   ratio (median of per-run ratios)",
        ]
        for n in [128, 256, 512, 1024] {
            // Alternate the two in every repeat so that drift on a noisy machine hits both alike.
            var mine: [Double] = [], theirs: [Double] = []
            for _ in 0..<repeats {
                mine.append(measureGEMM(n) { a, b, c in GEMM.multiply(GEMMShape(m: n, n: n, k: n), a, b, c) })
                if let blas { theirs.append(measureGEMM(n) { blas.multiply(n, $0, $1, $2) }) }
            }
            let ours = median(mine)
            let reference = theirs.isEmpty ? nil : median(theirs)
            let ratio = theirs.isEmpty ? nil : median(zip(mine, theirs).map { $0 / $1 })
            lines.append(String(format: "  n = %-4d             %16.1f   %16@   %5@", n, ours,
                                reference.map { String(format: "%.1f", $0) } ?? "—",
                                ratio.map { String(format: "%.2f", $0) } ?? "—"))
            gemmRows.append(.object([("n", .int(n)), ("trainerd_gflops", .number(ours)),
                                     ("openblas_gflops", reference.map(JSONValue.number) ?? .null),
                                     ("ratio", ratio.map(JSONValue.number) ?? .null)]))
        }
        if blas == nil { lines.append("  (OpenBLAS not found: apt-get install libopenblas-dev for the reference column)") }

        var trainingRows: [JSONValue] = []
        for width in [256, 1024] {
            do {
                let row = try measureTraining(width: width)
                trainingRows.append(row.json)
                lines += [""] + row.lines
            } catch {
                lines += ["", "Training throughput (hidden width \(width)) skipped: \(error)"]
            }
        }
        let bandwidth = median((0..<repeats).map { _ in (try? measureLoopbackBandwidth()) ?? 0 })
        let parameters = ParameterLayout(makeModel(try JobConfig.load(path: config).model, seed: 0)).totalCount
        let bytesPerWorker = 4 * parameters
        lines += ["", String(format: "ZeroMQ over TCP loopback, 1 MB frames: %.0f MB/s one way", bandwidth / 1e6),
                  String(format: "  cost model, %d parameters: each worker gets %.2f MB of weights and returns %.2f MB of gradients a step;",
                         parameters, Double(bytesPerWorker) / 1e6, Double(bytesPerWorker) / 1e6),
                  String(format: "  the coordinator's link makes a step with W workers last at least W × %.2f ms each way",
                         Double(bytesPerWorker) / bandwidth * 1e3)]
        if json {
            print(JSONValue.object([
                ("loopback_bytes_per_s", .number(bandwidth)), ("parameters", .int(parameters)),
                ("threads", .int(Parallel.threadCount)), ("isa", .string(VectorISA.active.name)),
                ("openblas", blas.map { .string($0.library) } ?? .null),
                ("gemm", .array(gemmRows)), ("training", .array(trainingRows)),
            ]).serialized)
        } else {
            print(lines.joined(separator: "\n"))
        }
    }

    /// Samples/s of the config with hidden layers `width` wide, in one process and with 2 local worker processes
    /// (1 thread each) and a coordinator, measured alternately in every repeat.
    func measureTraining(width: Int) throws -> (lines: [String], json: JSONValue) {
        let overrides = ["model.sizes=[784, \(width), \(width), 10]", "training.threads=\(Parallel.threadCount)"]
        let job = try JobConfig.load(path: config, overrides: overrides)
        let single = try Trainer(config: job, runDirectory: nil)
        let router = try ZMQSocket(ZMQContext(), .router)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint
        let description = JobDescription(yaml: try String(contentsOfFile: config, encoding: .utf8), overrides: overrides)
        let workers = try (0..<2).map {
            try LocalWorker(name: "bench-\($0)", arguments: ["worker", "--connect", endpoint, "--name", "bench-\($0)", "--threads", "1",
                                                         "--parent-pid", String(getpid())])
        }
        var coordinator: Coordinator!
        let distributed = try Trainer(config: job, runDirectory: nil) { model, plan, _ in
            coordinator = Coordinator(socket: router, job: description, layout: ParameterLayout(model),
                                      microBatches: plan.microBatches, cluster: job.cluster, startWorkers: 2,
                                      events: try! EventLog(path: nil))
            coordinator.abortReason = { workers.lazy.compactMap(\.failure).first }
            return coordinator
        }
        defer {
            coordinator.sayGoodbye()
            workers.forEach { $0.waitForExit(timeout: 10) }
        }
        func rate(_ trainer: Trainer) throws -> Double {
            for _ in 0..<10 { _ = try trainer.step() }  // warm-up
            let start = Date()
            for _ in 0..<steps { _ = try trainer.step() }
            return Double(steps * job.training.batchSize) / Date().timeIntervalSince(start)
        }
        var local: [Double] = [], remote: [Double] = []
        for _ in 0..<repeats {
            local.append(try rate(single))
            remote.append(try rate(distributed))
        }
        let ratio = median(zip(remote, local).map { $0 / $1 })
        let runs = { (values: [Double]) in values.map { String(format: "%.0f", $0) }.joined(separator: ", ") }
        return ([
            "Training \(job.name), MLP 784-\(width)-\(width)-10 (batch \(job.training.batchSize), \(job.training.microBatches) micro-batches)",
            String(format: "  one process, %d threads    %8.0f samples/s   (runs: %@)", Parallel.threadCount, median(local), runs(local)),
            String(format: "  2 local workers + coordinator %6.0f samples/s   (runs: %@)", median(remote), runs(remote)),
            String(format: "  ratio distributed / one process  %.2f", ratio),
        ], .object([("width", .int(width)), ("single_samples_per_s", .number(median(local))),
                    ("two_workers_samples_per_s", .number(median(remote))), ("ratio", .number(ratio))]))
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

    func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }
}
