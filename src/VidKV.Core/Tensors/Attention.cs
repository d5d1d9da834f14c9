using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace VidKV.Tensors;

/// <summary>Scaled dot-product attention kernels over a contiguous KV store.</summary>
public static unsafe class Attention
{
    /// <summary>Keys per tile of the online softmax.</summary>
    const int Tile = 128;

    /// <summary>
    /// Causal grouped-query attention for a batch of <paramref name="tokenCount"/> queries at positions
    /// <paramref name="startPosition"/>.. : query t sees keys 0..startPosition+t. Work items are (token, KV head); each
    /// reads its keys and values once for all the query heads that share them, in tiles with an online softmax
    /// (running max and sum), so memory stays bounded at any context length.
    /// </summary>
    /// <param name="queries">[tokenCount, headCount, headDim]</param>
    /// <param name="keys">[positions, kvHeadCount, headDim], keys already rotated</param>
    /// <param name="values">[positions, kvHeadCount, headDim]</param>
    /// <param name="destination">[tokenCount, headCount, headDim]</param>
    public static void Causal(ReadOnlySpan<float> queries, ReadOnlySpan<float> keys, ReadOnlySpan<float> values,
        int tokenCount, int startPosition, int headCount, int kvHeadCount, int headDim, float scale, Span<float> destination,
        WorkerPool? pool = null)
    {
        int positions = startPosition + tokenCount;
        if (keys.Length < positions * kvHeadCount * headDim || values.Length < positions * kvHeadCount * headDim)
            throw new ArgumentException("KV store shorter than the attended positions");
        if (headCount % kvHeadCount != 0) throw new ArgumentException("head count must be a multiple of the KV head count");
        fixed (float* pq = queries, pk = keys, pv = values, po = destination)
        {
            var job = new Job
            {
                Q = pq, K = pk, V = pv, O = po, Tokens = tokenCount, Start = startPosition, Heads = headCount, KvHeads = kvHeadCount,
                HeadDim = headDim, Scale = scale,
            };
            (pool ?? WorkerPool.Shared).Run(&Execute, &job);
        }
    }

    struct Job
    {
        public float* Q, K, V, O;
        public int Tokens, Start, Heads, KvHeads, HeadDim;
        public float Scale;
    }

    [ThreadStatic] static float[]? scratch;

    static void Execute(void* context, int thread, int threads)
    {
        ref Job job = ref *(Job*)context;
        int group = job.Heads / job.KvHeads, d = job.HeadDim, kvRow = job.KvHeads * d, qRow = job.Heads * d;
        int need = group * (Tile + d + 2);
        if (scratch == null || scratch.Length < need) scratch = new float[need];
        var (start, end) = WorkerPool.Split(job.Tokens * job.KvHeads, thread, threads);
        fixed (float* buffer = scratch)
        {
            float* scores = buffer, acc = buffer + group * Tile, max = acc + group * d, sum = max + group;
            for (int item = start; item < end; item++)
            {
                int t = item / job.KvHeads, g = item % job.KvHeads, visible = job.Start + t + 1;
                float* q = job.Q + (long)t * qRow + g * group * d;
                new Span<float>(acc, group * d).Clear();
                new Span<float>(max, group).Fill(float.NegativeInfinity);
                new Span<float>(sum, group).Clear();
                for (int tile = 0; tile < visible; tile += Tile)
                {
                    int n = Math.Min(Tile, visible - tile);
                    for (int j = 0; j < n; j++)
                    {
                        float* k = job.K + (long)(tile + j) * kvRow + g * d;
                        for (int h = 0; h < group; h++) scores[h * Tile + j] = Dot(q + h * d, k, d) * job.Scale;
                    }
                    for (int h = 0; h < group; h++)
                    {
                        float* s = scores + h * Tile;
                        float tileMax = float.NegativeInfinity;
                        for (int j = 0; j < n; j++) tileMax = MathF.Max(tileMax, s[j]);
                        float newMax = MathF.Max(max[h], tileMax), correction = MathF.Exp(max[h] - newMax), total = 0;
                        for (int j = 0; j < n; j++) total += s[j] = MathF.Exp(s[j] - newMax);
                        sum[h] = sum[h] * correction + total;
                        max[h] = newMax;
                        if (correction != 1f) Scale(acc + h * d, correction, d);
                    }
                    for (int j = 0; j < n; j++)
                    {
                        float* v = job.V + (long)(tile + j) * kvRow + g * d;
                        for (int h = 0; h < group; h++) AddScaled(v, scores[h * Tile + j], acc + h * d, d);
                    }
                }
                for (int h = 0; h < group; h++)
                {
                    float* o = job.O + (long)t * qRow + (g * group + h) * d;
                    float inverse = 1f / sum[h];
                    for (int i = 0; i < d; i++) o[i] = acc[h * d + i] * inverse;
                }
            }
        }
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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void AddScaled(float* x, float factor, float* destination, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var f = Vector512.Create(factor);
            for (; i + 16 <= n; i += 16) Vector512.FusedMultiplyAdd(Vector512.Load(x + i), f, Vector512.Load(destination + i)).Store(destination + i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var f = Vector256.Create(factor);
            for (; i + 8 <= n; i += 8) Vector256.FusedMultiplyAdd(Vector256.Load(x + i), f, Vector256.Load(destination + i)).Store(destination + i);
        }
        for (; i < n; i++) destination[i] += x[i] * factor;
    }

    static void Scale(float* x, float factor, int n)
    {
        for (int i = 0; i < n; i++) x[i] *= factor;
    }
}
