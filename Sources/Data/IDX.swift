import CZlib
import Foundation

/// Errors reading dataset files; each names the file and what was expected.
public enum DataError: Error, CustomStringConvertible, Equatable {
    case missingFile(String)
    case unreadable(String, reason: String)
    case badMagic(String, found: String, expected: String)
    case truncated(String, expectedBytes: Int, gotBytes: Int)
    case unsupported(String, reason: String)
    case mismatch(String)

    public var description: String {
        switch self {
        case let .missingFile(path): return "\(path): file not found"
        case let .unreadable(path, reason): return "\(path): cannot read (\(reason))"
        case let .badMagic(path, found, expected): return "\(path): wrong magic \(found), expected \(expected)"
        case let .truncated(path, expected, got):
            return "\(path): truncated, expected \(expected) bytes of data, found \(got)"
        case let .unsupported(path, reason): return "\(path): \(reason)"
        case let .mismatch(reason): return reason
        }
    }
}

/// Reads a whole file through zlib, which inflates gzip and passes plain files through unchanged.
func readPossiblyGzipped(_ path: String) throws -> [UInt8] {
    guard FileManager.default.fileExists(atPath: path) else { throw DataError.missingFile(path) }
    guard let file = gzopen(path, "rb") else { throw DataError.unreadable(path, reason: String(cString: strerror(errno))) }
    defer { gzclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = chunk.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32($0.count)) }
        if n < 0 {
            var code: Int32 = 0
            let message = String(cString: gzerror(file, &code))
            throw DataError.unreadable(path, reason: "corrupt gzip stream: \(message)")
        }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<Int(n)])
    }
    // A gzip stream cut short reads as a clean end of file; zlib reports it only through gzerror.
    var code: Int32 = 0
    let message = String(cString: gzerror(file, &code))
    if code != Z_OK && code != Z_STREAM_END {
        throw DataError.unreadable(path, reason: "corrupt gzip stream: \(message)")
    }
    return bytes
}

/// An IDX array (the MNIST format): big-endian header `0 0 type rank`, rank big-endian UInt32 dimensions,
/// then the values. Only unsigned bytes (type 0x08) are accepted: images and labels.
public struct IDXArray: Equatable {
    public var dimensions: [Int]
    public var bytes: [UInt8]

    public static func read(_ path: String) throws -> IDXArray {
        let data = try readPossiblyGzipped(path)
        guard data.count >= 4 else { throw DataError.truncated(path, expectedBytes: 4, gotBytes: data.count) }
        let magic = data[0..<4].map { String(format: "%02x", $0) }.joined()
        guard data[0] == 0, data[1] == 0, data[2] == 0x08, (1...4).contains(data[3]) else {
            throw DataError.badMagic(path, found: "0x" + magic, expected: "0x000008NN (unsigned bytes, rank 1–4)")
        }
        let rank = Int(data[3])
        let headerSize = 4 + 4 * rank
        guard data.count >= headerSize else {
            throw DataError.truncated(path, expectedBytes: headerSize, gotBytes: data.count)
        }
        let dimensions = (0..<rank).map { axis -> Int in
            let at = 4 + 4 * axis
            return data[at..<(at + 4)].reduce(0) { $0 << 8 | Int($1) }
        }
        let expected = dimensions.reduce(1, *)
        let available = data.count - headerSize
        guard available >= expected else { throw DataError.truncated(path, expectedBytes: expected, gotBytes: available) }
        guard available == expected else {
            throw DataError.unsupported(path, reason: "\(available - expected) bytes after the \(dimensions) array")
        }
        return IDXArray(dimensions: dimensions, bytes: Array(data[headerSize...]))
    }
}
