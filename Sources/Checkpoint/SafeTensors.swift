import Foundation

public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    case missingFile(String)
    case corruptHeader(String, reason: String)
    case missingTensor(String, name: String)
    case wrongShape(String, name: String, expected: [Int], got: [Int])
    case writeFailed(String, reason: String)

    public var description: String {
        switch self {
        case let .missingFile(path): return "\(path): file not found"
        case let .corruptHeader(path, reason): return "\(path): not a valid safetensors file (\(reason))"
        case let .missingTensor(path, name): return "\(path): tensor '\(name)' is missing"
        case let .wrongShape(path, name, expected, got):
            return "\(path): tensor '\(name)' has shape \(got), expected \(expected)"
        case let .writeFailed(path, reason): return "\(path): cannot write (\(reason))"
        }
    }
}

/// A safetensors file: an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
/// and byte range, then the raw little-endian data. Only float32 (F32) tensors are written or read.
public struct SafeTensors: Equatable {
    public struct Entry: Equatable {
        public var name: String
        public var shape: [Int]
        public var values: [Float]

        public init(name: String, shape: [Int], values: [Float]) {
            precondition(shape.reduce(1, *) == values.count, "\(name): shape \(shape) needs \(shape.reduce(1, *)) values")
            self.name = name
            self.shape = shape
            self.values = values
        }
    }

    /// Tensors in file order.
    public var tensors: [Entry]
    /// String metadata (`__metadata__`).
    public var metadata: [String: String]

    public init(tensors: [Entry], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    public subscript(name: String) -> Entry? { tensors.first { $0.name == name } }

    /// The values of `name`, which must have `shape`.
    public func values(_ name: String, shape: [Int], file: String) throws -> [Float] {
        guard let entry = self[name] else { throw CheckpointError.missingTensor(file, name: name) }
        guard entry.shape == shape else {
            throw CheckpointError.wrongShape(file, name: name, expected: shape, got: entry.shape)
        }
        return entry.values
    }

    // MARK: encoding

    public func encoded() -> [UInt8] {
        var fields: [String] = []
        if !metadata.isEmpty {
            let pairs = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
            fields.append("\"__metadata__\":{\(pairs.joined(separator: ","))}")
        }
        var offset = 0
        for tensor in tensors {
            let end = offset + tensor.values.count * 4
            let shape = tensor.shape.map(String.init).joined(separator: ",")
            fields.append("\(jsonString(tensor.name)):{\"dtype\":\"F32\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(end)]}")
            offset = end
        }
        var header = Array("{\(fields.joined(separator: ","))}".utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + header.count + offset)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { bytes += $0 }
        bytes += header
        for tensor in tensors {
            tensor.values.withUnsafeBufferPointer { values in
                for value in values { withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes += $0 } }
            }
        }
        return bytes
    }

    private func jsonString(_ s: String) -> String {
        let data = try! JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])
        let array = String(decoding: data, as: UTF8.self)
        return String(array.dropFirst().dropLast())
    }

    // MARK: decoding

    public static func read(_ path: String) throws -> SafeTensors {
        guard let data = FileManager.default.contents(atPath: path) else { throw CheckpointError.missingFile(path) }
        return try decode([UInt8](data), path: path)
    }

    public static func decode(_ bytes: [UInt8], path: String) throws -> SafeTensors {
        func corrupt(_ reason: String) -> CheckpointError { .corruptHeader(path, reason: reason) }
        guard bytes.count >= 8 else { throw corrupt("only \(bytes.count) bytes, no header length") }
        let headerLength = bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard headerLength <= UInt64(bytes.count - 8) else {
            throw corrupt("header length \(headerLength) exceeds the file's \(bytes.count - 8) bytes")
        }
        let dataStart = 8 + Int(headerLength)
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes[8..<dataStart])),
              let header = object as? [String: Any] else {
            throw corrupt("header is not a JSON object")
        }
        let dataLength = bytes.count - dataStart
        var metadata: [String: String] = [:]
        var found: [(start: Int, entry: Entry)] = []
        for (name, value) in header {
            if name == "__metadata__" {
                guard let pairs = value as? [String: String] else { throw corrupt("__metadata__ is not a string map") }
                metadata = pairs
                continue
            }
            guard let info = value as? [String: Any], let dtype = info["dtype"] as? String,
                  let shape = info["shape"] as? [Int], let offsets = info["data_offsets"] as? [Int],
                  offsets.count == 2 else {
                throw corrupt("tensor '\(name)' needs dtype, shape and data_offsets")
            }
            guard dtype == "F32" else { throw corrupt("tensor '\(name)' has dtype \(dtype); only F32 is supported") }
            guard shape.allSatisfy({ $0 >= 0 }) else { throw corrupt("tensor '\(name)' has a negative dimension") }
            let (start, end) = (offsets[0], offsets[1])
            guard start >= 0, start <= end, end <= dataLength else {
                throw corrupt("tensor '\(name)' bytes \(start)..<\(end) lie outside the \(dataLength) data bytes")
            }
            guard end - start == shape.reduce(1, *) * 4 else {
                throw corrupt("tensor '\(name)' has \(end - start) bytes for shape \(shape)")
            }
            let values = bytes[(dataStart + start)..<(dataStart + end)].withUnsafeBytes { raw in
                (0..<(shape.reduce(1, *))).map {
                    Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)))
                }
            }
            found.append((start, Entry(name: name, shape: shape, values: values)))
        }
        let ordered = found.sorted { $0.start < $1.start }
        for (previous, next) in zip(ordered, ordered.dropFirst())
        where previous.start + previous.entry.values.count * 4 > next.start {
            throw corrupt("tensors '\(previous.entry.name)' and '\(next.entry.name)' overlap")
        }
        return SafeTensors(tensors: ordered.map(\.entry), metadata: metadata)
    }

    /// Writes atomically: a temporary file in the same directory, fsynced, then renamed over `path`. A failure at
    /// any point leaves the previous file untouched.
    public func write(to path: String) throws {
        try AtomicFile.write(encoded(), to: path)
    }
}

public enum AtomicFile {
    public static func write(_ bytes: [UInt8], to path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = (directory.isEmpty ? "." : directory) + "/.\((path as NSString).lastPathComponent).tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw CheckpointError.writeFailed(path, reason: String(cString: strerror(errno))) }
        var failure: String?
        bytes.withUnsafeBytes { raw in
            var written = 0
            while written < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + written, raw.count - written)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = String(cString: strerror(errno)); return
                }
                written += n
            }
        }
        if failure == nil, fsync(fd) != 0 { failure = String(cString: strerror(errno)) }
        close(fd)
        if failure == nil, rename(temporary, path) != 0 { failure = String(cString: strerror(errno)) }
        if let failure {
            unlink(temporary)
            throw CheckpointError.writeFailed(path, reason: failure)
        }
        let dirFD = open(directory.isEmpty ? "." : directory, O_RDONLY)
        if dirFD >= 0 { fsync(dirFD); close(dirFD) }
    }
}
