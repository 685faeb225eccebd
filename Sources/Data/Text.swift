import Foundation

/// A character-level vocabulary: the distinct Unicode scalars of a text, sorted by code point; token i is
/// `characters[i]`. Saved beside a run (`vocabulary.json`) so that sampling decodes with the same table.
public struct CharacterVocabulary: Equatable, Sendable, Codable {
    public let characters: [String]

    public init(text: String) {
        characters = Set(text.unicodeScalars).sorted { $0.value < $1.value }.map { String($0) }
    }

    public init(characters: [String]) throws {
        guard characters.allSatisfy({ $0.unicodeScalars.count == 1 }), Set(characters).count == characters.count else {
            throw DataError.mismatch("a vocabulary must list distinct single characters")
        }
        self.characters = characters
    }

    public var count: Int { characters.count }

    private var index: [Unicode.Scalar: Int32] {
        Dictionary(uniqueKeysWithValues: characters.enumerated().map { ($1.unicodeScalars.first!, Int32($0)) })
    }

    /// Token ids of `text`; throws naming the first character outside the vocabulary.
    public func encode(_ text: String) throws -> [Int32] {
        let index = index
        return try text.unicodeScalars.map { scalar in
            guard let id = index[scalar] else {
                throw DataError.mismatch("character \(String(reflecting: String(scalar))) (U+\(String(scalar.value, radix: 16, uppercase: true))) is not in the vocabulary")
            }
            return id
        }
    }

    public func decode(_ tokens: [Int32]) -> String {
        tokens.map { characters[Int($0)] }.joined()
    }

    /// `{"format": "trainerd-vocabulary", "characters": [...]}`.
    public func write(to path: String) throws {
        let object: [String: Any] = ["format": "trainerd-vocabulary", "characters": characters]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    public static func read(_ path: String) throws -> CharacterVocabulary {
        guard let data = FileManager.default.contents(atPath: path) else { throw DataError.missingFile(path) }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              object["format"] as? String == "trainerd-vocabulary", let characters = object["characters"] as? [String] else {
            throw DataError.unsupported(path, reason: "not a trainerd vocabulary file")
        }
        do { return try CharacterVocabulary(characters: characters) } catch { throw DataError.unsupported(path, reason: "\(error)") }
    }
}

/// The text of Debian's `fortunes` package: every fortune file of a directory (the files that have a `.dat`
/// index beside them), in file-name order, cut at the lines holding a single `%`. Fortune i (counting over all
/// files) goes to validation when i % validationEvery == validationEvery − 1, otherwise to training; each
/// split is its fortunes joined with "\n%\n" between them.
public struct FortunesCorpus: Sendable {
    public let train: String
    public let validation: String
    public let files: [String]

    public init(directory: String, validationEvery: Int = 10) throws {
        let manager = FileManager.default
        guard let names = try? manager.contentsOfDirectory(atPath: directory) else {
            throw DataError.missingFile("\(directory) (install Debian's fortunes package: apt-get install fortunes)")
        }
        files = names.filter { names.contains($0 + ".dat") }.sorted()
        guard !files.isEmpty else {
            throw DataError.unsupported(directory, reason: "no fortune files (a file with a .dat index beside it)")
        }
        var train: [String] = [], validation: [String] = [], index = 0
        for name in files {
            let path = (directory as NSString).appendingPathComponent(name)
            guard let data = manager.contents(atPath: path) else { throw DataError.unreadable(path, reason: "cannot open") }
            // A few fortunes are Latin-1: decode bytes that are not UTF-8 as Latin-1 rather than dropping them.
            let text = String(data: data, encoding: .utf8) ?? String(data: data, encoding: .isoLatin1)!
            var current: [Substring] = []
            func flush() {
                defer { current = [] }
                let fortune = current.joined(separator: "\n").trimmingCharacters(in: .newlines)
                guard !fortune.isEmpty else { return }
                if index % validationEvery == validationEvery - 1 { validation.append(fortune) } else { train.append(fortune) }
                index += 1
            }
            for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
                if line == "%" { flush() } else { current.append(line) }
            }
            flush()
        }
        self.train = train.joined(separator: "\n%\n")
        self.validation = validation.joined(separator: "\n%\n")
    }
}

/// Next-token samples from a token stream: sample i is tokens[i·T ..< i·T + T] and its labels are the same
/// window shifted by one (T = `context`); the windows do not overlap, and the last partial one is dropped.
public struct TokenDataset: SampleSource {
    public let tokens: [Int32]
    public let context: Int
    public let vocabulary: CharacterVocabulary

    public init(tokens: [Int32], context: Int, vocabulary: CharacterVocabulary) {
        precondition(context > 0)
        self.tokens = tokens
        self.context = context
        self.vocabulary = vocabulary
    }

    public var count: Int { max(0, (tokens.count - 1) / context) }

    public var evaluationChunk: Int { max(1, 4096 / context) }

    public func batch(_ indices: ArraySlice<Int>) -> Batch {
        var inputs: [Float] = [], labels: [Int32] = []
        inputs.reserveCapacity(indices.count * context)
        labels.reserveCapacity(indices.count * context)
        for sample in indices {
            let start = sample * context
            inputs += tokens[start..<(start + context)].map { Float($0) }
            labels += tokens[(start + 1)...(start + context)]
        }
        return Batch(inputs: inputs, labels: labels, samples: indices.count)
    }
}
