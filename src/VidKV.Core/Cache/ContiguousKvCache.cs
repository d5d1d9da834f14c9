using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>
/// The simplest KV store: per layer, keys and values of every position in one contiguous native buffer laid out
/// [position, kvHead, headDim], stored as f16 (llama.cpp's default) or f32. Keys are stored after RoPE. Capacity grows
/// in chunks up to the context length by reallocation (no garbage left for the GC, so memory stays at what is used);
/// <see cref="Dispose"/> frees it. The paged store with policies replaces this for long streams.
/// </summary>
public sealed unsafe class ContiguousKvCache : KvCache
{
    const int GrowthChunk = 256;
    readonly byte*[] keys;
    readonly byte*[] values;
    int capacity;

    public ContiguousKvCache(int layerCount, int kvHeadCount, int headDim, int contextLength, GgmlType keyType = GgmlType.F16, GgmlType valueType = GgmlType.F16)
    {
        if (keyType is not (GgmlType.F16 or GgmlType.F32) || valueType is not (GgmlType.F16 or GgmlType.F32))
            throw new ArgumentException($"KV cache types must be f16 or f32, not {GgmlTypes.Name(keyType)}/{GgmlTypes.Name(valueType)}");
        LayerCount = layerCount;
        KvHeadCount = kvHeadCount;
        HeadDim = headDim;
        ContextLength = contextLength;
        KeyType = keyType;
        ValueType = valueType;
        keys = new byte*[layerCount];
        values = new byte*[layerCount];
    }

    public int LayerCount { get; }
    public int KvHeadCount { get; }
    public int HeadDim { get; }
    public override int ContextLength { get; }
    public GgmlType KeyType { get; }
    public GgmlType ValueType { get; }
    /// <summary>Elements per position per layer (kvHeads × headDim).</summary>
    public int RowLength => KvHeadCount * HeadDim;
    /// <summary>Positions filled so far (0..Length-1).</summary>
    public override int Length => length;
    int length;
    /// <summary>Bytes held for keys and values (all layers).</summary>
    public override long AllocatedBytes => (long)capacity * RowLength * LayerCount * (ElementSize(KeyType) + ElementSize(ValueType));

    static int ElementSize(GgmlType type) => type == GgmlType.F32 ? 4 : 2;

    /// <summary>Makes room for positions up to <paramref name="endPosition"/> (exclusive). Returns false past the context length.</summary>
    public override bool Reserve(int endPosition)
    {
        if (endPosition > ContextLength) return false;
        if (endPosition <= capacity) return true;
        int newCapacity = Math.Min(ContextLength, (endPosition + GrowthChunk - 1) / GrowthChunk * GrowthChunk);
        ObjectDisposedException.ThrowIf(disposed, this);
        for (int l = 0; l < LayerCount; l++)
        {
            keys[l] = (byte*)NativeMemory.Realloc(keys[l], (nuint)((long)newCapacity * RowLength * ElementSize(KeyType)));
            values[l] = (byte*)NativeMemory.Realloc(values[l], (nuint)((long)newCapacity * RowLength * ElementSize(ValueType)));
        }
        capacity = newCapacity;
        return true;
    }

    /// <summary>Stores <paramref name="count"/> positions of keys and values ([count, kvHeads, headDim] f32) from <paramref name="position"/> on.</summary>
    public void Write(int layer, int position, int count, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        if (position + count > capacity) throw new InvalidOperationException($"positions {position}..{position + count} are not reserved (capacity {capacity})");
        Store(k[..(count * RowLength)], KeyType, new Span<byte>(keys[layer] + (long)position * RowLength * ElementSize(KeyType), count * RowLength * ElementSize(KeyType)));
        Store(v[..(count * RowLength)], ValueType, new Span<byte>(values[layer] + (long)position * RowLength * ElementSize(ValueType), count * RowLength * ElementSize(ValueType)));
    }

    static void Store(ReadOnlySpan<float> source, GgmlType type, Span<byte> destination)
    {
        if (type == GgmlType.F32) MemoryMarshal.AsBytes(source).CopyTo(destination);
        else TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<byte, Half>(destination)[..source.Length]);
    }

    /// <summary>Raw keys of one layer ([position, kvHead, headDim] of <see cref="KeyType"/>).</summary>
    public ReadOnlySpan<byte> KeyBytes(int layer) => new(keys[layer], capacity * RowLength * ElementSize(KeyType));
    public ReadOnlySpan<byte> ValueBytes(int layer) => new(values[layer], capacity * RowLength * ElementSize(ValueType));

    /// <summary>One stored key as f32 (for inspection and tests).</summary>
    public void ReadKey(int layer, int position, Span<float> destination) => Read(KeyBytes(layer), KeyType, position, destination);
    public void ReadValue(int layer, int position, Span<float> destination) => Read(ValueBytes(layer), ValueType, position, destination);

    void Read(ReadOnlySpan<byte> data, GgmlType type, int position, Span<float> destination) =>
        Dequantize.Row(type, data.Slice(position * RowLength * ElementSize(type), RowLength * ElementSize(type)), destination[..RowLength]);

    public override void Append(int layer, int position, int count, ReadOnlySpan<float> k, ReadOnlySpan<float> v) => Write(layer, position, count, k, v);

    public override void Attend(int layer, ReadOnlySpan<float> queries, int position, int count, int headCount, float scale, Span<float> destination) =>
        Attention.Causal(queries, KeyBytes(layer), KeyType, ValueBytes(layer), ValueType, count, position, headCount, KvHeadCount, HeadDim, scale, destination);

    public override void Commit(int length)
    {
        if (length < 0 || length > capacity) throw new ArgumentOutOfRangeException(nameof(length));
        this.length = length;
    }

    public override void Truncate(int length)
    {
        if (length < 0 || length > this.length) throw new ArgumentOutOfRangeException(nameof(length));
        this.length = length;
    }

    bool disposed;

    public override void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    ~ContiguousKvCache() => Free();

    void Free()
    {
        if (disposed) return;
        disposed = true;
        for (int l = 0; l < LayerCount; l++)
        {
            NativeMemory.Free(keys[l]);
            NativeMemory.Free(values[l]);
            keys[l] = values[l] = null;
        }
        capacity = 0;
        length = 0;
    }
}
