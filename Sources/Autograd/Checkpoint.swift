import Kernels

extension Tensor {
    /// Activation checkpointing (torch.utils.checkpoint): y = body(input, parameters), recorded as one node that
    /// keeps only its inputs. The forward runs without a graph, so none of body's intermediate activations stay
    /// alive; backward runs body again, with a graph, on fresh leaves holding the same values (and the same
    /// `PassContext` as the forward: segmentation, dropout stream, matmul precision), backpropagates dy through it
    /// and hands the leaves' gradients on as this node's. `body` must be a function of its arguments alone (a module's forward
    /// with its parameters swapped for `parameters`): the gradients are then the plain graph's, bit for bit.
    public static func checkpoint(
        _ input: Tensor, parameters: [Tensor], _ body: @escaping (Tensor, [Tensor]) -> Tensor
    ) -> Tensor {
        guard GradMode.isEnabled else { return body(input, parameters) }
        let output = withNoGrad { body(input, parameters) }
        let savedInput = input.detached(), savedParameters = parameters.map { $0.detached() }
        let context = PassContext.current
        return recorded(shape: output.shape, storage: output.storage, inputs: [input] + parameters) { upstream, needs in
            let x = needs[0] ? savedInput.requiringGrad() : savedInput
            let leaves = savedParameters.indices.map { needs[$0 + 1] ? savedParameters[$0].requiringGrad() : savedParameters[$0] }
            let recomputed = GradMode.disabled.with(0) { context.apply { body(x, leaves) } }
            recomputed.backward(seed: upstream)
            func gradient(_ leaf: Tensor, _ needed: Bool) -> [Float]? {
                needed ? leaf.grad?.storage ?? [Float](repeating: 0, count: leaf.count) : nil
            }
            return [gradient(x, needs[0])] + leaves.indices.map { gradient(leaves[$0], needs[$0 + 1]) }
        }
    }
}
