import ArgumentParser
import ControlAPI
import Daemon
import Dashboard
import Foundation
import JobStore
import Training

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the trainer daemon: a job queue, a standing pool of workers, and the control API.")

    @Option(help: "Directory for the job database (trainerd.sqlite) and the jobs' run directories.") var stateDir: String
    @Option(help: "Endpoint for pool workers, e.g. tcp://0.0.0.0:5555.") var bind: String
    @Option(help: "Endpoint for the log stream (every job's events, the job id as topic: trainerd monitor --job), e.g. tcp://0.0.0.0:5556.")
    var logBind: String?
    @Option(help: "CURVE on the worker and log ports: the daemon's secret key file (trainerd keygen).") var secretKey: String?
    @Option(help: "CURVE: the directory of the public keys (*.pub) of the workers and monitors let in.") var allowedKeys: String?
    @Option(help: "Address of the control API (HTTP, or HTTPS with --tls-cert and --tls-key).") var api = "127.0.0.1:8470"
    @Option(help: "PEM certificate chain for the API's TLS.") var tlsCert: String?
    @Option(help: "PEM private key for the API's TLS.") var tlsKey: String?
    @Option(help: "Seconds between heartbeats with idle pool workers.") var heartbeatInterval = 1.0
    @Option(help: "Seconds of silence after which an idle pool worker is gone.") var heartbeatTimeout = 10.0

    func run() throws {
        do {
            guard (tlsCert == nil) == (tlsKey == nil) else { throw ValidationError("--tls-cert and --tls-key go together") }
            guard (secretKey == nil) == (allowedKeys == nil) else { throw ValidationError("--secret-key and --allowed-keys go together") }
            let (host, port) = try hostAndPort(api, option: "--api")
            let log: @Sendable (String) -> Void = { FileHandle.standardError.write(Data("serve: \($0)\n".utf8)) }
            let store = try JobStore(directory: stateDir)
            let options = Daemon.Options(bind: bind, logBind: logBind, secretKeyFile: secretKey, allowedKeys: allowedKeys,
                                         heartbeatInterval: heartbeatInterval, heartbeatTimeout: heartbeatTimeout)
            let daemon = try Daemon(store: store, options: options, log: log)
            let library = ChartLibrary()
            if !library.isInstalled {
                log("the dashboard will have no charts: \(ChartLibraryMissing(path: library.directory + "/dygraph.min.js"))")
            }
            let api = ControlAPI(daemon: daemon, library: library, log: log)
            let scheme = tlsCert == nil ? "http" : "https"
            let (tlsCert, tlsKey) = (self.tlsCert, self.tlsKey)
            let server = Task {
                do {
                    try await api.serve(host: host, port: port, certificate: tlsCert, key: tlsKey) { bound in
                        log("api on \(scheme)://\(host):\(bound) (the dashboard at /, Prometheus metrics at /metrics)")
                    }
                } catch {
                    log("api: \(error)")
                    Foundation.exit(1)
                }
            }
            try daemon.run(stop: stopRequestOnSignals())
            server.cancel()
        } catch {
            fail(error)
        }
    }
}

/// "HOST:PORT" split; the error names the option.
func hostAndPort(_ text: String, option: String) throws -> (String, Int) {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port),
          colon != text.startIndex else {
        throw ValidationError("\(option) \(text): expected HOST:PORT, e.g. 127.0.0.1:8470")
    }
    return (String(text[..<colon]), port)
}

struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Make access tokens for the daemon's API.", subcommands: [Create.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a token and print it once, as the last line (the daemon keeps only its hash).")

        @Argument(help: "Who the token is for; jobs it submits carry this name.") var name: String
        @Option(help: "read (list and follow), submit (also submit and cancel its own jobs) or admin (cancel any).") var role: String
        @Option(help: "The daemon's --state-dir.") var stateDir: String

        func run() throws {
            do {
                guard let role = Role(rawValue: role) else { throw ValidationError("--role \(role): expected read, submit or admin") }
                let token = try JobStore(directory: stateDir).createToken(name: name, role: role, now: Date().timeIntervalSince1970)
                FileHandle.standardError.write(Data("token \(name) (\(role.rawValue)); it is shown only now:\n".utf8))
                print(token)
            } catch {
                fail(error)
            }
        }
    }
}
