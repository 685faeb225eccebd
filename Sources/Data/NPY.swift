import Foundation

/// A NumPy .npy array (format 1.0–3.0, C order, little-endian or byte-sized dtypes), values as Float.
public struct NPYArray: Equatable {
    public var shape: [Int]
    public var dtype: String
    public var values: [Float]

    public static func read(_ path: String) throws -> NPYArray {
        guard FileManager.default.fileExists(atPath: path) else { throw DataError.missingFile(path) }
        let data = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        return try parse(data, path: path)
    }

    public static func parse(_ data: [UInt8], path: String) throws -> NPYArray {
        let magic: [UInt8] = [0x93] + Array("NUMPY".utf8)
        guard data.count >= 10, Array(data[0..<6]) == magic else {
            throw DataError.badMagic(path, found: data.prefix(6).map { String(format: "%02x", $0) }.joined(),
                                     expected: "\\x93NUMPY")
        }
        let major = data[6]
        let (lengthSize, headerStart) = major == 1 ? (2, 10) : (4, 12)
        guard (1...3).contains(major), data.count >= headerStart else {
            throw DataError.unsupported(path, reason: "npy format version \(major) is not supported")
        }
        let headerLength = data[8..<(8 + lengthSize)].reversed().reduce(0) { $0 << 8 | Int($1) }
        guard data.count >= headerStart + headerLength else {
            throw DataError.truncated(path, expectedBytes: headerStart + headerLength, gotBytes: data.count)
        }
        let header = String(decoding: data[headerStart..<(headerStart + headerLength)], as: UTF8.self)
        func field(_ key: String) -> String? {
            guard let start = header.range(of: "'\(key)':") else { return nil }
            return String(header[start.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
        guard let descrField = field("descr"), let dtype = descrField.split(separator: "'").first.map(String.init) else {
            throw DataError.unsupported(path, reason: "npy header has no descr: \(header)")
        }
        if let order = field("fortran_order"), order.hasPrefix("True") {
            throw DataError.unsupported(path, reason: "Fortran-ordered arrays are not supported")
        }
        guard let shapeField = field("shape"), let open = shapeField.firstIndex(of: "("),
              let close = shapeField.firstIndex(of: ")") else {
            throw DataError.unsupported(path, reason: "npy header has no shape: \(header)")
        }
        let shape = shapeField[shapeField.index(after: open)..<close].split(separator: ",")
            .compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        let count = shape.reduce(1, *)
        let body = Array(data[(headerStart + headerLength)...])
        let width: Int
        let convert: (UnsafeRawBufferPointer, Int) -> Float
        switch dtype {
        case "|u1", "<u1": width = 1; convert = { Float($0[$1]) }
        case "|i1", "<i1": width = 1; convert = { Float(Int8(bitPattern: $0[$1])) }
        case "<f4": width = 4; convert = { Float(bitPattern: $0.loadUnaligned(fromByteOffset: $1 * 4, as: UInt32.self).littleEndian) }
        case "<f8": width = 8; convert = { Float(Double(bitPattern: $0.loadUnaligned(fromByteOffset: $1 * 8, as: UInt64.self).littleEndian)) }
        case "<i4": width = 4; convert = { Float(Int32(littleEndian: $0.loadUnaligned(fromByteOffset: $1 * 4, as: Int32.self))) }
        case "<i8": width = 8; convert = { Float(Int64(littleEndian: $0.loadUnaligned(fromByteOffset: $1 * 8, as: Int64.self))) }
        default: throw DataError.unsupported(path, reason: "dtype \(dtype) is not supported (u1, i1, f4, f8, i4, i8)")
        }
        guard body.count >= count * width else {
            throw DataError.truncated(path, expectedBytes: count * width, gotBytes: body.count)
        }
        let values = body.withUnsafeBytes { raw in (0..<count).map { convert(raw, $0) } }
        return NPYArray(shape: shape, dtype: dtype, values: values)
    }
}
