import COpenSSL
import Foundation

/// SHA-256 of `values` as float32 little-endian bytes, as lowercase hex. Over the flat parameter buffer in
/// canonical order this is the run's `weights_sha256`.
public func weightsSHA256(_ values: [Float]) -> String {
    var digest = [UInt8](repeating: 0, count: Int(SHA256_DIGEST_LENGTH))
    let littleEndian = values.map { $0.bitPattern.littleEndian }
    littleEndian.withUnsafeBytes { raw in
        _ = SHA256(raw.bindMemory(to: UInt8.self).baseAddress, raw.count, &digest)
    }
    return digest.map { String(format: "%02x", $0) }.joined()
}
