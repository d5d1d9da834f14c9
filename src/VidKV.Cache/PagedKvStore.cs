using System.Runtime.Intrinsics;
using System.Runtime.InteropServices;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>Shape and storage of a <see cref="PagedKvStore"/>.</summary>
public sealed record PagedKvOptions
{
    /// <summary>Decoder layers the store keeps KV for.</summary>
    public required int LayerCount { get; init; }
    /// <summary>KV heads per layer (fewer than query heads under GQA).</summary>
    public required int KvHeadCount { get; init; }
    /// <summary>Elements of one key or value row; a whole number of blocks of the key and value types.</summary>
    public required int HeadDim { get; init; }
    /// <summary>Tokens per page: 16, 32 or 64 (a page's row mask is one 64-bit word).</summary>
    public int PageSize { get; init; } = 32;
    /// <summary>Element type of stored keys and values: f16 (default), f32 or q8_0.</summary>
    public GgmlType KeyType { get; init; } = GgmlType.F16;
    /// <summary>Element type of stored values: f16 (default), f32 or q8_0.</summary>
    public GgmlType ValueType { get; init; } = GgmlType.F16;
    /// <summary>Most pages held in RAM at once, over all layers and heads; 0 for no limit.</summary>
    public int MaxHotPages { get; init; }
    /// <summary>File of the cold tier; null keeps every page in RAM.</summary>
    public string? ColdPath { get; init; }
    /// <summary>
    /// Most bytes the cold file holds (whole pages: at least one); 0 for no limit. When a page must go cold and the file
    /// is full, the page that went cold first is dropped from every sequence (oldest first; a recalled page, hot again,
    /// only loses its cold copy).
    /// </summary>
    public long MaxColdBytes { get; init; }
    /// <summary>
    /// Read cold pages in place through a read-only mapping of the cold file where the system has one (default);
    /// false copies each selected cold page back into a hot slot first (FreeKV's recall).
    /// </summary>
    public bool MapColdTier { get; init; } = true;
    /// <summary>Bits of the per-token SimHash (ReSV) when <see cref="Metadata"/> asks for it: 1 to 64.</summary>
    public int SimHashBits { get; init; } = 32;
    /// <summary>
    /// The per-page metadata kept beside positions and frame ids: only what the policies in use read
    /// (<see cref="KvPolicy.Metadata"/>), since each kind costs memory per page of every head (min/max keys alone are
    /// 2 KiB per page at head dim 128).
    /// </summary>
    public KvMetadata Metadata { get; init; }

    internal void Validate()
    {
        if (MaxColdBytes < 0) throw new ArgumentOutOfRangeException(nameof(MaxColdBytes), $"max cold bytes must be ≥ 0, not {MaxColdBytes}");
        if (PageSize is not (16 or 32 or 64)) throw new ArgumentException($"page size must be 16, 32 or 64 tokens, not {PageSize}");
        foreach (var t in new[] { KeyType, ValueType })
        {
            if (t is not (GgmlType.F16 or GgmlType.F32 or GgmlType.Q8_0)) throw new ArgumentException($"KV page type must be f16, f32 or q8_0, not {GgmlTypes.Name(t)}");
            if (HeadDim % GgmlTypes.BlockSize(t) != 0) throw new ArgumentException($"head dimension {HeadDim} is not a whole number of {GgmlTypes.Name(t)} blocks");
        }
        if (LayerCount <= 0 || KvHeadCount <= 0 || HeadDim <= 0) throw new ArgumentException("layer count, KV head count and head dimension must be positive");
        if (SimHashBits is < 1 or > 64) throw new ArgumentException($"SimHash bits must be 1..64, not {SimHashBits}");
        if (MaxHotPages < 0) throw new ArgumentException($"max hot pages must be ≥ 0, not {MaxHotPages}");
    }
}

/// <summary>Per-page metadata a <see cref="PagedKvStore"/> keeps on request, besides positions and frame ids.</summary>
[Flags]
public enum KvMetadata
{
    /// <summary>Positions and frame ids only (what <see cref="FullPolicy"/> and the window policies need).</summary>
    None = 0,
    /// <summary>Element-wise min and max keys per 16-token block (Quest, LServe).</summary>
    MinMax = 1,
    /// <summary>Centre ± radius per page (FreeKV); implies <see cref="MinMax"/>.</summary>
    Digest = 2 | MinMax,
    /// <summary>The sum of the page's keys (a mean key per page: LiveVLM-style summaries).</summary>
    KeySum = 4,
    /// <summary>A SimHash per token (ReSV).</summary>
    SimHash = 8,
    /// <summary>One float per token that policies accumulate (H2O's attention mass); moves with its row.</summary>
    RowScores = 16,
    /// <summary>Every kind (for tools that try every policy on one store).</summary>
    All = MinMax | Digest | KeySum | SimHash | RowScores,
}

/// <summary>
/// The KV manager's page pool: the mechanism under every policy and every sequence. Keys (stored after RoPE) and
/// values live in pages of <see cref="PagedKvOptions.PageSize"/> tokens of one layer and KV head; a page's rows are
/// [keys PageSize × headDim][values PageSize × headDim] in one hot slot, so one page of one head is one contiguous
/// block, in RAM or in the cold file. Sequences (<see cref="KvSequence"/>) hold the page tables: per (layer, head) the
/// pages in position order, where a row's position is its place in its sequence (the causal order attention masks
/// by). All sequences share one pool of slots under one budget (<see cref="PagedKvOptions.MaxHotPages"/>) and one
/// cold tier. A page may be in several sequences' tables (after <see cref="KvSequence.Fork"/>): it counts its
/// holders, is freed when the last lets go, and is copied before anyone changes its rows (copy-on-write); a sequence
/// appending after a shared page starts a page of its own, so appends never copy. Pages have fixed ids whose
/// metadata stays in RAM whatever the tier: token count, positions, frame ids, and what <see cref="KvMetadata"/>
/// asks for. Metadata is computed from the stored (rounded) keys, so bounds hold for what attention reads. Free
/// lists make page, slot and cold-slot allocation O(1). Running out of hot slots is a return value, and
/// <see cref="Reserve"/> sets slots aside before a forward pass so that its appends cannot run out halfway.
/// </summary>
public sealed unsafe class PagedKvStore : IDisposable
{
    /// <summary>Tokens per min/max digest block (Quest's page, LServe's logical page).</summary>
    public const int DigestBlock = 16;
    const int SlotsPerSlab = 64;

    readonly PagedKvOptions options;
    readonly int d, keyRow, valueRow, blocksPerPage;
    readonly KvMetadata metadata;
    readonly float[] hashPlanes; // [SimHashBits, headDim] Gaussian, fixed seed
    readonly float[] hashColumns; // the planes transposed, [headDim, 64] (planes past SimHashBits zero)

    // Page metadata, indexed by page id (struct of arrays, grown by doubling; no per-token allocation).
    int pageCapacity, pageHigh;
    readonly Stack<int> freePages = new();
    int[] count = [], hotSlotOf = [], coldSlotOf = [], generation = [], holders = [];
    int* positions; // [page, PageSize], native so page views can point at it
    int[] frameIds = [], keyPositions = [];
    ulong[] hashes = [];
    float[] minKeys = [], maxKeys = [], keySums = [], centres = [], radii = [], rowScores = [];
    bool[] digestValid = [];
    int[] digestStamp = [];
    // Background recalls in flight: the ticket of the read (0 = none) and the slot it fills.
    long[] pendingTicket = [];
    int[] pendingSlot = [];

    // Hot slots: slabs never move, so a slot's address is stable. The slab array is replaced by a larger copy when
    // it fills (entries in use never change), so threads recalling pages can read it while another allocates.
    nint[] slabs = [];
    int slabCount;
    readonly Stack<int> freeHotSlots = new();
    int hotSlotHigh, hotSlots, reservedPages;
    int sequences;
    readonly ColdTier? cold;
    // Under a cold limit: the tables of open sequences (a dropped cold page leaves each that holds it), the pages in the
    // order their cold copies were written (entries whose serial no longer matches are stale), and each page's serial.
    readonly List<PageTable> openTables = [];
    readonly Queue<(int Page, long Serial)> coldOrder = new();
    long[] coldSerial = [];
    long coldWrites;
    readonly float[] rowScratch;
    byte[]? coldStaging;
    float[] shiftCos = [], shiftSin = [];

    /// <summary>An empty pool of the given shape; slots are allocated as pages are taken, the cold file created if named.</summary>
    public PagedKvStore(PagedKvOptions options)
    {
        options.Validate();
        this.options = options;
        d = options.HeadDim;
        keyRow = (int)GgmlTypes.RowBytes(options.KeyType, d);
        valueRow = (int)GgmlTypes.RowBytes(options.ValueType, d);
        blocksPerPage = options.PageSize / DigestBlock;
        metadata = options.Metadata;
        hashPlanes = new float[options.SimHashBits * d];
        var rng = new Random(0x5EED);
        for (int i = 0; i < hashPlanes.Length; i++) hashPlanes[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        hashColumns = new float[d * 64];
        for (int b = 0; b < options.SimHashBits; b++)
            for (int i = 0; i < d; i++) hashColumns[i * 64 + b] = hashPlanes[b * d + i];
        rowScratch = new float[d];
        PageBytes = options.PageSize * (keyRow + valueRow);
        if (options.ColdPath != null) cold = new ColdTier(options.ColdPath, PageBytes, options.MapColdTier);
        maxColdPages = options.MaxColdBytes == 0 ? 0 : (int)Math.Clamp(options.MaxColdBytes / PageBytes, 1, int.MaxValue);
    }

    /// <summary>Pages the cold file may hold (<see cref="PagedKvOptions.MaxColdBytes"/>); 0 for no limit.</summary>
    public int MaxColdPages => maxColdPages;
    readonly int maxColdPages;

    /// <summary>The shape and storage the store was created with.</summary>
    public PagedKvOptions Options => options;
    /// <summary>The metadata this store keeps (<see cref="PagedKvOptions.Metadata"/>).</summary>
    public KvMetadata Metadata => metadata;
    /// <summary>Decoder layers (<see cref="PagedKvOptions.LayerCount"/>).</summary>
    public int LayerCount => options.LayerCount;
    /// <summary>KV heads per layer (<see cref="PagedKvOptions.KvHeadCount"/>).</summary>
    public int KvHeadCount => options.KvHeadCount;
    /// <summary>Elements per key or value row (<see cref="PagedKvOptions.HeadDim"/>).</summary>
    public int HeadDim => d;
    /// <summary>Tokens per page (<see cref="PagedKvOptions.PageSize"/>).</summary>
    public int PageSize => options.PageSize;
    /// <summary>Element type of stored keys.</summary>
    public GgmlType KeyType => options.KeyType;
    /// <summary>Element type of stored values.</summary>
    public GgmlType ValueType => options.ValueType;
    /// <summary>Bytes of one stored key row (headDim elements of <see cref="KeyType"/>).</summary>
    public int KeyRowBytes => keyRow;
    /// <summary>Bytes of one stored value row (headDim elements of <see cref="ValueType"/>).</summary>
    public int ValueRowBytes => valueRow;
    /// <summary>Bytes of one page of one head (keys and values).</summary>
    public int PageBytes { get; }
    /// <summary>Pages in RAM now.</summary>
    public int HotPageCount => hotSlots;
    /// <summary>Pages whose only copy is in the cold file.</summary>
    public int ColdOnlyPageCount => coldOnlyPages;
    int coldOnlyPages;
    /// <summary>Bytes of KV rows in RAM (slots in use).</summary>
    public long HotBytes => (long)hotSlots * PageBytes;
    /// <summary>
    /// Most bytes of KV rows in RAM at once so far, every sequence and fork together, within steps too (a policy's
    /// rows before it evicts them). Free slots are reused before a new one is taken, so the slots ever taken are the peak.
    /// </summary>
    public long PeakHotBytes => (long)Volatile.Read(ref hotSlotHigh) * PageBytes;
    /// <summary>Bytes of KV rows held only in the cold file.</summary>
    public long ColdBytes => (long)ColdOnlyPageCount * PageBytes;
    /// <summary>Bytes allocated for slots (used or free).</summary>
    public long AllocatedBytes => (long)slabCount * SlotsPerSlab * PageBytes;
    /// <summary>Whether pages can move to a cold file (<see cref="PagedKvOptions.ColdPath"/> was given).</summary>
    public bool HasColdTier => cold != null;
    /// <summary>Whether cold pages are read where they lie in the mapped cold file (<see cref="ReadableRows"/>) instead of being recalled.</summary>
    public bool ReadsColdInPlace => cold?.IsMapped == true;

    /// <summary>Index of (layer, KV head) in per-head arrays (layer-major, <see cref="HeadSlots"/> long).</summary>
    public int HeadIndex(int layer, int head) => HeadIndex(layer, head, options.KvHeadCount);

    /// <summary>
    /// Index of (layer, KV head) in per-head arrays of a model with <paramref name="kvHeadCount"/> KV heads per layer,
    /// for holders of such arrays that have no store (<see cref="KvPolicyMap"/>): the one place this arithmetic lives.
    /// </summary>
    public static int HeadIndex(int layer, int head, int kvHeadCount) => layer * kvHeadCount + head;
    /// <summary>(layer, KV head) pairs: the length of per-head arrays.</summary>
    public int HeadSlots => options.LayerCount * options.KvHeadCount;

    /// <summary>A new, empty sequence whose pages come from this pool.</summary>
    public KvSequence CreateSequence() => new(this);

    /// <summary>Sequences created and not yet disposed.</summary>
    public int SequenceCount => Volatile.Read(ref sequences);
    internal void SequenceOpened() => Interlocked.Increment(ref sequences);
    internal void SequenceClosed() => Interlocked.Decrement(ref sequences);

    /// <summary>Pages in use (in any tier, by any sequence); a page shared by several sequences counts once.</summary>
    public int PageCount => pageHigh - freePages.Count;

    /// <summary>Most bytes of KV rows in RAM at once (<see cref="PagedKvOptions.MaxHotPages"/> slots); 0 for no limit.</summary>
    public long HotBudgetBytes => (long)options.MaxHotPages * PageBytes;

    /// <summary>Sequences holding the page (more than one after a fork).</summary>
    public int Holders(int page) => holders[page];

    // ---- metadata access ----
    /// <summary>Tokens (rows) the page holds, at most <see cref="PageSize"/>.</summary>
    public int Count(int page) => count[page];
    /// <summary>Each row's position in its sequence, ascending ([Count]).</summary>
    public ReadOnlySpan<int> Positions(int page) => new(positions + (long)page * options.PageSize, count[page]);
    /// <summary>Position of the page's first row.</summary>
    public int FirstPosition(int page) => positions[(long)page * options.PageSize];
    /// <summary>Position of the page's last row.</summary>
    public int LastPosition(int page) => positions[(long)page * options.PageSize + count[page] - 1];
    /// <summary>Each row's video frame id ([Count]; -1 for a token of no frame).</summary>
    public ReadOnlySpan<int> FrameIds(int page) => frameIds.AsSpan(page * options.PageSize, count[page]);
    /// <summary>
    /// Each row's key position ([Count], ascending): the one-component RoPE position its stored key is rotated at. It
    /// is the row's <see cref="Positions"/> unless the sequence compacts positions (<see cref="KvPositions.Compact"/>,
    /// <see cref="ShiftKeyPositions"/>); M-RoPE keys, which turn by several components, are never re-rotated.
    /// </summary>
    public ReadOnlySpan<int> KeyPositions(int page) => keyPositions.AsSpan(page * options.PageSize, count[page]);
    /// <summary>Each row's key SimHash (<see cref="KvMetadata.SimHash"/>; <see cref="PagedKvOptions.SimHashBits"/> low bits), [Count].</summary>
    public ReadOnlySpan<ulong> SimHashes(int page) => Requires(KvMetadata.SimHash) ? hashes.AsSpan(page * options.PageSize, count[page]) : default;
    /// <summary>The page's per-row scores (<see cref="KvMetadata.RowScores"/>), read-only; see <see cref="WritableRowScores"/>.</summary>
    public ReadOnlySpan<float> RowScores(int page) => Requires(KvMetadata.RowScores) ? rowScores.AsSpan(page * options.PageSize, count[page]) : default;

    /// <summary>
    /// The row scores of page <paramref name="index"/> of <paramref name="table"/> to change: a page other sequences
    /// hold too is copied first (<see cref="MakeOwn"/>), so they keep theirs.
    /// </summary>
    public Span<float> WritableRowScores(PageTable table, int index)
    {
        Requires(KvMetadata.RowScores);
        int page = MakeOwn(table, index, hot: false);
        return rowScores.AsSpan(page * options.PageSize, count[page]);
    }

    bool Requires(KvMetadata kind) => (metadata & kind) == kind ? true
        : throw new InvalidOperationException($"this store keeps no {kind} metadata (set PagedKvOptions.Metadata; a policy declares what it reads in KvPolicy.Metadata)");
    /// <summary>Digest blocks of <see cref="DigestBlock"/> tokens that hold tokens.</summary>
    public int DigestBlockCount(int page) => (count[page] + DigestBlock - 1) / DigestBlock;
    /// <summary>Element-wise minimum of the stored keys of one 16-token block of the page.</summary>
    public ReadOnlySpan<float> MinKey(int page, int block) => Requires(KvMetadata.MinMax) ? minKeys.AsSpan((page * blocksPerPage + block) * d, d) : default;
    /// <summary>Element-wise maximum of the stored keys of one 16-token block of the page.</summary>
    public ReadOnlySpan<float> MaxKey(int page, int block) => Requires(KvMetadata.MinMax) ? maxKeys.AsSpan((page * blocksPerPage + block) * d, d) : default;
    /// <summary>Sum of the page's stored keys (divide by <see cref="Count"/> for the mean key).</summary>
    public ReadOnlySpan<float> KeySum(int page) => Requires(KvMetadata.KeySum) ? keySums.AsSpan(page * d, d) : default;
    /// <summary>Whether the page's rows are in RAM (a hot slot), rather than only in the cold file.</summary>
    public bool IsHot(int page) => hotSlotOf[page] >= 0;
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
        Requires(KvMetadata.Digest);
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
        byte[]? staging = readable != null ? null : System.Buffers.ArrayPool<byte>.Shared.Rent(PageBytes);
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
    byte* HotSlotPointer(int slot) => (byte*)Volatile.Read(ref slabs)[slot / SlotsPerSlab] + (long)(slot % SlotsPerSlab) * PageBytes;

    /// <summary>Key rows of a hot page ([PageSize, headDim] of <see cref="KeyType"/>).</summary>
    internal byte* KeyRows(int page) => HotSlotPointer(HotSlot(page));
    internal byte* ValueRows(int page) => HotSlotPointer(HotSlot(page)) + (long)options.PageSize * keyRow;
    internal int* PositionPointer(int page) => positions + (long)page * options.PageSize;

    /// <summary>
    /// The page's rows ([keys PageSize × headDim][values PageSize × headDim]) where they can be read now: its hot slot,
    /// or its slot in the mapped cold file; null for a cold page without a mapping (recall it first). A mapped slot
    /// stays valid until the page is removed or compacted.
    /// </summary>
    internal byte* ReadableRows(int page)
    {
        int slot = hotSlotOf[page];
        if (slot >= 0) return HotSlotPointer(slot);
        return cold != null && coldSlotOf[page] >= 0 ? cold.SlotPointer(coldSlotOf[page]) : null;
    }

    int HotSlot(int page)
    {
        int slot = hotSlotOf[page];
        if (slot < 0) throw new InvalidOperationException($"page {page} is in the cold tier; recall it first");
        return slot;
    }

    /// <summary>All stored keys of a page as f32 ([Count, headDim]), from either tier.</summary>
    public void ReadKeys(int page, Span<float> destination) => ReadRows(page, values: false, 0, count[page], destination);

    /// <summary>Stored keys of rows [<paramref name="first"/>, <paramref name="first"/> + <paramref name="rows"/>) of a page as f32, from either tier.</summary>
    public void ReadKeys(int page, int first, int rows, Span<float> destination) => ReadRows(page, values: false, first, rows, destination);

    /// <summary>Stored values of rows [<paramref name="first"/>, <paramref name="first"/> + <paramref name="rows"/>) of a page as f32, from either tier.</summary>
    public void ReadValues(int page, int first, int rows, Span<float> destination) => ReadRows(page, values: true, first, rows, destination);

    /// <summary>All stored values of a page as f32 ([Count, headDim]), from either tier.</summary>
    public void ReadValues(int page, Span<float> destination) => ReadRows(page, values: true, 0, count[page], destination);

    void ReadRows(int page, bool values, int first, int rows, Span<float> destination)
    {
        if (first < 0 || rows < 0 || first + rows > count[page]) throw new ArgumentOutOfRangeException(nameof(rows), $"rows {first}..{first + rows} of page {page}, which holds {count[page]}");
        byte* stored = ReadableRows(page);
        if (stored == null)
        {
            coldStaging ??= new byte[PageBytes];
            cold!.Read(coldSlotOf[page], coldStaging);
            fixed (byte* s = coldStaging) ReadRows(s, values, first, rows, destination);
            return;
        }
        ReadRows(stored, values, first, rows, destination);
    }

    /// <summary>Rows lie one after another in whole blocks of their type, so a run of them is one long row to dequantise.</summary>
    void ReadRows(byte* stored, bool values, int first, int rows, Span<float> destination)
    {
        var type = values ? options.ValueType : options.KeyType;
        int rowBytes = values ? valueRow : keyRow;
        if (values) stored += (long)options.PageSize * keyRow;
        Dequantize.Row(type, new ReadOnlySpan<byte>(stored + (long)first * rowBytes, rows * rowBytes), destination[..(rows * d)]);
    }

    /// <summary>
    /// Overwrites the key and value of row <paramref name="row"/> of page <paramref name="index"/> of
    /// <paramref name="table"/> (headDim f32 each), keeping its position and frame id: a merging reducer's
    /// representative row (VideoScan's carrier). A shared or cold page is made the table's own and hot first
    /// (<see cref="MakeOwn"/>); the row's SimHash and the page's digests are recomputed, and a clean cold copy is
    /// dropped (it is stale now).
    /// </summary>
    public void WriteRow(PageTable table, int index, int row, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        int page = MakeOwn(table, index);
        if ((uint)row >= (uint)count[page]) throw new ArgumentOutOfRangeException(nameof(row), $"page {page} holds {count[page]} rows, not {row + 1}");
        byte* slot = HotSlotPointer(HotSlot(page));
        Quantize.Row(options.KeyType, key[..d], new Span<byte>(slot + (long)row * keyRow, keyRow));
        Quantize.Row(options.ValueType, value[..d], new Span<byte>(slot + (long)options.PageSize * keyRow + (long)row * valueRow, valueRow));
        if ((metadata & KvMetadata.SimHash) != 0)
        {
            Dequantize.Row(options.KeyType, new ReadOnlySpan<byte>(slot + (long)row * keyRow, keyRow), rowScratch);
            hashes[page * options.PageSize + row] = SimHash(rowScratch);
        }
        if (coldSlotOf[page] >= 0) { cold!.Free(coldSlotOf[page]); coldSlotOf[page] = -1; }
        table.Edited();
        RebuildDigest(page);
    }

    /// <summary>One stored key as f32.</summary>
    public void ReadKey(int page, int row, Span<float> destination) =>
        Dequantize.Row(options.KeyType, new ReadOnlySpan<byte>(KeyRows(page) + (long)row * keyRow, keyRow), destination[..d]);
    /// <summary>One stored value as f32.</summary>
    public void ReadValue(int page, int row, Span<float> destination) =>
        Dequantize.Row(options.ValueType, new ReadOnlySpan<byte>(ValueRows(page) + (long)row * valueRow, valueRow), destination[..d]);

    // ---- append ----

    /// <summary>
    /// Hot slots appending <paramref name="tokens"/> rows to <paramref name="table"/> takes: the rest of a hot last
    /// page this sequence alone holds is filled first; a cold or shared last page is left as it is.
    /// </summary>
    public int PagesToAppend(PageTable table, int tokens)
    {
        int room = 0;
        if (table.Count > 0)
        {
            int last = table[^1];
            if (IsHot(last) && holders[last] == 1) room = options.PageSize - count[last];
        }
        return tokens <= room ? 0 : (tokens - room + options.PageSize - 1) / options.PageSize;
    }

    /// <summary>
    /// Appends <paramref name="count"/> rows of one head (row t's key and value at <paramref name="keys"/>[t ·
    /// <paramref name="stride"/>..] and the same in <paramref name="values"/>, headDim f32 each) at positions
    /// <paramref name="position"/>.. to <paramref name="table"/>, their keys rotated at key positions
    /// <paramref name="keyPosition"/>.. (<see cref="KeyPositions"/>). The slots must have been checked
    /// (<see cref="TryTakePages"/>); positions must come after the table's last.
    /// </summary>
    internal void AppendRows(PageTable table, int position, int count, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int stride, ReadOnlySpan<int> frameIds, int keyPosition)
    {
        if (table.Count > 0 && this.count[table[^1]] > 0 && LastPosition(table[^1]) >= position)
            throw new InvalidOperationException($"position {position} is not after the last stored position {LastPosition(table[^1])}");
        for (int t = 0; t < count; t++)
        {
            int page = table.Count > 0 ? table[^1] : -1;
            if (page < 0 || this.count[page] == options.PageSize || !IsHot(page) || holders[page] > 1)
            {
                page = NewPage();
                table.Add(page);
            }
            AppendRow(page, position + t, keyPosition + t, frameIds.IsEmpty ? -1 : frameIds[t], keys.Slice(t * stride, d), values.Slice(t * stride, d));
        }
        table.TokenCount += count;
    }

    /// <summary>Whether the budget has room for <paramref name="slots"/> more next to what is hot, reserved and allowed to appends.</summary>
    bool CanAllocatePages(int slots) => options.MaxHotPages == 0 || hotSlots + reservedPages + appendAllowance + slots <= options.MaxHotPages;

    // Slots appends may allocate without another budget check (granted by TryTakePages, spent by NewPage).
    int appendAllowance;

    /// <summary>
    /// Sets aside <paramref name="slots"/> hot slots for the appends of the next forward pass, so that none of its
    /// layers can run out of room halfway (the room check before a step). False, and nothing set aside, when the
    /// budget cannot hold them next to what is hot and already reserved.
    /// </summary>
    public bool Reserve(int slots)
    {
        lock (slotGate)
        {
            if (!CanAllocatePages(slots)) return false;
            reservedPages += slots;
            return true;
        }
    }

    /// <summary>Gives back what <see cref="Reserve"/> set aside and appends did not take.</summary>
    public void ReleaseReservation()
    {
        lock (slotGate) reservedPages = 0;
    }

    /// <summary>Slots set aside by <see cref="Reserve"/> and not yet taken.</summary>
    public int ReservedPages => reservedPages;

    /// <summary>Grants an append <paramref name="slots"/> new slots: from the reservation first, then from the free budget; false when neither has them.</summary>
    internal bool TryTakePages(int slots)
    {
        lock (slotGate)
        {
            int fromReservation = Math.Min(slots, reservedPages);
            if (!CanAllocatePages(slots - fromReservation)) return false;
            reservedPages -= fromReservation;
            appendAllowance += slots;
            return true;
        }
    }

    void AppendRow(int page, int position, int keyPosition, int frameId, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        int j = count[page];
        byte* slot = HotSlotPointer(hotSlotOf[page]);
        var keyBytes = new Span<byte>(slot + (long)j * keyRow, keyRow);
        Quantize.Row(options.KeyType, key, keyBytes);
        Quantize.Row(options.ValueType, value, new Span<byte>(slot + (long)options.PageSize * keyRow + (long)j * valueRow, valueRow));
        positions[(long)page * options.PageSize + j] = position;
        keyPositions[page * options.PageSize + j] = keyPosition;
        frameIds[page * options.PageSize + j] = frameId;
        count[page] = j + 1;
        if ((metadata & (KvMetadata.MinMax | KvMetadata.KeySum | KvMetadata.SimHash | KvMetadata.RowScores)) != 0)
        {
            // Metadata from the key as stored (rounded), so every bound holds for what attention reads.
            Dequantize.Row(options.KeyType, keyBytes, rowScratch);
            AddToDigest(page, j, rowScratch);
            if ((metadata & KvMetadata.SimHash) != 0) hashes[page * options.PageSize + j] = SimHash(rowScratch);
            if ((metadata & KvMetadata.RowScores) != 0) rowScores[page * options.PageSize + j] = 0;
        }
        InvalidateDigest(page);
    }

    void AddToDigest(int page, int row, ReadOnlySpan<float> key)
    {
        if ((metadata & KvMetadata.MinMax) != 0)
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
        }
        if ((metadata & KvMetadata.KeySum) != 0)
        {
            var sum = keySums.AsSpan(page * d, d);
            System.Numerics.Tensors.TensorPrimitives.Add(sum, key, sum);
        }
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

    int NewPage()
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
        holders[page] = 1;
        coldSlotOf[page] = -1;
        hotSlotOf[page] = AllocateAppendSlot();
        if ((metadata & KvMetadata.KeySum) != 0) keySums.AsSpan(page * d, d).Clear();
        InvalidateDigest(page);
        return page;
    }

    void GrowPages()
    {
        int capacity = Math.Max(64, pageCapacity * 2), p = options.PageSize;
        Array.Resize(ref count, capacity);
        Array.Resize(ref hotSlotOf, capacity);
        Array.Resize(ref coldSlotOf, capacity);
        Array.Resize(ref coldSerial, capacity);
        Array.Resize(ref holders, capacity);
        Array.Resize(ref generation, capacity);
        Array.Resize(ref frameIds, capacity * p);
        Array.Resize(ref keyPositions, capacity * p);
        Array.Resize(ref digestValid, capacity);
        Array.Resize(ref digestStamp, capacity);
        Array.Resize(ref pendingTicket, capacity);
        Array.Resize(ref pendingSlot, capacity);
        if ((metadata & KvMetadata.SimHash) != 0) Array.Resize(ref hashes, capacity * p);
        if ((metadata & KvMetadata.RowScores) != 0) Array.Resize(ref rowScores, capacity * p);
        if ((metadata & KvMetadata.MinMax) != 0)
        {
            Array.Resize(ref minKeys, capacity * blocksPerPage * d);
            Array.Resize(ref maxKeys, capacity * blocksPerPage * d);
        }
        if ((metadata & KvMetadata.KeySum) != 0) Array.Resize(ref keySums, capacity * d);
        if ((metadata & KvMetadata.Digest) == KvMetadata.Digest)
        {
            Array.Resize(ref centres, capacity * d);
            Array.Resize(ref radii, capacity * d);
        }
        positions = (int*)NativeMemory.Realloc(positions, (nuint)((long)capacity * p * sizeof(int)));
        pageCapacity = capacity;
    }

    /// <summary>Bytes of page metadata allocated (all pages the pool has room for): what the chosen <see cref="KvMetadata"/> costs.</summary>
    public long MetadataBytes =>
        (long)pageCapacity * (6 * sizeof(int) + sizeof(bool) + sizeof(long) + options.PageSize * 3 * sizeof(int))
        + (long)hashes.Length * sizeof(ulong) + 4L * (rowScores.Length + minKeys.Length + maxKeys.Length + keySums.Length + centres.Length + radii.Length);

    // Slots are taken and given back under a lock: heads recall their pages concurrently (see Recall).
    readonly object slotGate = new();

    /// <summary>A slot for an append's new page, out of what <see cref="TryTakePages"/> allowed (or, for a copy, the free budget).</summary>
    int AllocateAppendSlot()
    {
        lock (slotGate)
        {
            if (appendAllowance > 0) appendAllowance--;
            else if (!CanAllocatePages(1)) throw new InvalidOperationException($"KV hot tier full: {hotSlots} slots of {options.MaxHotPages} in use, {reservedPages} reserved");
            return TakeHotSlot();
        }
    }

    bool TryAllocateHotSlot(out int slot)
    {
        lock (slotGate)
        {
            slot = -1;
            if (!CanAllocatePages(1)) return false;
            slot = TakeHotSlot();
            return true;
        }
    }

    /// <summary>A slot from the free list or a new slab; the caller holds <see cref="slotGate"/> and checked the budget.</summary>
    int TakeHotSlot()
    {
        int slot;
        if (freeHotSlots.Count > 0) slot = freeHotSlots.Pop();
        else
        {
            if (hotSlotHigh == slabCount * SlotsPerSlab)
            {
                if (slabCount == slabs.Length)
                {
                    var grown = new nint[Math.Max(16, 2 * slabs.Length)];
                    slabs.AsSpan(0, slabCount).CopyTo(grown);
                    Volatile.Write(ref slabs, grown);
                }
                slabs[slabCount++] = (nint)NativeMemory.Alloc((nuint)((long)SlotsPerSlab * PageBytes));
            }
            slot = hotSlotHigh++;
        }
        hotSlots++;
        return slot;
    }

    void FreeHotSlot(int slot)
    {
        lock (slotGate)
        {
            freeHotSlots.Push(slot);
            hotSlots--;
        }
    }

    // ---- sharing ----

    /// <summary>One more sequence holds the page (a fork).</summary>
    internal void Share(int page) => holders[page]++;

    /// <summary>A sequence lets go of the page; the last holder frees it, in either tier.</summary>
    internal void Release(int page)
    {
        if (--holders[page] > 0) return;
        CancelPrefetch(page);
        if (hotSlotOf[page] >= 0) FreeHotSlot(hotSlotOf[page]);
        else Interlocked.Decrement(ref coldOnlyPages);
        if (coldSlotOf[page] >= 0) cold!.Free(coldSlotOf[page]);
        hotSlotOf[page] = coldSlotOf[page] = -1;
        count[page] = 0;
        freePages.Push(page);
    }

    /// <summary>
    /// Page <paramref name="index"/> of <paramref name="table"/>, made the table's own and hot before its rows or
    /// metadata change: a page other sequences hold too is copied into a new page (rows and metadata) that replaces it
    /// in this table only; a cold page is recalled. Returns the page id now at <paramref name="index"/>. Throws when no
    /// hot slot is free for the copy or the recall. With <paramref name="hot"/> false a cold page this table alone
    /// holds stays cold (for a change to its metadata only).
    /// </summary>
    public int MakeOwn(PageTable table, int index, bool hot = true)
    {
        int page = table[index];
        if (holders[page] > 1)
        {
            byte* source = ReadableRows(page);
            byte[]? staging = null;
            if (source == null)
            {
                staging = new byte[PageBytes];
                cold!.Read(coldSlotOf[page], staging);
            }
            if (!CanAllocatePages(1)) throw new InvalidOperationException($"KV hot tier full: no slot to copy shared page {page} before changing it");
            int copy = NewPage();
            fixed (byte* s = staging)
                Buffer.MemoryCopy(source != null ? source : s, HotSlotPointer(hotSlotOf[copy]), PageBytes, PageBytes);
            CopyMetadata(page, copy);
            table.Replace(index, copy);
            Release(page);
            return copy;
        }
        if (hot && !IsHot(page) && !Recall(page)) throw new InvalidOperationException($"KV hot tier full: no slot to recall cold page {page} before changing it");
        return page;
    }

    void CopyMetadata(int from, int to)
    {
        int p = options.PageSize, n = count[from];
        count[to] = n;
        new ReadOnlySpan<int>(positions + (long)from * p, n).CopyTo(new Span<int>(positions + (long)to * p, n));
        frameIds.AsSpan(from * p, n).CopyTo(frameIds.AsSpan(to * p));
        keyPositions.AsSpan(from * p, n).CopyTo(keyPositions.AsSpan(to * p));
        if ((metadata & KvMetadata.SimHash) != 0) hashes.AsSpan(from * p, n).CopyTo(hashes.AsSpan(to * p));
        if ((metadata & KvMetadata.RowScores) != 0) rowScores.AsSpan(from * p, n).CopyTo(rowScores.AsSpan(to * p));
        if ((metadata & KvMetadata.MinMax) != 0)
        {
            minKeys.AsSpan(from * blocksPerPage * d, blocksPerPage * d).CopyTo(minKeys.AsSpan(to * blocksPerPage * d));
            maxKeys.AsSpan(from * blocksPerPage * d, blocksPerPage * d).CopyTo(maxKeys.AsSpan(to * blocksPerPage * d));
        }
        if ((metadata & KvMetadata.KeySum) != 0) keySums.AsSpan(from * d, d).CopyTo(keySums.AsSpan(to * d));
        InvalidateDigest(to);
    }

    // ---- eviction ----

    /// <summary>
    /// Evicts the rows of page <paramref name="index"/> of <paramref name="table"/> that <paramref name="mask"/>
    /// selects, in either tier: a page losing every row leaves the table without being read (freed if no other
    /// sequence holds it); a cold or shared page losing some is recalled or copied to be compacted, which throws when
    /// no hot slot is free for it.
    /// </summary>
    public void Evict(PageTable table, int index, ulong mask)
    {
        int page = table[index], n = count[page];
        if (n < 64) mask &= (1UL << n) - 1;
        if (mask == 0) return;
        if (System.Numerics.BitOperations.PopCount(mask) == n) { RemovePage(table, index); return; }
        RemoveRows(table, index, mask);
    }

    /// <summary>
    /// Removes the rows of page <paramref name="index"/> of <paramref name="table"/> that <paramref name="removeMask"/>
    /// selects: later rows move down (order kept), metadata is rebuilt, and an emptied page leaves the table. A shared
    /// or cold page is made the table's own first (<see cref="MakeOwn"/>). Evicted tokens are gone for good.
    /// </summary>
    public void RemoveRows(PageTable table, int index, ulong removeMask)
    {
        int page = table[index], n = count[page];
        if (n < 64) removeMask &= (1UL << n) - 1;
        int removed = System.Numerics.BitOperations.PopCount(removeMask);
        if (removed == 0) return;
        if (removed == n) { RemovePage(table, index); return; }
        page = MakeOwn(table, index);
        byte* slot = HotSlotPointer(HotSlot(page));
        byte* values = slot + (long)options.PageSize * keyRow;
        int* pos = positions + (long)page * options.PageSize;
        int p = options.PageSize, write = 0;
        for (int j = 0; j < n; j++)
        {
            if ((removeMask >> j & 1) != 0) continue;
            if (write != j)
            {
                Buffer.MemoryCopy(slot + (long)j * keyRow, slot + (long)write * keyRow, keyRow, keyRow);
                Buffer.MemoryCopy(values + (long)j * valueRow, values + (long)write * valueRow, valueRow, valueRow);
                pos[write] = pos[j];
                keyPositions[page * p + write] = keyPositions[page * p + j];
                frameIds[page * p + write] = frameIds[page * p + j];
                if ((metadata & KvMetadata.SimHash) != 0) hashes[page * p + write] = hashes[page * p + j];
                if ((metadata & KvMetadata.RowScores) != 0) rowScores[page * p + write] = rowScores[page * p + j];
            }
            write++;
        }
        count[page] = write;
        table.TokenCount -= removed;
        table.Edited();
        if (coldSlotOf[page] >= 0) { cold!.Free(coldSlotOf[page]); coldSlotOf[page] = -1; } // the cold copy is stale now
        RebuildDigest(page);
    }

    void RebuildDigest(int page) => RebuildDigest(page, KeyRows(page));

    /// <summary>Min/max and key sums of the page recomputed from its key rows at <paramref name="keys"/> (its hot slot, or a staged copy of its cold one).</summary>
    void RebuildDigest(int page, byte* keys)
    {
        if ((metadata & KvMetadata.KeySum) != 0) keySums.AsSpan(page * d, d).Clear();
        if ((metadata & (KvMetadata.MinMax | KvMetadata.KeySum)) != 0)
            for (int j = 0; j < count[page]; j++)
            {
                Dequantize.Row(options.KeyType, new ReadOnlySpan<byte>(keys + (long)j * keyRow, keyRow), rowScratch);
                AddToDigest(page, j, rowScratch);
            }
        InvalidateDigest(page);
    }

    // ---- key positions ----

    /// <summary>
    /// Gives the rows of <paramref name="table"/> the key positions <paramref name="firstKeyPosition"/>,
    /// <paramref name="firstKeyPosition"/> + 1, … in table order, turning each stored key whose position changes by
    /// its shift δ = new − old with <paramref name="rotation"/> (RoPE rotations compose, R(old + δ) = R(δ)·R(old); the
    /// model's own angles and pairing, <see cref="Kernels.RopeAngles(int, int, float, Span{float}, Span{float})"/>):
    /// StreamingLLM's positions within the cache (Xiao et al., 2023, §3.2). Returns the rows re-rotated. Positions,
    /// values and frame ids stay; SimHashes and digests are recomputed from the new keys, and the table counts an
    /// edit (policies' copies of key summaries must look again).
    /// <para>
    /// Cost: nothing when the table's first and last rows already hold the first and last of the new key positions
    /// (key positions ascend, so every row does: one check per table); else only pages holding a row that moves are
    /// touched, each such row dequantised, turned (headDim/2 pairs, the angles computed once per distinct shift) and
    /// stored again. A page other sequences hold (a question's fork) is copied first (<see cref="MakeOwn"/>), so their
    /// keys never change under them; a cold page this table alone holds is read, turned and written back in place
    /// (it stays cold, and a prefetch in flight is cancelled), so recalling it later gives the new keys.
    /// </para>
    /// </summary>
    public int ShiftKeyPositions(PageTable table, int firstKeyPosition, KeyRotation rotation)
    {
        int rows = table.TokenCount;
        if (rows == 0 || table.Count == 0) return 0;
        int p = options.PageSize, first = table[0], last = table[^1];
        if (count[first] > 0 && count[last] > 0 && keyPositions[first * p] == firstKeyPosition
            && keyPositions[last * p + count[last] - 1] == firstKeyPosition + rows - 1) return 0;
        rotation.Validate(d);
        if (shiftCos.Length != rotation.Dimensions / 2)
        {
            shiftCos = new float[rotation.Dimensions / 2];
            shiftSin = new float[rotation.Dimensions / 2];
        }
        int target = firstKeyPosition, rotated = 0, angleShift = 0;
        for (int i = 0; i < table.Count; i++)
        {
            int page = table[i], n = count[page];
            if (n == 0) continue;
            if (keyPositions[page * p] == target && keyPositions[page * p + n - 1] == target + n - 1)
            {
                target += n;
                continue;
            }
            rotated += ShiftPage(table, i, target, rotation, ref angleShift);
            target += n;
        }
        if (rotated > 0) table.Edited();
        return rotated;
    }

    /// <summary>Turns the keys of page <paramref name="index"/> of the table to key positions <paramref name="target"/>..; see <see cref="ShiftKeyPositions"/>.</summary>
    int ShiftPage(PageTable table, int index, int target, KeyRotation rotation, ref int angleShift)
    {
        int page = table[index];
        if (holders[page] > 1) page = MakeOwn(table, index); // the fork keeps its copy as it was
        int p = options.PageSize, n = count[page], rotated = 0;
        bool hot = IsHot(page);
        if (!hot)
        {
            CancelPrefetch(page);
            coldStaging ??= new byte[PageBytes];
            cold!.Read(coldSlotOf[page], coldStaging);
        }
        fixed (byte* staged = coldStaging)
        {
            byte* keys = hot ? HotSlotPointer(HotSlot(page)) : staged;
            for (int j = 0; j < n; j++)
            {
                int shift = target + j - keyPositions[page * p + j];
                if (shift == 0) continue;
                if (angleShift != shift)
                {
                    Kernels.RopeAngles(shift, rotation.Dimensions, rotation.FreqBase, shiftCos, shiftSin);
                    angleShift = shift;
                }
                var keyBytes = new Span<byte>(keys + (long)j * keyRow, keyRow);
                Dequantize.Row(options.KeyType, keyBytes, rowScratch);
                Kernels.Rope(rowScratch, shiftCos, shiftSin, rotation.Mode);
                Quantize.Row(options.KeyType, rowScratch, keyBytes);
                if ((metadata & KvMetadata.SimHash) != 0)
                {
                    Dequantize.Row(options.KeyType, keyBytes, rowScratch); // the hash of the key as stored (rounded)
                    hashes[page * p + j] = SimHash(rowScratch);
                }
                rotated++;
            }
            if (!hot) cold!.Write(coldSlotOf[page], new ReadOnlySpan<byte>(staged, PageBytes)); // throws (naming the file) before any metadata changes
            else if (coldSlotOf[page] >= 0) { cold!.Free(coldSlotOf[page]); coldSlotOf[page] = -1; } // a clean cold copy is stale now
            for (int j = 0; j < n; j++) keyPositions[page * p + j] = target + j;
            RebuildDigest(page, keys);
        }
        return rotated;
    }

    /// <summary>
    /// Packs the rows of <paramref name="table"/> into as few pages as they need: within each run of neighbouring pages
    /// that are hot and held by this table alone, rows move forward into the free room of earlier pages (positions stay
    /// in order, with their key and value bytes, frame ids, hashes and scores; digests are rebuilt) and the pages left
    /// empty are freed. Policies that evict rows spread over many pages (H2O, SnapKV, the video reducers) would
    /// otherwise leave many nearly empty pages, each a whole slot, and the memory of a stream would not stay bounded.
    /// Runs only when the table was edited since the last pass and a run holds a page's worth of room; returns the
    /// pages freed.
    /// </summary>
    public int MergeUnderfull(PageTable table)
    {
        if (table.MergedAtEdits == table.Edits) return 0;
        int p = options.PageSize, freed = 0;
        bool moved = false;
        bool Eligible(int page) => IsHot(page) && holders[page] == 1;
        for (int i = 0; i < table.Count;)
        {
            if (!Eligible(table[i])) { i++; continue; }
            int j = i;
            long rows = 0;
            while (j < table.Count && Eligible(table[j])) rows += count[table[j++]];
            int need = (int)((rows + p - 1) / p);
            if (need >= j - i) { i = j; continue; }
            moved = true;
            int w = i;
            for (int r = i + 1; r < j; r++)
            {
                int source = table[r], n = count[source], taken = 0;
                while (taken < n && w < r)
                {
                    int target = table[w], room = p - count[target];
                    if (room == 0) { w++; continue; }
                    int move = Math.Min(room, n - taken);
                    MoveRows(source, taken, target, count[target], move);
                    count[target] += move;
                    taken += move;
                }
                if (taken > 0 && taken < n) MoveRows(source, taken, source, 0, n - taken); // it became the page being filled
                count[source] = n - taken;
            }
            for (int k = i; k < j; k++)
            {
                int page = table[k];
                if (coldSlotOf[page] >= 0) { cold!.Free(coldSlotOf[page]); coldSlotOf[page] = -1; } // a clean cold copy is stale now
                if (count[page] > 0) RebuildDigest(page);
            }
            for (int k = j - 1; k > i; k--)
                if (count[table[k]] == 0)
                {
                    RemovePage(table, k);
                    freed++;
                }
            i += need;
        }
        if (moved) table.Edited(); // rows changed pages: per-page copies kept by policies must look again
        table.MergedAtEdits = table.Edits;
        return freed;
    }

    /// <summary>Moves <paramref name="n"/> rows (bytes and per-row data) from row <paramref name="from"/> of one page to row <paramref name="to"/> of another, or down within one page.</summary>
    void MoveRows(int source, int from, int target, int to, int n)
    {
        int p = options.PageSize;
        byte* s = HotSlotPointer(HotSlot(source)), t = HotSlotPointer(HotSlot(target));
        for (int k = 0; k < n; k++)
        {
            Buffer.MemoryCopy(s + (long)(from + k) * keyRow, t + (long)(to + k) * keyRow, keyRow, keyRow);
            Buffer.MemoryCopy(s + (long)p * keyRow + (long)(from + k) * valueRow, t + (long)p * keyRow + (long)(to + k) * valueRow, valueRow, valueRow);
            positions[(long)target * p + to + k] = positions[(long)source * p + from + k];
            frameIds[target * p + to + k] = frameIds[source * p + from + k];
            keyPositions[target * p + to + k] = keyPositions[source * p + from + k];
            if ((metadata & KvMetadata.SimHash) != 0) hashes[target * p + to + k] = hashes[source * p + from + k];
            if ((metadata & KvMetadata.RowScores) != 0) rowScores[target * p + to + k] = rowScores[source * p + from + k];
        }
    }

    /// <summary>Removes page <paramref name="index"/> of <paramref name="table"/> with all its tokens, in either tier (freed if no other sequence holds it).</summary>
    public void RemovePage(PageTable table, int index)
    {
        int page = table[index];
        table.TokenCount -= count[page];
        table.RemoveAt(index);
        Release(page);
    }

    /// <summary>Drops every row of <paramref name="table"/> at or after position <paramref name="length"/>.</summary>
    internal void Truncate(PageTable table, int length)
    {
        while (table.Count > 0)
        {
            int index = table.Count - 1, page = table[index];
            if (FirstPosition(page) >= length) { RemovePage(table, index); continue; }
            if (LastPosition(page) < length) break;
            ulong mask = 0;
            var pos = Positions(page);
            for (int j = 0; j < pos.Length; j++) if (pos[j] >= length) mask |= 1UL << j;
            RemoveRows(table, index, mask);
            break;
        }
    }

    // ---- tiers ----

    /// <summary>
    /// Moves a page to the cold tier: its rows are written to the cold file (unless a clean copy is there) and its hot
    /// slot is freed; metadata stays in RAM. Throws <see cref="IOException"/> naming the file when the write fails;
    /// the page then stays hot and nothing is lost.
    /// </summary>
    public void MoveCold(int page)
    {
        if (cold == null) throw new InvalidOperationException("this store has no cold tier (set ColdPath)");
        int hot = HotSlot(page);
        // While the rows are in RAM: scoring a cold page then reads nothing.
        if ((metadata & KvMetadata.Digest) == KvMetadata.Digest && !digestValid[page]) ComputeDigest(page);
        if (coldSlotOf[page] < 0)
        {
            if (maxColdPages > 0)
                while (cold.SlotsInUse >= maxColdPages && DropOldestCold()) { }
            int slot = cold.Allocate();
            try { cold.Write(slot, new ReadOnlySpan<byte>(HotSlotPointer(hot), PageBytes)); }
            catch { cold.Free(slot); throw; }
            coldSlotOf[page] = slot;
            if (maxColdPages > 0)
            {
                coldSerial[page] = ++coldWrites;
                coldOrder.Enqueue((page, coldWrites));
                if (coldOrder.Count > 2 * maxColdPages + 64) DropStaleColdOrder();
            }
        }
        FreeHotSlot(hot);
        hotSlotOf[page] = -1;
        Interlocked.Increment(ref coldOnlyPages);
    }

    /// <summary>Pages dropped from the cold tier to keep it within <see cref="PagedKvOptions.MaxColdBytes"/> (rows gone for good).</summary>
    public long ColdDroppedPages { get; private set; }
    /// <summary>Rows those pages held, counted once per sequence that lost them.</summary>
    public long ColdDroppedRows { get; private set; }

    /// <summary>
    /// Frees the cold copy written longest ago: a recalled page only loses its copy (it is hot); a cold-only page
    /// leaves every open sequence's table that holds it. False when no cold copy is left to free.
    /// </summary>
    bool DropOldestCold()
    {
        while (coldOrder.TryDequeue(out var entry))
        {
            int page = entry.Page;
            if (coldSerial[page] != entry.Serial || coldSlotOf[page] < 0) continue; // rewritten or freed since
            CancelPrefetch(page);
            if (IsHot(page))
            {
                cold!.Free(coldSlotOf[page]);
                coldSlotOf[page] = -1;
                return true;
            }
            ColdDroppedPages++;
            int first = FirstPosition(page);
            for (int t = openTables.Count - 1; t >= 0 && holders[page] > 0; t--)
            {
                var table = openTables[t];
                int index = FrameRows.FirstPageFrom(this, table, first);
                if (index < table.Count && table[index] == page)
                {
                    ColdDroppedRows += count[page];
                    RemovePage(table, index);
                }
            }
            return true;
        }
        return false;
    }

    void DropStaleColdOrder()
    {
        int n = coldOrder.Count;
        for (int i = 0; i < n; i++)
        {
            var entry = coldOrder.Dequeue();
            if (coldSerial[entry.Page] == entry.Serial && coldSlotOf[entry.Page] >= 0) coldOrder.Enqueue(entry);
        }
    }

    /// <summary>A sequence's tables, so a cold page dropped under the cold limit can leave them.</summary>
    internal void TablesOpened(PageTable[] tables)
    {
        if (maxColdPages > 0) openTables.AddRange(tables);
    }

    internal void TablesClosed(PageTable[] tables)
    {
        if (maxColdPages > 0) openTables.RemoveAll(t => Array.IndexOf(tables, t) >= 0);
    }

    /// <summary>
    /// Brings a cold page back into a hot slot (keeping its clean cold copy); false when no slot is free. A page with
    /// a <see cref="Prefetch"/> in flight waits for that read instead of reading again. Distinct pages that are not
    /// being prefetched may be recalled from several threads at once (the heads of a layer do).
    /// </summary>
    public bool Recall(int page)
    {
        if (IsHot(page)) return true;
        if (pendingTicket[page] != 0)
        {
            long ticket = pendingTicket[page];
            int pending = pendingSlot[page];
            pendingTicket[page] = 0;
            try { cold!.Wait(ticket); }
            catch (IOException) { FreeHotSlot(pending); throw; }
            hotSlotOf[page] = pending;
            Interlocked.Decrement(ref coldOnlyPages);
            return true;
        }
        if (!TryAllocateHotSlot(out int slot)) return false;
        try { cold!.Read(coldSlotOf[page], new Span<byte>(HotSlotPointer(slot), PageBytes)); }
        catch { FreeHotSlot(slot); throw; }
        hotSlotOf[page] = slot;
        Interlocked.Decrement(ref coldOnlyPages);
        return true;
    }

    /// <summary>
    /// Starts reading a cold page back on the cold tier's background thread into a newly allocated slot (which counts
    /// as hot from now on); <see cref="Recall"/> later waits for it, or <see cref="CancelPrefetch"/> gives the slot
    /// back. False (and nothing started) when the page is hot, already on its way, read in place (mapped cold tier), or
    /// no slot is free.
    /// </summary>
    public bool Prefetch(int page)
    {
        if (cold == null || cold.IsMapped || IsHot(page) || pendingTicket[page] != 0 || !TryAllocateHotSlot(out int slot)) return false;
        pendingSlot[page] = slot;
        pendingTicket[page] = cold.ReadAsync(coldSlotOf[page], HotSlotPointer(slot));
        return true;
    }

    /// <summary>Whether a <see cref="Prefetch"/> of the page is in flight (not yet recalled or cancelled).</summary>
    public bool IsPrefetching(int page) => pendingTicket[page] != 0;

    /// <summary>Drops an unused prefetch: waits for its read to finish (the slot is being written) and frees the slot; the page stays cold.</summary>
    public void CancelPrefetch(int page)
    {
        if (pendingTicket[page] == 0) return;
        try { cold!.Wait(pendingTicket[page]); }
        catch (IOException) { } // the page is still cold and intact; nothing was lost
        pendingTicket[page] = 0;
        FreeHotSlot(pendingSlot[page]);
    }

    /// <summary>Set when a cold write failed (the message names the file and offset); pages then stay in RAM.</summary>
    public string? ColdError { get; set; }

    /// <summary>Length of the cold file (slots ever used; freed ones are reused first, so under a cold limit it stays within it).</summary>
    public long ColdFileBytes => cold?.FileBytes ?? 0;

    bool disposed;

    /// <summary>Frees the slots and closes the cold file; sequences of this store are unusable after.</summary>
    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees the native slots of a store nobody disposed.</summary>
    ~PagedKvStore() => Free();

    void Free()
    {
        if (disposed) return;
        disposed = true;
        cold?.Dispose(); // first: its reader thread may still be filling a slot
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

    /// <summary>Pages in the table.</summary>
    public int Count { get; private set; }
    /// <summary>Tokens over all its pages.</summary>
    public int TokenCount { get; internal set; }
    /// <summary>Page id at table index <paramref name="index"/> (0 holds the earliest positions).</summary>
    public int this[int index] => pages[index];
    /// <summary>Page id at <paramref name="index"/>, which may count from the end (<c>table[^1]</c> is the newest page).</summary>
    public int this[Index index] => pages[index.GetOffset(Count)];
    /// <summary>Page ids in position order ([Count]).</summary>
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

    /// <summary>The <see cref="Edits"/> count at the last <see cref="PagedKvStore.MergeUnderfull"/> (nothing to merge while it is unchanged).</summary>
    internal int MergedAtEdits { get; set; }

    internal void RemoveAt(int index)
    {
        Version++;
        Edits++;
        Array.Copy(pages, index + 1, pages, index, Count - index - 1);
        Count--;
    }

    /// <summary>Puts another page (a private copy) at <paramref name="index"/>: indices stay, per-page copies must look again.</summary>
    internal void Replace(int index, int page)
    {
        pages[index] = page;
        Edits++;
    }

    /// <summary>A table with the same pages (a fork; the caller counts the new holder of each page).</summary>
    internal PageTable Clone() => new() { pages = (int[])pages.Clone(), Count = Count, TokenCount = TokenCount };
}
