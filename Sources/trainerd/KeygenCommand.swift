import ArgumentParser
import Foundation
import Transport

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a CURVE key pair for a coordinator, worker or monitor: NAME.key (secret, mode 600) and NAME.pub.")

    @Option(help: "Directory to write the keys into.") var directory = "."
    @Option(help: "File name stem.") var name = "trainerd"

    func run() throws {
        do {
            let pair = try CurveKeyPair.generate()
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let secretPath = (directory as NSString).appendingPathComponent("\(name).key")
            let publicPath = (directory as NSString).appendingPathComponent("\(name).pub")
            for path in [secretPath, publicPath] where FileManager.default.fileExists(atPath: path) {
                throw KeygenError("\(path) already exists; remove it or choose another --name")
            }
            guard FileManager.default.createFile(atPath: secretPath, contents: Data((pair.secretKey + "\n").utf8),
                                                 attributes: [.posixPermissions: 0o600]),
                  FileManager.default.createFile(atPath: publicPath, contents: Data((pair.publicKey + "\n").utf8),
                                                 attributes: [.posixPermissions: 0o644]) else {
                throw KeygenError("cannot write the keys into \(directory)")
            }
            print("secret key \(secretPath) (keep it private)")
            print("public key \(publicPath): \(pair.publicKey)")
        } catch {
            fail(error)
        }
    }
}

struct KeygenError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
