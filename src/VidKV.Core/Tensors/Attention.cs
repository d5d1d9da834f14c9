using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>Scaled dot-product attention kernels over a contiguous KV store of f32 or f16 elements.</summary>
public static unsafe class Attention
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
    /// Causal grouped-query attention for a batch of <paramref name="tokenCount"/> queries at positions
    /// <paramref name="startPosition"/>.. : query t sees keys 0..startPosition+t. Work items are (token, KV head); each
    /// reads its keys and values once for all the query heads that share them, in tiles with an online softmax
    /// (running max and sum), so memory stays bounded at any context length. Keys and values are f32 or f16; an f16
    /// tile is widened to f32 once and then shared by the query heads of the group.
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
        long row = (long)positions * kvHeadCount * headDim;
        if (keys.Length < row * ElementSize(keyType) || values.Length < row * ElementSize(valueType))
            throw new ArgumentException("KV store shorter than the attended positions");
        if (headCount % kvHeadCount != 0) throw new ArgumentException("head count must be a multiple of the KV head count");
        if (keyType is not (GgmlType.F32 or GgmlType.F16) || valueType is not (GgmlType.F32 or GgmlType.F16))
            throw new ArgumentException($"KV types {keyType}/{valueType} are not supported (f32, f16)");
        if (tokenCount == 0) return;
        fixed (float* pq = queries, po = destination)
        fixed (byte* pk = keys, pv = values)
        {
            var job = new Job
            {
                Q = pq, K = pk, V = pv, O = po, Tokens = tokenCount, Start = startPosition, Heads = headCount, KvHeads = kvHeadCount,
                HeadDim = headDim, Scale = scale, KeyType = keyType, ValueType = valueType,
            };
            (pool ?? WorkerPool.Shared).Run(&Execute, &job);
        }
    }

    static int ElementSize(GgmlType type) => type == GgmlType.F32 ? 4 : 2;

    struct Job
    {
        public float* Q, O;
        public byte* K, V;
        public int Tokens, Start, Heads, KvHeads, HeadDim;
        public float Scale;
        public GgmlType KeyType, ValueType;
    }

    [ThreadStatic] static float[]? scratch;

    /// <summary>Consecutive query tokens that share each widened K/V tile (prefill).</summary>
    const int TokenBlock = 8;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Execute(void* context, int thread, int threads)
    {
        ref Job job = ref *(Job*)context;
        int group = job.Heads / job.KvHeads, d = job.HeadDim, kvRow = job.KvHeads * d, qRow = job.Heads * d;
        int lanes = TokenBlock * group; // (token, head) pairs of one work item
        int need = lanes * (Tile + 2 * d + 2) + 2 * Tile * d;
        if (scratch == null || scratch.Length < need) scratch = new float[need];
        int blocks = (job.Tokens + TokenBlock - 1) / TokenBlock;
        var (start, end) = WorkerPool.Split(blocks * job.KvHeads, thread, threads);
        bool keysF32 = job.KeyType == GgmlType.F32, valuesF32 = job.ValueType == GgmlType.F32;
        fixed (float* buffer = scratch)
        {
            float* scores = buffer, acc = scores + lanes * Tile, q = acc + lanes * d, max = q + lanes * d, sum = max + lanes;
            float* keyTile = sum + lanes, valueTile = keyTile + Tile * d;
            for (int item = start; item < end; item++)
            {
                int g = item % job.KvHeads, t0 = item / job.KvHeads * TokenBlock, t1 = Math.Min(job.Tokens, t0 + TokenBlock);
                int count = (t1 - t0) * group;
                for (int t = t0; t < t1; t++)
                {
                    float* query = job.Q + (long)t * qRow + g * group * d;
                    for (int i = 0; i < group * d; i++) q[(t - t0) * group * d + i] = query[i] * job.Scale;
                }
                new Span<float>(acc, count * d).Clear();
                new Span<float>(max, count).Fill(float.NegativeInfinity);
                new Span<float>(sum, count).Clear();
                int lastVisible = job.Start + t1; // keys the last token of the block sees
                for (int tile = 0; tile < lastVisible; tile += Tile)
                {
                    int n = Math.Min(Tile, lastVisible - tile);
                    // Keys of the tile as f32 rows (f16 is widened once here, not once per query head or token).
                    float* keys;
                    int keyStride;
                    if (keysF32) { keys = (float*)job.K + (long)tile * kvRow + g * d; keyStride = kvRow; }
                    else { Widen((ushort*)job.K + (long)tile * kvRow + g * d, kvRow, n, d, keyTile); keys = keyTile; keyStride = d; }
                    for (int t = t0; t < t1; t++)
                    {
                        int visible = Math.Min(n, job.Start + t + 1 - tile); // causal: this token's keys in the tile
                        for (int h = 0; h < group; h++)
                        {
                            int lane = (t - t0) * group + h;
                            float* qh = q + lane * d, sc = scores + lane * Tile;
                            if (visible <= 0) continue;
                            for (int j = 0; j < visible; j++) sc[j] = Dot(qh, keys + (long)j * keyStride, d);
                            // Online softmax: rescale what was accumulated under the old maximum.
                            var row = new Span<float>(sc, visible);
                            float newMax = MathF.Max(max[lane], TensorPrimitives.Max(row)), correction = MathF.Exp(max[lane] - newMax);
                            TensorPrimitives.Subtract(row, newMax, row);
                            TensorPrimitives.Exp(row, row);
                            sum[lane] = sum[lane] * correction + TensorPrimitives.Sum(row);
                            max[lane] = newMax;
                            if (correction != 1f) TensorPrimitives.Multiply(new Span<float>(acc + lane * d, d), correction, new Span<float>(acc + lane * d, d));
                        }
                    }
                    float* values;
                    int valueStride;
                    if (valuesF32) { values = (float*)job.V + (long)tile * kvRow + g * d; valueStride = kvRow; }
                    else { Widen((ushort*)job.V + (long)tile * kvRow + g * d, kvRow, n, d, valueTile); values = valueTile; valueStride = d; }
                    for (int t = t0; t < t1; t++)
                    {
                        int visible = Math.Min(n, job.Start + t + 1 - tile);
                        if (visible <= 0) continue;
                        for (int h = 0; h < group; h++)
                        {
                            int lane = (t - t0) * group + h;
                            WeightedSum(scores + lane * Tile, values, valueStride, visible, d, acc + lane * d);
                        }
                    }
                }
                for (int t = t0; t < t1; t++)
                {
                    for (int h = 0; h < group; h++)
                    {
                        int lane = (t - t0) * group + h;
                        float* o = job.O + (long)t * qRow + (g * group + h) * d;
                        float factor = 1f / sum[lane];
                        for (int i = 0; i < d; i++) o[i] = acc[lane * d + i] * factor;
                    }
                }
            }
        }
    }

    /// <summary><paramref name="rows"/> f16 rows of <paramref name="length"/> (source rows <paramref name="stride"/> apart) → contiguous f32.</summary>
    static void Widen(ushort* source, int stride, int rows, int length, float* destination)
    {
        for (int j = 0; j < rows; j++) HalfDot.WidenF16(source + (long)j * stride, destination + (long)j * length, length);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float result = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var acc = Vector512<float>.Zero;
            for (; i + 16 <= n; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), acc);
            result = Vector512.Sum(acc);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; i + 8 <= n; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), acc);
            result = Vector256.Sum(acc);
        }
        for (; i < n; i++) result += a[i] * b[i];
        return result;
    }

    /// <summary>destination += Σ_j weights[j] · rows[j] over <paramref name="count"/> rows of <paramref name="n"/> floats.</summary>
    static void WeightedSum(float* weights, float* rows, int stride, int count, int n, float* destination)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i + 16 <= n; i += 16)
            {
                var acc = Vector512.Load(destination + i);
                for (int j = 0; j < count; j++) acc = Vector512.FusedMultiplyAdd(Vector512.Load(rows + (long)j * stride + i), Vector512.Create(weights[j]), acc);
                acc.Store(destination + i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= n; i += 8)
            {
                var acc = Vector256.Load(destination + i);
                for (int j = 0; j < count; j++) acc = Vector256.FusedMultiplyAdd(Vector256.Load(rows + (long)j * stride + i), Vector256.Create(weights[j]), acc);
                acc.Store(destination + i);
            }
        }
        for (; i < n; i++)
        {
            float acc = destination[i];
            for (int j = 0; j < count; j++) acc += weights[j] * rows[(long)j * stride + i];
            destination[i] = acc;
        }
    }
}
