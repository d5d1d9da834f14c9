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
    /// (running max and sum), so memory stays bounded at any context length. Keys and values are f32 or f16; f16 is
    /// widened in registers (see <see cref="HalfDot"/> for the exact power-of-two scaling that makes this possible).
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
        if (tokenCount == 0) return;
        fixed (float* pq = queries, po = destination)
        fixed (byte* pk = keys, pv = values)
        {
            var job = new Job
            {
                Q = pq, K = pk, V = pv, O = po, Tokens = tokenCount, Start = startPosition, Heads = headCount, KvHeads = kvHeadCount,
                HeadDim = headDim, Scale = scale,
            };
            delegate*<void*, int, int, void> run = (keyType, valueType) switch
            {
                (GgmlType.F32, GgmlType.F32) => &Execute<F32, F32>,
                (GgmlType.F16, GgmlType.F16) => &Execute<F16, F16>,
                (GgmlType.F32, GgmlType.F16) => &Execute<F32, F16>,
                (GgmlType.F16, GgmlType.F32) => &Execute<F16, F32>,
                _ => throw new ArgumentException($"KV types {keyType}/{valueType} are not supported (f32, f16)"),
            };
            (pool ?? WorkerPool.Shared).Run(run, &job);
        }
    }

    static int ElementSize(GgmlType type) => type == GgmlType.F32 ? 4 : 2;

    struct Job
    {
        public float* Q, O;
        public byte* K, V;
        public int Tokens, Start, Heads, KvHeads, HeadDim;
        public float Scale;
    }

    /// <summary>How one KV element type is read: a dot with an f32 vector and an axpy into an f32 accumulator.</summary>
    interface IElement
    {
        static abstract int Size { get; }
        /// <summary>Factor to apply to the f32 operand before <see cref="Dot"/>/<see cref="AddScaled"/>; the results carry 1/(InputScale·OutputScale).</summary>
        static abstract float InputScale { get; }
        static abstract float OutputScale { get; }
        static abstract float Dot(float* a, byte* b, int n);
        static abstract void AddScaled(byte* x, float factor, float* destination, int n);
    }

    struct F32 : IElement
    {
        public static int Size => 4;
        public static float InputScale => 1f;
        public static float OutputScale => 1f;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Dot(float* a, byte* bytes, int n)
        {
            float* b = (float*)bytes;
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
        public static void AddScaled(byte* bytes, float factor, float* destination, int n)
        {
            float* x = (float*)bytes;
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
    }

    /// <summary>f16 elements as f32 bits w·2^−112 (sign extension, shift, mask), made exact by the power-of-two scales.</summary>
    struct F16 : IElement
    {
        public static int Size => 2;
        public static float InputScale => HalfDot.InputScale;
        public static float OutputScale => HalfDot.OutputScale;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static float Bits(ushort h) => BitConverter.Int32BitsToSingle(((short)h << 13) & unchecked((int)0x8FFFFFFF));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Dot(float* a, byte* bytes, int n)
        {
            ushort* b = (ushort*)bytes;
            int i = 0;
            float result = 0;
            if (Avx512F.IsSupported && n >= 16)
            {
                var mask = Vector512.Create(unchecked((int)0x8FFFFFFF));
                var acc = Vector512<float>.Zero;
                for (; i + 16 <= n; i += 16)
                {
                    var h = Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)(b + i)));
                    acc = Avx512F.FusedMultiplyAdd(Avx512F.And(Avx512F.ShiftLeftLogical(h, 13), mask).AsSingle(), Avx512F.LoadVector512(a + i), acc);
                }
                result = Vector512.Sum(acc);
            }
            else if (Avx2.IsSupported && Fma.IsSupported && n >= 8)
            {
                var mask = Vector256.Create(unchecked((int)0x8FFFFFFF));
                var acc = Vector256<float>.Zero;
                for (; i + 8 <= n; i += 8)
                {
                    var h = Avx2.ConvertToVector256Int32(Sse2.LoadVector128((short*)(b + i)));
                    acc = Fma.MultiplyAdd(Avx2.And(Avx2.ShiftLeftLogical(h, 13), mask).AsSingle(), Avx.LoadVector256(a + i), acc);
                }
                result = Vector256.Sum(acc);
            }
            for (; i < n; i++) result += a[i] * Bits(b[i]);
            return result;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void AddScaled(byte* bytes, float factor, float* destination, int n)
        {
            ushort* x = (ushort*)bytes;
            int i = 0;
            if (Avx512F.IsSupported)
            {
                var mask = Vector512.Create(unchecked((int)0x8FFFFFFF));
                var f = Vector512.Create(factor);
                for (; i + 16 <= n; i += 16)
                {
                    var h = Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)(x + i)));
                    Avx512F.FusedMultiplyAdd(Avx512F.And(Avx512F.ShiftLeftLogical(h, 13), mask).AsSingle(), f, Avx512F.LoadVector512(destination + i)).Store(destination + i);
                }
            }
            if (Avx2.IsSupported && Fma.IsSupported)
            {
                var mask = Vector256.Create(unchecked((int)0x8FFFFFFF));
                var f = Vector256.Create(factor);
                for (; i + 8 <= n; i += 8)
                {
                    var h = Avx2.ConvertToVector256Int32(Sse2.LoadVector128((short*)(x + i)));
                    Fma.MultiplyAdd(Avx2.And(Avx2.ShiftLeftLogical(h, 13), mask).AsSingle(), f, Avx.LoadVector256(destination + i)).Store(destination + i);
                }
            }
            for (; i < n; i++) destination[i] += Bits(x[i]) * factor;
        }
    }

    [ThreadStatic] static float[]? scratch;

    static void Execute<TK, TV>(void* context, int thread, int threads) where TK : struct, IElement where TV : struct, IElement
    {
        ref Job job = ref *(Job*)context;
        int group = job.Heads / job.KvHeads, d = job.HeadDim, kvRow = job.KvHeads * d, qRow = job.Heads * d;
        int need = group * (Tile + 2 * d + 2);
        if (scratch == null || scratch.Length < need) scratch = new float[need];
        var (start, end) = WorkerPool.Split(job.Tokens * job.KvHeads, thread, threads);
        float queryScale = job.Scale * TK.InputScale, scoreScale = TK.OutputScale;
        fixed (float* buffer = scratch)
        {
            float* scores = buffer, acc = scores + group * Tile, q = acc + group * d, max = q + group * d, sum = max + group;
            for (int item = start; item < end; item++)
            {
                int t = item / job.KvHeads, g = item % job.KvHeads, visible = job.Start + t + 1;
                float* query = job.Q + (long)t * qRow + g * group * d;
                for (int i = 0; i < group * d; i++) q[i] = query[i] * queryScale;
                new Span<float>(acc, group * d).Clear();
                new Span<float>(max, group).Fill(float.NegativeInfinity);
                new Span<float>(sum, group).Clear();
                for (int tile = 0; tile < visible; tile += Tile)
                {
                    int n = Math.Min(Tile, visible - tile);
                    for (int j = 0; j < n; j++)
                    {
                        byte* k = job.K + ((long)(tile + j) * kvRow + g * d) * TK.Size;
                        for (int h = 0; h < group; h++) scores[h * Tile + j] = TK.Dot(q + h * d, k, d) * scoreScale;
                    }
                    for (int h = 0; h < group; h++)
                    {
                        float* s = scores + h * Tile;
                        float tileMax = float.NegativeInfinity;
                        for (int j = 0; j < n; j++) tileMax = MathF.Max(tileMax, s[j]);
                        float newMax = MathF.Max(max[h], tileMax), correction = MathF.Exp(max[h] - newMax), total = 0;
                        for (int j = 0; j < n; j++)
                        {
                            float p = MathF.Exp(s[j] - newMax);
                            total += p;
                            s[j] = p * TV.InputScale;
                        }
                        sum[h] = sum[h] * correction + total;
                        max[h] = newMax;
                        if (correction != 1f) for (int i = 0; i < d; i++) acc[h * d + i] *= correction;
                    }
                    for (int j = 0; j < n; j++)
                    {
                        byte* v = job.V + ((long)(tile + j) * kvRow + g * d) * TV.Size;
                        for (int h = 0; h < group; h++) TV.AddScaled(v, scores[h * Tile + j], acc + h * d, d);
                    }
                }
                for (int h = 0; h < group; h++)
                {
                    float* o = job.O + (long)t * qRow + (g * group + h) * d;
                    float factor = TV.OutputScale / sum[h];
                    for (int i = 0; i < d; i++) o[i] = acc[h * d + i] * factor;
                }
            }
        }
    }
}
