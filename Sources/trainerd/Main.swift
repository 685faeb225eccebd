import ArgumentParser
import Foundation

@main
struct Trainerd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trainerd",
        abstract: "Data-parallel neural-network trainer.",
        subcommands: [Train.self, Eval.self, Gradcheck.self, Bench.self]
    )
}

/// Prints `error` as one line on stderr and exits with status 1 (2 for configuration errors).
func fail(_ error: Error) -> Never {
    FileHandle.standardError.write(Data("trainerd: error: \(error)\n".utf8))
    exit(1)
}
