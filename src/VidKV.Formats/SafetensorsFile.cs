using System.IO.MemoryMappedFiles;
using System.Text.Json;
using VidKV.Tensors;

namespace VidKV.Formats;

/// <summary>One tensor of a safetensors file. <see cref="Shape"/> is row-major as stored ([rows, columns] for a matrix).</summary>
internal sealed record SafetensorsTensorInfo(string Name, GgmlType Type, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// A safetensors file, memory-mapped: an 8-byte little-endian header length, a JSON header
/// <c>{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}</c>, then the data. F32, F16 and BF16
/// tensors are supported; problems are <see cref="ModelFormatException"/>s naming the file and the tensor or offset.
/// </summary>
internal sealed unsafe class SafetensorsFile : IDisposable
{
    readonly MemoryMappedFile map;
    readonly MemoryMappedViewAccessor view;
    readonly byte* data;
    readonly Dictionary<string, SafetensorsTensorInfo> tensors = [];

    public string Path { get; }
    public IReadOnlyDictionary<string, SafetensorsTensorInfo> Tensors => tensors;
    public IReadOnlyDictionary<string, string> Metadata { get; }

    SafetensorsFile(string path, long length, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* pointer)
    {
        Path = path;
        this.map = map;
        this.view = view;
        ulong headerLength = *(ulong*)pointer;
        if (headerLength > (ulong)(length - 8))
            throw ModelFormatException.AtOffset(path, 0, $"truncated header: it claims {headerLength} bytes, the file has {length - 8} after the length field");
        data = pointer + 8 + (long)headerLength;
        long dataLength = length - 8 - (long)headerLength;

        JsonDocument header;
        try { header = JsonDocument.Parse(new ReadOnlyMemory<byte>(new ReadOnlySpan<byte>(pointer + 8, (int)headerLength).ToArray())); }
        catch (JsonException e) { throw ModelFormatException.AtOffset(path, 8 + (e.BytePositionInLine ?? 0), $"header is not valid JSON: {e.Message}"); }
        var metadata = new Dictionary<string, string>();
        using (header)
        {
            foreach (var property in header.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    foreach (var m in property.Value.EnumerateObject()) metadata[m.Name] = m.Value.ToString();
                    continue;
                }
                string name = property.Name;
                try
                {
                    string dtype = property.Value.GetProperty("dtype").GetString()!;
                    var type = dtype switch
                    {
                        "F32" => GgmlType.F32, "F16" => GgmlType.F16, "BF16" => GgmlType.BF16,
                        _ => throw ModelFormatException.AtTensor(path, name, $"dtype {dtype} is not supported (F32, F16, BF16)"),
                    };
                    long[] shape = property.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                    long[] offsets = property.Value.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                    if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0])
                        throw ModelFormatException.AtTensor(path, name, "data_offsets must be [begin, end] with begin ≤ end");
                    var info = new SafetensorsTensorInfo(name, type, shape, offsets[0], offsets[1]);
                    long expected = info.ElementCount * (type == GgmlType.F32 ? 4 : 2);
                    if (offsets[1] - offsets[0] != expected)
                        throw ModelFormatException.AtTensor(path, name, $"holds {offsets[1] - offsets[0]} bytes, its shape [{string.Join(", ", shape)}] of {dtype} needs {expected}");
                    if (offsets[1] > dataLength)
                        throw ModelFormatException.AtTensor(path, name, $"data ends at {8 + (long)headerLength + offsets[1]}, past the end of the file ({length} bytes)");
                    tensors[name] = info;
                }
                catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException)
                {
                    throw ModelFormatException.AtTensor(path, name, $"malformed header entry: {e.Message}");
                }
            }
        }
        Metadata = metadata;
    }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw ModelFormatException.InFile(path, "file not found");
        long length = new FileInfo(path).Length;
        if (length < 8) throw ModelFormatException.AtOffset(path, 0, $"truncated header: the file is {length} bytes");
        var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        MemoryMappedViewAccessor? view = null;
        try
        {
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            return new SafetensorsFile(path, length, map, view, p + view.PointerOffset);
        }
        catch
        {
            if (view != null) { view.SafeMemoryMappedViewHandle.ReleasePointer(); view.Dispose(); }
            map.Dispose();
            throw;
        }
    }

    public byte* TensorPointer(SafetensorsTensorInfo tensor) => data + tensor.Begin;

    public ReadOnlySpan<byte> TensorData(SafetensorsTensorInfo tensor) => new(data + tensor.Begin, checked((int)(tensor.End - tensor.Begin)));

    public void Dispose()
    {
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
        map.Dispose();
    }
}
