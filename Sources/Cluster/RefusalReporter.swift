import Foundation
import Transport

/// Logs each peer the gatekeeper turns away as a `peer_refused` event, once a minute per address and reason.
public final class RefusalReporter: CoordinatorCompanion {
    let gatekeeper: Gatekeeper
    private var lastReported: [String: Date] = [:]

    public init(_ gatekeeper: Gatekeeper) { self.gatekeeper = gatekeeper }

    public func poll(_ coordinator: Coordinator) {
        for refusal in gatekeeper.takeRefusals() {
            let key = refusal.address + " " + refusal.reason
            if let last = lastReported[key], Date().timeIntervalSince(last) < 60 { continue }
            lastReported[key] = Date()
            coordinator.events.emit(.peerRefused(address: refusal.address, reason: refusal.reason))
        }
    }
}
