import ArgumentParser
import Foundation
import Training

@main
struct Trainerd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trainerd",
        abstract: "Data-parallel neural-network trainer.",
        subcommands: [Train.self, Launch.self, CoordinatorCommand.self, WorkerCommand.self, Monitor.self, Eval.self, Sample.self, Status.self, Gradcheck.self, Bench.self, Keygen.self,
                      Serve.self, Submit.self, Jobs.self, Show.self, Logs.self, Cancel.self, TokenCommand.self, Report.self]
    )
}

/// Prints `error` as one line on stderr and exits with status 1.
func fail(_ error: Error) -> Never {
    FileHandle.standardError.write(Data("trainerd: error: \(error)\n".utf8))
    exit(1)
}

/// The job's config file and `--set` overrides, shared by every command that reads a config.
struct JobOptions: ParsableArguments {
    @Argument(help: "The job's YAML config.") var config: String
    @Option(name: .customLong("set"), help: "Override a config field: key.path=value (repeatable).") var overrides: [String] = []

    func load() throws -> JobConfig { try JobConfig.load(path: config, overrides: overrides) }
}
