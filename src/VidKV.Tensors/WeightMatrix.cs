using System.Runtime.CompilerServices;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// A 2-D weight tensor kept in its stored dtype: <see cref="Rows"/> output features, each a contiguous row of
/// <see cref="Columns"/> input features (ggml's ne0 = columns, ne1 = rows). The memory belongs to the owner
/// (a memory-mapped model file or a native buffer) and must outlive this view.
/// </summary>
internal sealed unsafe partial class WeightMatrix : IDisposable
{
    /// <summary>Rows per unit of work: a tile stays in L1 while every token passes over it.</summary>
    const int RowTile = 16;

    readonly byte* data;

    public WeightMatrix(string name, GgmlType type, int rows, int columns, byte* data)
    {
        if (columns % GgmlTypes.BlockSize(type) != 0)
            throw new ArgumentException($"tensor {name}: row of {columns} is not a whole number of {GgmlTypes.Name(type)} blocks");
        Name = name;
        Type = type;
        Rows = rows;
        Columns = columns;
        RowBytes = (int)GgmlTypes.RowBytes(type, columns);
        this.data = data;
    }

    /// <summary>A copy of a Q4_0/Q8_0/Q4_K/Q6_K matrix with 16 rows interleaved (<see cref="Interleaved"/>), owned; null when not made.</summary>
    byte* interleaved;

    /// <summary>Whether <see cref="Interleave"/> made a repacked copy that the products read instead of the stored rows.</summary>
    public bool IsInterleaved => interleaved != null;

    /// <summary>
    /// Repacks a Q4_0, Q8_0, Q4_K or Q6_K matrix (of whole groups of 16 rows, on a machine with AVX-512BW) into the interleaved
    /// layout of <see cref="Interleaved"/>, which decode, prefill and <see cref="DequantizeRow"/> then read; the stored
    /// rows stay readable through <see cref="RowData"/>. With <paramref name="releaseStoredPages"/> — only for rows in
    /// a read-only file mapping, never managed or anonymous memory, which it would zero — the stored rows' pages are
    /// handed back to the kernel (madvise DONTNEED: they leave this process's resident set and fault back in from the
    /// file on a lookup), so the model is not resident twice. Returns whether it repacked; the copy is freed by
    /// <see cref="Dispose"/>.
    /// </summary>
    public bool Interleave(WorkerPool? pool = null, bool releaseStoredPages = false)
    {
        if (interleaved != null) return true;
        if (!Interleaved.Supports(Type) || Rows % Interleaved.Group != 0) return false;
        int blocks = Columns / Interleaved.BlockColumns(Type);
        long bytes = Interleaved.Bytes(Type, Rows, blocks);
        var copy = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        var job = new RepackJob { Type = Type, Source = data, RowBytes = RowBytes, Rows = Rows, Blocks = blocks, Destination = copy };
        (pool ?? WorkerPool.Shared).Run(&RepackGroups, &job);
        interleaved = copy;
        if (releaseStoredPages) ReleasePages(data, (long)Rows * RowBytes);
        return true;
    }

    struct RepackJob
    {
        public GgmlType Type;
        public byte* Source, Destination;
        public int RowBytes, Rows, Blocks;
    }

    static void RepackGroups(void* context, int thread, int threads)
    {
        ref RepackJob job = ref *(RepackJob*)context;
        var (first, end) = WorkerPool.Split(job.Rows / Interleaved.Group, thread, threads);
        Interleaved.Repack(job.Type, job.Source, job.RowBytes, job.Blocks, job.Destination, first, end);
    }

    /// <summary>
    /// The prefill tiles of <see cref="IntegerTiles"/> made once at load (<see cref="PackTiles"/>), owned; null when not
    /// made: per tile of 32 rows its packed planes, then every tile's block scales ([tile][block][32]) and, for Q4_K,
    /// mins.
    /// </summary>
    byte* tiles;
    float* tileScales, tileMins;
    /// <summary>Whether <see cref="tiles"/> hold <see cref="Bf16Tiles"/>' layout (a BF16 matrix, or an F16 one rounded at load).</summary>
    bool bf16Tiles;

    /// <summary>
    /// Packs the whole matrix into the prefill tiles of <see cref="IntegerTiles"/> once, for a matrix that only ever
    /// multiplies many tokens at a time (a vision tower: 729–1024 rows an entry): products then skip the per-call
    /// repacking of each tile (2–3 % of a SigLIP-B/16 pass) and decode-sized products read the stored rows. Q4_0, Q8_0,
    /// Q4_K (and Q6_K where the VNNI kernel runs) on AVX-512BW, and not beside an interleaved copy; returns whether it
    /// packed. <paramref name="releaseStoredPages"/> as for <see cref="Interleave"/>. Freed by <see cref="Dispose"/>.
    /// BF16 (and, with <paramref name="roundF16ToBf16"/>, F16 rounded to bf16: the products then round weights and
    /// activations to bf16's 8 significant bits where f16 keeps 11) go into <see cref="Bf16Tiles"/>' layout where that
    /// kernel runs, and their products claim tiles token block by token block as the integer tiles' do.
    /// </summary>
    public bool PackTiles(WorkerPool? pool = null, bool releaseStoredPages = false, bool roundF16ToBf16 = false)
    {
        if (tiles != null) return true;
        if (interleaved != null) return false;
        if ((Type == GgmlType.BF16 || (Type == GgmlType.F16 && roundF16ToBf16)) && UsesFloatTiles(Bf16Tiles.Tokens) && Bf16Tiles.Handles(Columns))
        {
            int tileCount = (Rows + Bf16Tiles.Rows - 1) / Bf16Tiles.Rows;
            tiles = (byte*)NativeMemory.AlignedAlloc((nuint)((long)tileCount * Bf16Tiles.Rows * Columns * 2), 64);
            bf16Tiles = true;
            var bf16Job = new TileJob { Type = Type, Source = data, RowBytes = RowBytes, Rows = Rows, Count = tileCount, Columns = Columns, Tiles = tiles };
            (pool ?? WorkerPool.Shared).Run(&PackBf16TileShare, &bf16Job);
            if (releaseStoredPages) ReleasePages(data, (long)Rows * RowBytes);
            return true;
        }
        if (!IntegerTiles.Supports(Type)) return false;
        int blocks = Columns / IntegerTiles.BlockColumns(Type), count = (Rows + IntegerTiles.Rows - 1) / IntegerTiles.Rows;
        long tileBytes = IntegerTiles.PackedBytes(Type, blocks), scaleCount = (long)count * IntegerTiles.Rows * blocks;
        tiles = (byte*)NativeMemory.AlignedAlloc((nuint)(count * tileBytes), 64);
        tileScales = (float*)NativeMemory.AlignedAlloc((nuint)(scaleCount * sizeof(float)), 64);
        if (Type == GgmlType.Q4_K) tileMins = (float*)NativeMemory.AlignedAlloc((nuint)(scaleCount * sizeof(float)), 64);
        var job = new TileJob
        {
            Type = Type, Source = data, RowBytes = RowBytes, Rows = Rows, Count = count, Blocks = blocks, Tiles = tiles, Scales = tileScales, Mins = tileMins,
        };
        (pool ?? WorkerPool.Shared).Run(&PackTileShare, &job);
        if (releaseStoredPages) ReleasePages(data, (long)Rows * RowBytes);
        return true;
    }

    struct TileJob
    {
        public GgmlType Type;
        public byte* Source, Tiles;
        public float* Scales, Mins;
        public int RowBytes, Rows, Count, Blocks, Columns;
    }

    static void PackBf16TileShare(void* context, int thread, int threads)
    {
        ref TileJob job = ref *(TileJob*)context;
        var (first, end) = WorkerPool.Split(job.Count, thread, threads);
        float* scratch = job.Type == GgmlType.F16 ? (float*)NativeMemory.AlignedAlloc((nuint)(job.Columns * 6 + 64), 64) : null;
        try
        {
            for (int t = first; t < end; t++) PackBf16(job.Type, job.Source, job.RowBytes, t * Bf16Tiles.Rows, Math.Min(Bf16Tiles.Rows, job.Rows - t * Bf16Tiles.Rows),
                job.Columns, (uint*)job.Tiles + (long)t * Bf16Tiles.Rows * job.Columns / 2, scratch);
        }
        finally
        {
            if (scratch != null) NativeMemory.AlignedFree(scratch);
        }
    }

    /// <summary>Rows [first, first + rows) of a BF16 matrix, or of an F16 one rounded to bf16, packed into one <see cref="Bf16Tiles"/> tile.</summary>
    static void PackBf16(GgmlType type, byte* weights, int rowBytes, int first, int rows, int columns, uint* packed, float* scratch)
    {
        if (type == GgmlType.F16) Bf16Tiles.PackF16(weights + (long)first * rowBytes, rowBytes, rows, columns, packed, scratch);
        else Bf16Tiles.Pack(weights + (long)first * rowBytes, rowBytes, rows, columns, packed);
    }

    static void PackTileShare(void* context, int thread, int threads)
    {
        ref TileJob job = ref *(TileJob*)context;
        long tileBytes = IntegerTiles.PackedBytes(job.Type, job.Blocks), tileScales = (long)IntegerTiles.Rows * job.Blocks;
        var (first, end) = WorkerPool.Split(job.Count, thread, threads);
        for (int t = first; t < end; t++)
        {
            int row = t * IntegerTiles.Rows;
            IntegerTiles.Pack(job.Type, job.Source + (long)row * job.RowBytes, job.RowBytes, Math.Min(IntegerTiles.Rows, job.Rows - row), job.Blocks,
                job.Tiles + t * tileBytes, job.Scales + t * tileScales, job.Mins == null ? null : job.Mins + t * tileScales);
        }
    }

    /// <summary>madvise(MADV_DONTNEED) over the whole pages inside [start, start + length) (Linux; a no-op elsewhere).</summary>
    static void ReleasePages(byte* start, long length)
    {
        if (!OperatingSystem.IsLinux()) return;
        long page = Environment.SystemPageSize;
        long from = ((long)start + page - 1) / page * page, to = ((long)start + length) / page * page;
        if (to > from) _ = Madvise((void*)from, (nuint)(to - from), 4 /* MADV_DONTNEED */);
    }

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(void* address, nuint length, int advice);

    /// <summary>Frees the interleaved copy and the prefill tiles, if any (the stored rows belong to the model file).</summary>
    public void Dispose()
    {
        var copy = interleaved;
        interleaved = null;
        if (copy != null) NativeMemory.AlignedFree(copy);
        byte* packed = tiles;
        float* scales = tileScales, mins = tileMins;
        tiles = null;
        tileScales = tileMins = null;
        bf16Tiles = false;
        if (packed != null) NativeMemory.AlignedFree(packed);
        if (scales != null) NativeMemory.AlignedFree(scales);
        if (mins != null) NativeMemory.AlignedFree(mins);
    }

    public string Name { get; }
    public GgmlType Type { get; }
    public int Rows { get; }
    public int Columns { get; }
    public int RowBytes { get; }

    /// <summary>The stored bytes of row <paramref name="row"/>.</summary>
    public ReadOnlySpan<byte> RowData(int row) => new(data + (long)row * RowBytes, RowBytes);

    /// <summary>
    /// Row <paramref name="row"/> as f32 (an embedding lookup). A repacked matrix reads its copy, so lookups do not fault
    /// the file's pages back in (a tied embedding would otherwise be resident twice after a long random prompt).
    /// </summary>
    public void DequantizeRow(int row, Span<float> destination)
    {
        if ((uint)row >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(row), $"{Name}: row {row} of {Rows}");
        if (interleaved == null)
        {
            Dequantize.Row(Type, RowData(row), destination[..Columns]);
            return;
        }
        Span<byte> stored = RowBytes <= 16384 ? stackalloc byte[RowBytes] : new byte[RowBytes]; // 16 KiB: Q8_0 rows of 15 000 columns
        fixed (byte* p = stored) Interleaved.ReadRow(Type, interleaved, Columns / Interleaved.BlockColumns(Type), row, p);
        Dequantize.Row(Type, stored, destination[..Columns]);
    }

    /// <summary>True for the types whose decode multiplies 8-bit quantised activations with integer dot products.</summary>
    public bool UsesQuantizedActivations => Type is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K;

    /// <summary>
    /// Prefill (4+ tokens) with AVX-512 widens each tile of 32 rows to f32 once and runs the f32 panel kernel, for
    /// every type: on this Zen 4 machine f32 FMAs beat the int8 2×4 kernels (maddubs+madd: .NET exposes no VNNI here,
    /// and <see cref="VnniTiles"/>' emitted vpdpbusd came later) even with the first f32 kernel (Q8_0 pp512 180 vs 133
    /// t/s, Q4_0 167 vs 160); the panel kernel then took Q8_0/F16/Q4_0 pp512 from 179/162/137 and 144/134/148 to
    /// 221/214/208 and 226/216/205 t/s (`vidkv bench -m … -p 512 -n 0 -t 2 -r 3`, medians, old and new builds
    /// alternated twice). Activations stay f32 (exact); decode keeps the int8 path, and machines without AVX-512 keep
    /// the int8 tiles. Q4_0/Q8_0/Q4_K (and Q6_K where the VNNI kernel runs) later moved to <see cref="IntegerTiles"/>
    /// (nibble planes make vpmaddubsw do 64 MACs per instruction where an FMA does 16), and BF16 with AVX512_BF16 to
    /// <see cref="Bf16Tiles"/>.
    /// </summary>
    static bool UsesFloatTiles(int tokens) => tokens >= 4 && Vector512.IsHardwareAccelerated;

    /// <summary>
    /// Prefill (4+ tokens) of Q4_0/Q8_0/Q4_K with AVX-512BW, and of Q6_K where the VNNI kernel runs, uses
    /// <see cref="IntegerTiles"/> instead (<see cref="IntegerTiles.Supports"/>; on <see cref="VnniTiles"/>' emitted kernel
    /// where the CPU has AVX512_VNNI): 8-bit activations as in decode (and as ggml does for these types), at about twice
    /// the f32 tiles' speed.
    /// </summary>
    static bool UsesIntegerTiles(GgmlType type, int tokens) => tokens >= 4 && IntegerTiles.Supports(type);

    /// <summary>
    /// Prefill (4+ tokens) of BF16 weights, and of F16 weights packed into bf16 tiles (<see cref="PackTiles"/>), runs
    /// <see cref="Bf16Tiles"/> (vdpbf16ps) where the CPU has AVX512_BF16.
    /// </summary>
    static bool UsesBf16Tiles(WeightMatrix w, int tokens) => (w.Type == GgmlType.BF16 || w.bf16Tiles) && UsesFloatTiles(tokens) && Bf16Tiles.Handles(w.Columns);

    /// <summary>Whether a product over <paramref name="tokens"/> tokens rounds the activations to bf16 (<see cref="Bf16Tiles"/>).</summary>
    public bool RoundsActivationsToBF16(int tokens) => UsesBf16Tiles(this, tokens);

    /// <summary>Whether a product over <paramref name="tokens"/> tokens quantises the activations to 8 bits.</summary>
    public bool QuantizesActivations(int tokens) => UsesQuantizedActivations && (!UsesFloatTiles(tokens) || UsesIntegerTiles(Type, tokens));

    /// <summary>
    /// y[t, r] = Σ_c W[r, c] · x[t, c] for <paramref name="tokens"/> rows of activations, split over the worker pool.
    /// Q8_0/Q4_0/Q4_K/Q6_K weights multiply 8-bit quantised activations (see <see cref="QuantizedDot"/>); F16/BF16 convert in
    /// registers (<see cref="HalfDot"/>, or the emitted kernels: <see cref="F16Rows"/> for f16 decode, <see cref="Bf16Tiles"/>
    /// for bf16 prefill, which rounds the activations to bf16); F32 is a plain dot product; other types dequantise a row
    /// at a time.
    /// <paramref name="x"/>: [tokens, Columns]; <paramref name="y"/>: [tokens, Rows].
    /// </summary>
    public void MatMul(ReadOnlySpan<float> x, int tokens, Span<float> y, WorkerPool? pool = null) =>
        MatMul(x, tokens, this, y, null, default, null, default, pool);

    /// <summary>
    /// Up to three products that share their input (Q/K/V, gate/up) in one pass: the activations are prepared once and
    /// all rows go to the pool as one job. Matrices of different types or widths fall back to separate passes.
    /// </summary>
    public static void MatMul(ReadOnlySpan<float> x, int tokens, WeightMatrix a, Span<float> ya,
        WeightMatrix? b, Span<float> yb, WeightMatrix? c, Span<float> yc, WorkerPool? pool = null)
    {
        if ((b != null && (b.Type != a.Type || b.Columns != a.Columns || b.bf16Tiles != a.bf16Tiles)) || (c != null && (c.Type != a.Type || c.Columns != a.Columns || c.bf16Tiles != a.bf16Tiles)))
        {
            a.MatMul(x, tokens, ya, pool);
            b?.MatMul(x, tokens, yb, pool);
            c?.MatMul(x, tokens, yc, pool);
            return;
        }
        a.Check(x, tokens, ya);
        b?.Check(x, tokens, yb);
        c?.Check(x, tokens, yc);
        if (tokens == 0) return;
        pool ??= WorkerPool.Shared;
        int columns = a.Columns, blocks = columns / QuantizedDot.BlockSize;
        var scratch = Scratch.ForCurrentThread;
        fixed (float* px = x, pa = ya, pb = yb, pc = yc)
        {
            var job = new Job { Columns = columns, Tokens = tokens, Type = a.Type, X = px, Plain = px, InterleavedDecode = UsesInterleavedDecode(a, b, c, tokens) };
            job.Add(a, pa);
            if (b != null) job.Add(b, pb);
            if (c != null) job.Add(c, pc);
            bool bf16 = UsesBf16Tiles(a, tokens);
            switch (a.Type)
            {
                case GgmlType.BF16 or GgmlType.F16 when bf16:
                {
                    // bf16 activations for whole groups of Bf16Tiles.Tokens (zeros after the last token), kept in Floats.
                    int padded = (tokens + Bf16Tiles.Tokens - 1) / Bf16Tiles.Tokens * Bf16Tiles.Tokens;
                    scratch.Ensure((padded * columns + 1) / 2, 0);
                    RoundRows(px, (ushort*)scratch.Floats, tokens, columns, pool);
                    new Span<ushort>((ushort*)scratch.Floats + (long)tokens * columns, (padded - tokens) * columns).Clear();
                    job.Bf16 = (ushort*)scratch.Floats;
                    break;
                }
                case GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K when UsesIntegerTiles(a.Type, tokens):
                {
                    // Whole groups of IntegerTiles.Tokens: the padding tokens are zero quants with scale 0.
                    int padded = (tokens + IntegerTiles.Tokens - 1) / IntegerTiles.Tokens * IntegerTiles.Tokens;
                    scratch.Ensure(padded * columns, 2 * padded * blocks);
                    bool q4k = a.Type == GgmlType.Q4_K; // its mins need d_x·Σq as well
                    // The integer offsets of Q4_0 (8) and Q8_0 (128) need Σq per block; Q4_K's mins use the float sums.
                    bool offsetSums = !q4k && a.Type != GgmlType.Q6_K;
                    QuantizeRows(px, scratch, tokens, columns, q4k, offsetSums, pool);
                    new Span<sbyte>(scratch.Quants + (long)tokens * columns, (padded - tokens) * columns).Clear();
                    new Span<float>(scratch.Scales + (long)tokens * blocks, (padded - tokens) * blocks).Clear();
                    new Span<float>(scratch.Sums + (long)tokens * blocks, (padded - tokens) * blocks).Clear();
                    if (offsetSums) new Span<int>(scratch.BlockSums + (long)tokens * blocks, (padded - tokens) * blocks).Clear();
                    if (a.Type == GgmlType.Q6_K)
                    {
                        // Q6_K's tile blocks are 16 columns: Σq per 16 for its −32, and each d_x twice (in Sums).
                        IntegerTiles.BlockSums16(scratch.Quants, 2 * padded * blocks, scratch.BlockSums);
                        for (int i = 0; i < padded * blocks; i++) scratch.Sums[2 * i] = scratch.Sums[2 * i + 1] = scratch.Scales[i];
                    }
                    break;
                }
                case GgmlType.Q4_0 or GgmlType.Q8_0 or GgmlType.Q4_K or GgmlType.Q6_K when UsesInterleavedDecode(a, b, c, tokens):
                {
                    scratch.Ensure(tokens * columns, 2 * tokens * blocks);
                    bool q4k = a.Type == GgmlType.Q4_K;
                    // Q4_K takes its mins off with the float sums; Q6_K's −32 needs sums of 16 (a scale covers 16).
                    QuantizeRows(px, scratch, tokens, columns, q4k, offsetSums: !q4k && a.Type != GgmlType.Q6_K, pool);
                    if (a.Type == GgmlType.Q6_K)
                        IntegerTiles.BlockSums16(scratch.Quants, 2 * tokens * blocks, scratch.BlockSums);
                    // The interleaved kernels widen f16 scales as d·2^−112 (HalfDot's trick); 2^112 goes on the activations.
                    var scales = new Span<float>(scratch.Scales, tokens * blocks);
                    TensorPrimitives.Multiply(scales, 5.192296858534828e+33f, scales);
                    if (q4k) TensorPrimitives.Multiply(new Span<float>(scratch.Sums, tokens * blocks), 5.192296858534828e+33f, new Span<float>(scratch.Sums, tokens * blocks));
                    break;
                }
                case GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K when !UsesFloatTiles(tokens):
                    scratch.Ensure(tokens * columns, tokens * blocks);
                    QuantizeRows(px, scratch, tokens, columns, floatSums: a.Type is GgmlType.Q4_0 or GgmlType.Q4_K, offsetSums: false, pool);
                    break;
                case GgmlType.F16 when !UsesFloatTiles(tokens) && !F16Rows.Handles(columns):
                    scratch.Ensure(tokens * columns, 0);
                    System.Numerics.Tensors.TensorPrimitives.Multiply(x[..(tokens * columns)], HalfDot.InputScale, new Span<float>(scratch.Floats, tokens * columns));
                    break;
            }
            job.TokenBlock = TokenBlockFor(ref job);
            job.Quants = scratch.Quants;
            job.Scales = scratch.Scales;
            job.Sums = scratch.Sums;
            job.BlockSums = scratch.BlockSums;
            if (a.Type == GgmlType.F16 && !UsesFloatTiles(tokens) && !F16Rows.Handles(columns)) job.X = scratch.Floats; // HalfDot's 2^64-scaled copy
            pool.Run(&Execute, &job);
        }
    }

    /// <summary>
    /// Quantises the activations to 8 bits (<see cref="QuantizedDot.QuantizeRow"/>: quants, d_x per block, with
    /// <paramref name="floatSums"/> d_x·Σq too) and with <paramref name="offsetSums"/> the integer Σq per block. A prefill's
    /// tokens are split over the pool (a ViT layer quantises 1024 × 3072 values for its down projection, a serial pause
    /// of about a millisecond while the other cores waited); fewer than <see cref="ParallelQuantizeTokens"/> tokens
    /// (decode) stay on the caller, where a pool round trip would cost more than the work.
    /// </summary>
    static void QuantizeRows(float* x, Scratch scratch, int tokens, int columns, bool floatSums, bool offsetSums, WorkerPool pool)
    {
        var job = new QuantizeJob
        {
            X = x, Quants = scratch.Quants, Scales = scratch.Scales, Sums = floatSums ? scratch.Sums : null, BlockSums = offsetSums ? scratch.BlockSums : null,
            Tokens = tokens, Columns = columns,
        };
        if (tokens < ParallelQuantizeTokens) QuantizeShare(&job, 0, 1);
        else pool.Run(&QuantizeShare, &job);
    }

    /// <summary>
    /// The activations rounded to bf16 (<see cref="Bf16Tiles.Round"/>), tokens shared out as <see cref="QuantizeRows"/>
    /// does (on the caller alone, a ViT layer's 1024 × 3072 down-projection inputs kept the other core waiting).
    /// </summary>
    static void RoundRows(float* x, ushort* destination, int tokens, int columns, WorkerPool pool)
    {
        var job = new RoundJob { X = x, Destination = destination, Tokens = tokens, Columns = columns };
        if (tokens < ParallelQuantizeTokens) RoundShare(&job, 0, 1);
        else pool.Run(&RoundShare, &job);
    }

    struct RoundJob
    {
        public float* X;
        public ushort* Destination;
        public int Tokens, Columns;
    }

    static void RoundShare(void* context, int thread, int threads)
    {
        ref RoundJob job = ref *(RoundJob*)context;
        var (start, end) = WorkerPool.Split(job.Tokens, thread, threads);
        Bf16Tiles.Round(job.X + (long)start * job.Columns, job.Destination + (long)start * job.Columns, (long)(end - start) * job.Columns);
    }

    /// <summary>Tokens from which <see cref="QuantizeRows"/> and <see cref="RoundRows"/> share the rows out.</summary>
    const int ParallelQuantizeTokens = 16;

    struct QuantizeJob
    {
        public float* X, Scales, Sums;
        public sbyte* Quants;
        public int* BlockSums;
        public int Tokens, Columns;
    }

    static void QuantizeShare(void* context, int thread, int threads)
    {
        ref QuantizeJob job = ref *(QuantizeJob*)context;
        var (start, end) = WorkerPool.Split(job.Tokens, thread, threads);
        int columns = job.Columns, blocks = columns / QuantizedDot.BlockSize;
        for (int t = start; t < end; t++)
            QuantizedDot.QuantizeRow(new ReadOnlySpan<float>(job.X + (long)t * columns, columns), new Span<sbyte>(job.Quants + (long)t * columns, columns),
                new Span<float>(job.Scales + (long)t * blocks, blocks), job.Sums == null ? default : new Span<float>(job.Sums + (long)t * blocks, blocks));
        if (job.BlockSums != null && end > start)
            IntegerTiles.BlockSums(job.Quants + (long)start * columns, (end - start) * blocks, job.BlockSums + (long)start * blocks);
    }

    /// <summary>
    /// y[t, r] = Σ_c w[r, c] · x[t, c] for f32 <paramref name="w"/> [rows, columns] on the calling thread alone (no pool,
    /// nothing allocated once its thread's buffers have grown): the same tiles, so the same sums, as <see cref="MatMul(ReadOnlySpan{float}, int, Span{float}, WorkerPool?)"/>
    /// of an F32 matrix. For kernels that share their work out themselves (<see cref="Attention.Bidirectional"/>).
    /// </summary>
    internal static void MultiplyF32(float* w, int rows, int columns, float* x, int tokens, float* y)
    {
        if (rows <= 0 || tokens <= 0) return;
        var job = new Job { Columns = columns, Tokens = tokens, Type = GgmlType.F32, X = x, Plain = x };
        job.Add(w, rows, columns * sizeof(float), y);
        RunRows(ref job, ref job.P0, 0, rows);
    }

    /// <summary>
    /// Packs f32 <paramref name="w"/> [rows, columns], row r at w + r·<paramref name="stride"/>, once into the tiles
    /// <see cref="MultiplyPacked"/> runs on (32-row tiles of two panels [column][16], as the prefill kernel packs each
    /// tile of a weight matrix as it goes), for a product repeated over many groups of tokens. Reads only the given
    /// rows, in place (one head's keys inside [tokens, heads × headDim]); the tile's rows past <paramref name="rows"/> are
    /// packed as zeros. <paramref name="packed"/> takes rows rounded up to 32 × columns.
    /// </summary>
    internal static void PackF32(float* w, long stride, int rows, int columns, float* packed)
    {
        for (int tile = 0; tile < rows; tile += PanelRows)
        {
            int n = Math.Min(PanelRows, rows - tile);
            float* source = w + tile * stride, target = packed + (long)tile * columns;
            SmallMatrix.TransposeStrided(source, stride, Math.Min(n, 16), columns, target, 16);
            if (n > 16) SmallMatrix.TransposeStrided(source + 16 * stride, stride, n - 16, columns, target + 16 * columns, 16);
            else new Span<float>(target + 16 * columns, 16 * columns).Clear();
        }
    }

    /// <summary>
    /// <see cref="PackF32"/> of the transpose of <paramref name="w"/>: packs the matrix whose row r, column c is
    /// w[c·<paramref name="stride"/> + r] (r &lt; <paramref name="rows"/>, c &lt; <paramref name="columns"/>) — e.g. one
    /// head's values inside [tokens, heads × headDim] as the [headDim, tokens] matrix of an attention's second product.
    /// A panel [column][16] of that matrix is 16 consecutive floats of each w row, so this copies and never transposes.
    /// </summary>
    internal static void PackF32Transposed(float* w, long stride, int rows, int columns, float* packed)
    {
        int padded = (rows + PanelRows - 1) / PanelRows * PanelRows;
        for (int panel = 0; panel < padded; panel += 16)
        {
            int n = Math.Clamp(rows - panel, 0, 16);
            float* target = packed + (long)panel * columns;
            if (n == 16)
                for (int c = 0; c < columns; c++) Buffer.MemoryCopy(w + c * stride + panel, target + 16 * c, 64, 64);
            else
                for (int c = 0; c < columns; c++)
                {
                    for (int j = 0; j < n; j++) target[16 * c + j] = w[c * stride + panel + j];
                    for (int j = n; j < 16; j++) target[16 * c + j] = 0;
                }
        }
    }

    /// <summary>
    /// y[t, r] = Σ_c w[r, c] · x[t, c] for <paramref name="packed"/> = <see cref="PackF32"/>(w) on the calling thread:
    /// the prefill kernel's tiles and sums (so the same bits as an F32 <see cref="MatMul(ReadOnlySpan{float}, int, Span{float}, WorkerPool?)"/>
    /// of 4+ tokens) without packing again. Needs AVX-512 (<see cref="Vector512.IsHardwareAccelerated"/>).
    /// </summary>
    internal static void MultiplyPacked(float* packed, int rows, int columns, float* x, int tokens, float* y)
    {
        if (rows <= 0 || tokens <= 0) return;
        int whole = tokens / PanelTokens * PanelTokens;
        float* tail = Scratch.ForCurrentThread.Tail(tokens > whole ? PanelTokens * columns : 0);
        float* output = stackalloc float[PanelTokens * PanelRows];
        if (tokens > whole)
        {
            new Span<float>(x + (long)whole * columns, (tokens - whole) * columns).CopyTo(new Span<float>(tail, PanelTokens * columns));
            new Span<float>(tail + (tokens - whole) * columns, (PanelTokens - tokens + whole) * columns).Clear();
        }
        for (int tile = 0; tile < rows; tile += PanelRows)
        {
            int n = Math.Min(PanelRows, rows - tile);
            float* panel = packed + (long)tile * columns, yt = y + tile;
            for (int t = 0; t < whole; t += PanelTokens)
            {
                if (n == PanelRows) Panel32x8(panel, x + (long)t * columns, columns, yt + (long)t * rows, rows);
                else
                {
                    Panel32x8(panel, x + (long)t * columns, columns, output, PanelRows);
                    CopyOut(output, PanelTokens, n, yt + (long)t * rows, rows);
                }
            }
            if (tokens > whole)
            {
                Panel32x8(panel, tail, columns, output, PanelRows);
                CopyOut(output, tokens - whole, n, yt + (long)whole * rows, rows);
            }
        }
    }

    /// <summary>Decode (fewer than 4 tokens) of interleaved Q4_0/Q8_0/Q4_K/Q6_K matrices: every matrix of the job must have the copy.</summary>
    static bool UsesInterleavedDecode(WeightMatrix a, WeightMatrix? b, WeightMatrix? c, int tokens) =>
        !UsesFloatTiles(tokens) && a.IsInterleaved && (b == null || b.IsInterleaved) && (c == null || c.IsInterleaved);

    void Check(ReadOnlySpan<float> x, int tokens, Span<float> y)
    {
        if (x.Length < tokens * Columns || y.Length < tokens * Rows)
            throw new ArgumentException($"{Name}: activations [{x.Length}] → [{y.Length}] do not match {tokens} × [{Rows}, {Columns}]");
    }

    struct Part
    {
        public byte* Weights, Interleaved, Tiles; // Tiles: the matrix's prefill tiles (PackTiles), with TileScales and TileMins
        public float* TileScales, TileMins;
        public int RowBytes, Rows, FirstRow;
        public float* Y;
    }

    struct Job
    {
        public Part P0, P1, P2;
        public int PartCount, TotalRows, Columns, Tokens;
        public int NextItem; // the first (token block, tile) no thread has claimed yet (ClaimsTiles)
        public int TokenBlock; // tokens per claimed item: all of them, or fewer over prefill tiles packed at load (TokenBlockFor)
        public GgmlType Type;
        public bool InterleavedDecode;
        public float* X, Plain, Scales, Sums;
        public sbyte* Quants;
        public int* BlockSums;
        public ushort* Bf16; // the activations rounded to bf16, padded to whole groups (Bf16Tiles)

        public void Add(WeightMatrix w, float* y)
        {
            Add(w.data, w.Rows, w.RowBytes, y, w.interleaved);
            ref Part part = ref PartCount == 1 ? ref P0 : ref PartCount == 2 ? ref P1 : ref P2;
            part.Tiles = w.tiles;
            part.TileScales = w.tileScales;
            part.TileMins = w.tileMins;
        }

        public void Add(void* weights, int rows, int rowBytes, float* y, byte* interleaved = null)
        {
            var part = new Part { Weights = (byte*)weights, Interleaved = interleaved, RowBytes = rowBytes, Rows = rows, FirstRow = TotalRows, Y = y };
            if (PartCount == 0) P0 = part; else if (PartCount == 1) P1 = part; else P2 = part;
            PartCount++;
            TotalRows += rows;
        }
    }

    /// <summary>
    /// Bytes of 8-bit activations one token block of the integer tiles holds (<see cref="TokenBlockFor"/>): a quarter of
    /// a Zen 4/5 core's L2 (128 KiB to 512 KiB measured within noise of each other on a SigLIP-B/16 pass, unblocked 5 % slower).
    /// </summary>
    internal const int TokenBlockBytes = 256 * 1024;

    /// <summary>
    /// Tokens per claimed item: all of them, except on integer tiles whose every part was packed at load
    /// (<see cref="PackTiles"/>), where a block's activations of at most <see cref="TokenBlockBytes"/> (and at least 64
    /// tokens) stay in L2 while every tile of the matrix passes over them. Tile by tile over all 1024 patches of a ViT
    /// pass, the activations of a 3072-wide down projection (3 MiB) came back from L3 for every tile (its product 74–79
    /// → 71–72 ms a frame blocked, Zen 5); packing at load makes re-reading the tiles per block free of repacking.
    /// </summary>
    static int TokenBlockFor(ref Job job)
    {
        bool bf16 = job.Bf16 != null;
        if (!(bf16 || UsesIntegerTiles(job.Type, job.Tokens)) || job.Tokens < ClaimTokens) return job.Tokens;
        for (int i = 0; i < job.PartCount; i++)
            if ((i == 0 ? job.P0 : i == 1 ? job.P1 : job.P2).Tiles == null) return job.Tokens;
        // Whole groups of either kernel (8 tokens for bf16, 4 for the integer tiles), 2 bytes an activation for bf16.
        int group = bf16 ? Bf16Tiles.Tokens : IntegerTiles.Tokens;
        int block = Math.Max(ClaimTokens, TokenBlockBytes / (job.Columns * (bf16 ? 2 : 1)) / group * group);
        return block >= job.Tokens ? job.Tokens : block;
    }

    /// <summary>
    /// Tokens from which the threads claim tiles of rows one at a time (an atomic counter, as llama.cpp's chunks) instead
    /// of taking equal shares: a prefill tile is long enough (32 rows × ≥ 64 tokens) that the claim costs nothing, and
    /// when another process takes a core for a while — ffmpeg decoding the next frame beside a ViT pass — the other
    /// thread does more of the rows instead of waiting for its share at the end.
    /// </summary>
    const int ClaimTokens = 64;

    static bool ClaimsTiles(ref Job job) => job.Tokens >= ClaimTokens && !job.InterleavedDecode && UsesFloatTiles(job.Tokens);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Execute(void* context, int thread, int threads)
    {
        ref Job job = ref *(Job*)context;
        if (ClaimsTiles(ref job))
        {
            // Items token block by token block, tile by tile within one: both threads work on the same block, whose
            // activations stay in their caches while every tile passes over them.
            int tiles = (job.TotalRows + PanelRows - 1) / PanelRows, items = tiles * ((job.Tokens + job.TokenBlock - 1) / job.TokenBlock);
            while (true)
            {
                int item = Interlocked.Increment(ref job.NextItem) - 1;
                if (item >= items) return;
                int first = item % tiles * PanelRows, t0 = item / tiles * job.TokenBlock;
                RunParts(ref job, first, Math.Min(job.TotalRows, first + PanelRows), t0, Math.Min(job.Tokens, t0 + job.TokenBlock));
            }
        }
        var (start, end) = WorkerPool.Split(job.TotalRows, thread, threads, UsesFloatTiles(job.Tokens) ? PanelRows : RowTile);
        if (job.InterleavedDecode)
        {
            // Whole groups of 16 per thread (every part has whole groups, so every part starts at a multiple of 16).
            (start, end) = WorkerPool.Split(job.TotalRows, thread, threads, Interleaved.Group);
        }
        RunParts(ref job, start, end, 0, job.Tokens);
    }

    /// <summary>
    /// Rows [start, end) of the job's matrices, taken together (Q, K and V as one range), for tokens [t0, t1): all of
    /// them but on the integer tiles (<see cref="TokenBlockFor"/>).
    /// </summary>
    static void RunParts(ref Job job, int start, int end, int t0, int t1)
    {
        bool integer = UsesIntegerTiles(job.Type, job.Tokens);
        for (int i = 0; i < job.PartCount; i++)
        {
            ref Part part = ref i == 0 ? ref job.P0 : ref i == 1 ? ref job.P1 : ref job.P2;
            int from = Math.Max(start, part.FirstRow) - part.FirstRow, to = Math.Min(end, part.FirstRow + part.Rows) - part.FirstRow;
            if (from >= to) continue;
            if (job.InterleavedDecode)
            {
                int blocks = job.Columns / 32, interleavedBlocks = job.Columns / Interleaved.BlockColumns(job.Type);
                int sumStride = job.Type == GgmlType.Q6_K ? 2 * blocks : blocks;
                for (int t = 0; t < job.Tokens; t++)
                    Interleaved.Dot(job.Type, part.Interleaved, interleavedBlocks, from / Interleaved.Group, to / Interleaved.Group,
                        job.Quants + (long)t * job.Columns, job.Scales + (long)t * blocks, job.BlockSums + (long)t * sumStride, job.Sums + (long)t * blocks,
                        part.Y + (long)t * part.Rows);
            }
            else if (integer) RunIntegerTiles(ref job, ref part, from, to, t0, t1);
            else if (job.Bf16 != null) RunBf16Tiles(ref job, ref part, from, to, t0, t1);
            else RunRows(ref job, ref part, from, to);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void RunRows(ref Job job, ref Part part, int start, int end)
    {
        if (UsesFloatTiles(job.Tokens))
        {
            FloatTiles(ref job, ref part, start, end);
            return;
        }
        int columns = job.Columns, blocks = columns / QuantizedDot.BlockSize;
        if (job.Type is not (GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K or GgmlType.F32 or GgmlType.F16 or GgmlType.BF16))
        {
            // Other dtypes: dequantise each row once into an L1-resident buffer, then dot it with every token.
            var buffer = new Span<float>(Scratch.ForCurrentThread.Row(columns), columns);
            for (int r = start; r < end; r++)
            {
                Dequantize.Row(job.Type, new ReadOnlySpan<byte>(part.Weights + (long)r * part.RowBytes, part.RowBytes), buffer);
                for (int t = 0; t < job.Tokens; t++)
                    part.Y[(long)t * part.Rows + r] = TensorPrimitives.Dot(buffer, new ReadOnlySpan<float>(job.X + (long)t * columns, columns));
            }
            return;
        }
        if (job.Type == GgmlType.F16 && F16Rows.Handles(columns))
        {
            for (int tile = start; tile < end; tile += RowTile)
            {
                int rows = Math.Min(end, tile + RowTile) - tile;
                for (int t = 0; t < job.Tokens; t++)
                    F16Rows.Run((ushort*)(part.Weights + (long)tile * part.RowBytes), part.RowBytes, rows, job.Plain + (long)t * columns, columns, part.Y + (long)t * part.Rows + tile);
            }
            return;
        }
        bool simd = Avx2.IsSupported && Fma.IsSupported;
        bool quantized = job.Type is GgmlType.Q8_0 or GgmlType.Q4_0;
        for (int tile = start; tile < end; tile += RowTile)
        {
            int tileEnd = Math.Min(end, tile + RowTile);
            int t = 0;
            if (simd && quantized)
            {
                // Prefill: register-blocked 2 rows × 4 tokens. Decode stays one row at a time: a single sequential stream
                // through the weights measured 2× faster than interleaving four rows.
                for (; t + 4 <= job.Tokens; t += 4)
                {
                    sbyte* xq = job.Quants + (long)t * columns;
                    float* xd = job.Scales + (long)t * blocks, xs = job.Sums + (long)t * blocks;
                    int r = tile;
                    for (; r + 2 <= tileEnd; r += 2)
                    {
                        byte* w = part.Weights + (long)r * part.RowBytes;
                        float* y = part.Y + (long)t * part.Rows + r;
                        if (job.Type == GgmlType.Q8_0) QuantizedDot.DotQ8_0Tile2x4(w, part.RowBytes, xq, xd, columns, blocks, y, part.Rows);
                        else QuantizedDot.DotQ4_0Tile2x4(w, part.RowBytes, xq, xd, xs, columns, blocks, y, part.Rows);
                    }
                    for (; r < tileEnd; r++)
                        for (int u = 0; u < 4; u++) part.Y[(long)(t + u) * part.Rows + r] = Dot(ref job, part.Weights + (long)r * part.RowBytes, t + u);
                }
            }
            for (; t < job.Tokens; t++)
                for (int r = tile; r < tileEnd; r++)
                    part.Y[(long)t * part.Rows + r] = Dot(ref job, part.Weights + (long)r * part.RowBytes, t);
        }
    }

    /// <summary>Rows per tile of the AVX-512 prefill: two panels of 16 (one Vector512 each).</summary>
    const int PanelRows = 32;
    /// <summary>Tokens per block of the AVX-512 prefill kernel.</summary>
    const int PanelTokens = 8;

    /// <summary>
    /// Prefill with AVX-512 (BF16 goes to <see cref="Bf16Tiles"/> where that kernel runs). Each tile of 32 rows is
    /// widened to f32 once (f16/bf16 in registers, other types dequantised) and packed column-major in two panels of 16
    /// rows, [column][16]. Then, 8 tokens at a time, each column's two weight vectors meet each token's activation
    /// broadcast: 16 FMAs per 10 loads, and the 16 accumulators are the 8 × 32 outputs themselves, stored without
    /// horizontal sums (the layout of BLIS-style micro-kernels; Van Zee and van de Geijn, TOMS 2015). A tail of fewer than 8 tokens runs on a zero-padded copy.
    /// </summary>
    static void FloatTiles(ref Job job, ref Part part, int start, int end)
    {
        int columns = job.Columns, tokens = job.Tokens, whole = tokens / PanelTokens * PanelTokens;
        var scratch = Scratch.ForCurrentThread;
        float* rowsF32 = scratch.Row(PanelRows * columns), packed = scratch.Packed(PanelRows * columns);
        float* tail = scratch.Tail(tokens > whole ? PanelTokens * columns : 0);
        float* output = stackalloc float[PanelTokens * PanelRows];
        if (tokens > whole)
        {
            new Span<float>(job.Plain + (long)whole * columns, (tokens - whole) * columns).CopyTo(new Span<float>(tail, PanelTokens * columns));
            new Span<float>(tail + (tokens - whole) * columns, (PanelTokens - tokens + whole) * columns).Clear();
        }
        for (int tile = start; tile < end; tile += PanelRows)
        {
            int rows = Math.Min(end, tile + PanelRows) - tile;
            for (int r = 0; r < rows; r++)
            {
                byte* source = part.Weights + (long)(tile + r) * part.RowBytes;
                float* row = rowsF32 + r * columns;
                if (job.Type == GgmlType.F32) new ReadOnlySpan<float>(source, columns).CopyTo(new Span<float>(row, columns));
                else if (job.Type == GgmlType.F16) HalfDot.WidenF16((ushort*)source, row, columns);
                else if (job.Type == GgmlType.BF16) HalfDot.WidenBF16((ushort*)source, row, columns);
                else if (part.Interleaved != null) // Q6_K without VNNI, the one repacked type on f32 tiles: its widened copy, not the file
                    Interleaved.DequantizeRowQ6_K(part.Interleaved, columns / 256, tile + r, row);
                else Dequantize.Row(job.Type, new ReadOnlySpan<byte>(source, part.RowBytes), new Span<float>(row, columns));
            }
            SmallMatrix.Transpose(rowsF32, Math.Min(rows, 16), columns, packed, 16);
            if (rows > 16) SmallMatrix.Transpose(rowsF32 + 16 * columns, rows - 16, columns, packed + 16 * columns, 16);
            else new Span<float>(packed + 16 * columns, 16 * columns).Clear();

            float* y = part.Y + tile;
            for (int t = 0; t < whole; t += PanelTokens)
            {
                if (rows == PanelRows) Panel32x8(packed, job.Plain + (long)t * columns, columns, y + (long)t * part.Rows, part.Rows);
                else
                {
                    Panel32x8(packed, job.Plain + (long)t * columns, columns, output, PanelRows);
                    CopyOut(output, PanelTokens, rows, y + (long)t * part.Rows, part.Rows);
                }
            }
            if (tokens > whole)
            {
                Panel32x8(packed, tail, columns, output, PanelRows);
                CopyOut(output, tokens - whole, rows, y + (long)whole * part.Rows, part.Rows);
            }
        }
    }

    /// <summary>
    /// BF16 prefill on <see cref="Bf16Tiles"/> for tokens [t0, t1) (t0 a whole number of groups): each tile of 32 rows is
    /// the one packed at load (<see cref="PackTiles"/>) or packed here once, then every group of 8 tokens passes over
    /// it; a tile of fewer rows or the last group writes through a buffer.
    /// </summary>
    static void RunBf16Tiles(ref Job job, ref Part part, int start, int end, int t0, int t1)
    {
        int columns = job.Columns;
        var scratch = Scratch.ForCurrentThread;
        uint* buffer = (uint*)scratch.Packed(Bf16Tiles.Rows * columns / 2);
        float* output = stackalloc float[Bf16Tiles.Tokens * Bf16Tiles.Rows];
        for (int tile = start; tile < end; tile += Bf16Tiles.Rows)
        {
            int rows = Math.Min(end, tile + Bf16Tiles.Rows) - tile;
            uint* packed = buffer;
            if (part.Tiles != null && tile % Bf16Tiles.Rows == 0 && rows == Math.Min(Bf16Tiles.Rows, part.Rows - tile))
                packed = (uint*)part.Tiles + (long)tile * columns / 2; // a whole tile of the matrix's own grid
            else PackBf16(job.Type, part.Weights, part.RowBytes, tile, rows, columns, buffer, scratch.Row(columns * 3 / 2 + 16));
            for (int t = t0; t < t1; t += Bf16Tiles.Tokens)
            {
                ushort* x = job.Bf16 + (long)t * columns;
                float* y = part.Y + (long)t * part.Rows + tile;
                if (rows == Bf16Tiles.Rows && t + Bf16Tiles.Tokens <= t1) Bf16Tiles.Run(packed, x, columns, columns, y, part.Rows);
                else
                {
                    Bf16Tiles.Run(packed, x, columns, columns, output, Bf16Tiles.Rows);
                    CopyOut(output, Math.Min(Bf16Tiles.Tokens, t1 - t), rows, y, part.Rows);
                }
            }
        }
    }

    /// <summary>
    /// Groups of 4 tokens per tile call: the emitted kernels run without a GC transition, so one call stays short
    /// (64 groups × a 16 KiB chunk is about 30 µs here) however many tokens a batch holds.
    /// </summary>
    const int MaxGroupsPerCall = 64;

    /// <summary>Bytes of packed weights one pass of the integer tiles covers: a chunk stays in L1 while every token passes.</summary>
    const int ChunkBytes = 16 * 1024;

    /// <summary>
    /// Prefill of the types <see cref="IntegerTiles.Supports"/>: each tile of 32 rows is repacked once into its planes,
    /// then, a chunk of 16 KiB of packed columns at a time, every group of 4 tokens (the activations are padded to whole
    /// groups) passes over it and adds to its outputs. Without chunks the packed tile of a wide row (Q8_0 gate/up:
    /// 56 KiB, down: 304 KiB) was re-read from L2 for every 4 tokens. A last group of fewer than 4 tokens, or a tile of
    /// fewer than 32 rows, goes through a small buffer.
    /// </summary>
    static void RunIntegerTiles(ref Job job, ref Part part, int start, int end, int t0, int t1)
    {
        int columns = job.Columns, blocks = columns / IntegerTiles.BlockColumns(job.Type);
        int blockBytes = IntegerTiles.PackedBytes(job.Type, 1), chunk = Math.Max(1, ChunkBytes / blockBytes);
        int whole = job.Tokens / IntegerTiles.Tokens * IntegerTiles.Tokens;
        var scratch = Scratch.ForCurrentThread;
        byte* packedBuffer = scratch.Bytes(IntegerTiles.PackedBytes(job.Type, blocks)), packed;
        float* scaleBuffer = scratch.Packed(IntegerTiles.Rows * blocks), scales;
        float* minBuffer = job.Type == GgmlType.Q4_K ? scratch.Row(IntegerTiles.Rows * blocks) : null, mins;
        float* output = stackalloc float[IntegerTiles.Tokens * IntegerTiles.Rows];
        for (int tile = start; tile < end; tile += IntegerTiles.Rows)
        {
            int rows = Math.Min(end, tile + IntegerTiles.Rows) - tile;
            byte* second = null; // the upper half's group when the kernel reads the decode layout directly
            int stride = blockBytes;
            if (part.Tiles != null && tile % IntegerTiles.Rows == 0 && rows == Math.Min(IntegerTiles.Rows, part.Rows - tile))
            {
                // Packed at load: a whole tile of the matrix's own grid (a range claimed across parts can cut one).
                long index = tile / IntegerTiles.Rows;
                packed = part.Tiles + index * blocks * blockBytes;
                scales = part.TileScales + index * IntegerTiles.Rows * blocks;
                mins = part.TileMins == null ? null : part.TileMins + index * IntegerTiles.Rows * blocks;
            }
            else if (job.Type == GgmlType.Q8_0 && VnniTiles.IsSupported && part.Interleaved != null && tile % Interleaved.Group == 0)
            {
                // The VNNI kernel reads the decode layout's groups as they are (Q8_0's offset bytes are its one
                // plane), where repacking each tile per call cost ~5 % of an 80-token frame's products (SmolLM2-135M shape).
                stride = Interleaved.BlockBytes(GgmlType.Q8_0);
                packed = part.Interleaved + (long)(tile / Interleaved.Group) * blocks * stride;
                second = rows > Interleaved.Group ? packed + (long)blocks * stride : packed;
                scales = mins = null;
            }
            else
            {
                packed = packedBuffer;
                scales = scaleBuffer;
                mins = minBuffer;
                // A part behind one of rows not a multiple of 16 can start its tiles mid-group: those pack from the stored rows.
                if (part.Interleaved != null && tile % Interleaved.Group == 0)
                    Interleaved.PackTile(job.Type, part.Interleaved, columns / Interleaved.BlockColumns(job.Type), tile / Interleaved.Group, rows > Interleaved.Group, packed, scales, mins);
                else IntegerTiles.Pack(job.Type, part.Weights + (long)tile * part.RowBytes, part.RowBytes, rows, blocks, packed, scales, mins);
            }
            // Full groups of a full tile write straight into y; the rest (a partial tile's groups, the last short group)
            // into the buffer, one group at a time over all chunks. t0 is a whole number of groups.
            int direct = rows == IntegerTiles.Rows ? Math.Min(t1, whole) : t0;
            for (int c = 0; c < blocks; c += chunk)
            {
                int count = Math.Min(chunk, blocks - c);
                for (int t = t0; t < direct; t += MaxGroupsPerCall * IntegerTiles.Tokens)
                    Group(ref job, packed, second, scales, mins, stride, t, c, count,
                        Math.Min(MaxGroupsPerCall, (direct - t) / IntegerTiles.Tokens), part.Y + (long)t * part.Rows + tile, part.Rows, c > 0);
            }
            for (int t = direct; t < t1; t += IntegerTiles.Tokens)
            {
                for (int c = 0; c < blocks; c += chunk)
                    Group(ref job, packed, second, scales, mins, stride, t, c, Math.Min(chunk, blocks - c), 1, output, IntegerTiles.Rows, c > 0);
                for (int u = 0; u < Math.Min(IntegerTiles.Tokens, t1 - t); u++)
                    new ReadOnlySpan<float>(output + u * IntegerTiles.Rows, rows).CopyTo(new Span<float>(part.Y + (long)(t + u) * part.Rows + tile, rows));
            }
        }
    }

    /// <summary>
    /// Tokens t … t + 4·groups − 1 against blocks c … c+count−1 of a packed tile (blocks <paramref name="stride"/> bytes
    /// apart, scales and mins 32 a block), or of Q8_0's two interleaved groups at <paramref name="packed"/> and
    /// <paramref name="second"/> when that is not null.
    /// </summary>
    static void Group(ref Job job, byte* packed, byte* second, float* scales, float* mins, int stride, int t, int c, int count, int groups, float* y, int ldy, bool accumulate)
    {
        int columns = job.Columns, width = IntegerTiles.BlockColumns(job.Type), blocks = columns / width;
        sbyte* xq = job.Quants + (long)t * columns + c * width;
        int* xs = job.BlockSums + (long)t * blocks + c;
        if (second != null)
        {
            VnniTiles.Q8_0Interleaved(packed + (long)c * stride, second + (long)c * stride, xq, job.Scales + (long)t * blocks + c, xs, columns, blocks, count, groups, y, ldy, accumulate);
            return;
        }
        packed += (long)c * stride;
        scales += c * IntegerTiles.Rows;
        if (mins != null) mins += c * IntegerTiles.Rows;
        if (job.Type == GgmlType.Q6_K) // scales and sums per 16 columns, the scales in Sums
            IntegerTiles.Q6_K(packed, scales, xq, job.Sums + (long)t * blocks + c, xs, columns, blocks, count, groups, y, ldy, accumulate);
        else if (job.Type == GgmlType.Q8_0)
            IntegerTiles.Q8_0(packed, scales, xq, job.Scales + (long)t * blocks + c, xs, columns, blocks, count, groups, y, ldy, accumulate);
        else
            IntegerTiles.Q4_0(packed, scales, mins, xq, job.Scales + (long)t * blocks + c, xs, job.Sums + (long)t * blocks + c, columns, blocks, count, groups, y, ldy, accumulate);
    }

    static void CopyOut(float* output, int tokens, int rows, float* y, int ldy)
    {
        for (int t = 0; t < tokens; t++)
            new ReadOnlySpan<float>(output + t * PanelRows, rows).CopyTo(new Span<float>(y + (long)t * ldy, rows));
    }

    /// <summary>
    /// y[t·ldy + r] = Σ_c panel(c, r) · x[t·columns + c] for 8 tokens and 32 rows; <paramref name="packed"/> holds rows 0–15
    /// as [column][16] and then rows 16–31 the same way.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static void Panel32x8(float* packed, float* x, int columns, float* y, int ldy)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default, b4 = default, b5 = default, b6 = default, b7 = default;
        // Token j's activation is at x0 + j·stride (j < 4) or x4 + (j − 4)·stride: two bases and three byte offsets
        // keep every broadcast a single addressed load.
        nint stride = (nint)columns * 4, stride2 = 2 * stride, stride3 = 3 * stride;
        byte* x0 = (byte*)x, x4 = (byte*)(x + 4L * columns);
        float* low = packed, high = packed + 16L * columns;
        for (int c = 0; c < columns; c++, x0 += 4, x4 += 4)
        {
            var w = Vector512.Load(low + 16 * c);
            var u = Vector512.Load(high + 16 * c);
            var v = Vector512.Create(*(float*)x0); a0 = Vector512.FusedMultiplyAdd(w, v, a0); b0 = Vector512.FusedMultiplyAdd(u, v, b0);
            v = Vector512.Create(*(float*)(x0 + stride)); a1 = Vector512.FusedMultiplyAdd(w, v, a1); b1 = Vector512.FusedMultiplyAdd(u, v, b1);
            v = Vector512.Create(*(float*)(x0 + stride2)); a2 = Vector512.FusedMultiplyAdd(w, v, a2); b2 = Vector512.FusedMultiplyAdd(u, v, b2);
            v = Vector512.Create(*(float*)(x0 + stride3)); a3 = Vector512.FusedMultiplyAdd(w, v, a3); b3 = Vector512.FusedMultiplyAdd(u, v, b3);
            v = Vector512.Create(*(float*)x4); a4 = Vector512.FusedMultiplyAdd(w, v, a4); b4 = Vector512.FusedMultiplyAdd(u, v, b4);
            v = Vector512.Create(*(float*)(x4 + stride)); a5 = Vector512.FusedMultiplyAdd(w, v, a5); b5 = Vector512.FusedMultiplyAdd(u, v, b5);
            v = Vector512.Create(*(float*)(x4 + stride2)); a6 = Vector512.FusedMultiplyAdd(w, v, a6); b6 = Vector512.FusedMultiplyAdd(u, v, b6);
            v = Vector512.Create(*(float*)(x4 + stride3)); a7 = Vector512.FusedMultiplyAdd(w, v, a7); b7 = Vector512.FusedMultiplyAdd(u, v, b7);
        }
        a0.Store(y); b0.Store(y + 16); y += ldy;
        a1.Store(y); b1.Store(y + 16); y += ldy;
        a2.Store(y); b2.Store(y + 16); y += ldy;
        a3.Store(y); b3.Store(y + 16); y += ldy;
        a4.Store(y); b4.Store(y + 16); y += ldy;
        a5.Store(y); b5.Store(y + 16); y += ldy;
        a6.Store(y); b6.Store(y + 16); y += ldy;
        a7.Store(y); b7.Store(y + 16);
    }

    /// <summary>One row of weights against one token's prepared activations.</summary>
    static float Dot(ref Job job, byte* w, int t)
    {
        int columns = job.Columns, blocks = columns / QuantizedDot.BlockSize;
        return job.Type switch
        {
            GgmlType.Q8_0 => QuantizedDot.DotQ8_0(w, job.Quants + (long)t * columns, job.Scales + (long)t * blocks, blocks),
            GgmlType.Q4_0 => QuantizedDot.DotQ4_0(w, job.Quants + (long)t * columns, job.Scales + (long)t * blocks, job.Sums + (long)t * blocks, blocks),
            GgmlType.Q4_K => QuantizedDot.DotQ4_K(w, job.Quants + (long)t * columns, job.Scales + (long)t * blocks, job.Sums + (long)t * blocks, columns / 256),
            GgmlType.Q6_K => QuantizedDot.DotQ6_K(w, job.Quants + (long)t * columns, job.Scales + (long)t * blocks, columns / 256),
            GgmlType.F16 => HalfDot.DotF16((ushort*)w, job.X + (long)t * columns, columns),
            GgmlType.BF16 => HalfDot.DotBF16((ushort*)w, job.X + (long)t * columns, columns),
            _ => TensorPrimitives.Dot(new ReadOnlySpan<float>(w, columns), new ReadOnlySpan<float>(job.X + (long)t * columns, columns)),
        };
    }

    /// <summary>
    /// Per-thread buffers on cache-line boundaries (<see cref="AlignedBuffer{T}"/>) that grow to the largest size seen
    /// and are then reused (no allocation per call). The caller's activation buffers are the fields <see cref="Ensure"/>
    /// sets, valid until its next call.
    /// </summary>
    sealed class Scratch
    {
        [ThreadStatic] static Scratch? current;
        public static Scratch ForCurrentThread => current ??= new Scratch();

        public sbyte* Quants;
        public float* Scales, Sums, Floats;
        public int* BlockSums;
        readonly AlignedBuffer<sbyte> quants = new();
        readonly AlignedBuffer<float> scales = new(), sums = new(), floats = new(), row = new(), packed = new(), tail = new();
        readonly AlignedBuffer<int> blockSums = new();
        readonly AlignedBuffer<byte> bytes = new();

        public Scratch() => Ensure(0, 0);

        public void Ensure(int elements, int blocks)
        {
            Quants = quants.Pointer(elements);
            Floats = floats.Pointer(elements);
            Scales = scales.Pointer(blocks);
            Sums = sums.Pointer(blocks);
            BlockSums = blockSums.Pointer(blocks);
        }

        public byte* Bytes(int length) => bytes.Pointer(length);
        public float* Row(int length) => row.Pointer(length);
        public float* Packed(int length) => packed.Pointer(length);
        public float* Tail(int length) => tail.Pointer(length);
    }
}
