import Transport

/// The coordinator's side of `security`: its CURVE secret key, and a gatekeeper admitting the allowed keys.
public struct CoordinatorSecurity {
    public let keys: CurveKeyPair
    public let gatekeeper: Gatekeeper

    /// Reads the key and the allow-list, and starts the gatekeeper for `sockets` (not yet bound), which
    /// `connectionGuard` watches.
    public init(secretKeyFile: String, allowedKeys: String, context: ZMQContext, sockets: [ZMQSocket],
                guard connectionGuard: ConnectionGuard) throws {
        keys = try CurveKeyPair.load(secretKeyFile: secretKeyFile)
        let allowed = try CurveKeyPair.publicKeys(inDirectory: allowedKeys)
        for socket in sockets { try socket.makeCurveServer(secretKey: keys.secretKey) }
        gatekeeper = try Gatekeeper(context: context, allowedKeys: allowed, guard: connectionGuard)
    }
}
