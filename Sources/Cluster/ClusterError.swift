/// The cluster cannot go on: refused, unreachable, given up waiting, or told to stop. The text says why and,
/// where it can, what to do.
public struct ClusterError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
