import Foundation
import Transport

/// Reports each peer the gatekeeper turns away once a minute per address and reason: a coordinator's as a
/// `peer_refused` event, the daemon's in its log.
public final class RefusalReporter: CoordinatorCompanion {
    let gatekeeper: Gatekeeper
    private var lastReported: [String: Date] = [:]

    public init(_ gatekeeper: Gatekeeper) { self.gatekeeper = gatekeeper }

    /// The refusals since the last call that were not reported in the last minute.
    public func take() -> [HandshakeRefusal] {
        let now = Date()
        lastReported = lastReported.filter { now.timeIntervalSince($0.value) < 60 }
        return gatekeeper.takeRefusals().filter { refusal in
            let key = refusal.address + " " + refusal.reason
            guard lastReported[key] == nil else { return false }
            lastReported[key] = now
            return true
        }
    }

    public func poll(_ coordinator: Coordinator) {
        for refusal in take() { coordinator.events.emit(.peerRefused(address: refusal.address, reason: refusal.reason)) }
    }
}
