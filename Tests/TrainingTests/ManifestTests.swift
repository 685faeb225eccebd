import Foundation
import TestSupport
import Training
import XCTest
import Yams

/// deploy/kubernetes, deploy/compose.yaml and deploy/Dockerfile (no Kubernetes cluster or Docker engine runs here):
/// the manifests pass Kubernetes' own schemas, and the pieces agree with each other and with trainerd's command line
/// (ports, selectors, volumes, keys, image, user, resources, the job's config).
final class ManifestTests: CLITestCase {
    var deploy: URL { repository.appendingPathComponent("deploy") }
    var kubernetes: URL { deploy.appendingPathComponent("kubernetes") }
    /// The standing pool's manifests (trainerd serve and its workers).
    var pool: URL { kubernetes.appendingPathComponent("pool") }

    /// The Kubernetes objects in deploy/kubernetes (or `directory`), by kind and name.
    func objects(in directory: URL? = nil) throws -> [String: [String: Any]] {
        var objects: [String: [String: Any]] = [:]
        for file in try manifestFiles(in: directory ?? kubernetes) {
            for document in try Yams.load_all(yaml: String(contentsOf: file, encoding: .utf8)) {
                let object = try XCTUnwrap(document as? [String: Any], "\(file.lastPathComponent): a mapping")
                let kind = try XCTUnwrap(object["kind"] as? String), name = try XCTUnwrap(object[path: "metadata.name"] as? String)
                XCTAssertNotNil(object["apiVersion"] as? String, "\(kind)/\(name) has an apiVersion")
                XCTAssertNil(objects["\(kind)/\(name)"], "\(kind)/\(name) is defined once")
                objects["\(kind)/\(name)"] = object
            }
        }
        return objects
    }

    func manifestFiles(in directory: URL) throws -> [URL] {
        try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "yaml" && $0.lastPathComponent != "kustomization.yaml" }
            .sorted { $0.path < $1.path }
    }

    /// Both kustomizations: a job's (deploy/kubernetes) and a standing pool's (deploy/kubernetes/pool).
    func testManifestsPassKubernetesSchemas() throws {
        for directory in [kubernetes, pool] {
            let kustomization = try Yams.load(yaml: String(contentsOf: directory.appendingPathComponent("kustomization.yaml"), encoding: .utf8))
            XCTAssertEqual(Set(((kustomization as? [String: Any])?["resources"] as? [String]) ?? []),
                           Set(try manifestFiles(in: directory).map(\.lastPathComponent)), "kustomization.yaml lists every manifest")
            let objectCount = try objects(in: directory).count
            if FileManager.default.isExecutableFile(atPath: "/usr/bin/kubectl") {
                let built = try run("/usr/bin/kubectl", ["kustomize", directory.path], timeout: 60)
                XCTAssertEqual(built.status, 0, built.stderr)
                XCTAssertEqual(built.stdout.split(separator: "\n").filter { $0.hasPrefix("kind: ") }.count, objectCount)
            }
            let installed = try run("/usr/bin/env", ["python3", "-c", "import kubernetes_validate"], timeout: 60)
            try XCTSkipUnless(installed.status == 0, "kubernetes-validate is not installed (deploy/setup.sh --tests installs it from PyPI)")
            // --strict: an unknown or misspelt field is an error, not silently dropped as the API server would.
            let validated = try run("/usr/bin/env", ["python3", "-m", "kubernetes_validate", "--strict", "--kubernetes-version", "1.33.0"]
                                        + manifestFiles(in: directory).map(\.path), timeout: 120)
            XCTAssertEqual(validated.status, 0, validated.stdout + validated.stderr)
            XCTAssertEqual(validated.stdout.split(separator: "\n").filter { $0.contains(" passed ") }.count, objectCount,
                           validated.stdout)
        }
    }

    func testKubernetesPiecesAgree() throws {
        let objects = try objects()
        let service = try XCTUnwrap(objects["Service/trainerd-coordinator"])
        let coordinatorSet = try XCTUnwrap(objects["StatefulSet/trainerd-coordinator"])
        let workers = try XCTUnwrap(objects["Deployment/trainerd-worker"])
        let jobMap = try XCTUnwrap(objects["ConfigMap/trainerd-job"])

        for workload in [coordinatorSet, workers] { try checkWorkload(workload, objects: objects) }

        // The Service selects the coordinator's pod, not the workers', and its ports are the container's.
        let coordinator = try XCTUnwrap((coordinatorSet[path: "spec.template.spec.containers"] as? [[String: Any]])?.first)
        let coordinatorLabels = coordinatorSet[path: "spec.template.metadata.labels"] as! [String: String]
        let workerLabels = workers[path: "spec.template.metadata.labels"] as! [String: String]
        let selector = try XCTUnwrap(service[path: "spec.selector"] as? [String: String])
        XCTAssertTrue(selector.allSatisfy { coordinatorLabels[$0.key] == $0.value })
        XCTAssertFalse(selector.allSatisfy { workerLabels[$0.key] == $0.value })
        XCTAssertEqual(coordinatorSet[path: "spec.serviceName"] as? String, service[path: "metadata.name"] as? String)
        XCTAssertEqual(coordinatorSet[path: "spec.replicas"] as? Int, 1, "one coordinator")
        let containerPorts = Dictionary(uniqueKeysWithValues: ((coordinator["ports"] as? [[String: Any]]) ?? []).map {
            ($0["name"] as! String, $0["containerPort"] as! Int)
        })
        var servicePorts: [String: Int] = [:]
        for port in (service[path: "spec.ports"] as? [[String: Any]]) ?? [] {
            let target = try XCTUnwrap(port["targetPort"] as? String)
            XCTAssertNotNil(containerPorts[target], "Service port \(port["name"]!) targets a port of the coordinator")
            servicePorts[port["name"] as! String] = port["port"] as? Int
        }

        // The coordinator's command line agrees with its ports, volumes and config.
        let arguments = try XCTUnwrap(coordinator["args"] as? [String])
        XCTAssertEqual(arguments.first, "coordinator")
        XCTAssertEqual(option("--bind", in: arguments), "tcp://0.0.0.0:\(containerPorts["train"] ?? -1)")
        XCTAssertEqual(option("--log-bind", in: arguments), "tcp://0.0.0.0:\(containerPorts["log"] ?? -1)")
        XCTAssertTrue(arguments.contains("--resume"), "a restarted or moved coordinator resumes")
        let mounts = mountPaths(coordinator)
        let runDirectory = try XCTUnwrap(option("--run-dir", in: arguments))
        XCTAssertEqual(volume(containing: runDirectory, mounts), "run")
        XCTAssertNotNil((coordinatorSet[path: "spec.volumeClaimTemplates"] as? [[String: Any]])?.first { $0[path: "metadata.name"] as? String == "run" },
                        "the run directory is on a persistent volume")
        let configPath = arguments[1]
        XCTAssertEqual(volume(containing: configPath, mounts), "job")
        let jobText = try XCTUnwrap((jobMap["data"] as? [String: Any])?[(configPath as NSString).lastPathComponent] as? String)
        let job = try JobConfig.parse(yaml: jobText, source: "ConfigMap trainerd-job")
        let security = try XCTUnwrap(job.security, "CURVE is on in the cluster")
        XCTAssertEqual(volume(containing: security.secretKey, mounts), "keys")
        XCTAssertEqual(volume(containing: security.allowedKeys + "/worker.pub", mounts), "allowed")
        var plain = job
        plain.security = nil
        XCTAssertEqual(plain, try JobConfig.load(path: config), "the ConfigMap's job is configs/fmnist-mlp.yaml with CURVE")

        // Probes ask the coordinator itself for its health state, with a client key it allows.
        for probe in ["startupProbe", "readinessProbe"] {
            let command = try XCTUnwrap(coordinator[path: probe + ".exec.command"] as? [String], probe)
            XCTAssertEqual(Array(command.prefix(3)), ["trainerd", "status", "tcp://127.0.0.1:\(containerPorts["log"] ?? -1)"], probe)
            for key in ["--key", "--server-key"] {
                XCTAssertEqual(volume(containing: option(key, in: command) ?? "", mounts), "keys", "\(probe) \(key)")
            }
        }

        // Workers connect to the Service, use as many threads as CPUs they may use, and are enough to start.
        let worker = try XCTUnwrap((workers[path: "spec.template.spec.containers"] as? [[String: Any]])?.first)
        let workerArguments = try XCTUnwrap(worker["args"] as? [String])
        XCTAssertEqual(workerArguments.first, "worker")
        XCTAssertEqual(option("--connect", in: workerArguments),
                       "tcp://\(service[path: "metadata.name"] as! String):\(servicePorts["train"] ?? -1)")
        XCTAssertEqual(option("--threads", in: workerArguments), worker[path: "resources.limits.cpu"] as? String)
        let workerMounts = mountPaths(worker)
        for key in ["--key", "--server-key"] {
            XCTAssertEqual(volume(containing: option(key, in: workerArguments) ?? "", workerMounts), "keys", key)
        }
        if let name = option("--name", in: workerArguments), name.hasPrefix("$(") {
            let variable = String(name.dropFirst(2).dropLast())
            XCTAssertTrue(((worker["env"] as? [[String: Any]]) ?? []).contains { $0["name"] as? String == variable }, "\(variable) is set")
        }
        XCTAssertLessThanOrEqual(Int(option("--workers", in: arguments) ?? "") ?? .max, workers[path: "spec.replicas"] as? Int ?? 0,
                                 "the Deployment starts the workers the coordinator waits for")
    }

    /// What every workload must be: its selector matches its pods, it runs as the image's user without privileges,
    /// with resources, the image compose builds, and only volumes, Secrets and ConfigMaps that exist.
    func checkWorkload(_ workload: [String: Any], objects: [String: [String: Any]]) throws {
        let secretsInReadme = try documentedSecrets()
        let user = try imageUser(), image = try composeImage()
        let name = workload[path: "metadata.name"] as! String
        let labels = try XCTUnwrap(workload[path: "spec.template.metadata.labels"] as? [String: String])
        let selector = try XCTUnwrap(workload[path: "spec.selector.matchLabels"] as? [String: String])
        XCTAssertTrue(selector.allSatisfy { labels[$0.key] == $0.value }, "\(name): the selector matches its pods")
        let pod = try XCTUnwrap(workload[path: "spec.template.spec"] as? [String: Any])
        XCTAssertEqual(pod[path: "securityContext.runAsNonRoot"] as? Bool, true, name)
        XCTAssertEqual(pod[path: "securityContext.runAsUser"] as? Int, user, "\(name) runs as the image's user")
        XCTAssertEqual(pod[path: "securityContext.fsGroup"] as? Int, user, "\(name): volumes writable by that user")
        let volumes = Set(((pod["volumes"] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String })
            .union(((workload[path: "spec.volumeClaimTemplates"] as? [[String: Any]]) ?? []).compactMap { $0[path: "metadata.name"] as? String })
        for volume in (pod["volumes"] as? [[String: Any]]) ?? [] {
            if let secret = volume[path: "secret.secretName"] as? String {
                XCTAssertTrue(secretsInReadme.contains(secret), "\(name): Secret \(secret) is created in deploy/README.md")
            }
            if let map = volume[path: "configMap.name"] as? String {
                XCTAssertNotNil(objects["ConfigMap/\(map)"], "\(name): ConfigMap \(map) is defined")
            }
        }
        let containers = try XCTUnwrap(pod["containers"] as? [[String: Any]])
        XCTAssertEqual(containers.count, 1)
        for container in containers {
            XCTAssertEqual(container["image"] as? String, image, "\(name): the image compose builds")
            for key in ["requests.cpu", "requests.memory", "limits.cpu", "limits.memory"] {
                XCTAssertNotNil(container[path: "resources." + key], "\(name): resources.\(key)")
            }
            XCTAssertEqual(container[path: "securityContext.allowPrivilegeEscalation"] as? Bool, false, name)
            XCTAssertEqual(container[path: "securityContext.readOnlyRootFilesystem"] as? Bool, true, name)
            XCTAssertEqual(container[path: "securityContext.capabilities.drop"] as? [String], ["ALL"], name)
            for mount in (container["volumeMounts"] as? [[String: Any]]) ?? [] {
                XCTAssertTrue(volumes.contains(mount["name"] as! String), "\(name): volume \(mount["name"]!) is declared")
            }
        }
    }

    /// The standing pool: the Service selects the daemon's pod, not the workers', and its ports are the daemon's
    /// --bind, --log-bind and --api; the job database is on the claim; CURVE's keys are in the Secrets' mounts; the
    /// workers connect to the Service's train port with keys from theirs.
    func testThePoolsKubernetesPiecesAgree() throws {
        let objects = try objects(in: pool)
        let service = try XCTUnwrap(objects["Service/trainerd-serve"])
        let serveSet = try XCTUnwrap(objects["StatefulSet/trainerd-serve"])
        let workers = try XCTUnwrap(objects["Deployment/trainerd-pool-worker"])
        for workload in [serveSet, workers] { try checkWorkload(workload, objects: objects) }
        let selector = try XCTUnwrap(service[path: "spec.selector"] as? [String: String])
        let serveLabels = serveSet[path: "spec.template.metadata.labels"] as! [String: String]
        let workerLabels = workers[path: "spec.template.metadata.labels"] as! [String: String]
        XCTAssertTrue(selector.allSatisfy { serveLabels[$0.key] == $0.value })
        XCTAssertFalse(selector.allSatisfy { workerLabels[$0.key] == $0.value })
        XCTAssertEqual(serveSet[path: "spec.serviceName"] as? String, "trainerd-serve")
        XCTAssertEqual(serveSet[path: "spec.replicas"] as? Int, 1, "one daemon")

        let serve = try XCTUnwrap((serveSet[path: "spec.template.spec.containers"] as? [[String: Any]])?.first)
        let containerPorts = Dictionary(uniqueKeysWithValues: ((serve["ports"] as? [[String: Any]]) ?? []).map {
            ($0["name"] as! String, $0["containerPort"] as! Int)
        })
        var servicePorts: [String: Int] = [:]
        for port in (service[path: "spec.ports"] as? [[String: Any]]) ?? [] {
            XCTAssertNotNil(containerPorts[try XCTUnwrap(port["targetPort"] as? String)], "Service port \(port["name"]!) targets the daemon's")
            servicePorts[port["name"] as! String] = port["port"] as? Int
        }
        let arguments = try XCTUnwrap(serve["args"] as? [String])
        XCTAssertEqual(arguments.first, "serve")
        XCTAssertEqual(option("--bind", in: arguments), "tcp://0.0.0.0:\(containerPorts["train"] ?? -1)")
        XCTAssertEqual(option("--log-bind", in: arguments), "tcp://0.0.0.0:\(containerPorts["log"] ?? -1)")
        XCTAssertEqual(option("--api", in: arguments), "0.0.0.0:\(containerPorts["api"] ?? -1)")
        XCTAssertEqual(serve[path: "readinessProbe.tcpSocket.port"] as? String, "api")
        let mounts = mountPaths(serve)
        XCTAssertEqual(volume(containing: try XCTUnwrap(option("--state-dir", in: arguments)) + "/trainerd.sqlite", mounts), "state")
        XCTAssertNotNil((serveSet[path: "spec.volumeClaimTemplates"] as? [[String: Any]])?.first { $0[path: "metadata.name"] as? String == "state" },
                        "the job database is on a persistent volume")
        XCTAssertEqual(volume(containing: try XCTUnwrap(option("--secret-key", in: arguments)), mounts), "keys")
        XCTAssertEqual(volume(containing: try XCTUnwrap(option("--allowed-keys", in: arguments)) + "/worker.pub", mounts), "allowed")

        let worker = try XCTUnwrap((workers[path: "spec.template.spec.containers"] as? [[String: Any]])?.first)
        let workerArguments = try XCTUnwrap(worker["args"] as? [String])
        XCTAssertEqual(workerArguments.first, "worker")
        XCTAssertEqual(option("--connect", in: workerArguments), "tcp://trainerd-serve:\(servicePorts["train"] ?? -1)")
        XCTAssertEqual(option("--threads", in: workerArguments), worker[path: "resources.limits.cpu"] as? String)
        for key in ["--key", "--server-key"] {
            XCTAssertEqual(volume(containing: option(key, in: workerArguments) ?? "", mountPaths(worker)), "keys", key)
        }
    }

    func testComposeAndDockerfileAgree() throws {
        let compose = try XCTUnwrap(try Yams.load(yaml: String(contentsOf: deploy.appendingPathComponent("compose.yaml"), encoding: .utf8)) as? [String: Any])
        let coordinator = try XCTUnwrap(compose[path: "services.coordinator"] as? [String: Any])
        let worker = try XCTUnwrap(compose[path: "services.worker"] as? [String: Any])
        XCTAssertEqual(coordinator["image"] as? String, worker["image"] as? String)
        let context = deploy.appendingPathComponent(try XCTUnwrap(coordinator[path: "build.context"] as? String))
        let dockerfile = context.appendingPathComponent(try XCTUnwrap(coordinator[path: "build.dockerfile"] as? String))
        XCTAssertEqual(dockerfile.standardizedFileURL.path, deploy.appendingPathComponent("Dockerfile").path)
        XCTAssertNil(worker["container_name"], "a fixed container name would stop `--scale worker=N`")
        XCTAssertNil(worker["ports"], "host ports would stop `--scale worker=N`")

        let arguments = try XCTUnwrap(coordinator["command"] as? [String])
        let bind = try XCTUnwrap(option("--bind", in: arguments))
        let logBind = try XCTUnwrap(option("--log-bind", in: arguments))
        XCTAssertEqual(option("--connect", in: try XCTUnwrap(worker["command"] as? [String])),
                       bind.replacingOccurrences(of: "0.0.0.0", with: "coordinator"))
        XCTAssertTrue(arguments.contains("--resume"))
        let configTarget = try XCTUnwrap((coordinator["configs"] as? [[String: Any]])?.first)
        XCTAssertEqual(configTarget["target"] as? String, arguments[1])
        let configFile = try XCTUnwrap(compose[path: "configs.\(configTarget["source"] as! String).file"] as? String)
        XCTAssertNoThrow(try JobConfig.load(path: deploy.appendingPathComponent(configFile).path))
        let runDirectory = try XCTUnwrap(option("--run-dir", in: arguments))
        XCTAssertTrue(((coordinator["volumes"] as? [String]) ?? []).contains { runDirectory.hasPrefix(String($0.split(separator: ":")[1])) },
                      "the run directory is on a volume")
        let health = try XCTUnwrap(coordinator[path: "healthcheck.test"] as? [String])
        XCTAssertEqual(Array(health.prefix(4)), ["CMD", "/usr/local/bin/trainerd", "status", logBind.replacingOccurrences(of: "0.0.0.0", with: "127.0.0.1")])
        XCTAssertLessThanOrEqual(Int(option("--workers", in: arguments) ?? "") ?? .max, worker[path: "deploy.replicas"] as? Int ?? 0)

        // The standing pool's compose file: the same image; workers reach the daemon's --bind by its service name
        // and scale; the job database is on a volume; the API and log ports are published on the host's loopback.
        let poolCompose = try XCTUnwrap(try Yams.load(yaml: String(contentsOf: deploy.appendingPathComponent("compose-pool.yaml"), encoding: .utf8)) as? [String: Any])
        let serve = try XCTUnwrap(poolCompose[path: "services.serve"] as? [String: Any])
        let poolWorker = try XCTUnwrap(poolCompose[path: "services.worker"] as? [String: Any])
        XCTAssertEqual(serve["image"] as? String, coordinator["image"] as? String)
        XCTAssertEqual(poolWorker["image"] as? String, coordinator["image"] as? String)
        XCTAssertNil(poolWorker["ports"], "host ports would stop `--scale worker=N`")
        let serveArguments = try XCTUnwrap(serve["command"] as? [String])
        XCTAssertEqual(serveArguments.first, "serve")
        XCTAssertEqual(option("--connect", in: try XCTUnwrap(poolWorker["command"] as? [String])),
                       try XCTUnwrap(option("--bind", in: serveArguments)).replacingOccurrences(of: "0.0.0.0", with: "serve"))
        let stateDirectory = try XCTUnwrap(option("--state-dir", in: serveArguments))
        XCTAssertTrue(((serve["volumes"] as? [String]) ?? []).contains { stateDirectory.hasPrefix(String($0.split(separator: ":")[1])) },
                      "the job database is on a volume")
        let published = Set(((serve["ports"] as? [String]) ?? []).map { String($0.split(separator: ":").last!) })
        let listening = [option("--api", in: serveArguments), option("--log-bind", in: serveArguments)].compactMap { $0?.split(separator: ":").last.map(String.init) }
        XCTAssertEqual(published, Set(listening), "the API and the log stream are published")

        // The image: a Swift build stage, a slim Debian runtime with libzmq and the datasets, trainerd as entry point.
        let instructions = try dockerfileInstructions()
        let stages = instructions.filter { $0.hasPrefix("FROM ") }
        XCTAssertEqual(stages.count, 2, "multi-stage: build and runtime")
        XCTAssertTrue(stages.first!.hasPrefix("FROM swift:6.") && stages.first!.hasSuffix(" AS build"), stages.first!)
        XCTAssertTrue(stages.last!.hasPrefix("FROM debian:") && stages.last!.contains("-slim"), stages.last!)
        let runtime = instructions.drop { !$0.hasPrefix("FROM debian:") }
        let installs = runtime.filter { $0.hasPrefix("RUN ") && $0.contains("apt-get install") }.joined(separator: " ")
        for package in ["libzmq5", "dataset-fashion-mnist", "fortunes", "libjs-dygraphs"] {
            XCTAssertTrue(installs.contains(" \(package)"), "the runtime installs \(package)")
        }
        XCTAssertTrue(runtime.contains { $0.hasPrefix("COPY --from=build ") && $0.hasSuffix(" /usr/local/bin/trainerd") })
        XCTAssertEqual(runtime.last { $0.hasPrefix("ENTRYPOINT ") }, "ENTRYPOINT [\"/usr/local/bin/trainerd\"]")
        let exposed = try XCTUnwrap(runtime.last { $0.hasPrefix("EXPOSE ") }).split(separator: " ").dropFirst().map(String.init)
        XCTAssertEqual(Set(exposed), Set([bind, logBind].map { String($0.split(separator: ":").last!) }))
        XCTAssertNotNil(try imageUser())
    }

    // MARK: Helpers

    /// Dockerfile instructions with their continuation lines joined and comments dropped.
    func dockerfileInstructions() throws -> [String] {
        let text = try String(contentsOf: deploy.appendingPathComponent("Dockerfile"), encoding: .utf8)
        var instructions: [String] = [], current = ""
        for line in text.split(separator: "\n") where !line.trimmingCharacters(in: .whitespaces).hasPrefix("#") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            current += (current.isEmpty ? "" : " ") + (trimmed.hasSuffix("\\") ? String(trimmed.dropLast()).trimmingCharacters(in: .whitespaces) : trimmed)
            if !trimmed.hasSuffix("\\") {
                instructions.append(current)
                current = ""
            }
        }
        return instructions
    }

    /// The uid the image runs as (its last USER instruction, numeric so that Kubernetes can check runAsNonRoot).
    func imageUser() throws -> Int? {
        let user = try dockerfileInstructions().last { $0.hasPrefix("USER ") }
        return user.flatMap { Int($0.dropFirst(5).split(separator: ":")[0]) }
    }

    func composeImage() throws -> String? {
        let compose = try Yams.load(yaml: String(contentsOf: deploy.appendingPathComponent("compose.yaml"), encoding: .utf8)) as? [String: Any]
        return compose?[path: "services.coordinator.image"] as? String
    }

    /// The Secrets the README's Kubernetes section creates (`kubectl create secret generic NAME`).
    func documentedSecrets() throws -> Set<String> {
        let readme = try String(contentsOf: deploy.appendingPathComponent("README.md"), encoding: .utf8)
        return Set(readme.components(separatedBy: "kubectl create secret generic ").dropFirst().map { String($0.prefix { !$0.isWhitespace }) })
    }

    func option(_ name: String, in arguments: [String]) -> String? {
        arguments.firstIndex(of: name).flatMap { $0 + 1 < arguments.count ? arguments[$0 + 1] : nil }
    }

    /// A container's mounts: path → volume name.
    func mountPaths(_ container: [String: Any]) -> [String: String] {
        Dictionary(uniqueKeysWithValues: ((container["volumeMounts"] as? [[String: Any]]) ?? []).map {
            ($0["mountPath"] as! String, $0["name"] as! String)
        })
    }

    /// The volume whose mount holds `path` (the longest mount path that is a prefix of it).
    func volume(containing path: String, _ mounts: [String: String]) -> String? {
        mounts.filter { path.hasPrefix($0.key + "/") }.max { $0.key.count < $1.key.count }?.value
    }
}

private extension Dictionary where Key == String, Value == Any {
    /// The value at a dotted path of mapping keys ("spec.template.metadata.labels").
    subscript(path path: String) -> Any? {
        var value: Any? = self
        for key in path.split(separator: ".") { value = (value as? [String: Any])?[String(key)] }
        return value
    }
}
