/// One protocol message, independent of any socket. See `WireProtocol` for the frame layout.
public struct Message: Equatable, Sendable {
    public var type: MessageType
    public var jobID: UInt64
    /// The join the message belongs to (see `WireProtocol`); 0 before the first welcome.
    public var session: UInt64
    public var step: UInt64
    /// The micro-batches the message is about (assignments and gradients); empty otherwise.
    public var microBatches: Range<Int>
    /// The parameter block the tensors belong to (gradients and weights).
    public var block: UInt32
    /// UTF-8 JSON, or empty.
    public var metadata: [UInt8]
    public var tensors: [[Float]]
    /// How the tensors travel; a decoded message holds them as float32 whatever the type.
    public var tensorType: TensorType

    public init(type: MessageType, jobID: UInt64, session: UInt64 = 0, step: UInt64 = 0, microBatches: Range<Int> = 0..<0,
                block: UInt32 = 0, metadata: [UInt8] = [], tensors: [[Float]] = [], tensorType: TensorType = .float32) {
        self.type = type
        self.jobID = jobID
        self.session = session
        self.step = step
        self.microBatches = microBatches
        self.block = block
        self.metadata = metadata
        self.tensors = tensors
        self.tensorType = tensorType
    }
}

/// The bytes of one frame, wherever they are kept: an array, or a transport's receive buffer (decoding then
/// copies each tensor once, from there into its float array).
public protocol FrameBytes {
    var count: Int { get }
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}

extension Array: FrameBytes where Element == UInt8 {}

/// Why a received message was dropped; the text names the field and what was expected.
public struct WireError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension Message {
    /// The message as frames: header, metadata (if any), one frame per tensor.
    public func encoded() -> [[UInt8]] { encoded(bytes: { $0 }, float32: littleEndianBytes) }

    /// The same frames built by the caller's constructors: `float32` gets each float32 tensor as it is, so a
    /// transport can send it from the array's own storage instead of a copy (the values are little-endian on
    /// little-endian hosts); everything else goes through `bytes`.
    public func encoded<Frame>(bytes: ([UInt8]) -> Frame, float32: ([Float]) -> Frame) -> [Frame] {
        var frames = [bytes(header)]
        if !metadata.isEmpty { frames.append(bytes(metadata)) }
        for tensor in tensors { frames.append(tensorType == .float32 ? float32(tensor) : bytes(bfloat16Bytes(tensor))) }
        return frames
    }

    /// The header frame alone (what differs between copies of a message to several peers: the session).
    public var header: [UInt8] {
        var header: [UInt8] = []
        header.reserveCapacity(WireProtocol.headerSize + 8 * tensors.count)
        header += WireProtocol.magic
        append(WireProtocol.version, to: &header)
        header += [type.rawValue, tensorType.rawValue]
        append(jobID, to: &header)
        append(session, to: &header)
        append(step, to: &header)
        append(UInt32(microBatches.lowerBound), to: &header)
        append(UInt32(microBatches.count), to: &header)
        append(block, to: &header)
        append(UInt32(metadata.count), to: &header)
        append(UInt32(tensors.count), to: &header)
        for tensor in tensors { append(UInt64(tensor.count * tensorType.bytesPerValue), to: &header) }
        return header
    }

    /// The type and session of a message, read from its header frame alone; nil when the frame is not a header of
    /// this protocol version. What a daemon needs to route a message without decoding it.
    public static func peek<Frame: FrameBytes>(_ header: Frame) -> (type: MessageType, session: UInt64)? {
        header.withUnsafeBytes { raw in
            guard raw.count >= WireProtocol.headerSize, Array(raw[0..<4]) == WireProtocol.magic,
                  UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt16.self)) == WireProtocol.version,
                  let type = MessageType(rawValue: raw[6]) else { return nil }
            return (type, UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self)))
        }
    }

    /// Parses and checks frames: magic, version, known type, frame count and every length. `maximumTensorBytes`
    /// bounds each tensor frame (the model's largest block).
    public static func decode<Frame: FrameBytes>(_ frames: [Frame], maximumTensorBytes: Int = Int.max) throws -> Message {
        guard let header = frames.first?.withUnsafeBytes({ Array($0) }) else { throw WireError("empty message") }
        guard header.count >= WireProtocol.headerSize else {
            throw WireError("header frame has \(header.count) bytes, expected at least \(WireProtocol.headerSize)")
        }
        guard Array(header[0..<4]) == WireProtocol.magic else { throw WireError("not a trainerd message (wrong magic)") }
        let version: UInt16 = read(header, at: 4)
        guard version == WireProtocol.version else {
            throw WireError("protocol version \(version), expected \(WireProtocol.version)")
        }
        guard let type = MessageType(rawValue: header[6]) else { throw WireError("unknown message type \(header[6])") }
        guard let tensorType = TensorType(rawValue: header[7]) else { throw WireError("unknown tensor type \(header[7])") }
        let metadataLength = Int(read(header, at: 44) as UInt32)
        let tensorCount = Int(read(header, at: 48) as UInt32)
        guard metadataLength <= WireProtocol.maximumMetadata else {
            throw WireError("metadata of \(metadataLength) bytes exceeds \(WireProtocol.maximumMetadata)")
        }
        guard tensorCount <= WireProtocol.maximumTensors else {
            throw WireError("\(tensorCount) tensor frames exceed \(WireProtocol.maximumTensors)")
        }
        guard header.count == WireProtocol.headerSize + 8 * tensorCount else {
            throw WireError("header frame has \(header.count) bytes, expected \(WireProtocol.headerSize + 8 * tensorCount) for \(tensorCount) tensors")
        }
        let expectedFrames = 1 + (metadataLength > 0 ? 1 : 0) + tensorCount
        guard frames.count == expectedFrames else {
            throw WireError("\(frames.count) frames, expected \(expectedFrames) (header, \(metadataLength > 0 ? "metadata, " : "")\(tensorCount) tensors)")
        }
        var next = 1
        var metadata: [UInt8] = []
        if metadataLength > 0 {
            guard frames[1].count == metadataLength else {
                throw WireError("metadata frame has \(frames[1].count) bytes, header says \(metadataLength)")
            }
            metadata = frames[1].withUnsafeBytes { Array($0) }
            next = 2
        }
        var tensors: [[Float]] = []
        tensors.reserveCapacity(tensorCount)
        for index in 0..<tensorCount {
            let declared = read(header, at: WireProtocol.headerSize + 8 * index) as UInt64
            let frame = frames[next + index]
            guard declared == UInt64(frame.count) else {
                throw WireError("tensor \(index) frame has \(frame.count) bytes, header says \(declared)")
            }
            guard frame.count % tensorType.bytesPerValue == 0 else {
                throw WireError("tensor \(index) has \(frame.count) bytes, not whole \(tensorType) values")
            }
            guard frame.count <= maximumTensorBytes else {
                throw WireError("tensor \(index) has \(frame.count) bytes, more than the \(maximumTensorBytes) allowed")
            }
            tensors.append(tensorType == .float32 ? floats(littleEndian: frame) : floats(bfloat16: frame))
        }
        let first = Int(read(header, at: 32) as UInt32), count = Int(read(header, at: 36) as UInt32)
        let message = Message(type: type, jobID: read(header, at: 8), session: read(header, at: 16), step: read(header, at: 24),
                              microBatches: first..<(first + count), block: read(header, at: 40), metadata: metadata,
                              tensors: tensors, tensorType: tensorType)
        try message.validatePayload()
        return message
    }
}

/// float32 values as little-endian bytes (a plain copy on little-endian hosts).
func littleEndianBytes(_ values: [Float]) -> [UInt8] {
    #if _endian(little)
    return values.withUnsafeBytes { Array($0) }
    #else
    return values.flatMap { value in withUnsafeBytes(of: value.bitPattern.littleEndian) { Array($0) } }
    #endif
}

/// The float32 values of little-endian `bytes` (whose count is a multiple of 4).
func floats<Frame: FrameBytes>(littleEndian bytes: Frame) -> [Float] {
    let count = bytes.count / 4
    return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
        bytes.withUnsafeBytes { raw in
            #if _endian(little)
            if count > 0 { UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: raw.baseAddress!, byteCount: count * 4) }
            #else
            for i in 0..<count {
                buffer[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)))
            }
            #endif
        }
        initialized = count
    }
}

/// float32 values as little-endian bfloat16: the upper 16 bits, rounded to nearest even (a NaN stays a NaN).
func bfloat16Bytes(_ values: [Float]) -> [UInt8] {
    [UInt8](unsafeUninitializedCapacity: 2 * values.count) { buffer, initialized in
        for (index, value) in values.enumerated() {
            let bits = value.bitPattern
            let half = value.isNaN ? UInt16(truncatingIfNeeded: bits >> 16) | 0x0040
                : UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
            buffer[2 * index] = UInt8(truncatingIfNeeded: half)
            buffer[2 * index + 1] = UInt8(truncatingIfNeeded: half >> 8)
        }
        initialized = 2 * values.count
    }
}

/// The float32 values of little-endian bfloat16 `bytes` (exact: bfloat16 is float32's upper half).
func floats<Frame: FrameBytes>(bfloat16 bytes: Frame) -> [Float] {
    [Float](unsafeUninitializedCapacity: bytes.count / 2) { buffer, initialized in
        bytes.withUnsafeBytes { raw in
            for index in 0..<(raw.count / 2) {
                buffer[index] = Float(bitPattern: UInt32(raw[2 * index]) << 16 | UInt32(raw[2 * index + 1]) << 24)
            }
        }
        initialized = bytes.count / 2
    }
}

private func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
}

private func read<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int) -> T {
    bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
}
