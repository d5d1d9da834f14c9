using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>
/// The simplest KV store: per layer, keys and values of every position in one contiguous array laid out
/// [position, kvHead, headDim], stored as f16 (llama.cpp's default) or f32. Keys are stored after RoPE. Capacity grows
/// in chunks up to the context length. The paged store with policies replaces this for long streams.
/// </summary>
public sealed class ContiguousKvCache
{
    const int GrowthChunk = 256;
    readonly byte[][] keys;
    readonly byte[][] values;
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
        keys = new byte[layerCount][];
        values = new byte[layerCount][];
        for (int l = 0; l < layerCount; l++) { keys[l] = []; values[l] = []; }
    }

    public int LayerCount { get; }
    public int KvHeadCount { get; }
    public int HeadDim { get; }
    public int ContextLength { get; }
    public GgmlType KeyType { get; }
    public GgmlType ValueType { get; }
    /// <summary>Elements per position per layer (kvHeads × headDim).</summary>
    public int RowLength => KvHeadCount * HeadDim;
    /// <summary>Positions filled so far (0..Length-1).</summary>
    public int Length { get; private set; }
    /// <summary>Bytes held for keys and values (all layers).</summary>
    public long AllocatedBytes => keys.Sum(k => (long)k.Length) + values.Sum(v => (long)v.Length);

    static int ElementSize(GgmlType type) => type == GgmlType.F32 ? 4 : 2;

    /// <summary>Makes room for positions up to <paramref name="endPosition"/> (exclusive). Returns false past the context length.</summary>
    public bool Reserve(int endPosition)
    {
        if (endPosition > ContextLength) return false;
        if (endPosition <= capacity) return true;
        int newCapacity = Math.Min(ContextLength, (endPosition + GrowthChunk - 1) / GrowthChunk * GrowthChunk);
        for (int l = 0; l < LayerCount; l++)
        {
            Array.Resize(ref keys[l], newCapacity * RowLength * ElementSize(KeyType));
            Array.Resize(ref values[l], newCapacity * RowLength * ElementSize(ValueType));
        }
        capacity = newCapacity;
        return true;
    }

    /// <summary>Stores <paramref name="count"/> positions of keys and values ([count, kvHeads, headDim] f32) from <paramref name="position"/> on.</summary>
    public void Write(int layer, int position, int count, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        if (position + count > capacity) throw new InvalidOperationException($"positions {position}..{position + count} are not reserved (capacity {capacity})");
        Store(k[..(count * RowLength)], KeyType, keys[layer].AsSpan(position * RowLength * ElementSize(KeyType)));
        Store(v[..(count * RowLength)], ValueType, values[layer].AsSpan(position * RowLength * ElementSize(ValueType)));
    }

    static void Store(ReadOnlySpan<float> source, GgmlType type, Span<byte> destination)
    {
        if (type == GgmlType.F32) MemoryMarshal.AsBytes(source).CopyTo(destination);
        else TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<byte, Half>(destination)[..source.Length]);
    }

    /// <summary>Raw keys of one layer ([position, kvHead, headDim] of <see cref="KeyType"/>).</summary>
    public ReadOnlySpan<byte> KeyBytes(int layer) => keys[layer].AsSpan(0, capacity * RowLength * ElementSize(KeyType));
    public ReadOnlySpan<byte> ValueBytes(int layer) => values[layer].AsSpan(0, capacity * RowLength * ElementSize(ValueType));

    /// <summary>One stored key as f32 (for inspection and tests).</summary>
    public void ReadKey(int layer, int position, Span<float> destination) => Read(KeyBytes(layer), KeyType, position, destination);
    public void ReadValue(int layer, int position, Span<float> destination) => Read(ValueBytes(layer), ValueType, position, destination);

    void Read(ReadOnlySpan<byte> data, GgmlType type, int position, Span<float> destination) =>
        Dequantize.Row(type, data.Slice(position * RowLength * ElementSize(type), RowLength * ElementSize(type)), destination[..RowLength]);

    /// <summary>Marks positions below <paramref name="length"/> as filled.</summary>
    public void SetLength(int length)
    {
        if (length < 0 || length > capacity) throw new ArgumentOutOfRangeException(nameof(length));
        Length = length;
    }

    public void Clear() => Length = 0;
}
