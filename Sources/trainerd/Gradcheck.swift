import ArgumentParser
struct Gradcheck: ParsableCommand {
    func run() throws {}
}
struct Bench: ParsableCommand {
    func run() throws {}
}
