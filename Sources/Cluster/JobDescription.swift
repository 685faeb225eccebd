import Checkpoint
import Training
import Wire

/// What a worker needs to join a job: the config text and overrides the coordinator was started with, so that the
/// worker builds the same model and data plan. Travels as the welcome's payload.
public struct JobDescription: Equatable, Sendable {
    public var yaml: String
    public var overrides: [String]

    public init(yaml: String, overrides: [String]) {
        self.yaml = yaml
        self.overrides = overrides
    }

    public init(_ welcome: Welcome) { self.init(yaml: welcome.config, overrides: welcome.overrides) }

    /// The welcome that carries this job.
    public var welcome: Welcome { Welcome(config: yaml, overrides: overrides) }

    /// Identifies the job on the wire: the first 8 bytes of SHA-256 over the config text and overrides.
    public var jobID: UInt64 {
        let bytes = Array((yaml + "\u{0}" + overrides.joined(separator: "\u{0}")).utf8)
        return bytes.withUnsafeBytes(sha256).prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    public func parse() throws -> JobConfig { try JobConfig.parse(yaml: yaml, source: "the coordinator's config", overrides: overrides) }
}
