import Autograd
import Random

/// torch.nn.LayerNorm over the last dimension, with weight γ (ones) and bias β (zeros) [dim].
public final class LayerNorm: Module {
    public let weight: Parameter, bias: Parameter
    public let eps: Float

    public init(weight: Parameter, bias: Parameter, eps: Float = 1e-5) {
        self.weight = weight
        self.bias = bias
        self.eps = eps
    }

    public convenience init(_ dim: Int, eps: Float = 1e-5) {
        self.init(weight: Parameter(Tensor(shape: [dim], storage: [Float](repeating: 1, count: dim))),
                  bias: Parameter(Tensor(shape: [dim], storage: [Float](repeating: 0, count: dim))), eps: eps)
    }

    public func forward(_ input: Tensor) -> Tensor { input.layerNorm(weight: weight.value, bias: bias.value, eps: eps) }

    public var namedParameters: [(name: String, parameter: Parameter)] { [("weight", weight), ("bias", bias)] }

    public func replica() -> Module { LayerNorm(weight: replicate(weight), bias: replicate(bias), eps: eps) }
}

/// torch.nn.Embedding: a table [count, dim] of rows picked by integer ids, initialised N(0, 1) as PyTorch does
/// (GPT initialises its own with N(0, 0.02)).
public final class Embedding: Module {
    public let weight: Parameter

    public init(weight: Parameter) { self.weight = weight }

    /// Rows for the ids in `input` (float32 values holding exact integers), shape input.shape + [dim].
    public func forward(_ input: Tensor) -> Tensor { lookup(input.storage.map { Int32($0) }, shape: input.shape) }

    public func lookup(_ ids: [Int32], shape: [Int]) -> Tensor { weight.value.embedding(ids, shape: shape) }

    public var namedParameters: [(name: String, parameter: Parameter)] { [("weight", weight)] }

    public func replica() -> Module { Embedding(weight: replicate(weight)) }
}

/// The size of a GPT: vocabulary, context length, width, heads, blocks, dropout.
public struct GPTShape: Equatable, Sendable {
    public var vocabulary: Int, context: Int, dim: Int, heads: Int, layers: Int
    public var dropout: Float

    public init(vocabulary: Int, context: Int, dim: Int, heads: Int, layers: Int, dropout: Float = 0) {
        precondition(dim % heads == 0, "GPT: dim \(dim) is not a multiple of heads \(heads)")
        self.vocabulary = vocabulary
        self.context = context
        self.dim = dim
        self.heads = heads
        self.layers = layers
        self.dropout = dropout
    }
}

/// One pre-LayerNorm Transformer block:
///   x += proj(causal_attention(ln1(x)))      qkv: [3·dim, dim], q, k, v in that order; proj: [dim, dim]
///   x += out(gelu_tanh(fc(ln2(x))))          fc: [4·dim, dim]; out: [dim, 4·dim]
/// Parameter names as PyTorch's state_dict of the reference model: ln1, ln2, qkv, proj, fc, out.
public final class TransformerBlock: Module {
    public let ln1: LayerNorm, ln2: LayerNorm
    public let qkv: Linear, proj: Linear, fc: Linear, out: Linear
    public let heads: Int
    public let dropout: Float
    /// Tells this block's dropout sites apart from other blocks'.
    let index: Int

    init(ln1: LayerNorm, ln2: LayerNorm, qkv: Linear, proj: Linear, fc: Linear, out: Linear, heads: Int,
         dropout: Float, index: Int) {
        self.ln1 = ln1
        self.ln2 = ln2
        self.qkv = qkv
        self.proj = proj
        self.fc = fc
        self.out = out
        self.heads = heads
        self.dropout = dropout
        self.index = index
    }

    /// x [B, T, dim] → [B, T, dim].
    public func forward(_ x: Tensor) -> Tensor {
        let attended = x + attention(ln1(x)).dropout(dropout, site: UInt64(2 * index + 1))
        let hidden = fc(ln2(attended)).gelu(approximate: .tanh)
        return attended + out(hidden).dropout(dropout, site: UInt64(2 * index + 2))
    }

    /// Multi-head causal self-attention of x [B, T, dim]: q, k, v [B, heads, T, dim/heads] from one projection,
    /// attended per head, heads merged back to [B, T, dim] and projected.
    func attention(_ x: Tensor) -> Tensor {
        let batch = x.shape[0], time = x.shape[1], dim = x.shape[2], headDim = dim / heads
        let packed = qkv(x)  // [B, T, 3·dim]
        func split(_ part: Int) -> Tensor {
            packed.narrowed(2, start: part * dim, length: dim).reshaped([batch, time, heads, headDim]).transposed(1, 2)
        }
        let attended = Tensor.scaledDotProductAttention(query: split(0), key: split(1), value: split(2), causal: true)
        return proj(attended.transposed(1, 2).reshaped([batch, time, dim]))
    }

    public var namedParameters: [(name: String, parameter: Parameter)] {
        let parts: [(String, Module)] = [("ln1", ln1), ("ln2", ln2), ("qkv", qkv), ("proj", proj), ("fc", fc), ("out", out)]
        return parts.flatMap { prefix, module in module.namedParameters.map { ("\(prefix).\($0.name)", $0.parameter) } }
    }

    public func replica() -> Module {
        TransformerBlock(ln1: ln1.replica() as! LayerNorm, ln2: ln2.replica() as! LayerNorm, qkv: qkv.replica() as! Linear,
                         proj: proj.replica() as! Linear, fc: fc.replica() as! Linear, out: out.replica() as! Linear,
                         heads: heads, dropout: dropout, index: index)
    }
}

/// A GPT language model (pre-LayerNorm, as GPT-2):
///   x = wte[tokens] + wpe[0..<T]                             [B, T, dim]
///   x = block_L(… block_1(x))
///   logits = head(lnf(x))                                   [B, T, vocabulary], head without bias
/// Input: token ids [B, T] as float32 values. Initialised as GPT-2: Linear and Embedding weights N(0, 0.02),
/// biases 0, the residual projections (proj, out) N(0, 0.02/√(2·layers)), LayerNorms 1 and 0.
public final class GPT: Module {
    public let shape: GPTShape
    public let wte: Embedding, wpe: Embedding
    public let blocks: [TransformerBlock]
    public let lnf: LayerNorm
    public let head: Linear
    /// Recompute each block's activations during backward instead of keeping them (`checkpointed`): less memory,
    /// one more forward pass of the blocks, the same gradients bit for bit.
    public var checkpointsActivations = false

    public init(shape: GPTShape, wte: Embedding, wpe: Embedding, blocks: [TransformerBlock], lnf: LayerNorm, head: Linear) {
        self.shape = shape
        self.wte = wte
        self.wpe = wpe
        self.blocks = blocks
        self.lnf = lnf
        self.head = head
    }

    public convenience init(_ shape: GPTShape, seed: UInt64) {
        var rng = Xoshiro256(seed: seed, stream: 0x6770)
        func normal(_ count: Int, std: Float) -> [Float] { (0..<count).map { _ in rng.nextNormal() * std } }
        func parameter(_ dims: [Int], std: Float) -> Parameter {
            Parameter(Tensor(shape: dims, storage: normal(dims.reduce(1, *), std: std)))
        }
        func linear(_ inFeatures: Int, _ outFeatures: Int, std: Float = 0.02, bias: Bool = true) -> Linear {
            Linear(weight: parameter([outFeatures, inFeatures], std: std),
                   bias: bias ? Parameter(Tensor(shape: [outFeatures], storage: [Float](repeating: 0, count: outFeatures))) : nil)
        }
        let d = shape.dim, residualStd = 0.02 / Float(2 * shape.layers).squareRoot()
        let wte = Embedding(weight: parameter([shape.vocabulary, d], std: 0.02))
        let wpe = Embedding(weight: parameter([shape.context, d], std: 0.02))
        let blocks = (0..<shape.layers).map { index in
            TransformerBlock(ln1: LayerNorm(d), ln2: LayerNorm(d), qkv: linear(d, 3 * d), proj: linear(d, d, std: residualStd),
                             fc: linear(d, 4 * d), out: linear(4 * d, d, std: residualStd), heads: shape.heads,
                             dropout: shape.dropout, index: index)
        }
        self.init(shape: shape, wte: wte, wpe: wpe, blocks: blocks, lnf: LayerNorm(d), head: linear(d, shape.vocabulary, bias: false))
    }

    /// tokens [B, T] (float32 ids, T ≤ context) → logits [B, T, vocabulary].
    public func forward(_ tokens: Tensor) -> Tensor {
        precondition(tokens.rank == 2, "GPT: tokens must be [batch, time], got \(tokens.shape)")
        let batch = tokens.shape[0], time = tokens.shape[1]
        precondition(time <= shape.context, "GPT: \(time) tokens exceed the context of \(shape.context)")
        let positions = (0..<batch).flatMap { _ in (0..<time).map(Int32.init) }
        var x = (wte(tokens) + wpe.lookup(positions, shape: [batch, time])).dropout(shape.dropout, site: 0)
        for block in blocks { x = checkpointsActivations ? checkpointed(block, x) : block(x) }
        return head(lnf(x))
    }

    public var namedParameters: [(name: String, parameter: Parameter)] {
        var named = wte.namedParameters.map { ("wte.\($0.name)", $0.parameter) }
        named += wpe.namedParameters.map { ("wpe.\($0.name)", $0.parameter) }
        for (index, block) in blocks.enumerated() {
            named += block.namedParameters.map { ("blocks.\(index).\($0.name)", $0.parameter) }
        }
        named += lnf.namedParameters.map { ("lnf.\($0.name)", $0.parameter) }
        named += head.namedParameters.map { ("head.\($0.name)", $0.parameter) }
        return named
    }

    public func replica() -> Module {
        let copy = GPT(shape: shape, wte: wte.replica() as! Embedding, wpe: wpe.replica() as! Embedding,
                       blocks: blocks.map { $0.replica() as! TransformerBlock }, lnf: lnf.replica() as! LayerNorm,
                       head: head.replica() as! Linear)
        copy.checkpointsActivations = checkpointsActivations
        return copy
    }
}
