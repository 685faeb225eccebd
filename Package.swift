// swift-tools-version:6.0
import PackageDescription

/// Swift 6 language mode (complete concurrency checking) for the training loop and the targets that talk to the
/// network and the command line. The numeric core (Kernels up to NN and Optim) stays in Swift 5 mode for now:
/// `Parallel.forEach` runs non-Sendable closures over shared buffers, whose disjointness the type system cannot see.
let swift6: [SwiftSetting] = [.swiftLanguageMode(.v6)]

/// Targets depend only downward:
/// CKernels → Kernels → Autograd → NN → Training → Cluster → Daemon → ControlAPI → trainerd, with Random, Optim, Data
/// and Checkpoint beside them, Wire and Transport under Cluster, Telemetry (metrics) over Training, and Dashboard
/// (the web pages) on its own. Only Kernels imports CKernels.
let package = Package(
    name: "trainerd",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "trainerd", targets: ["trainerd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // C micro-kernels, compiled optimised in every configuration; the ISA is chosen at start-up.
        .target(
            name: "CKernels",
            cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-strict-aliasing"])]
        ),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .target(name: "Random"),
        .target(name: "Kernels", dependencies: ["CKernels"]),
        .target(name: "Autograd", dependencies: ["Kernels"]),
        .target(name: "NN", dependencies: ["Autograd", "Kernels", "Random"]),
        .target(name: "Optim", dependencies: ["Kernels"]),
        .target(name: "Data", dependencies: ["CZlib", "Random"]),
        .target(name: "Checkpoint", dependencies: ["COpenSSL"]),
        .target(name: "Wire", swiftSettings: swift6),
        .target(name: "Scheduling", swiftSettings: swift6),
        .target(name: "JobStore", dependencies: ["Checkpoint", .product(name: "GRDB", package: "GRDB.swift")], swiftSettings: swift6),
        .systemLibrary(name: "CZMQ", pkgConfig: "libzmq", providers: [.apt(["libzmq3-dev"])]),
        .target(name: "Transport", dependencies: ["CZMQ"], swiftSettings: swift6),
        .target(name: "Cluster", dependencies: ["Training", "Checkpoint", "Wire", "Transport"], swiftSettings: swift6),
        .target(name: "Telemetry", dependencies: ["Training", .product(name: "Prometheus", package: "swift-prometheus")],
                swiftSettings: swift6),
        .target(name: "Daemon", dependencies: ["Cluster", "JobStore", "Scheduling", "Telemetry", "Training", "Transport", "Wire"],
                swiftSettings: swift6),
        // The web dashboard's pages and scripts, embedded in the binary, and the self-contained run report.
        .target(name: "Dashboard", resources: [
            .embedInCode("Assets/index.html"), .embedInCode("Assets/dashboard.css"),
            .embedInCode("Assets/run-charts.js"), .embedInCode("Assets/dashboard.js"),
        ], swiftSettings: swift6),
        .target(name: "ControlAPI", dependencies: [
            "Daemon", "JobStore", "Telemetry", "Dashboard",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ], swiftSettings: swift6),
        .target(name: "Training", dependencies: [
            "NN", "Optim", "Data", "Checkpoint",
            .product(name: "Yams", package: "Yams"),
        ], swiftSettings: swift6),
        .executableTarget(name: "trainerd", dependencies: [
            "Training", "Cluster", "Transport", "Wire", "Daemon", "JobStore", "ControlAPI", "Telemetry", "Dashboard",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: swift6),
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "RandomTests", dependencies: ["Random"]),
        .testTarget(name: "WireTests", dependencies: ["Wire"]),
        .testTarget(name: "SchedulingTests", dependencies: ["Scheduling"]),
        .testTarget(name: "JobStoreTests", dependencies: ["JobStore"]),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon", "Wire"]),
        .testTarget(name: "TelemetryTests", dependencies: ["Telemetry", "Training"]),
        .testTarget(name: "DashboardTests", dependencies: ["Dashboard"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport", "Wire", "CZMQ"]),
        .testTarget(name: "ClusterTests", dependencies: ["Cluster", "Transport", "CZMQ", "Training", "NN", "Data", "Wire", "Random", "TestSupport"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "TestSupport"]),
        .testTarget(name: "AutogradTests", dependencies: ["Autograd", "TestSupport"]),
        .testTarget(name: "NNTests", dependencies: ["NN", "Optim", "TestSupport"]),
        .testTarget(name: "OptimTests", dependencies: ["Optim", "NN", "TestSupport"]),
        .testTarget(name: "DataTests", dependencies: ["Data", "TestSupport"]),
        .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint", "TestSupport"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "TestSupport", "Transport", "Wire", "CZMQ", .product(name: "Yams", package: "Yams")]),
    ],
    swiftLanguageModes: [.v5]
)
