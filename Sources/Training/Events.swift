import Foundation

/// A JSON value with object keys kept in the order given, so events read naturally (`"event"` first).
public indirect enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool { a.serialized == b.serialized }

    public var serialized: String {
        switch self {
        case .null: return "null"
        case let .bool(flag): return flag ? "true" : "false"
        case let .int(value): return String(value)
        case let .number(value):
            guard value.isFinite else { return "null" }
            if value == value.rounded(), abs(value) < 1e15 { return String(format: "%.1f", value) }
            return "\(value)"
        case let .string(text): return Self.quote(text)
        case let .array(items): return "[" + items.map(\.serialized).joined(separator: ",") + "]"
        case let .object(fields):
            return "{" + fields.map { "\(Self.quote($0.0)):\($0.1.serialized)" }.joined(separator: ",") + "}"
        }
    }

    static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .number(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(_ value: Float) { self = .number(Double(value)) }
}

/// The run's log stream: one JSON object a line in `events.jsonl`, each with `"event"` and a wall-clock `"time"`.
public final class EventLog {
    private let handle: FileHandle?
    public let path: String?
    /// Called with every event (the progress display, later the network stream).
    public var observers: [(String, [(String, JSONValue)]) -> Void] = []

    /// Appends to `path` (created if needed); nil keeps events in memory only for observers.
    public init(path: String?) throws {
        self.path = path
        if let path {
            if !FileManager.default.fileExists(atPath: path) {
                guard FileManager.default.createFile(atPath: path, contents: nil) else {
                    throw ConfigError("\(path): cannot create the event log")
                }
            }
            guard let handle = FileHandle(forWritingAtPath: path) else {
                throw ConfigError("\(path): cannot open the event log for writing")
            }
            handle.seekToEndOfFile()
            self.handle = handle
        } else {
            handle = nil
        }
    }

    /// The run directory's `events.jsonl` (the directory is created); nil: memory only.
    public convenience init(runDirectory: String?) throws {
        if let runDirectory {
            try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
            try self.init(path: (runDirectory as NSString).appendingPathComponent("events.jsonl"))
        } else {
            try self.init(path: nil)
        }
    }

    deinit { try? handle?.close() }

    /// One event as a line of the log (without the newline): `"event"`, then the wall-clock `"time"`, then `fields`.
    public static func line(_ event: String, _ fields: [(String, JSONValue)]) -> String {
        JSONValue.object([("event", .string(event)), ("time", .number(Date().timeIntervalSince1970))] + fields).serialized
    }

    public func emit(_ event: String, _ fields: [(String, JSONValue)]) {
        handle?.write(Data((Self.line(event, fields) + "\n").utf8))
        for observer in observers { observer(event, fields) }
    }
}

extension JSONValue {
    /// The value of an int or number, else nil.
    public var numberValue: Double? {
        switch self {
        case let .int(value): return Double(value)
        case let .number(value): return value
        default: return nil
        }
    }
}
