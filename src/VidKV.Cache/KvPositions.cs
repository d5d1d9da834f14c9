using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>
/// Which RoPE positions the rows a KV cache keeps are attended at once a policy has evicted some. Either way a row's
/// place in its sequence (<see cref="PagedKvStore.Positions"/>: the causal order masks and policies read, and the
/// stream's original position) never changes; what differs is the position its stored key is rotated at
/// (<see cref="PagedKvStore.KeyPositions"/>) and the one new rows are rotated at (<see cref="KvCache.NextRopePosition"/>).
/// Only rows evicted from the store (gone for good: dropped by a reducer, a window, the cold limit) count; a decode-time
/// retriever (FreeKV, ClusterKV, Quest, …) that reads a subset per step leaves every row where it is.
/// </summary>
public enum KvPositions
{
    /// <summary>
    /// Every row keeps the position it was appended at, and new rows go on at the stream's next position (the
    /// default): a question at frame 2,000 sees keys tens of thousands of positions back.
    /// </summary>
    Original,
    /// <summary>
    /// The kept rows take consecutive positions in their causal order and new rows go on right after them, as
    /// StreamingLLM assigns positions within its cache (Xiao et al., 2023, "Efficient Streaming Language Models with
    /// Attention Sinks", §3.2): when every head keeps the same rows, the K kept rows sit at 0..K−1 and the next row at
    /// K, the distances a model trained on short clips has seen. Stored keys (rotated) are re-rotated by each row's
    /// shift (RoPE rotations compose: R(a)·R(b) = R(a+b)), with the model's own rotation (<see cref="KeyRotation"/>).
    /// Not for M-RoPE models, whose keys turn by several position components.
    /// </summary>
    Compact,
}

/// <summary>
/// How a model rotates its keys with one-component RoPE: the pairing, the leading dimensions that turn and the
/// frequency base (what <see cref="Kernels.RopeAngles(int, int, float, Span{float}, Span{float})"/> and
/// <see cref="Kernels.Rope(Span{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, RopeMode)"/> take), so that a cache with
/// <see cref="KvPositions.Compact"/> positions turns stored keys by a shift with the same kernels the model used.
/// </summary>
/// <param name="Mode">how RoPE pairs a head's elements (adjacent pairs, or NeoX halves)</param>
/// <param name="Dimensions">leading elements of each head that turn (even, at most the head dimension)</param>
/// <param name="FreqBase">RoPE frequency base: pair i turns by position · base^(−2i/dimensions)</param>
public sealed record KeyRotation(RopeMode Mode, int Dimensions, float FreqBase)
{
    internal void Validate(int headDim)
    {
        if (Dimensions <= 0 || Dimensions % 2 != 0 || Dimensions > headDim)
            throw new ArgumentException($"key rotation: {Dimensions} rotary dimensions must be even, positive and at most the head dimension {headDim}");
        if (!(FreqBase > 0)) throw new ArgumentException($"key rotation: the frequency base must be positive, not {FreqBase}");
    }
}
