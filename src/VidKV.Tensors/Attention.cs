using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// One page of one KV head as the attention kernel reads it: <see cref="Count"/> rows of keys and values (each row
/// one token, headDim elements of the kernel's key/value type) <see cref="KeyStride"/>/<see cref="ValueStride"/> bytes
/// apart, their original positions, and a mask of the rows to read. A contiguous cache is one view per head with
/// implicit positions; the paged store gives one view per selected page.
/// </summary>
internal unsafe struct KvPageView
{
    public byte* Keys, Values;
    public int KeyStride, ValueStride;
    /// <summary>Original position of each row; null means <see cref="FirstPosition"/> + row.</summary>
    public int* Positions;
    public int FirstPosition;
    public int Count;
    /// <summary>Bit j selects row j; <see cref="AllRows"/> selects every row whatever the count (otherwise Count ≤ 64).</summary>
    public ulong Mask;

    public const ulong AllRows = ulong.MaxValue;
}

/// <summary>Scaled dot-product attention kernels over KV rows of f32, f16 or q8_0.</summary>
internal static unsafe class Attention
{
    /// <summary>Keys per tile of the online softmax.</summary>
    const int Tile = 128;

    /// <summary>Causal attention over an f32 KV store; see the byte overload.</summary>
    public static void Causal(ReadOnlySpan<float> queries, ReadOnlySpan<float> keys, ReadOnlySpan<float> values,
        int tokenCount, int startPosition, int headCount, int kvHeadCount, int headDim, float scale, Span<float> destination,
        WorkerPool? pool = null) =>
        Causal(queries, System.Runtime.InteropServices.MemoryMarshal.AsBytes(keys), GgmlType.F32,
            System.Runtime.InteropServices.MemoryMarshal.AsBytes(values), GgmlType.F32,
            tokenCount, startPosition, headCount, kvHeadCount, headDim, scale, destination, pool);

    /// <summary>
    /// Causal grouped-query attention over a contiguous KV store for a batch of <paramref name="tokenCount"/> queries at
    /// positions <paramref name="startPosition"/>.. : query t sees keys 0..startPosition+t. One page view per KV head
    /// over the whole store, then <see cref="Paged"/>.
    /// </summary>
    /// <param name="queries">[tokenCount, headCount, headDim]</param>
    /// <param name="keys">[positions, kvHeadCount, headDim] of <paramref name="keyType"/>, keys already rotated</param>
    /// <param name="values">[positions, kvHeadCount, headDim] of <paramref name="valueType"/></param>
    /// <param name="destination">[tokenCount, headCount, headDim]</param>
    public static void Causal(ReadOnlySpan<float> queries, ReadOnlySpan<byte> keys, GgmlType keyType, ReadOnlySpan<byte> values, GgmlType valueType,
        int tokenCount, int startPosition, int headCount, int kvHeadCount, int headDim, float scale, Span<float> destination,
        WorkerPool? pool = null)
    {
        int positions = startPosition + tokenCount;
        CheckType(keyType, headDim);
        CheckType(valueType, headDim);
        int keyRow = (int)GgmlTypes.RowBytes(keyType, headDim), valueRow = (int)GgmlTypes.RowBytes(valueType, headDim);
        if (keys.Length < (long)positions * kvHeadCount * keyRow || values.Length < (long)positions * kvHeadCount * valueRow)
            throw new ArgumentException("KV store shorter than the attended positions");
        if (kvHeadCount > 256) throw new ArgumentException("more than 256 KV heads");
        Span<KvPageView> views = stackalloc KvPageView[kvHeadCount];
        Span<int> starts = stackalloc int[kvHeadCount + 1];
        fixed (byte* pk = keys, pv = values)
        {
            for (int g = 0; g < kvHeadCount; g++)
            {
                views[g] = new KvPageView
                {
                    Keys = pk + g * keyRow, Values = pv + g * valueRow, KeyStride = kvHeadCount * keyRow, ValueStride = kvHeadCount * valueRow,
                    Count = positions, Mask = KvPageView.AllRows,
                };
                starts[g + 1] = g + 1;
            }
            Paged(queries, tokenCount, startPosition, headCount, kvHeadCount, headDim, scale, views, starts, keyType, valueType, destination, pool);
        }
    }

    /// <summary>
    /// Query rows per work item of <see cref="Bidirectional"/>: 64 rows' scores over 1024 keys are 256 KiB, which stay in
    /// a core's L2 between the two products, and a 1024-patch frame of 12 heads is 192 items to share out.
    /// </summary>
    const int QueryBlock = 64;

    /// <summary>
    /// Grouped-query attention of every one of <paramref name="tokenCount"/> queries over all the rows (no mask: a ViT's
    /// patches see each other), ggml's non-flash order (mul_mat, soft_max_ext, mul_mat): per head and block of
    /// <see cref="QueryBlock"/> queries, scores S = Q·Kᵀ, the softmax's numerators per row (e^(scale·S − max)), then S·V
    /// through Vᵀ divided by the row's sum — both products on <see cref="WeightMatrix"/>'s f32 prefill tiles. Each (head, block) is one work item done
    /// whole by one thread (its scores never leave that core), so the softmax runs on every core, not between two
    /// parallel products on one.
    /// </summary>
    /// <param name="queries">[tokenCount, headCount, headDim]</param>
    /// <param name="keys">[tokenCount, kvHeadCount, headDim] f32</param>
    /// <param name="values">[tokenCount, kvHeadCount, headDim] f32</param>
    /// <param name="destination">[tokenCount, headCount, headDim]</param>
    /// <param name="bf16">
    /// Multiply in bf16 where the CPU has vdpbf16ps (<see cref="Bf16Tiles"/>): queries, keys, values and the softmax's
    /// numerators rounded to bf16 (each moves by at most 2^−9 of itself), products summed in f32, the max, exp, sum and
    /// division in f32 as before. On AMD EPYC Zen 5 both products run at 202–208 GMAC/s a thread where the f32 tiles
    /// run at 84–98, and a 1024-patch SigLIP-B/16 layer's attention takes 9.7–10.2 ms instead of 12–14 (the exp is
    /// then a quarter of it). llama.cpp's default (flash) attention for a ViT on the CPU rounds keys, values and
    /// queries to f16 and sums the values in f16; bf16 keeps f32's range with three fewer mantissa bits than f16's.
    /// </param>
    public static void Bidirectional(ReadOnlySpan<float> queries, ReadOnlySpan<float> keys, ReadOnlySpan<float> values,
        int tokenCount, int headCount, int kvHeadCount, int headDim, float scale, Span<float> destination, WorkerPool? pool = null, bool bf16 = false)
    {
        int n = tokenCount, d = headDim, qDim = headCount * d, kvDim = kvHeadCount * d;
        if (kvHeadCount <= 0 || headCount % kvHeadCount != 0) throw new ArgumentException($"{headCount} heads do not share {kvHeadCount} KV heads evenly");
        if (keys.Length < n * kvDim || values.Length < n * kvDim) throw new ArgumentException("keys or values shorter than tokens × kvHeads × headDim");
        if (queries.Length < n * qDim || destination.Length < n * qDim) throw new ArgumentException("queries or destination shorter than tokens × heads × headDim");
        if (n == 0) return;
        pool ??= WorkerPool.Shared;
        var scratch = BidirectionalScratch.ForCurrentThread;
        // Rows rounded up to whole 32-row tiles: the packed tiles' size (their rows past the end are zeros), and room for
        // the gathered copies' tiles, which the product zero-pads in place.
        int keyRowsPadded = (n + 31) & ~31, valueRowsPadded = (d + 31) & ~31;
        bool packed = Vector512.IsHardwareAccelerated;
        fixed (float* pq = queries, pk = keys, pv = values, po = destination)
        {
            var job = new BidirectionalJob
            {
                Q = pq, K = pk, V = pv, O = po, Tokens = n, Heads = headCount, KvHeads = kvHeadCount,
                HeadDim = d, Scale = scale, Blocks = (n + QueryBlock - 1) / QueryBlock, KeyRowsPadded = keyRowsPadded, ValueRowsPadded = valueRowsPadded,
            };
            if (packed && bf16 && Bf16Tiles.Handles(d))
            {
                // Whole pairs of keys for the values' product (an odd last key pairs with a zero one) and score rows
                // of whole key tiles, which the kernel writes 32 at a time.
                job.KeyPairs = (n + 1) & ~1;
                job.Bf16Keys = (uint*)scratch.Floats(5, kvHeadCount * keyRowsPadded * d / 2);
                job.Bf16Values = (uint*)scratch.Floats(6, kvHeadCount * valueRowsPadded * job.KeyPairs / 2);
                pool.Run(&PackBf16KeysAndValues, &job);
                pool.Run(&AttendBlocksBf16, &job);
                return;
            }
            if (packed)
            {
                job.PackedKeys = scratch.Floats(5, kvHeadCount * keyRowsPadded * d);
                job.PackedValues = scratch.Floats(6, kvHeadCount * valueRowsPadded * n);
                pool.Run(&PackKeysAndValues, &job);
            }
            else
            {
                job.KeyRows = scratch.Floats(0, kvHeadCount * keyRowsPadded * d);
                job.ValueColumns = scratch.Floats(1, kvHeadCount * valueRowsPadded * n);
                pool.Run(&GatherKeysAndValues, &job);
            }
            pool.Run(&AttendBlocks, &job);
        }
    }

    struct BidirectionalJob
    {
        public float* Q, K, V, O, KeyRows, ValueColumns, PackedKeys, PackedValues;
        public uint* Bf16Keys, Bf16Values;
        public int Tokens, Heads, KvHeads, HeadDim, Blocks, KeyRowsPadded, ValueRowsPadded, KeyPairs;
        public int NextItem; // the first (head, block) item no thread has claimed yet
        public float Scale;
    }

    /// <summary>
    /// Without AVX-512: each KV head's keys as rows [n][d] and values as columns [d][n] (the "weights" of the two
    /// products of <see cref="WeightMatrix.MultiplyF32"/>), tokens split over the pool.
    /// </summary>
    static void GatherKeysAndValues(void* context, int thread, int threads)
    {
        ref BidirectionalJob job = ref *(BidirectionalJob*)context;
        var (start, end) = WorkerPool.Split(job.Tokens, thread, threads);
        int n = job.Tokens, d = job.HeadDim, kvDim = job.KvHeads * d;
        for (int g = 0; g < job.KvHeads; g++)
        {
            float* keyRows = job.KeyRows + (long)g * job.KeyRowsPadded * d, valueColumns = job.ValueColumns + (long)g * job.ValueRowsPadded * n;
            for (int t = start; t < end; t++)
            {
                new ReadOnlySpan<float>(job.K + (long)t * kvDim + g * d, d).CopyTo(new Span<float>(keyRows + (long)t * d, d));
                float* v = job.V + (long)t * kvDim + g * d;
                for (int i = 0; i < d; i++) valueColumns[(long)i * n + t] = v[i];
            }
        }
    }

    /// <summary>
    /// Each KV head's keys and values packed once, straight from [tokens, kvHeads × headDim], into the prefill kernel's
    /// tiles (<see cref="WeightMatrix.PackF32"/> of the keys, <see cref="WeightMatrix.PackF32Transposed"/> of the
    /// values), one 32-row tile per item: every query block of the head then multiplies them as they are (packing them
    /// inside each block's product cost as much as a third of the attention of a 1024-patch frame, and gathering each
    /// head's values into columns first — 4 KiB-strided stores — another 18 % of it on AMD EPYC Zen 5).
    /// </summary>
    static void PackKeysAndValues(void* context, int thread, int threads)
    {
        ref BidirectionalJob job = ref *(BidirectionalJob*)context;
        int n = job.Tokens, d = job.HeadDim, kvDim = job.KvHeads * d, keyTiles = job.KeyRowsPadded / 32, valueTiles = job.ValueRowsPadded / 32;
        var (start, end) = WorkerPool.Split(job.KvHeads * (keyTiles + valueTiles), thread, threads);
        for (int item = start; item < end; item++)
        {
            int g = item / (keyTiles + valueTiles), tile = item % (keyTiles + valueTiles);
            if (tile < keyTiles)
            {
                long at = (long)g * job.KeyRowsPadded * d + (long)tile * 32 * d;
                WeightMatrix.PackF32(job.K + (long)tile * 32 * kvDim + g * d, kvDim, Math.Min(32, n - tile * 32), d, job.PackedKeys + at);
            }
            else
            {
                tile -= keyTiles;
                long at = (long)g * job.ValueRowsPadded * n + (long)tile * 32 * n;
                WeightMatrix.PackF32Transposed(job.V + g * d + tile * 32, kvDim, Math.Min(32, d - tile * 32), n, job.PackedValues + at);
            }
        }
    }

    /// <summary>
    /// The (head, query block) items, claimed one at a time by the threads (an atomic counter): every item costs the same
    /// but the last block's, and a thread slowed by another process (the video decoder) leaves more items to the other
    /// instead of holding both up at the end.
    /// </summary>
    static void AttendBlocks(void* context, int thread, int threads)
    {
        ref BidirectionalJob job = ref *(BidirectionalJob*)context;
        int items = job.Heads * job.Blocks;
        if (Volatile.Read(ref job.NextItem) >= items) return;
        int n = job.Tokens, d = job.HeadDim, qDim = job.Heads * d, group = job.Heads / job.KvHeads;
        var scratch = BidirectionalScratch.ForCurrentThread;
        float* queryRows = scratch.Floats(2, QueryBlock * d), scores = scratch.Floats(3, QueryBlock * n), output = scratch.Floats(4, QueryBlock * d);
        float* sums = stackalloc float[QueryBlock];
        for (int item = Interlocked.Increment(ref job.NextItem) - 1; item < items; item = Interlocked.Increment(ref job.NextItem) - 1)
        {
            int h = item / job.Blocks, firstRow = item % job.Blocks * QueryBlock, rows = Math.Min(QueryBlock, n - firstRow), g = h / group;
            for (int t = 0; t < rows; t++)
                new ReadOnlySpan<float>(job.Q + (long)(firstRow + t) * qDim + h * d, d).CopyTo(new Span<float>(queryRows + (long)t * d, d));
            if (job.PackedKeys != null) WeightMatrix.MultiplyPacked(job.PackedKeys + (long)g * job.KeyRowsPadded * d, n, d, queryRows, rows, scores);
            else WeightMatrix.MultiplyF32(job.KeyRows + (long)g * job.KeyRowsPadded * d, n, d, queryRows, rows, scores);
            for (int t = 0; t < rows; t++) sums[t] = ExpOfScaled(new Span<float>(scores + (long)t * n, n), job.Scale);
            if (job.PackedValues != null) WeightMatrix.MultiplyPacked(job.PackedValues + (long)g * job.ValueRowsPadded * n, d, n, scores, rows, output);
            else WeightMatrix.MultiplyF32(job.ValueColumns + (long)g * job.ValueRowsPadded * n, d, n, scores, rows, output);
            // The softmax's division, on the d outputs of a row instead of its n weights.
            for (int t = 0; t < rows; t++)
                TensorPrimitives.Multiply(new ReadOnlySpan<float>(output + (long)t * d, d), 1f / sums[t], new Span<float>(job.O + (long)(firstRow + t) * qDim + h * d, d));
        }
    }

    /// <summary>
    /// <see cref="PackKeysAndValues"/> for <see cref="Bf16Tiles"/>: each 32-key tile of a KV head as [column pair][2
    /// halves][16 keys] words of two bf16 (a key's 32-bit words of its rounded row, transposed 16 keys at a time), and
    /// each 32-channel tile of its values as [key pair][2 halves][16 channels] words holding the channel of keys 2p and
    /// 2p+1 (an odd last key's partner is zero), one tile per item.
    /// </summary>
    static void PackBf16KeysAndValues(void* context, int thread, int threads)
    {
        ref BidirectionalJob job = ref *(BidirectionalJob*)context;
        int n = job.Tokens, d = job.HeadDim, kvDim = job.KvHeads * d, keyTiles = job.KeyRowsPadded / 32, valueTiles = job.ValueRowsPadded / 32;
        var (start, end) = WorkerPool.Split(job.KvHeads * (keyTiles + valueTiles), thread, threads);
        ushort* rounded = (ushort*)BidirectionalScratch.ForCurrentThread.Floats(2, 8 * d);
        for (int item = start; item < end; item++)
        {
            int g = item / (keyTiles + valueTiles), tile = item % (keyTiles + valueTiles);
            if (tile < keyTiles)
            {
                uint* target = job.Bf16Keys + (long)g * job.KeyRowsPadded * d / 2 + (long)tile * 16 * d;
                for (int half = 0; half < 2; half++)
                {
                    int first = tile * 32 + half * 16, rows = Math.Clamp(n - first, 0, 16);
                    for (int r = 0; r < rows; r++) Bf16Tiles.Round(job.K + (long)(first + r) * kvDim + g * d, rounded + r * d, d);
                    SmallMatrix.TransposeStrided((float*)rounded, d / 2, rows, d / 2, (float*)target + half * 16, 32);
                }
            }
            else
            {
                tile -= keyTiles;
                int pairs = job.KeyPairs / 2;
                uint* target = job.Bf16Values + (long)g * job.ValueRowsPadded * pairs + (long)tile * 32 * pairs;
                for (int half = 0; half < 2; half++)
                {
                    int channel = tile * 32 + half * 16, count = Math.Clamp(d - channel, 0, 16);
                    float* v = job.V + g * d + channel;
                    for (int p = 0; p < pairs; p++)
                    {
                        uint* words = target + p * 32 + half * 16;
                        float* even = v + (long)2 * p * kvDim, odd = even + kvDim;
                        bool partner = 2 * p + 1 < n;
                        if (count == 16 && Avx512F.IsSupported)
                        {
                            var low = Bf16Tiles.RoundBits(Vector512.Load((uint*)even));
                            var high = partner ? Bf16Tiles.RoundBits(Vector512.Load((uint*)odd)) << 16 : Vector512<uint>.Zero;
                            Vector512.Store(low | high, words);
                            continue;
                        }
                        for (int c = 0; c < 16; c++)
                            words[c] = c >= count ? 0 : Quantize.ToBF16(even[c]) | (partner ? (uint)Quantize.ToBF16(odd[c]) << 16 : 0);
                    }
                }
            }
        }
    }

    /// <summary>
    /// <see cref="AttendBlocks"/> on <see cref="Bf16Tiles"/>: a block's queries rounded to bf16 (rows padded with zeros
    /// to whole groups of 8), scores a whole key tile at a time, the softmax's numerators in f32 rounded to bf16 for the
    /// values' product, the division by the f32 sum last.
    /// </summary>
    static void AttendBlocksBf16(void* context, int thread, int threads)
    {
        ref BidirectionalJob job = ref *(BidirectionalJob*)context;
        int items = job.Heads * job.Blocks;
        if (Volatile.Read(ref job.NextItem) >= items) return;
        int n = job.Tokens, d = job.HeadDim, qDim = job.Heads * d, group = job.Heads / job.KvHeads, keyPairs = job.KeyPairs;
        int scoreStride = job.KeyRowsPadded, outputStride = job.ValueRowsPadded, pairs = keyPairs / 2;
        var scratch = BidirectionalScratch.ForCurrentThread;
        ushort* queryRows = (ushort*)scratch.Floats(2, QueryBlock * d / 2), weights = (ushort*)scratch.Floats(0, QueryBlock * keyPairs / 2);
        float* scores = scratch.Floats(3, QueryBlock * scoreStride), output = scratch.Floats(4, QueryBlock * outputStride);
        float* sums = stackalloc float[QueryBlock];
        for (int item = Interlocked.Increment(ref job.NextItem) - 1; item < items; item = Interlocked.Increment(ref job.NextItem) - 1)
        {
            int h = item / job.Blocks, firstRow = item % job.Blocks * QueryBlock, rows = Math.Min(QueryBlock, n - firstRow), g = h / group;
            int groups = (rows + Bf16Tiles.Tokens - 1) / Bf16Tiles.Tokens, padded = groups * Bf16Tiles.Tokens;
            for (int t = 0; t < rows; t++) Bf16Tiles.Round(job.Q + (long)(firstRow + t) * qDim + h * d, queryRows + t * d, d);
            new Span<ushort>(queryRows + rows * d, (padded - rows) * d).Clear();
            uint* keys = job.Bf16Keys + (long)g * job.KeyRowsPadded * d / 2;
            for (int tile = 0; tile < job.KeyRowsPadded / 32; tile++)
                for (int k = 0; k < groups; k++)
                    Bf16Tiles.Run(keys + (long)tile * 16 * d, queryRows + k * Bf16Tiles.Tokens * d, d, d, scores + (long)k * Bf16Tiles.Tokens * scoreStride + tile * 32, scoreStride);
            for (int t = 0; t < rows; t++)
            {
                var row = new ReadOnlySpan<float>(scores + (long)t * scoreStride, n);
                sums[t] = VectorMath.ExpScaledShiftedSumToBf16(row, job.Scale, ScaledMax(row, job.Scale), weights + t * keyPairs);
                if (keyPairs > n) weights[t * keyPairs + n] = 0;
            }
            new Span<ushort>(weights + rows * keyPairs, (padded - rows) * keyPairs).Clear();
            uint* values = job.Bf16Values + (long)g * job.ValueRowsPadded * pairs;
            for (int tile = 0; tile < outputStride / 32; tile++)
                for (int k = 0; k < groups; k++)
                    Bf16Tiles.Run(values + (long)tile * 32 * pairs, weights + k * Bf16Tiles.Tokens * keyPairs, keyPairs, keyPairs, output + (long)k * Bf16Tiles.Tokens * outputStride + tile * 32, outputStride);
            for (int t = 0; t < rows; t++)
                TensorPrimitives.Multiply(new ReadOnlySpan<float>(output + (long)t * outputStride, d), 1f / sums[t], new Span<float>(job.O + (long)(firstRow + t) * qDim + h * d, d));
        }
    }

    /// <summary>
    /// The softmax's numerators in place, e^(scale·row − max), returning their sum, in two passes over the row: the max
    /// of the unscaled scores, then <see cref="VectorMath.ExpScaledShiftedSum"/>. For scale &gt; 0 (1/√d) rounding is
    /// monotonic, so round(scale·max) is the max of the rounded scaled scores (for a negative scale, the min's): the same
    /// bits as scaling the row first (ggml's soft_max_ext order). Scale, max, subtract, exp, sum and divide took six
    /// passes once, then three.
    /// </summary>
    static float ExpOfScaled(Span<float> row, float scale) => VectorMath.ExpScaledShiftedSum(row, scale, ScaledMax(row, scale));

    /// <summary>The max of scale·row, as the rounded products' (see <see cref="ExpOfScaled"/>).</summary>
    static float ScaledMax(ReadOnlySpan<float> row, float scale) => scale * (scale >= 0 ? VectorMath.Max(row) : TensorPrimitives.Min(row));

    /// <summary>Per-thread buffers of <see cref="Bidirectional"/> on cache-line boundaries, grown to the largest call and reused.</summary>
    sealed class BidirectionalScratch
    {
        [ThreadStatic] static BidirectionalScratch? current;
        public static BidirectionalScratch ForCurrentThread => current ??= new BidirectionalScratch();

        readonly AlignedBuffer<float>[] buffers = [new(), new(), new(), new(), new(), new(), new()];

        public float* Floats(int slot, int length) => buffers[slot].Pointer(Math.Max(length, 16));
    }

    static void CheckType(GgmlType type, int headDim)
    {
        if (type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.Q8_0))
            throw new ArgumentException($"KV type {GgmlTypes.Name(type)} is not supported (f32, f16, q8_0)");
        if (headDim % GgmlTypes.BlockSize(type) != 0)
            throw new ArgumentException($"head dimension {headDim} is not a whole number of {GgmlTypes.Name(type)} blocks");
    }

    /// <summary>
    /// Grouped-query attention of a batch of queries at positions <paramref name="startPosition"/>.. over selected rows
    /// of pages: KV head g reads the pages <paramref name="headPageStart"/>[g] .. [g+1]−1, the rows of each page its mask
    /// selects, and query t only the rows whose original position is at most startPosition+t (causal). Rows must come in
    /// ascending position across a head's pages. Work items are (block of tokens, KV head); rows are gathered into tiles
    /// of f32 once and shared by every query head of the group and token of the block, with an online softmax (running
    /// max and sum) so memory stays bounded. With every row selected this is exactly <see cref="Causal(ReadOnlySpan{float}, ReadOnlySpan{byte}, GgmlType, ReadOnlySpan{byte}, GgmlType, int, int, int, int, int, float, Span{float}, WorkerPool?)"/>.
    /// A query that sees no row gets zeros.
    /// </summary>
    public static void Paged(ReadOnlySpan<float> queries, int tokenCount, int startPosition, int headCount, int kvHeadCount, int headDim, float scale,
        ReadOnlySpan<KvPageView> pages, ReadOnlySpan<int> headPageStart, GgmlType keyType, GgmlType valueType, Span<float> destination,
        WorkerPool? pool = null)
    {
        if (headCount % kvHeadCount != 0) throw new ArgumentException("head count must be a multiple of the KV head count");
        CheckType(keyType, headDim);
        CheckType(valueType, headDim);
        if (headPageStart.Length < kvHeadCount + 1 || headPageStart[kvHeadCount] > pages.Length)
            throw new ArgumentException("page ranges do not cover the KV heads");
        if (queries.Length < (long)tokenCount * headCount * headDim || destination.Length < (long)tokenCount * headCount * headDim)
            throw new ArgumentException("queries or destination shorter than tokens × heads × headDim");
        if (tokenCount == 0) return;
        fixed (float* pq = queries, po = destination)
        fixed (KvPageView* pp = pages)
        fixed (int* ps = headPageStart)
        {
            pool ??= WorkerPool.Shared;
            var job = new Job
            {
                Q = pq, O = po, Pages = pp, HeadPageStart = ps, Tokens = tokenCount, Start = startPosition, Heads = headCount, KvHeads = kvHeadCount,
                HeadDim = headDim, Scale = scale, KeyType = keyType, ValueType = valueType, Block = TokenBlock(tokenCount, kvHeadCount, pool.ThreadCount),
            };
            pool.Run(&Execute, &job);
        }
    }

    struct Job
    {
        public float* Q, O;
        public KvPageView* Pages;
        public int* HeadPageStart;
        public int Tokens, Start, Heads, KvHeads, HeadDim, Block;
        public int NextItem; // the first item no thread has claimed yet
        public float Scale;
        public GgmlType KeyType, ValueType;
    }

    [ThreadStatic] static AlignedBuffer<float>? scratch;

    /// <summary>
    /// Consecutive query tokens that share each widened and transposed K/V tile: 32 while that leaves at least two work
    /// items per thread, else 16, else 8. Every tile is widened once per item, so a bigger block spreads it over more
    /// lanes: a 64-token frame chunk at depth 2048 of a SmolLM2-135M-shaped model went from 500 to 653 tokens/s (paged
    /// attention 1.27–1.54 → 0.99–1.10 ms a token), pp512 of the Qwen2-0.5B shape 612 → 677, against a fixed 8
    /// (AMD EPYC Zen 4, 2 threads, medians of 15 and 9 interleaved runs).
    /// </summary>
    static int TokenBlock(int tokens, int kvHeads, int threads)
    {
        int block = 32;
        while (block > 8 && (tokens + block - 1) / block * kvHeads < 2 * threads) block /= 2;
        return block;
    }

    /// <summary>
    /// One work item = (block of up to <see cref="TokenBlock"/> tokens, KV head). Its query heads and tokens are the
    /// "lanes". Per tile of up to <see cref="Tile"/> selected rows: widen keys and values to f32, transpose the keys
    /// (K^T, so a score is a vector FMA over keys instead of a horizontal sum per key), scores = Q·K^T for all lanes at
    /// once, causal mask, online softmax (running max and sum per lane), then acc += P·V. Both products are
    /// <see cref="SmallMatrix.Multiply"/>: every load of K^T or V feeds the FMAs of up to eight lanes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Execute(void* context, int thread, int threads)
    {
        ref Job job = ref *(Job*)context;
        int group = job.Heads / job.KvHeads, d = job.HeadDim, qRow = job.Heads * d;
        int lanes = job.Block * group; // (token, head) pairs of one work item
        int padded = (lanes + 15) & ~15; // max and sum padded to whole cache lines, so the tiles after them start on one
        int need = lanes * (Tile + 2 * d) + 2 * padded + 3 * Tile * d + Tile;
        float* buffer = (scratch ??= new()).Pointer(need);
        int blocks = (job.Tokens + job.Block - 1) / job.Block;
        int keyRowBytes = (int)GgmlTypes.RowBytes(job.KeyType, d), valueRowBytes = (int)GgmlTypes.RowBytes(job.ValueType, d);
        int items = blocks * job.KvHeads;
        float* scores = buffer, acc = scores + lanes * Tile, q = acc + lanes * d, max = q + lanes * d, sum = max + padded;
        float* keyTile = sum + padded, keyT = keyTile + Tile * d, valueTile = keyT + Tile * d;
        int* tilePositions = (int*)(valueTile + Tile * d);
        for (int item = Interlocked.Increment(ref job.NextItem) - 1; item < items; item = Interlocked.Increment(ref job.NextItem) - 1)
        {
            // Items are claimed one at a time (an atomic counter), the last block first: a causal block's work
            // grows with its position, so the biggest go first and the small ones fill in at the end (static
            // shares left one of 2 threads 3/4 of pp512's work in plain order, and a thread slowed by another
            // process held the other up).
            int order = item / job.KvHeads, block = blocks - 1 - order;
            int g = item % job.KvHeads, t0 = block * job.Block, t1 = Math.Min(job.Tokens, t0 + job.Block);
            int count = (t1 - t0) * group;
            for (int t = t0; t < t1; t++)
            {
                float* query = job.Q + (long)t * qRow + g * group * d;
                for (int i = 0; i < group * d; i++) q[(t - t0) * group * d + i] = query[i] * job.Scale;
            }
            new Span<float>(acc, count * d).Clear();
            new Span<float>(max, count).Fill(float.NegativeInfinity);
            new Span<float>(sum, count).Clear();
            int lastPosition = job.Start + t1 - 1; // the last token of the block sees rows up to here
            int page = job.HeadPageStart[g], pageEnd = job.HeadPageStart[g + 1], row = 0;
            while (true)
            {
                // Gather the next tile of selected, possibly visible rows as f32.
                int n = 0;
                while (n < Tile && page < pageEnd)
                {
                    KvPageView* view = job.Pages + page;
                    // A whole page that is visible, fits and lies row after row: widened with one call per side.
                    if (row == 0 && view->Mask == KvPageView.AllRows && view->Count > 0 && n + view->Count <= Tile
                        && view->KeyStride == keyRowBytes && view->ValueStride == valueRowBytes)
                    {
                        int rows = view->Count;
                        int last = view->Positions == null ? view->FirstPosition + rows - 1 : view->Positions[rows - 1];
                        if (last <= lastPosition)
                        {
                            WidenRow(job.KeyType, view->Keys, keyTile + n * d, rows * d);
                            WidenRow(job.ValueType, view->Values, valueTile + n * d, rows * d);
                            for (int j = 0; j < rows; j++) tilePositions[n + j] = view->Positions == null ? view->FirstPosition + j : view->Positions[j];
                            n += rows;
                            page++;
                            continue;
                        }
                    }
                    if (view->Mask != KvPageView.AllRows)
                    {
                        ulong rest = row < 64 ? view->Mask & (ulong.MaxValue << row) : 0;
                        if (rest == 0) { page++; row = 0; continue; }
                        row = System.Numerics.BitOperations.TrailingZeroCount(rest);
                    }
                    if (row >= view->Count) { page++; row = 0; continue; }
                    int position = view->Positions == null ? view->FirstPosition + row : view->Positions[row];
                    if (position > lastPosition) { page = pageEnd; break; }
                    WidenRow(job.KeyType, view->Keys + (long)row * view->KeyStride, keyTile + n * d, d);
                    WidenRow(job.ValueType, view->Values + (long)row * view->ValueStride, valueTile + n * d, d);
                    tilePositions[n++] = position;
                    row++;
                }
                if (n == 0) break;
                SmallMatrix.Transpose(keyTile, n, d, keyT, Tile);
                SmallMatrix.Multiply(q, d, count, keyT, Tile, d, n, scores, Tile, accumulate: false);
                for (int t = t0; t < t1; t++)
                {
                    int visible = n, own = job.Start + t;
                    while (visible > 0 && tilePositions[visible - 1] > own) visible--;
                    for (int h = 0; h < group; h++)
                    {
                        int lane = (t - t0) * group + h;
                        float* sc = scores + lane * Tile;
                        if (visible == 0) { new Span<float>(sc, n).Clear(); continue; }
                        new Span<float>(sc + visible, n - visible).Fill(float.NegativeInfinity);
                        // Online softmax: rescale what was accumulated under the old maximum.
                        var scoreRow = new Span<float>(sc, n);
                        float newMax = MathF.Max(max[lane], VectorMath.Max(scoreRow.Slice(0, visible))), correction = MathF.Exp(max[lane] - newMax);
                        // One pass for e^(s − max) and its sum (TensorPrimitives.Exp: 1.6 ns per element here).
                        sum[lane] = sum[lane] * correction + VectorMath.ExpShiftedSum(scoreRow, newMax);
                        max[lane] = newMax;
                        if (correction != 1f) TensorPrimitives.Multiply(new Span<float>(acc + lane * d, d), correction, new Span<float>(acc + lane * d, d));
                    }
                }
                SmallMatrix.Multiply(scores, Tile, count, valueTile, d, n, d, acc, d, accumulate: true);
            }
            for (int t = t0; t < t1; t++)
            {
                for (int h = 0; h < group; h++)
                {
                    int lane = (t - t0) * group + h;
                    float* o = job.O + (long)t * qRow + (g * group + h) * d;
                    float factor = sum[lane] > 0 ? 1f / sum[lane] : 0f;
                    for (int i = 0; i < d; i++) o[i] = acc[lane * d + i] * factor;
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void WidenRow(GgmlType type, byte* source, float* destination, int n)
    {
        if (type == GgmlType.F16) HalfDot.WidenF16((ushort*)source, destination, n);
        else if (type == GgmlType.F32) Buffer.MemoryCopy(source, destination, n * 4, n * 4);
        else Dequantize.Row(type, new ReadOnlySpan<byte>(source, (int)GgmlTypes.RowBytes(type, n)), new Span<float>(destination, n));
    }
}
