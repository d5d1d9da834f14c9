using System.Runtime.Intrinsics;
using System.Runtime.InteropServices;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>Shape and storage of a <see cref="PagedKvStore"/>.</summary>
public sealed record PagedKvOptions
{
    public required int LayerCount { get; init; }
    public required int KvHeadCount { get; init; }
    public required int HeadDim { get; init; }
    /// <summary>Tokens per page: 16, 32 or 64 (a page's row mask is one 64-bit word).</summary>
    public int PageSize { get; init; } = 32;
    /// <summary>Element type of stored keys and values: f16 (default), f32 or q8_0.</summary>
    public GgmlType KeyType { get; init; } = GgmlType.F16;
    public GgmlType ValueType { get; init; } = GgmlType.F16;
    /// <summary>Most pages held in RAM at once, over all layers and heads; 0 for no limit.</summary>
    public int MaxHotPages { get; init; }
    /// <summary>File of the cold tier; null keeps every page in RAM.</summary>
    public string? ColdPath { get; init; }
    /// <summary>
    /// Read cold pages in place through a read-only mapping of the cold file where the system has one (default);
    /// false copies each selected cold page back into a hot frame first (FreeKV's recall).
    /// </summary>
    public bool MapColdTier { get; init; } = true;
    /// <summary>Bits of the per-token SimHash (ReSV): 0 (off) to 64.</summary>
    public int SimHashBits { get; init; } = 32;

    internal void Validate()
    {
        if (PageSize is not (16 or 32 or 64)) throw new ArgumentException($"page size must be 16, 32 or 64 tokens, not {PageSize}");
        foreach (var t in new[] { KeyType, ValueType })
        {
            if (t is not (GgmlType.F16 or GgmlType.F32 or GgmlType.Q8_0)) throw new ArgumentException($"KV page type must be f16, f32 or q8_0, not {GgmlTypes.Name(t)}");
            if (HeadDim % GgmlTypes.BlockSize(t) != 0) throw new ArgumentException($"head dimension {HeadDim} is not a whole number of {GgmlTypes.Name(t)} blocks");
        }
        if (LayerCount <= 0 || KvHeadCount <= 0 || HeadDim <= 0) throw new ArgumentException("layer count, KV head count and head dimension must be positive");
        if (SimHashBits is < 0 or > 64) throw new ArgumentException($"SimHash bits must be 0..64, not {SimHashBits}");
        if (MaxHotPages < 0) throw new ArgumentException($"max hot pages must be ≥ 0, not {MaxHotPages}");
    }
}

/// <summary>
/// The paged KV store: the mechanism under every policy. Keys (stored after RoPE, at their original positions) and
/// values live in pages of <see cref="PagedKvOptions.PageSize"/> tokens of one layer and KV head; a page's rows are
/// [keys PageSize × headDim][values PageSize × headDim] in one hot frame, so one page of one head is one contiguous
/// block, in RAM or in the cold file. Each (layer, head) has a page table: its pages in position order. Pages have
/// fixed ids whose metadata stays in RAM whatever the tier: token count, original positions, frame ids, per-token
/// SimHash, min/max keys per 16-token block (Quest, LServe), the key sum (mean key) and, on demand, centre ± radius
/// (FreeKV). Metadata is computed from the stored (rounded) keys, so bounds hold for what attention reads.
/// Free lists make page, frame and cold-slot allocation O(1). Running out of hot frames is a return value.
/// </summary>
public sealed unsafe class PagedKvStore : IDisposable
{
    /// <summary>Tokens per min/max digest block (Quest's page, LServe's logical page).</summary>
    public const int DigestBlock = 16;
    const int FramesPerSlab = 64;

    readonly PagedKvOptions options;
    readonly int d, keyRow, valueRow, blocksPerPage;
    readonly PageTable[] tables;
    readonly float[] hashPlanes; // [SimHashBits, headDim] Gaussian, fixed seed
    readonly float[] hashColumns; // the planes transposed, [headDim, 64] (planes past SimHashBits zero)

    // Page metadata, indexed by page id (struct of arrays, grown by doubling; no per-token allocation).
    int pageCapacity, pageHigh;
    readonly Stack<int> freePages = new();
    int[] count = [], frameOf = [], coldSlotOf = [], ownerOf = [], generation = [];
    int* positions; // [page, PageSize], native so page views can point at it
    int[] frameIds = [];
    ulong[] hashes = [];
    float[] minKeys = [], maxKeys = [], keySums = [], centres = [], radii = [];
    bool[] digestValid = [];
    int[] digestStamp = [];
    // Background recalls in flight: the ticket of the read (0 = none) and the frame it fills.
    long[] pendingTicket = [];
    int[] pendingFrame = [];

    // Hot frames: slabs never move, so a frame's address is stable. The slab array is replaced by a larger copy when
    // it fills (entries in use never change), so threads recalling pages can read it while another allocates.
    nint[] slabs = [];
    int slabCount;
    readonly Stack<int> freeFrames = new();
    int frameHigh, hotFrames;
    readonly ColdTier? cold;
    readonly float[] rowScratch;
    byte[]? coldStaging;

    public PagedKvStore(PagedKvOptions options)
    {
        options.Validate();
        this.options = options;
        d = options.HeadDim;
        keyRow = (int)GgmlTypes.RowBytes(options.KeyType, d);
        valueRow = (int)GgmlTypes.RowBytes(options.ValueType, d);
        blocksPerPage = options.PageSize / DigestBlock;
        tables = new PageTable[options.LayerCount * options.KvHeadCount];
        for (int i = 0; i < tables.Length; i++) tables[i] = new PageTable();
        hashPlanes = new float[options.SimHashBits * d];
        var rng = new Random(0x5EED);
        for (int i = 0; i < hashPlanes.Length; i++) hashPlanes[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        hashColumns = new float[d * 64];
        for (int b = 0; b < options.SimHashBits; b++)
            for (int i = 0; i < d; i++) hashColumns[i * 64 + b] = hashPlanes[b * d + i];
        rowScratch = new float[d];
        FrameBytes = options.PageSize * (keyRow + valueRow);
        if (options.ColdPath != null) cold = new ColdTier(options.ColdPath, FrameBytes, options.MapColdTier);
    }

    public PagedKvOptions Options => options;
    public int LayerCount => options.LayerCount;
    public int KvHeadCount => options.KvHeadCount;
    public int HeadDim => d;
    public int PageSize => options.PageSize;
    public GgmlType KeyType => options.KeyType;
    public GgmlType ValueType => options.ValueType;
    public int KeyRowBytes => keyRow;
    public int ValueRowBytes => valueRow;
    /// <summary>Bytes of one page of one head (keys and values).</summary>
    public int FrameBytes { get; }
    /// <summary>Pages in RAM now.</summary>
    public int HotPageCount => hotFrames;
    /// <summary>Pages whose only copy is in the cold file.</summary>
    public int ColdOnlyPageCount => coldOnlyPages;
    int coldOnlyPages;
    /// <summary>Bytes of KV rows in RAM (frames in use).</summary>
    public long HotBytes => (long)hotFrames * FrameBytes;
    /// <summary>Bytes of KV rows held only in the cold file.</summary>
    public long ColdBytes => (long)ColdOnlyPageCount * FrameBytes;
    /// <summary>Bytes allocated for frames (used or free).</summary>
    public long AllocatedBytes => (long)slabCount * FramesPerSlab * FrameBytes;
    public bool HasColdTier => cold != null;
    /// <summary>Whether cold pages are read where they lie in the mapped cold file (<see cref="ReadableRows"/>) instead of being recalled.</summary>
    public bool ReadsColdInPlace => cold?.IsMapped == true;

    /// <summary>Pages of (layer, head) in position order.</summary>
    public PageTable Table(int layer, int head) => tables[layer * options.KvHeadCount + head];

    // ---- metadata access ----
    public int Count(int page) => count[page];
    public ReadOnlySpan<int> Positions(int page) => new(positions + (long)page * options.PageSize, count[page]);
    public int FirstPosition(int page) => positions[(long)page * options.PageSize];
    public int LastPosition(int page) => positions[(long)page * options.PageSize + count[page] - 1];
    public ReadOnlySpan<int> FrameIds(int page) => frameIds.AsSpan(page * options.PageSize, count[page]);
    public ReadOnlySpan<ulong> SimHashes(int page) => hashes.AsSpan(page * options.PageSize, count[page]);
    /// <summary>Digest blocks of <see cref="DigestBlock"/> tokens that hold tokens.</summary>
    public int DigestBlockCount(int page) => (count[page] + DigestBlock - 1) / DigestBlock;
    /// <summary>Element-wise minimum of the stored keys of one 16-token block of the page.</summary>
    public ReadOnlySpan<float> MinKey(int page, int block) => minKeys.AsSpan((page * blocksPerPage + block) * d, d);
    public ReadOnlySpan<float> MaxKey(int page, int block) => maxKeys.AsSpan((page * blocksPerPage + block) * d, d);
    /// <summary>Sum of the page's stored keys (divide by <see cref="Count"/> for the mean key).</summary>
    public ReadOnlySpan<float> KeySum(int page) => keySums.AsSpan(page * d, d);
    public bool IsHot(int page) => frameOf[page] >= 0;
    /// <summary>Changes each time the id is given to a new page, so a remembered id can tell it was freed and reused.</summary>
    public int Generation(int page) => generation[page];
    /// <summary>Changes whenever the page's keys change (rows appended or removed, id reused), so a copy of its digest can tell it went stale.</summary>
    public int DigestStamp(int page) => digestStamp[page];

    void InvalidateDigest(int page)
    {
        digestValid[page] = false;
        digestStamp[page]++;
    }

    /// <summary>FreeKV's digest: centre c = (max+min)/2 and radius r = mean over tokens of |k − c|, per dimension.</summary>
    public void Digest(int page, out ReadOnlySpan<float> centre, out ReadOnlySpan<float> radius)
    {
        if (!digestValid[page]) ComputeDigest(page);
        centre = centres.AsSpan(page * d, d);
        radius = radii.AsSpan(page * d, d);
    }

    /// <summary>Centre and radius of a page; safe to run for different pages at once (policies score heads in parallel).</summary>
    void ComputeDigest(int page)
    {
        var c = centres.AsSpan(page * d, d);
        var r = radii.AsSpan(page * d, d);
        c.Fill(float.PositiveInfinity);
        Span<float> hi = stackalloc float[d], row = stackalloc float[d];
        hi.Fill(float.NegativeInfinity);
        for (int b = 0; b < DigestBlockCount(page); b++)
        {
            System.Numerics.Tensors.TensorPrimitives.Min(c, MinKey(page, b), c);
            System.Numerics.Tensors.TensorPrimitives.Max(hi, MaxKey(page, b), hi);
        }
        for (int i = 0; i < d; i++) c[i] = (c[i] + hi[i]) / 2;
        r.Clear();
        byte* readable = ReadableRows(page);
        byte[]? staging = readable != null ? null : System.Buffers.ArrayPool<byte>.Shared.Rent(FrameBytes);
        try
        {
            if (readable == null) cold!.Read(coldSlotOf[page], staging);
            fixed (byte* s = staging)
            {
                byte* rows = readable != null ? readable : s;
                for (int j = 0; j < count[page]; j++)
                {
                    Dequantize.Row(options.KeyType, new ReadOnlySpan<byte>(rows + (long)j * keyRow, keyRow), row);
                    for (int i = 0; i < d; i++) r[i] += MathF.Abs(row[i] - c[i]);
                }
            }
        }
        finally
        {
            if (staging != null) System.Buffers.ArrayPool<byte>.Shared.Return(staging);
        }
        System.Numerics.Tensors.TensorPrimitives.Divide(r, count[page], r);
        digestValid[page] = true;
    }

    // ---- rows ----
    byte* FramePointer(int frame) => (byte*)Volatile.Read(ref slabs)[frame / FramesPerSlab] + (long)(frame % FramesPerSlab) * FrameBytes;

    /// <summary>Key rows of a hot page ([PageSize, headDim] of <see cref="KeyType"/>).</summary>
    public byte* KeyRows(int page) => FramePointer(HotFrame(page));
    public byte* ValueRows(int page) => FramePointer(HotFrame(page)) + (long)options.PageSize * keyRow;
    public int* PositionPointer(int page) => positions + (long)page * options.PageSize;

    /// <summary>
    /// The page's rows ([keys PageSize × headDim][values PageSize × headDim]) where they can be read now: its hot frame,
    /// or its slot in the mapped cold file; null for a cold page without a mapping (recall it first). A mapped slot
    /// stays valid until the page is removed or compacted.
    /// </summary>
    public byte* ReadableRows(int page)
    {
        int frame = frameOf[page];
        if (frame >= 0) return FramePointer(frame);
        return cold != null && coldSlotOf[page] >= 0 ? cold.SlotPointer(coldSlotOf[page]) : null;
    }

    int HotFrame(int page)
    {
        int frame = frameOf[page];
        if (frame < 0) throw new InvalidOperationException($"page {page} is in the cold tier; recall it first");
        return frame;
    }

    /// <summary>All stored keys of a page as f32 ([Count, headDim]), from either tier.</summary>
    public void ReadKeys(int page, Span<float> destination)
    {
        byte* rows = ReadableRows(page);
        if (rows == null)
        {
            coldStaging ??= new byte[FrameBytes];
            cold!.Read(coldSlotOf[page], coldStaging);
            fixed (byte* s = coldStaging) ReadRows(s, page, destination);
            return;
        }
        ReadRows(rows, page, destination);
    }

    void ReadRows(byte* rows, int page, Span<float> destination)
    {
        for (int j = 0; j < count[page]; j++)
            Dequantize.Row(options.KeyType, new ReadOnlySpan<byte>(rows + (long)j * keyRow, keyRow), destination.Slice(j * d, d));
    }

    /// <summary>One stored key as f32.</summary>
    public void ReadKey(int page, int row, Span<float> destination) =>
        Dequantize.Row(options.KeyType, new ReadOnlySpan<byte>(KeyRows(page) + (long)row * keyRow, keyRow), destination[..d]);
    public void ReadValue(int page, int row, Span<float> destination) =>
        Dequantize.Row(options.ValueType, new ReadOnlySpan<byte>(ValueRows(page) + (long)row * valueRow, valueRow), destination[..d]);

    // ---- append ----

    /// <summary>
    /// Appends <paramref name="count"/> tokens ([count, kvHeads, headDim] f32 keys and values) at positions
    /// <paramref name="position"/>.. to every head of <paramref name="layer"/>. Returns false, and changes nothing, when
    /// the hot tier has too few free frames for the new pages.
    /// </summary>
    public bool Append(int layer, int position, int count, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int frameId = -1)
    {
        int kvRow = options.KvHeadCount * d;
        if (keys.Length < count * kvRow || values.Length < count * kvRow) throw new ArgumentException("keys/values shorter than count × kvHeads × headDim");
        int needed = 0;
        for (int h = 0; h < options.KvHeadCount; h++) needed += NewPagesFor(Table(layer, h), count);
        if (!CanAllocateFrames(needed)) return false;
        for (int h = 0; h < options.KvHeadCount; h++)
        {
            var table = Table(layer, h);
            if (table.Count > 0 && this.count[table[^1]] > 0 && LastPosition(table[^1]) >= position)
                throw new InvalidOperationException($"layer {layer} head {h}: position {position} is not after the last stored position {LastPosition(table[^1])}");
            for (int t = 0; t < count; t++)
            {
                int page = table.Count > 0 ? table[^1] : -1;
                if (page < 0 || this.count[page] == options.PageSize || !IsHot(page))
                {
                    page = NewPage(layer * options.KvHeadCount + h);
                    table.Add(page);
                }
                AppendRow(page, position + t, frameId, keys.Slice(t * kvRow + h * d, d), values.Slice(t * kvRow + h * d, d));
            }
            table.TokenCount += count;
        }
        return true;
    }

    int NewPagesFor(PageTable table, int tokens)
    {
        int room = 0;
        if (table.Count > 0 && IsHot(table[^1])) room = options.PageSize - count[table[^1]];
        return tokens <= room ? 0 : (tokens - room + options.PageSize - 1) / options.PageSize;
    }

    bool CanAllocateFrames(int frames) => options.MaxHotPages == 0 || hotFrames + frames <= options.MaxHotPages;

    void AppendRow(int page, int position, int frameId, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        int j = count[page];
        byte* frame = FramePointer(frameOf[page]);
        var keyBytes = new Span<byte>(frame + (long)j * keyRow, keyRow);
        Quantize.Row(options.KeyType, key, keyBytes);
        Quantize.Row(options.ValueType, value, new Span<byte>(frame + (long)options.PageSize * keyRow + (long)j * valueRow, valueRow));
        positions[(long)page * options.PageSize + j] = position;
        frameIds[page * options.PageSize + j] = frameId;
        count[page] = j + 1;
        // Metadata from the key as stored (rounded), so every bound holds for what attention reads.
        Dequantize.Row(options.KeyType, keyBytes, rowScratch);
        AddToDigest(page, j, rowScratch);
        hashes[page * options.PageSize + j] = SimHash(rowScratch);
        InvalidateDigest(page);
    }

    void AddToDigest(int page, int row, ReadOnlySpan<float> key)
    {
        int block = row / DigestBlock;
        var min = minKeys.AsSpan((page * blocksPerPage + block) * d, d);
        var max = maxKeys.AsSpan((page * blocksPerPage + block) * d, d);
        if (row % DigestBlock == 0) { key.CopyTo(min); key.CopyTo(max); }
        else
        {
            System.Numerics.Tensors.TensorPrimitives.Min(min, key, min);
            System.Numerics.Tensors.TensorPrimitives.Max(max, key, max);
        }
        var sum = keySums.AsSpan(page * d, d);
        System.Numerics.Tensors.TensorPrimitives.Add(sum, key, sum);
    }

    /// <summary>SimHash of a key: bit b = sign(R_b · k) &gt; 0 for the store's fixed Gaussian planes (ReSV).</summary>
    /// <remarks>
    /// All projections at once from the transposed planes (one FMA per key element and 16 planes) rather than a dot
    /// product per plane: 32 calls of a 64-element dot were the larger part of appending a token to the store.
    /// </remarks>
    public unsafe ulong SimHash(ReadOnlySpan<float> key)
    {
        int bitCount = options.SimHashBits;
        if (bitCount == 0) return 0;
        if (key.Length < d) throw new ArgumentException($"key shorter than the head dimension {d}", nameof(key));
        ulong bits = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            fixed (float* k = key, columns = hashColumns)
            {
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int i = 0; i < d; i++)
                {
                    var x = Vector512.Create(k[i]);
                    float* c = columns + i * 64;
                    a0 = Vector512.FusedMultiplyAdd(Vector512.Load(c), x, a0);
                    if (bitCount > 16) a1 = Vector512.FusedMultiplyAdd(Vector512.Load(c + 16), x, a1);
                    if (bitCount > 32) a2 = Vector512.FusedMultiplyAdd(Vector512.Load(c + 32), x, a2);
                    if (bitCount > 48) a3 = Vector512.FusedMultiplyAdd(Vector512.Load(c + 48), x, a3);
                }
                bits = Vector512.GreaterThan(a0, Vector512<float>.Zero).ExtractMostSignificantBits()
                    | (ulong)Vector512.GreaterThan(a1, Vector512<float>.Zero).ExtractMostSignificantBits() << 16
                    | (ulong)Vector512.GreaterThan(a2, Vector512<float>.Zero).ExtractMostSignificantBits() << 32
                    | (ulong)Vector512.GreaterThan(a3, Vector512<float>.Zero).ExtractMostSignificantBits() << 48;
            }
            return bitCount == 64 ? bits : bits & ((1UL << bitCount) - 1);
        }
        for (int b = 0; b < bitCount; b++)
            if (System.Numerics.Tensors.TensorPrimitives.Dot(hashPlanes.AsSpan(b * d, d), key[..d]) > 0) bits |= 1UL << b;
        return bits;
    }

    /// <summary>The SimHash planes, [SimHashBits, headDim] (for tests).</summary>
    internal ReadOnlySpan<float> HashPlanes => hashPlanes;

    int NewPage(int owner)
    {
        int page;
        if (freePages.Count > 0) page = freePages.Pop();
        else
        {
            if (pageHigh == pageCapacity) GrowPages();
            page = pageHigh++;
        }
        count[page] = 0;
        generation[page]++;
        ownerOf[page] = owner;
        coldSlotOf[page] = -1;
        frameOf[page] = AllocateFrame();
        keySums.AsSpan(page * d, d).Clear();
        InvalidateDigest(page);
        return page;
    }

    void GrowPages()
    {
        int capacity = Math.Max(64, pageCapacity * 2), p = options.PageSize;
        Array.Resize(ref count, capacity);
        Array.Resize(ref frameOf, capacity);
        Array.Resize(ref coldSlotOf, capacity);
        Array.Resize(ref ownerOf, capacity);
        Array.Resize(ref generation, capacity);
        Array.Resize(ref frameIds, capacity * p);
        Array.Resize(ref hashes, capacity * p);
        Array.Resize(ref minKeys, capacity * blocksPerPage * d);
        Array.Resize(ref maxKeys, capacity * blocksPerPage * d);
        Array.Resize(ref keySums, capacity * d);
        Array.Resize(ref centres, capacity * d);
        Array.Resize(ref radii, capacity * d);
        Array.Resize(ref digestValid, capacity);
        Array.Resize(ref digestStamp, capacity);
        Array.Resize(ref pendingTicket, capacity);
        Array.Resize(ref pendingFrame, capacity);
        positions = (int*)NativeMemory.Realloc(positions, (nuint)((long)capacity * p * sizeof(int)));
        pageCapacity = capacity;
    }

    // Frames are taken and given back under a lock: heads recall their pages concurrently (see Recall).
    readonly object frameGate = new();

    int AllocateFrame() => TryAllocateFrame(int.MaxValue, out int frame) ? frame : throw new InvalidOperationException("no frame");

    bool TryAllocateFrame(int limit, out int frame)
    {
        lock (frameGate)
        {
            frame = -1;
            if (hotFrames >= limit) return false;
            if (freeFrames.Count > 0) frame = freeFrames.Pop();
            else
            {
                if (frameHigh == slabCount * FramesPerSlab)
                {
                    if (slabCount == slabs.Length)
                    {
                        var grown = new nint[Math.Max(16, 2 * slabs.Length)];
                        slabs.AsSpan(0, slabCount).CopyTo(grown);
                        Volatile.Write(ref slabs, grown);
                    }
                    slabs[slabCount++] = (nint)NativeMemory.Alloc((nuint)((long)FramesPerSlab * FrameBytes));
                }
                frame = frameHigh++;
            }
            hotFrames++;
            return true;
        }
    }

    void FreeFrame(int frame)
    {
        lock (frameGate)
        {
            freeFrames.Push(frame);
            hotFrames--;
        }
    }

    // ---- eviction ----

    /// <summary>
    /// Evicts the rows of page <paramref name="index"/> of (layer, head) that <paramref name="mask"/> selects, in either
    /// tier: a page losing every row is freed without being read (it leaves the table); a cold page losing some is
    /// recalled to be compacted, which throws when no hot frame is free for it.
    /// </summary>
    public void Evict(int layer, int head, int index, ulong mask)
    {
        int page = Table(layer, head)[index], n = count[page];
        if (n < 64) mask &= (1UL << n) - 1;
        if (mask == 0) return;
        if (System.Numerics.BitOperations.PopCount(mask) == n) { RemovePage(layer, head, index); return; }
        if (!IsHot(page) && !Recall(page)) throw new InvalidOperationException($"no hot frame free to compact cold page {page} of layer {layer} head {head}");
        RemoveRows(layer, head, index, mask);
    }

    /// <summary>
    /// Removes the rows of page <paramref name="index"/> of (layer, head) that <paramref name="removeMask"/> selects:
    /// later rows move down (order kept), metadata is rebuilt, and an emptied page is freed and leaves the table.
    /// The page must be hot. Evicted tokens are gone for good.
    /// </summary>
    public void RemoveRows(int layer, int head, int index, ulong removeMask)
    {
        var table = Table(layer, head);
        int page = table[index], n = count[page];
        if (n < 64) removeMask &= (1UL << n) - 1;
        int removed = System.Numerics.BitOperations.PopCount(removeMask);
        if (removed == 0) return;
        if (removed == n) { RemovePage(layer, head, index); return; }
        byte* frame = FramePointer(HotFrame(page));
        byte* values = frame + (long)options.PageSize * keyRow;
        int* pos = positions + (long)page * options.PageSize;
        int write = 0;
        for (int j = 0; j < n; j++)
        {
            if ((removeMask >> j & 1) != 0) continue;
            if (write != j)
            {
                Buffer.MemoryCopy(frame + (long)j * keyRow, frame + (long)write * keyRow, keyRow, keyRow);
                Buffer.MemoryCopy(values + (long)j * valueRow, values + (long)write * valueRow, valueRow, valueRow);
                pos[write] = pos[j];
                frameIds[page * options.PageSize + write] = frameIds[page * options.PageSize + j];
                hashes[page * options.PageSize + write] = hashes[page * options.PageSize + j];
            }
            write++;
        }
        count[page] = write;
        table.TokenCount -= removed;
        table.Edited();
        if (coldSlotOf[page] >= 0) { cold!.Free(coldSlotOf[page]); coldSlotOf[page] = -1; } // the cold copy is stale now
        RebuildDigest(page);
    }

    void RebuildDigest(int page)
    {
        keySums.AsSpan(page * d, d).Clear();
        for (int j = 0; j < count[page]; j++)
        {
            ReadKey(page, j, rowScratch);
            AddToDigest(page, j, rowScratch);
        }
        InvalidateDigest(page);
    }

    /// <summary>Removes page <paramref name="index"/> of (layer, head) with all its tokens, in either tier.</summary>
    public void RemovePage(int layer, int head, int index)
    {
        var table = Table(layer, head);
        int page = table[index];
        CancelPrefetch(page);
        table.TokenCount -= count[page];
        table.RemoveAt(index);
        if (frameOf[page] >= 0) FreeFrame(frameOf[page]);
        else Interlocked.Decrement(ref coldOnlyPages);
        if (coldSlotOf[page] >= 0) cold!.Free(coldSlotOf[page]);
        frameOf[page] = coldSlotOf[page] = -1;
        count[page] = 0;
        freePages.Push(page);
    }

    /// <summary>Drops every token at or after <paramref name="length"/> (all layers and heads).</summary>
    public void Truncate(int length)
    {
        for (int l = 0; l < options.LayerCount; l++)
            for (int h = 0; h < options.KvHeadCount; h++)
            {
                var table = Table(l, h);
                while (table.Count > 0)
                {
                    int index = table.Count - 1, page = table[index];
                    if (FirstPosition(page) >= length) { RemovePage(l, h, index); continue; }
                    if (LastPosition(page) < length) break;
                    if (!IsHot(page)) Recall(page);
                    ulong mask = 0;
                    var pos = Positions(page);
                    for (int j = 0; j < pos.Length; j++) if (pos[j] >= length) mask |= 1UL << j;
                    RemoveRows(l, h, index, mask);
                    break;
                }
            }
    }

    // ---- tiers ----

    /// <summary>
    /// Moves a page to the cold tier: its rows are written to the cold file (unless a clean copy is there) and its hot
    /// frame is freed; metadata stays in RAM. Throws <see cref="IOException"/> naming the file when the write fails;
    /// the page then stays hot and nothing is lost.
    /// </summary>
    public void MoveCold(int page)
    {
        if (cold == null) throw new InvalidOperationException("this store has no cold tier (set ColdPath)");
        int frame = HotFrame(page);
        if (!digestValid[page]) ComputeDigest(page); // while the rows are in RAM: scoring a cold page then reads nothing
        if (coldSlotOf[page] < 0)
        {
            int slot = cold.Allocate();
            try { cold.Write(slot, new ReadOnlySpan<byte>(FramePointer(frame), FrameBytes)); }
            catch { cold.Free(slot); throw; }
            coldSlotOf[page] = slot;
        }
        FreeFrame(frame);
        frameOf[page] = -1;
        Interlocked.Increment(ref coldOnlyPages);
    }

    /// <summary>
    /// Brings a cold page back into a hot frame (keeping its clean cold copy); false when no frame is free. A page with
    /// a <see cref="Prefetch"/> in flight waits for that read instead of reading again. Distinct pages that are not
    /// being prefetched may be recalled from several threads at once (the heads of a layer do).
    /// </summary>
    public bool Recall(int page)
    {
        if (IsHot(page)) return true;
        if (pendingTicket[page] != 0)
        {
            long ticket = pendingTicket[page];
            int pending = pendingFrame[page];
            pendingTicket[page] = 0;
            try { cold!.Wait(ticket); }
            catch (IOException) { FreeFrame(pending); throw; }
            frameOf[page] = pending;
            Interlocked.Decrement(ref coldOnlyPages);
            return true;
        }
        if (!TryAllocateFrame(options.MaxHotPages == 0 ? int.MaxValue : options.MaxHotPages, out int frame)) return false;
        try { cold!.Read(coldSlotOf[page], new Span<byte>(FramePointer(frame), FrameBytes)); }
        catch { FreeFrame(frame); throw; }
        frameOf[page] = frame;
        Interlocked.Decrement(ref coldOnlyPages);
        return true;
    }

    /// <summary>
    /// Starts reading a cold page back on the cold tier's background thread into a newly allocated frame (which counts
    /// as hot from now on); <see cref="Recall"/> later waits for it, or <see cref="CancelPrefetch"/> gives the frame
    /// back. False (and nothing started) when the page is hot, already on its way, read in place (mapped cold tier), or
    /// no frame is free.
    /// </summary>
    public bool Prefetch(int page)
    {
        if (cold == null || cold.IsMapped || IsHot(page) || pendingTicket[page] != 0 || !CanAllocateFrames(1)) return false;
        int frame = AllocateFrame();
        pendingFrame[page] = frame;
        pendingTicket[page] = cold.ReadAsync(coldSlotOf[page], FramePointer(frame));
        return true;
    }

    /// <summary>Whether a <see cref="Prefetch"/> of the page is in flight (not yet recalled or cancelled).</summary>
    public bool IsPrefetching(int page) => pendingTicket[page] != 0;

    /// <summary>Drops an unused prefetch: waits for its read to finish (the frame is being written) and frees the frame; the page stays cold.</summary>
    public void CancelPrefetch(int page)
    {
        if (pendingTicket[page] == 0) return;
        try { cold!.Wait(pendingTicket[page]); }
        catch (IOException) { } // the page is still cold and intact; nothing was lost
        pendingTicket[page] = 0;
        FreeFrame(pendingFrame[page]);
    }

    /// <summary>Set when a cold write failed (the message names the file and offset); pages then stay in RAM.</summary>
    public string? ColdError { get; set; }

    /// <summary>Bytes the cold file holds.</summary>
    public long ColdFileBytes => cold?.FileBytes ?? 0;

    bool disposed;

    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    ~PagedKvStore() => Free();

    void Free()
    {
        if (disposed) return;
        disposed = true;
        cold?.Dispose(); // first: its reader thread may still be filling a frame
        for (int i = 0; i < slabCount; i++) NativeMemory.Free((void*)slabs[i]);
        slabs = [];
        slabCount = 0;
        NativeMemory.Free(positions);
        positions = null;
    }
}

/// <summary>The pages of one (layer, KV head) in position order, and how many tokens they hold.</summary>
public sealed class PageTable
{
    int[] pages = new int[16];

    public int Count { get; private set; }
    public int TokenCount { get; internal set; }
    public int this[int index] => pages[index];
    public int this[Index index] => pages[index.GetOffset(Count)];
    public ReadOnlySpan<int> Pages => pages.AsSpan(0, Count);

    internal void Add(int page)
    {
        if (Count == pages.Length) Array.Resize(ref pages, pages.Length * 2);
        pages[Count++] = page;
    }

    /// <summary>Counts removals, so a cached list of table indices can tell it went stale.</summary>
    public int Version { get; private set; }

    /// <summary>
    /// Counts changes other than appending at the end (pages or rows removed), so a copy of per-page data kept in
    /// table order knows that, while it is unchanged, only its last page and the pages after it can differ.
    /// </summary>
    public int Edits { get; private set; }

    internal void Edited() => Edits++;

    internal void RemoveAt(int index)
    {
        Version++;
        Edits++;
        Array.Copy(pages, index + 1, pages, index, Count - index - 1);
        Count--;
    }
}
