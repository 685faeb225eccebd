import Foundation
import Hummingbird
import NIOCore

/// A job's `events.jsonl` as Server-Sent Events: each line is one event, `id:` its line number (so a client
/// that reconnects with `Last-Event-ID` misses nothing and repeats nothing) and `data:` the line. Read from the
/// file itself, so no line is ever dropped however slow the client. With `fromStep`, lines start at the first
/// event whose `step` is at least that. It follows the file until `hasEnded` says the job is over and every line
/// written before has been sent; a comment every 15 s keeps idle connections open.
struct EventStream: Sendable {
    let path: String
    let fromStep: Int?
    let afterLine: Int
    let hasEnded: @Sendable () -> Bool

    func write(to writer: inout any ResponseBodyWriter) async throws {
        var offset: UInt64 = 0, lineNumber = 0, started = fromStep == nil
        var pending = Data()
        var lastWrite = Date()
        while true {
            let ended = hasEnded()  // asked before reading, so that the last lines are read after the end
            let chunk = Self.read(path, from: offset)
            offset += UInt64(chunk.count)
            pending += chunk
            var frames = ""
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[pending.startIndex..<newline]
                pending = Data(pending[(newline + 1)...])
                lineNumber += 1
                guard lineNumber > afterLine else { continue }
                if !started, let fromStep, Self.step(of: line).map({ $0 >= fromStep }) ?? false { started = true }
                if started { frames += "id: \(lineNumber)\ndata: \(String(decoding: line, as: UTF8.self))\n\n" }
            }
            if !frames.isEmpty || Date().timeIntervalSince(lastWrite) > 15 {
                try await writer.write(ByteBuffer(string: frames.isEmpty ? ": keep-alive\n\n" : frames))
                lastWrite = Date()
            }
            if ended && chunk.isEmpty { break }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        try await writer.finish(nil)
    }

    /// Bytes of the file from `offset` on (none when it does not exist yet).
    static func read(_ path: String, from offset: UInt64) -> Data {
        guard let file = FileHandle(forReadingAtPath: path) else { return Data() }
        defer { try? file.close() }
        try? file.seek(toOffset: offset)
        return (try? file.readToEnd()) ?? Data()
    }

    static func step(of line: Data) -> Int? {
        (try? JSONSerialization.jsonObject(with: line) as? [String: Any])?["step"] as? Int
    }
}
