import Foundation

/// A thread-safe queue of messages with a timed wait: `condition` guards `messages`.
public final class MessageQueue<Element>: @unchecked Sendable {
    private var messages: [Element] = []
    private let condition = NSCondition()

    public init() {}

    public func push(_ message: Element) {
        condition.lock()
        messages.append(message)
        condition.signal()
        condition.unlock()
    }

    /// The oldest message, or nil when none arrives within `timeout` seconds.
    public func pop(timeout: Double) -> Element? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while messages.isEmpty {
            guard condition.wait(until: deadline) else { return nil }
        }
        return messages.removeFirst()
    }
}
