import ArgumentParser
import Foundation
import Transport

/// A client's CURVE keys (worker, monitor): from files, or from the environment (a container's secrets).
struct ClientKeyOptions: ParsableArguments {
    @Option(help: "This peer's secret key file (trainerd keygen); or set TRAINERD_CURVE_SECRET_KEY.") var key: String?
    @Option(help: "The coordinator's public key file; or set TRAINERD_CURVE_SERVER_KEY.") var serverKey: String?

    /// The keys to connect with, or nil for a plaintext connection.
    func load() throws -> (keys: CurveKeyPair, serverKey: String)? {
        let environment = ProcessInfo.processInfo.environment
        let secret = try key.map { try CurveKeyPair.load(secretKeyFile: $0) }
            ?? environment["TRAINERD_CURVE_SECRET_KEY"].map { try CurveKeyPair(secretKey: $0) }
        let server = try serverKey.map { try CurveKeyPair.readKey($0) } ?? environment["TRAINERD_CURVE_SERVER_KEY"]
        switch (secret, server) {
        case let (secret?, server?): return (secret, server)
        case (nil, nil): return nil
        case (_?, nil): throw ValidationError("--key needs --server-key (the coordinator's public key file)")
        case (nil, _?): throw ValidationError("--server-key needs --key (this peer's secret key file)")
        }
    }

    /// A socket of `kind` on `context` with `limits`, encrypted when keys are given, connected to `endpoint` under
    /// a fresh random identity; with a monitor that reports the coordinator refusing the key.
    func connect(_ kind: ZMQSocket.Kind, _ endpoint: String, context: ZMQContext, limits: SocketLimits,
                 keys: (keys: CurveKeyPair, serverKey: String)?) throws -> (ZMQSocket, HandshakeMonitor?) {
        let socket = try ZMQSocket(context, kind, limits: limits)
        if kind == .dealer { try socket.setIdentity(bytes: ZMQSocket.connectionIdentity()) }
        var monitor: HandshakeMonitor?
        if let keys {
            try socket.makeCurveClient(keys: keys.keys, serverKey: keys.serverKey)
            monitor = try HandshakeMonitor(context, socket, connecting: true)
        }
        try socket.connect(endpoint)
        return (socket, monitor)
    }
}
