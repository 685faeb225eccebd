import Foundation

/// An integer per thread (0 until set), for scopes like no-grad that must not leak into other threads.
/// Sendable because each thread reads and writes only its own value (a pthread key).
public final class ThreadLocalInt: @unchecked Sendable {
    private var key = pthread_key_t()

    public init() { pthread_key_create(&key, nil) }

    public var value: Int {
        get { Int(bitPattern: pthread_getspecific(key)) }
        set { pthread_setspecific(key, UnsafeRawPointer(bitPattern: newValue)) }
    }

    /// Runs `body` with `value` set to `newValue` on this thread, then restores it.
    public func with<R>(_ newValue: Int, _ body: () throws -> R) rethrows -> R {
        let previous = value
        value = newValue
        defer { value = previous }
        return try body()
    }
}
