/// The trainerd wire protocol's constants: the one place that names them.
///
/// A message is a multipart ZeroMQ message: one header frame, then an optional metadata frame (UTF-8 JSON, the
/// typed payloads of `Payloads.swift`), then raw little-endian tensor frames. The header (little-endian,
/// `headerSize` bytes):
///
///     offset  size  field
///          0     4  magic "TRND"
///          4     2  protocol version
///          6     1  message type
///          7     1  tensor element type: 0 float32, 1 bfloat16 (`TensorType`)
///          8     8  job id
///         16     8  session: 0 in a first hello; from the welcome on, the session it issued, in every message
///                   either way; a hello after a reconnect carries the session it had, to reclaim its name
///         24     8  step
///         32     4  first micro-batch of the range the message is about
///         36     4  number of micro-batches in it
///         40     4  first block: tensor i of a gradients or weights message is block `first + i`, where
///                   blocks 0..<P are the P parameter tensors and (gradients only) block P is the loss sum
///         44     4  metadata frame length in bytes (0: no metadata frame)
///         48     4  number of tensor frames, n
///         52   8·n  byte length of each tensor frame
///
/// The sender is the transport's business (a ZeroMQ identity, one per connection), not the header's; the session
/// ties a worker's messages to the join that admitted it.
public enum WireProtocol {
    public static let magic: [UInt8] = Array("TRND".utf8)
    /// 2: gradients travel a block at a time, as backward produces them. 3: no sender field; typed metadata.
    /// 4: a session per join. 5: a daemon's pool (`pooled`).
    public static let version: UInt16 = 5
    /// Bytes of the fixed header, before the tensor lengths.
    public static let headerSize = 52
    /// Tensor frames a message may carry.
    public static let maximumTensors = 4096
    /// Bytes of metadata a message may carry.
    public static let maximumMetadata = 1 << 20
    /// Bytes of the largest frame any message may carry (a tensor of 2^28 float32 values), whatever the model.
    public static let maximumFrame = 1 << 30
    /// Bytes of a worker's name and host in a hello.
    public static let maximumName = 128
}

/// How tensor frames store their values. Raw values are on the wire.
public enum TensorType: UInt8, CaseIterable, Sendable {
    /// IEEE float32, little-endian: the default, and lossless.
    case float32 = 0
    /// The upper 16 bits of float32 (bfloat16), little-endian, rounded to nearest even: half the bytes, about
    /// 3 significant digits.
    case bfloat16 = 1

    public var bytesPerValue: Int { self == .float32 ? 4 : 2 }
}

/// What a message asks or tells. Raw values are on the wire.
public enum MessageType: UInt8, CaseIterable, Sendable {
    /// worker → coordinator: I am here (metadata: `Hello`).
    case hello = 1
    /// coordinator → worker: admitted (metadata: `Welcome`, the job).
    case welcome = 2
    /// coordinator → worker: compute gradients for micro-batches [first, first + count) of `step`.
    case assignment = 3
    /// worker → coordinator: gradient sums over one aligned block of micro-batches, for consecutive blocks from
    /// the header's block index (parameter tensors, then the loss sum); a worker sends each as soon as it exists.
    case gradients = 4
    /// coordinator → worker: weights of `step` for consecutive parameter blocks from the header's block index (a
    /// layer a message, first layer first, after the assignment).
    case weights = 5
    /// either way: still alive; a worker's first one after the welcome means it is ready for work.
    case heartbeat = 6
    /// either way: leaving.
    case bye = 7
    /// either way: refused or failed (metadata: `Refusal`).
    case error = 8
    /// daemon → worker: in the daemon's pool, waiting for a job (metadata: `Pooled`). From then on the worker
    /// stays: a bye from a job sends it back to the pool with a new hello, rather than ending it.
    case pooled = 9
}
