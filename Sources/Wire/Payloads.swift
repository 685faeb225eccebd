import Foundation

/// The metadata frame of a message type that carries one: JSON with sorted keys, each type with its own encode
/// and decode. `Message.decode` checks it, so a handler only ever sees well-formed payloads.
public protocol MetadataPayload: Codable, Equatable, Sendable {
    /// The message type whose metadata this is.
    static var messageType: MessageType { get }
}

/// worker → coordinator: who is saying hello.
public struct Hello: MetadataPayload {
    public static let messageType = MessageType.hello
    /// The worker's name, as given by `--name` (at most `WireProtocol.maximumName` bytes); one connected worker
    /// of a job holds it at a time.
    public var name: String
    public var host: String
    public var pid: Int

    public init(name: String, host: String, pid: Int) {
        self.name = name
        self.host = host
        self.pid = pid
    }
}

/// coordinator → worker: the job to join, as the config text and the overrides the coordinator was started with,
/// so that the worker builds the same model and data plan.
public struct Welcome: MetadataPayload {
    public static let messageType = MessageType.welcome
    public var config: String
    public var overrides: [String]

    public init(config: String, overrides: [String]) {
        self.config = config
        self.overrides = overrides
    }
}

/// Either way: why a peer is refused, or why a worker cannot go on (its data failed to load, a step failed).
public struct Refusal: MetadataPayload {
    public static let messageType = MessageType.error
    public var reason: String
    /// The coordinator does not know this worker (it restarted, or declared the worker lost): say hello again
    /// rather than give up.
    public var rejoin: Bool

    public init(_ reason: String, rejoin: Bool = false) {
        self.reason = reason
        self.rejoin = rejoin
    }

    enum CodingKeys: String, CodingKey {
        case reason = "message"
        case rejoin
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        reason = try container.decode(String.self, forKey: .reason)
        rejoin = try container.decodeIfPresent(Bool.self, forKey: .rejoin) ?? false
    }
}

/// daemon → worker: this worker is in the pool. Until a job welcomes it, the two exchange heartbeats every
/// `heartbeatInterval` s, and each counts the other lost after `heartbeatTimeout` s of silence.
public struct Pooled: MetadataPayload {
    public static let messageType = MessageType.pooled
    public var heartbeatInterval: Double
    public var heartbeatTimeout: Double

    public init(heartbeatInterval: Double, heartbeatTimeout: Double) {
        self.heartbeatInterval = heartbeatInterval
        self.heartbeatTimeout = heartbeatTimeout
    }
}

extension MetadataPayload {
    /// The payload as a metadata frame.
    public func encoded() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Strings, numbers, booleans and arrays of strings always encode.
        return [UInt8](try! encoder.encode(self))
    }

    /// Parses a metadata frame; the error names the message type and the field that is missing or wrong.
    public init(decoding metadata: [UInt8]) throws {
        let what = "\(Self.messageType) metadata"
        guard !metadata.isEmpty else { throw WireError("\(what) is missing") }
        do {
            self = try JSONDecoder().decode(Self.self, from: Data(metadata))
        } catch let DecodingError.keyNotFound(key, _) {
            throw WireError("\(what) has no \"\(key.stringValue)\"")
        } catch let DecodingError.typeMismatch(expected, context), let DecodingError.valueNotFound(expected, context) {
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw WireError("\(what): \"\(field)\" is not \(describe(expected))")
        } catch {
            throw WireError("\(what) is not a JSON object")
        }
    }
}

private func describe(_ type: Any.Type) -> String {
    switch type {
    case is String.Type: return "a string"
    case is Bool.Type: return "a boolean"
    case is Int.Type: return "an integer"
    case is Double.Type: return "a number"
    case is [Any].Type, is [String].Type: return "a list"
    default: return "a \(type)"
    }
}

extension Message {
    /// A message of the payload's type carrying it.
    public init<Payload: MetadataPayload>(_ payload: Payload, jobID: UInt64) {
        self.init(type: Payload.messageType, jobID: jobID, metadata: payload.encoded())
    }

    /// The payload of a hello, welcome or error message.
    public func payload<Payload: MetadataPayload>(_: Payload.Type) throws -> Payload {
        guard type == Payload.messageType else {
            throw WireError("a \(type) message carries no \(Payload.messageType) metadata")
        }
        return try Payload(decoding: metadata)
    }

    /// Checks the metadata of the types that carry a payload.
    func validatePayload() throws {
        switch type {
        case .hello:
            let hello = try payload(Hello.self)
            for (field, value) in [("name", hello.name), ("host", hello.host)] where value.utf8.count > WireProtocol.maximumName {
                throw WireError("hello \(field) has \(value.utf8.count) bytes, more than the \(WireProtocol.maximumName) allowed")
            }
            if hello.name.isEmpty { throw WireError("hello name is empty") }
        case .welcome: _ = try payload(Welcome.self)
        case .error: _ = try payload(Refusal.self)
        case .pooled:
            let pooled = try payload(Pooled.self)
            guard pooled.heartbeatInterval > 0, pooled.heartbeatTimeout > pooled.heartbeatInterval else {
                throw WireError("pooled heartbeats: interval \(pooled.heartbeatInterval) s and timeout \(pooled.heartbeatTimeout) s (the timeout must be longer)")
            }
        case .assignment, .gradients, .weights, .heartbeat, .bye: break
        }
    }
}
