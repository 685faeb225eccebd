import Foundation

/// The inputs and labels of some samples, in order: inputs [samples, …] as float32 (token ids for text), labels
/// one per sample (a class) or one per position (the next token).
public struct Batch: Sendable {
    public var inputs: [Float]
    public var labels: [Int32]
    public var samples: Int

    public init(inputs: [Float], labels: [Int32], samples: Int) {
        self.inputs = inputs
        self.labels = labels
        self.samples = samples
    }
}

/// A training or evaluation set addressed by sample index.
public protocol SampleSource: Sendable {
    var count: Int { get }
    func batch(_ indices: ArraySlice<Int>) -> Batch
    /// Samples per forward pass when evaluating (bounds the activations' memory).
    var evaluationChunk: Int { get }
}

extension SampleSource {
    public var evaluationChunk: Int { 500 }
}

/// A labelled image set kept as bytes (N × features) and converted to floats per batch.
public struct ImageDataset: SampleSource {
    public let features: Int
    public let pixels: [UInt8]
    public let labels: [Int32]
    /// Pixels map to (p/255 − mean)/std; mean 0, std 1 gives PyTorch's ToTensor scaling to [0, 1].
    public var mean: Float = 0
    public var std: Float = 1

    public var count: Int { labels.count }

    public init(features: Int, pixels: [UInt8], labels: [Int32]) {
        precondition(pixels.count == features * labels.count)
        self.features = features
        self.pixels = pixels
        self.labels = labels
    }

    /// Inputs [indices.count, features] and labels for the given samples, in that order.
    public func batch(_ indices: ArraySlice<Int>) -> Batch {
        var inputs = [Float](repeating: 0, count: indices.count * features)
        // One value per byte, computed as PyTorch's pipeline does: (p / 255 − mean) / std in float32.
        inputs.withUnsafeMutableBufferPointer { out in
            pixels.withUnsafeBufferPointer { source in
                for (row, sample) in indices.enumerated() {
                    let from = source.baseAddress! + sample * features, to = out.baseAddress! + row * features
                    for j in 0..<features { to[j] = (Float(from[j]) / 255 - mean) / std }
                }
            }
        }
        return Batch(inputs: inputs, labels: indices.map { labels[$0] }, samples: indices.count)
    }

    /// Loads an images/labels pair of IDX files and checks they agree.
    public static func loadIDX(images: String, labels: String) throws -> ImageDataset {
        let imageArray = try IDXArray.read(images)
        let labelArray = try IDXArray.read(labels)
        guard imageArray.dimensions.count >= 2 else {
            throw DataError.unsupported(images, reason: "expected images [N, rows, cols], got \(imageArray.dimensions)")
        }
        guard labelArray.dimensions.count == 1, labelArray.dimensions[0] == imageArray.dimensions[0] else {
            throw DataError.mismatch("\(labels) has \(labelArray.dimensions) labels for \(imageArray.dimensions[0]) images in \(images)")
        }
        let features = imageArray.dimensions.dropFirst().reduce(1, *)
        return ImageDataset(features: features, pixels: imageArray.bytes, labels: labelArray.bytes.map { Int32($0) })
    }

    /// Fashion-MNIST (or MNIST) as Debian ships it: `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` in `directory`.
    public static func loadMNISTStyle(directory: String) throws -> (train: ImageDataset, test: ImageDataset) {
        func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }
        let train = try loadIDX(images: path("train-images-idx3-ubyte.gz"), labels: path("train-labels-idx1-ubyte.gz"))
        let test = try loadIDX(images: path("t10k-images-idx3-ubyte.gz"), labels: path("t10k-labels-idx1-ubyte.gz"))
        return (train, test)
    }
}
