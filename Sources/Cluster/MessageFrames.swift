import Transport
import Wire

/// A received ZeroMQ frame is decoded straight from libzmq's buffer.
extension ReceivedFrame: FrameBytes {}

extension Message {
    /// The frames to send; float32 tensors go out from their own arrays (zero-copy in libzmq).
    public var outgoingFrames: [OutgoingFrame] { encoded(bytes: OutgoingFrame.bytes, float32: OutgoingFrame.floats) }
}
