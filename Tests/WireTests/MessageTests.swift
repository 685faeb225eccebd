import Wire
import XCTest

final class MessageTests: XCTestCase {
    let sample = Message(type: .gradients, jobID: 0xDEAD_BEEF_0102_0304, session: 0x5E55, step: 77, microBatches: 4..<8,
                         block: 2, metadata: Array("{\"loss\":1.5}".utf8), tensors: [[1, -2.5, 0.1], [], [3]])

    func testEveryTypeRoundTrips() throws {
        let payloads: [MessageType: [UInt8]] = [
            .hello: Hello(name: "w1", host: "a", pid: 7).encoded(),
            .welcome: Welcome(config: "seed: 3", overrides: ["training.batch_size=16"]).encoded(),
            .error: Refusal("no", rejoin: true).encoded(),
            .pooled: Pooled(heartbeatInterval: 1, heartbeatTimeout: 10).encoded(),
        ]
        for type in MessageType.allCases {
            var message = sample
            message.type = type
            message.metadata = payloads[type] ?? sample.metadata
            XCTAssertEqual(try Message.decode(message.encoded()), message)
        }
        let bare = Message(type: .heartbeat, jobID: 1)
        XCTAssertEqual(bare.encoded().count, 1)
        XCTAssertEqual(try Message.decode(bare.encoded()), bare)
    }

    /// A header written byte by byte from the documented layout decodes to the expected fields.
    func testHeaderLayoutIsTheDocumentedOne() throws {
        var header: [UInt8] = Array("TRND".utf8) + [5, 0] + [5, 0]
        header += [8, 7, 6, 5, 4, 3, 2, 1]  // job id
        header += [0xAA, 0xBB, 0, 0, 0, 0, 0, 0x11]  // session
        header += [42, 0, 0, 0, 0, 0, 0, 0]  // step
        header += [2, 0, 0, 0, 3, 0, 0, 0]  // micro-batches 2..<5
        header += [1, 0, 0, 0]  // block
        header += [0, 0, 0, 0]  // no metadata
        header += [1, 0, 0, 0]  // one tensor
        header += [8, 0, 0, 0, 0, 0, 0, 0]  // of 8 bytes
        let tensor: [UInt8] = [0, 0, 0x80, 0x3F, 0, 0, 0x20, 0xC0]  // 1.0, -2.5
        let message = try Message.decode([header, tensor])
        XCTAssertEqual(message, Message(type: .weights, jobID: 0x0102_0304_0506_0708, session: 0x1100_0000_0000_BBAA, step: 42,
                                        microBatches: 2..<5, block: 1, tensors: [[1, -2.5]]))
        XCTAssertEqual(message.encoded(), [header, tensor])
    }

    /// bfloat16 frames hold the upper 16 bits of each float32, rounded to nearest even; NaN and ±∞ survive.
    func testBFloat16TensorsRoundToNearestEvenInHalfTheBytes() throws {
        // 1 + 2⁻⁸ lies halfway between bfloat16 neighbours 1 and 1 + 2⁻⁷: the even one (1) wins; 1 + 3·2⁻⁸ lies
        // halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶: 1 + 2⁻⁶ (even) wins; just above halfway rounds up.
        let values: [Float] = [1, -2.5, 1 + 0x1p-8, 1 + 3 * 0x1p-8, 1 + 0x1p-8 + 0x1p-20, 0.1, .infinity, -.infinity,
                               .greatestFiniteMagnitude, 0, -0.0]
        let expected: [Float] = [1, -2.5, 1, 1 + 0x1p-6, 1 + 0x1p-7, 0.10009765625, .infinity, -.infinity, .infinity, 0, -0.0]
        let message = Message(type: .gradients, jobID: 1, tensors: [values, [.nan]], tensorType: .bfloat16)
        let frames = message.encoded()
        XCTAssertEqual(frames[1].count, 2 * values.count)
        XCTAssertEqual(Array(frames[1].prefix(4)), [0x80, 0x3F, 0x20, 0xC0])  // 1.0, -2.5
        let decoded = try Message.decode(frames)
        XCTAssertEqual(decoded.tensorType, .bfloat16)
        XCTAssertEqual(decoded.tensors[0].map(\.bitPattern), expected.map(\.bitPattern))
        XCTAssertTrue(decoded.tensors[1][0].isNaN)
        var odd = frames
        odd[1].removeLast()
        odd[0][52] = UInt8(odd[1].count)
        assertRejected(odd, "tensor 0 has 21 bytes, not whole bfloat16 values")
    }

    func assertRejected(_ frames: [[UInt8]], _ expected: String, line: UInt = #line) {
        XCTAssertThrowsError(try Message.decode(frames, maximumTensorBytes: 64), line: line) {
            XCTAssertEqual("\($0)", expected, line: line)
        }
    }

    func testMalformedMessagesAreRejectedWithTheReason() {
        let frames = sample.encoded()
        assertRejected([], "empty message")
        assertRejected([Array(frames[0].prefix(10))], "header frame has 10 bytes, expected at least 52")
        var wrongMagic = frames
        wrongMagic[0][0] = UInt8(ascii: "X")
        assertRejected(wrongMagic, "not a trainerd message (wrong magic)")
        var wrongVersion = frames
        wrongVersion[0][4] = 9
        assertRejected(wrongVersion, "protocol version 9, expected 5")
        assertRejected(Message(Pooled(heartbeatInterval: 5, heartbeatTimeout: 1), jobID: 0).encoded(),
                       "pooled heartbeats: interval 5.0 s and timeout 1.0 s (the timeout must be longer)")
        var unknownType = frames
        unknownType[0][6] = 200
        assertRejected(unknownType, "unknown message type 200")
        var unknownTensorType = frames
        unknownTensorType[0][7] = 9
        assertRejected(unknownTensorType, "unknown tensor type 9")
        assertRejected(Array(frames.dropLast()), "4 frames, expected 5 (header, metadata, 3 tensors)")
        var shortTensor = frames
        shortTensor[2].removeLast()
        assertRejected(shortTensor, "tensor 0 frame has 11 bytes, header says 12")
        var shortMetadata = frames
        shortMetadata[1].removeLast()
        assertRejected(shortMetadata, "metadata frame has 11 bytes, header says 12")
        let big = Message(type: .gradients, jobID: 1, tensors: [[Float](repeating: 0, count: 17)]).encoded()
        assertRejected(big, "tensor 0 has 68 bytes, more than the 64 allowed")
        var odd = Message(type: .gradients, jobID: 1, tensors: [[1]]).encoded()
        odd[1].removeLast()
        odd[0][52] = 3
        assertRejected(odd, "tensor 0 has 3 bytes, not whole float32 values")
    }

    /// Hello, welcome and error carry typed payloads: they round-trip, and a malformed one is rejected with the
    /// message type and the field.
    func testPayloadsRoundTripAndMalformedOnesNameTheField() throws {
        let hello = Hello(name: "w1", host: "node-3", pid: 4242)
        XCTAssertEqual(try Message.decode(Message(hello, jobID: 0).encoded()).payload(Hello.self), hello)
        XCTAssertEqual(String(decoding: hello.encoded(), as: UTF8.self), #"{"host":"node-3","name":"w1","pid":4242}"#)
        let welcome = Welcome(config: "seed: 3\nname: x", overrides: ["training.threads=1"])
        XCTAssertEqual(try Message.decode(Message(welcome, jobID: 9).encoded()).payload(Welcome.self), welcome)
        let refusal = Refusal("declared lost", rejoin: true)
        XCTAssertEqual(try Message.decode(Message(refusal, jobID: 9).encoded()).payload(Refusal.self), refusal)
        XCTAssertEqual(try Refusal(decoding: Array(#"{"message":"no"}"#.utf8)), Refusal("no"), "rejoin defaults to false")
        XCTAssertThrowsError(try Message.decode(Message(type: .heartbeat, jobID: 1).encoded()).payload(Hello.self)) {
            XCTAssertEqual("\($0)", "a heartbeat message carries no hello metadata")
        }
        func rejected(_ type: MessageType, _ metadata: String, _ expected: String, line: UInt = #line) {
            assertRejected(Message(type: type, jobID: 1, metadata: Array(metadata.utf8)).encoded(), expected, line: line)
        }
        rejected(.hello, #"{"host":"a","pid":1}"#, #"hello metadata has no "name""#)
        rejected(.hello, #"{"host":"a","name":"w","pid":"one"}"#, #"hello metadata: "pid" is not an integer"#)
        rejected(.welcome, #"{"config":"seed: 3","overrides":"x"}"#, #"welcome metadata: "overrides" is not a list"#)
        rejected(.welcome, #"{"config":null,"overrides":[]}"#, #"welcome metadata: "config" is not a string"#)
        rejected(.error, "not json", "error metadata is not a JSON object")
        rejected(.hello, #"{"host":"a","name":"","pid":1}"#, "hello name is empty")
        let longName = String(repeating: "w", count: 129)
        rejected(.hello, #"{"host":"a","name":"\#(longName)","pid":1}"#, "hello name has 129 bytes, more than the 128 allowed")
        rejected(.hello, #"{"host":"\#(longName)","name":"w","pid":1}"#, "hello host has 129 bytes, more than the 128 allowed")
        assertRejected(Message(type: .welcome, jobID: 1).encoded(), "welcome metadata is missing")
    }

    /// Every truncation and every single-byte change of a valid message either decodes or throws: never a crash.
    func testTruncatedAndMutatedFramesNeverCrash() {
        let frames = sample.encoded()
        for (index, frame) in frames.enumerated() {
            for length in 0..<frame.count {
                var cut = frames
                cut[index] = Array(frame.prefix(length))
                _ = try? Message.decode(cut)
            }
            for position in frame.indices {
                for value: UInt8 in [0, 1, 0x7F, 0xFF] {
                    var mutated = frames
                    mutated[index][position] = value
                    _ = try? Message.decode(mutated)
                }
            }
        }
        var state: UInt64 = 1
        for _ in 0..<2000 {  // random frames, bounded
            state = state &* 6_364_136_223_846_793_005 &+ 1
            let count = Int(state >> 60)
            let frames = (0..<count).map { i in (0..<Int((state >> UInt64(8 * (i % 7))) & 127)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) } }
            _ = try? Message.decode(frames)
        }
    }
}
