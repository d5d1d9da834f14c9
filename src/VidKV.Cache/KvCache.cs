using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>
/// What a decoder needs from a KV cache: append the keys and values of a batch for one layer, attend with that
/// batch's queries, and commit the new length once every layer ran. <see cref="PagedKvCache"/> keeps pages under
/// policies that may evict, move cold and select (<see cref="FullPolicy"/> keeps every position).
/// </summary>
public abstract class KvCache : IDisposable
{
    /// <summary>The next position (tokens seen so far, including any a policy evicted).</summary>
    public abstract int Length { get; }
    /// <summary>
    /// The RoPE position the next appended row is rotated at: <see cref="Length"/>, or the rows kept when the cache
    /// compacts positions (<see cref="KvPositions.Compact"/>) after a policy evicted some. Row i of a batch is rotated
    /// at this plus i; its place in the sequence (what masks and policies order by) is <see cref="Length"/> plus i.
    /// </summary>
    public virtual int NextRopePosition => Length;
    /// <summary>Whether kept rows keep their original positions (the default) or take compact ones (<see cref="KvPositions"/>).</summary>
    public virtual KvPositions Positions => KvPositions.Original;
    /// <summary>Largest position count this cache accepts.</summary>
    public abstract int ContextLength { get; }
    /// <summary>Bytes of KV data held in memory (all layers).</summary>
    public abstract long AllocatedBytes { get; }

    /// <summary>Makes room for positions below <paramref name="endPosition"/>; false when the cache cannot hold them.</summary>
    public abstract bool Reserve(int endPosition);

    /// <summary>
    /// Stores keys (rotated) and values, [count, kvHeads, headDim] f32, of positions <paramref name="position"/>.. in one
    /// layer, with each row's video frame id (empty: none).
    /// </summary>
    public abstract void Append(int layer, int position, int count, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, ReadOnlySpan<int> frameIds = default);

    /// <summary>Hot slots appending <paramref name="tokens"/> to every layer would take (0 for a cache that is not paged).</summary>
    public virtual int PagesToAppend(int tokens) => 0;

    /// <summary>
    /// Attention of <paramref name="count"/> queries ([count, heads, headDim], rotated, unscaled) at positions
    /// <paramref name="position"/>.. over what this cache holds for <paramref name="layer"/>; called after <see cref="Append"/>.
    /// </summary>
    public abstract void Attend(int layer, ReadOnlySpan<float> queries, int position, int count, int headCount, float scale, Span<float> destination);

    /// <summary>Marks positions below <paramref name="length"/> as filled after every layer appended them.</summary>
    public abstract void Commit(int length);

    /// <summary>Forgets positions at and after <paramref name="length"/> (rewinds the stream).</summary>
    public abstract void Truncate(int length);

    /// <summary>Forgets every position, so the cache can serve a new stream.</summary>
    public void Clear() => Truncate(0);

    /// <summary>Frees the cache's KV memory (and a cold file it owns).</summary>
    public abstract void Dispose();
}
