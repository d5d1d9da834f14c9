namespace VidKV.Cache;

/// <summary>
/// The simplest KV store: per layer, keys and values of every position in one contiguous f32 array laid out
/// [position, kvHead, headDim]. Keys are stored after RoPE. Capacity grows in chunks up to the context length.
/// The paged store with policies replaces this for long streams.
/// </summary>
public sealed class ContiguousKvCache
{
    const int GrowthChunk = 256;
    readonly float[][] keys;
    readonly float[][] values;
    int capacity;

    public ContiguousKvCache(int layerCount, int kvHeadCount, int headDim, int contextLength)
    {
        LayerCount = layerCount;
        KvHeadCount = kvHeadCount;
        HeadDim = headDim;
        ContextLength = contextLength;
        keys = new float[layerCount][];
        values = new float[layerCount][];
        for (int l = 0; l < layerCount; l++) { keys[l] = []; values[l] = []; }
    }

    public int LayerCount { get; }
    public int KvHeadCount { get; }
    public int HeadDim { get; }
    public int ContextLength { get; }
    /// <summary>Floats per position per layer (kvHeads × headDim).</summary>
    public int RowLength => KvHeadCount * HeadDim;
    /// <summary>Positions filled so far (0..Length-1).</summary>
    public int Length { get; private set; }

    /// <summary>Makes room for positions up to <paramref name="endPosition"/> (exclusive). Returns false past the context length.</summary>
    public bool Reserve(int endPosition)
    {
        if (endPosition > ContextLength) return false;
        if (endPosition <= capacity) return true;
        int newCapacity = Math.Min(ContextLength, (endPosition + GrowthChunk - 1) / GrowthChunk * GrowthChunk);
        for (int l = 0; l < LayerCount; l++)
        {
            Array.Resize(ref keys[l], newCapacity * RowLength);
            Array.Resize(ref values[l], newCapacity * RowLength);
        }
        capacity = newCapacity;
        return true;
    }

    /// <summary>Keys of one layer, [position, kvHead, headDim], valid for positions below <see cref="Length"/> (and those being written).</summary>
    public Span<float> Keys(int layer) => keys[layer].AsSpan(0, capacity * RowLength);
    public Span<float> Values(int layer) => values[layer].AsSpan(0, capacity * RowLength);

    /// <summary>Marks positions below <paramref name="length"/> as filled.</summary>
    public void SetLength(int length)
    {
        if (length < 0 || length > capacity) throw new ArgumentOutOfRangeException(nameof(length));
        Length = length;
    }

    public void Clear() => Length = 0;
}
