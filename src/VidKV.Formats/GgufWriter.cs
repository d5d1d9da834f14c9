using System.Text;
using VidKV.Tensors;

namespace VidKV.Formats;

/// <summary>
/// Writes GGUF files (v3 unless <see cref="Version"/> says 2): metadata in the order added, tensor infos, then tensor
/// data, each tensor aligned to <c>general.alignment</c> (default <see cref="GgufFile.DefaultAlignment"/>). Tensor data
/// is produced by a callback at write time, so multi-gigabyte random models never sit in memory whole.
/// </summary>
internal sealed class GgufWriter
{
    readonly List<KeyValuePair<string, GgufValue>> metadata = [];
    readonly List<(string Name, GgmlType Type, long[] Shape, long Bytes, Action<Stream> Write)> tensors = [];

    public uint Version { get; init; } = 3;

    public GgufWriter Add(string key, GgufValue value)
    {
        metadata.RemoveAll(kv => kv.Key == key);
        metadata.Add(new(key, value));
        return this;
    }

    public GgufWriter Add(string key, string value) => Add(key, GgufValue.Of(value));
    public GgufWriter Add(string key, uint value) => Add(key, GgufValue.Of(value));
    public GgufWriter Add(string key, float value) => Add(key, GgufValue.Of(value));
    public GgufWriter Add(string key, bool value) => Add(key, GgufValue.Of(value));

    /// <summary>Adds a tensor whose <paramref name="write"/> callback must write exactly its byte count.</summary>
    /// <param name="shape">ne0 (contiguous) first, as in GGUF.</param>
    public GgufWriter AddTensor(string name, GgmlType type, long[] shape, Action<Stream> write)
    {
        long elements = shape.Aggregate(1L, (a, b) => a * b);
        tensors.Add((name, type, shape, GgmlTypes.RowBytes(type, shape[0]) * (elements / shape[0]), write));
        return this;
    }

    /// <summary>Adds an f32 tensor quantised to <paramref name="type"/> row by row.</summary>
    public GgufWriter AddTensor(string name, GgmlType type, long[] shape, float[] values) =>
        AddTensor(name, type, shape, stream => WriteQuantized(stream, type, (int)shape[0], values));

    /// <summary>Quantises f32 rows of <paramref name="rowLength"/> elements to <paramref name="type"/> and writes them.</summary>
    public static void WriteQuantized(Stream stream, GgmlType type, int rowLength, ReadOnlySpan<float> values)
    {
        var row = new byte[GgmlTypes.RowBytes(type, rowLength)];
        for (int start = 0; start < values.Length; start += rowLength)
        {
            Quantize.Row(type, values.Slice(start, rowLength), row);
            stream.Write(row);
        }
    }

    public void Write(string path)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        Write(stream);
    }

    public void Write(Stream stream)
    {
        int alignment = metadata.FirstOrDefault(kv => kv.Key == "general.alignment").Value is { } a ? (int)a.AsInt64() : GgufFile.DefaultAlignment;
        if (alignment <= 0 || (alignment & (alignment - 1)) != 0) throw new InvalidOperationException($"general.alignment {alignment} is not a power of two");
        var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        w.Write(GgufFile.Magic);
        w.Write(Version);
        w.Write((ulong)tensors.Count);
        w.Write((ulong)metadata.Count);
        foreach (var (key, value) in metadata)
        {
            WriteString(w, key);
            w.Write((uint)value.Type);
            WriteValue(w, value.Type, value.Value);
        }
        long offset = 0;
        var offsets = new long[tensors.Count];
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            WriteString(w, t.Name);
            w.Write((uint)t.Shape.Length);
            foreach (long n in t.Shape) w.Write((ulong)n);
            w.Write((uint)t.Type);
            w.Write((ulong)offset);
            offsets[i] = offset;
            offset = (offset + t.Bytes + alignment - 1) / alignment * alignment;
        }
        w.Flush();
        long dataStart = (stream.Position + alignment - 1) / alignment * alignment;
        Pad(stream, dataStart - stream.Position);
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            Pad(stream, dataStart + offsets[i] - stream.Position);
            long before = stream.Position;
            t.Write(stream);
            if (stream.Position - before != t.Bytes)
                throw new InvalidOperationException($"tensor '{t.Name}': writer produced {stream.Position - before} bytes, expected {t.Bytes}");
        }
        stream.Flush();
    }

    static void Pad(Stream stream, long count)
    {
        for (long i = 0; i < count; i++) stream.WriteByte(0);
    }

    static void WriteString(BinaryWriter w, string s)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static void WriteValue(BinaryWriter w, GgufValueType type, object value)
    {
        switch (type)
        {
            case GgufValueType.UInt8: w.Write((byte)value); break;
            case GgufValueType.Int8: w.Write((sbyte)value); break;
            case GgufValueType.UInt16: w.Write((ushort)value); break;
            case GgufValueType.Int16: w.Write((short)value); break;
            case GgufValueType.UInt32: w.Write((uint)value); break;
            case GgufValueType.Int32: w.Write((int)value); break;
            case GgufValueType.Float32: w.Write((float)value); break;
            case GgufValueType.Bool: w.Write((byte)((bool)value ? 1 : 0)); break;
            case GgufValueType.String: WriteString(w, (string)value); break;
            case GgufValueType.UInt64: w.Write((ulong)value); break;
            case GgufValueType.Int64: w.Write((long)value); break;
            case GgufValueType.Float64: w.Write((double)value); break;
            case GgufValueType.Array:
                var array = (GgufArray)value;
                w.Write((uint)array.ElementType);
                w.Write((ulong)array.Length);
                foreach (object item in array.Items) WriteValue(w, array.ElementType, item);
                break;
            default: throw new ArgumentException($"unknown GGUF value type {type}");
        }
    }
}
