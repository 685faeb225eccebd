import COpenSSL
import Foundation

/// SHA-256 of `bytes`.
public func sha256(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
    var digest = [UInt8](repeating: 0, count: Int(SHA256_DIGEST_LENGTH))
    _ = SHA256(bytes.bindMemory(to: UInt8.self).baseAddress, bytes.count, &digest)
    return digest
}

/// SHA-256 of `values` as float32 little-endian bytes, as lowercase hex. Over the flat parameter buffer in
/// canonical order this is the run's `weights_sha256`.
public func weightsSHA256(_ values: [Float]) -> String {
    values.map { $0.bitPattern.littleEndian }.withUnsafeBytes(sha256).map { String(format: "%02x", $0) }.joined()
}
