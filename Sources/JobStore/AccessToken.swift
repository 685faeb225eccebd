import Checkpoint
import GRDB

/// What a token may do: `read` lists and follows jobs, `submit` also submits and cancels its own jobs, `admin`
/// cancels any job.
public enum Role: String, Codable, Sendable, CaseIterable, Comparable {
    case read, submit, admin

    public static func < (lhs: Role, rhs: Role) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// One row of the `token` table. The token itself is shown once, when made; only its SHA-256 is kept.
public struct AccessToken: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "token"

    public var name: String
    public var role: Role
    /// Hex SHA-256 of the token's text.
    public var hash: String
    public var createdAt: Double

    /// A new token's text: "trainerd_" and 64 hex digits from the system's cryptographic generator.
    static func generate() -> String {
        var random = SystemRandomNumberGenerator()
        return "trainerd_" + (0..<4).map { _ in hex(random.next() as UInt64) }.joined()
    }

    static func hash(_ token: String) -> String {
        Array(token.utf8).withUnsafeBytes(sha256).map { hex($0) }.joined()
    }

    /// Compares every byte whatever the first difference, so the time taken tells nothing about where it is.
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let a = Array(a.utf8), b = Array(b.utf8)
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    private static func hex<T: FixedWidthInteger>(_ value: T) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: T.bitWidth / 4 - digits.count) + digits
    }
}
