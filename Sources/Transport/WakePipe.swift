import Foundation

/// A pipe whose read end a loop polls next to its socket (`receiveFrames(timeout:wakingOn:)`): `signal` from any
/// thread makes it readable, `drain` empties it. Thread-safe (the kernel's pipe is).
public final class WakePipe: @unchecked Sendable {
    private let descriptors: [Int32]

    public init() {
        var descriptors: [Int32] = [0, 0]
        precondition(pipe(&descriptors) == 0, "cannot create a pipe")
        for descriptor in descriptors { _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK) }
        self.descriptors = descriptors
    }

    deinit { descriptors.forEach { close($0) } }

    /// Readable after `signal`, until `drain`.
    public var descriptor: Int32 { descriptors[0] }

    public func signal() {
        var byte: UInt8 = 1
        _ = write(descriptors[1], &byte, 1)
    }

    public func drain() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(descriptors[0], &buffer, buffer.count) > 0 {}
    }
}
