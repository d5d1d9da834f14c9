using System.IO.MemoryMappedFiles;
using System.Text;
using VidKV.Tensors;

namespace VidKV.Formats;

/// <summary>One tensor of a GGUF file: name, shape (ne0 first, the contiguous dimension) and where its data lies.</summary>
internal sealed record GgufTensorInfo(string Name, long[] Shape, GgmlType Type, long Offset, long ByteCount)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// A GGUF file (versions 2 and 3), memory-mapped read-only: metadata, tensor infos, and tensor data as spans over the
/// mapping. Every structural problem is reported as a <see cref="ModelFormatException"/> naming the file and the
/// offset or tensor. Dispose to unmap.
/// </summary>
internal sealed unsafe class GgufFile : IDisposable
{
    /// <summary>"GGUF" read as a little-endian u32.</summary>
    public const uint Magic = 0x46554747;
    public const int DefaultAlignment = 32;

    readonly MemoryMappedFile map;
    readonly MemoryMappedViewAccessor view;
    readonly byte* basePointer;
    readonly Dictionary<string, GgufTensorInfo> tensorsByName;

    public string Path { get; }
    public uint Version { get; }
    public long FileLength { get; }
    public int Alignment { get; }
    /// <summary>File offset where the tensor data section starts (tensor offsets are relative to it).</summary>
    public long DataOffset { get; }
    /// <summary>Metadata in file order.</summary>
    public IReadOnlyList<KeyValuePair<string, GgufValue>> MetadataList { get; }
    public IReadOnlyDictionary<string, GgufValue> Metadata { get; }
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    GgufFile(string path, long length, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* pointer)
    {
        Path = path;
        FileLength = length;
        this.map = map;
        this.view = view;
        basePointer = pointer;

        var r = new Reader(path, pointer, length);
        uint magic = r.U32("magic");
        if (magic != Magic)
            throw ModelFormatException.AtOffset(path, 0, $"not a GGUF file (magic 0x{magic:x8}, expected 0x{Magic:x8} \"GGUF\")");
        Version = r.U32("version");
        if (Version is not (2 or 3))
            throw ModelFormatException.AtOffset(path, 4, $"unsupported GGUF version {Version} (2 and 3 are supported)");
        long tensorCount = r.Count("tensor count");
        long kvCount = r.Count("metadata count");

        var metadata = new List<KeyValuePair<string, GgufValue>>((int)Math.Min(kvCount, 4096));
        var byKey = new Dictionary<string, GgufValue>();
        for (long i = 0; i < kvCount; i++)
        {
            long at = r.Position;
            string key = r.String("metadata key");
            var type = (GgufValueType)r.U32($"type of '{key}'");
            GgufValue value = r.Value(type, key, depth: 0);
            if (!byKey.TryAdd(key, value)) throw ModelFormatException.AtOffset(path, at, $"duplicate metadata key '{key}'");
            metadata.Add(new(key, value));
        }
        MetadataList = metadata;
        Metadata = byKey;

        Alignment = DefaultAlignment;
        if (byKey.TryGetValue("general.alignment", out var align))
        {
            long a = align.IsInteger ? align.AsInt64() : 0;
            if (a <= 0 || (a & (a - 1)) != 0) throw ModelFormatException.InFile(path, $"general.alignment {align} is not a positive power of two");
            Alignment = (int)a;
        }

        var tensors = new List<GgufTensorInfo>((int)Math.Min(tensorCount, 65536));
        tensorsByName = new Dictionary<string, GgufTensorInfo>();
        var infos = new List<(string Name, long[] Shape, uint Type, long Offset, long At)>();
        for (long i = 0; i < tensorCount; i++)
        {
            long at = r.Position;
            string name = r.String("tensor name");
            uint dims = r.U32($"dimension count of tensor '{name}'");
            if (dims is 0 or > 4) throw ModelFormatException.AtOffset(path, at, $"tensor '{name}' has {dims} dimensions (1 to 4 allowed)");
            var shape = new long[dims];
            for (int d = 0; d < dims; d++)
            {
                ulong n = r.U64($"shape of tensor '{name}'");
                if (n == 0 || n > int.MaxValue) throw ModelFormatException.AtOffset(path, at, $"tensor '{name}' has dimension {d} of size {n}");
                shape[d] = (long)n;
            }
            uint type = r.U32($"type of tensor '{name}'");
            ulong offset = r.U64($"offset of tensor '{name}'");
            if (offset > long.MaxValue) throw ModelFormatException.AtTensor(path, name, $"data offset {offset} is out of range");
            infos.Add((name, shape, type, (long)offset, at));
        }
        DataOffset = (r.Position + Alignment - 1) / Alignment * Alignment;

        foreach (var (name, shape, rawType, offset, at) in infos)
        {
            var type = (GgmlType)rawType;
            if (!Enum.IsDefined(type) || !GgmlTypes.IsSupported(type))
                throw ModelFormatException.AtTensor(path, name, $"unknown or unsupported block type {rawType}{(Enum.IsDefined(type) ? $" ({GgmlTypes.Name(type)})" : "")}");
            if (shape[0] % GgmlTypes.BlockSize(type) != 0)
                throw ModelFormatException.AtTensor(path, name, $"row length {shape[0]} is not a multiple of the {GgmlTypes.Name(type)} block size {GgmlTypes.BlockSize(type)}");
            long elements = 1;
            foreach (long n in shape) elements = checked(elements * n);
            long bytes = GgmlTypes.RowBytes(type, shape[0]) * (elements / shape[0]);
            if (offset % Alignment != 0)
                throw ModelFormatException.AtTensor(path, name, $"data offset {offset} is not aligned to {Alignment}");
            long start = DataOffset + offset;
            if (start > length || bytes > length - start)
                throw ModelFormatException.AtTensor(path, name,
                    $"data [{start}, {start + bytes}) runs past the end of the file ({length} bytes): truncated file or bad offset");
            var info = new GgufTensorInfo(name, shape, type, offset, bytes);
            if (!tensorsByName.TryAdd(name, info)) throw ModelFormatException.AtOffset(path, at, $"duplicate tensor name '{name}'");
            tensors.Add(info);
        }
        Tensors = tensors;
    }

    /// <summary>Opens and validates <paramref name="path"/>; the data stays mapped until <see cref="Dispose"/>.</summary>
    public static GgufFile Open(string path)
    {
        if (!File.Exists(path)) throw ModelFormatException.InFile(path, "file not found");
        long length;
        try { length = new FileInfo(path).Length; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        { throw ModelFormatException.InFile(path, e.Message); }
        if (length < 24) throw ModelFormatException.AtOffset(path, length, $"truncated header: the file is {length} bytes, a GGUF header needs at least 24");

        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            p += view.PointerOffset;
            return new GgufFile(path, length, map, view, p);
        }
        catch
        {
            if (view != null) { view.SafeMemoryMappedViewHandle.ReleasePointer(); view.Dispose(); }
            map?.Dispose();
            throw;
        }
    }

    public GgufTensorInfo? FindTensor(string name) => tensorsByName.GetValueOrDefault(name);

    /// <summary>The tensor's bytes, straight from the mapping.</summary>
    public ReadOnlySpan<byte> TensorData(GgufTensorInfo tensor) => new(TensorPointer(tensor), checked((int)tensor.ByteCount));

    /// <summary>Address of the tensor's first byte; valid until <see cref="Dispose"/>.</summary>
    public byte* TensorPointer(GgufTensorInfo tensor) => basePointer + DataOffset + tensor.Offset;

    public GgufValue? Get(string key) => Metadata.GetValueOrDefault(key);

    public void Dispose()
    {
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
        map.Dispose();
    }

    /// <summary>Bounds-checked little-endian cursor over the mapped header.</summary>
    struct Reader(string path, byte* p, long length)
    {
        static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);
        public long Position;

        void Need(long bytes, string what)
        {
            if (bytes < 0 || bytes > length - Position)
                throw ModelFormatException.AtOffset(path, Position, $"truncated header: reading {what} needs {bytes} bytes, the file ends at {length}");
        }

        T Read<T>(string what) where T : unmanaged
        {
            Need(sizeof(T), what);
            T v = *(T*)(p + Position);
            Position += sizeof(T);
            return v;
        }

        public uint U32(string what) => Read<uint>(what);
        public ulong U64(string what) => Read<ulong>(what);

        public long Count(string what)
        {
            long at = Position;
            ulong n = U64(what);
            if (n > (ulong)length) throw ModelFormatException.AtOffset(path, at, $"truncated header: {what} {n} is larger than the file ({length} bytes)");
            return (long)n;
        }

        public string String(string what)
        {
            long at = Position;
            ulong n = U64($"length of {what}");
            if (n > (ulong)(length - Position)) throw ModelFormatException.AtOffset(path, at, $"truncated header: {what} of {n} bytes runs past the end of the file ({length} bytes)");
            try
            {
                string s = StrictUtf8.GetString(p + Position, (int)n);
                Position += (long)n;
                return s;
            }
            catch (DecoderFallbackException)
            {
                throw ModelFormatException.AtOffset(path, at, $"{what} is not valid UTF-8");
            }
        }

        public GgufValue Value(GgufValueType type, string key, int depth) => type switch
        {
            GgufValueType.UInt8 => new(type, Read<byte>(key)),
            GgufValueType.Int8 => new(type, Read<sbyte>(key)),
            GgufValueType.UInt16 => new(type, Read<ushort>(key)),
            GgufValueType.Int16 => new(type, Read<short>(key)),
            GgufValueType.UInt32 => new(type, Read<uint>(key)),
            GgufValueType.Int32 => new(type, Read<int>(key)),
            GgufValueType.Float32 => new(type, Read<float>(key)),
            GgufValueType.Bool => new(type, Read<byte>(key) != 0),
            GgufValueType.String => new(type, String($"value of '{key}'")),
            GgufValueType.UInt64 => new(type, Read<ulong>(key)),
            GgufValueType.Int64 => new(type, Read<long>(key)),
            GgufValueType.Float64 => new(type, Read<double>(key)),
            GgufValueType.Array => new(type, Array(key, depth)),
            _ => throw ModelFormatException.AtOffset(path, Position - 4, $"metadata '{key}' has unknown value type {(uint)type}"),
        };

        GgufArray Array(string key, int depth)
        {
            if (depth > 8) throw ModelFormatException.AtOffset(path, Position, $"metadata '{key}' nests arrays too deeply");
            var elementType = (GgufValueType)U32($"element type of '{key}'");
            long count = Count($"length of array '{key}'");
            int n = (int)count;
            switch (elementType)
            {
                case GgufValueType.UInt8: return new(elementType, Block<byte>(n, key));
                case GgufValueType.Int8: return new(elementType, Block<sbyte>(n, key));
                case GgufValueType.UInt16: return new(elementType, Block<ushort>(n, key));
                case GgufValueType.Int16: return new(elementType, Block<short>(n, key));
                case GgufValueType.UInt32: return new(elementType, Block<uint>(n, key));
                case GgufValueType.Int32: return new(elementType, Block<int>(n, key));
                case GgufValueType.Float32: return new(elementType, Block<float>(n, key));
                case GgufValueType.UInt64: return new(elementType, Block<ulong>(n, key));
                case GgufValueType.Int64: return new(elementType, Block<long>(n, key));
                case GgufValueType.Float64: return new(elementType, Block<double>(n, key));
                case GgufValueType.Bool: return new(elementType, Block<byte>(n, key).Select(b => b != 0).ToArray());
                case GgufValueType.String:
                    {
                        var items = new string[n];
                        for (int i = 0; i < n; i++) items[i] = String($"element {i} of '{key}'");
                        return new(elementType, items);
                    }
                case GgufValueType.Array:
                    {
                        var items = new GgufArray[n];
                        for (int i = 0; i < n; i++) items[i] = Array(key, depth + 1);
                        return new(elementType, items);
                    }
                default:
                    throw ModelFormatException.AtOffset(path, Position - 12, $"array '{key}' has unknown element type {(uint)elementType}");
            }
        }

        T[] Block<T>(int n, string key) where T : unmanaged
        {
            Need((long)n * sizeof(T), $"array '{key}'");
            var items = new T[n];
            new ReadOnlySpan<T>(p + Position, n).CopyTo(items);
            Position += (long)n * sizeof(T);
            return items;
        }
    }
}
