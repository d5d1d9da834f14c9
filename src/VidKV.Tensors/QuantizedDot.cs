using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Activations quantised to 8 bits for integer dot products with Q8_0/Q4_0 weights, as ggml does for its
/// <c>vec_dot_type = Q8_0</c>: per block of 32, d = max|x|/127 (stored rounded to f16), q = round-half-even(x/d).
/// Numerical effect: each activation carries at most half a step (max|x|/254 of its block) of rounding error, so a
/// dot product differs from the f32 one by at most Σ|w|·max|x|/254 per block — the same error llama.cpp has.
/// </summary>
internal static unsafe class QuantizedDot
{
    public const int BlockSize = 32;

    /// <summary>
    /// f16 bits → f32 for every 16-bit pattern (256 KiB), for per-block scales. A pointer into a pinned array (an array
    /// would add a bounds check per block). Kernels copy it into a local before their loops: they are compiled once
    /// at full optimisation (AggressiveOptimization), possibly before this class is initialised, and then every read
    /// of the static inside the loop carried a class-initialisation check and a reload, which also pushed the
    /// accumulators to the stack — the Q8_0 decode dot ran at 2.5 ns per block instead of 1.7 (single thread, rows in L2).
    /// </summary>
    static readonly float* HalfToFloat = BuildHalfTable();

    static float* BuildHalfTable()
    {
        var table = GC.AllocateArray<float>(65536, pinned: true);
        for (int i = 0; i < table.Length; i++) table[i] = (float)BitConverter.UInt16BitsToHalf((ushort)i);
        pinnedTable = table;
        return (float*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref table[0]);
    }

    static float[]? pinnedTable;

    /// <summary>
    /// Quantises one row (a multiple of 32 long) to int8 <paramref name="quants"/> and one scale per block; when
    /// <paramref name="sums"/> is given it also receives d·Σq per block (for weights stored with an offset, like Q4_0).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeRow(ReadOnlySpan<float> x, Span<sbyte> quants, Span<float> scales, Span<float> sums = default)
    {
        int blocks = x.Length / BlockSize;
        fixed (float* px = x)
        fixed (sbyte* pq = quants)
        fixed (float* ps = scales)
        {
            for (int b = 0; b < blocks; b++)
            {
                float* v = px + b * BlockSize;
                sbyte* q = pq + b * BlockSize;
                if (Avx2.IsSupported)
                {
                    var v0 = Avx.LoadVector256(v); var v1 = Avx.LoadVector256(v + 8); var v2 = Avx.LoadVector256(v + 16); var v3 = Avx.LoadVector256(v + 24);
                    var max = Vector256.Max(Vector256.Max(Vector256.Abs(v0), Vector256.Abs(v1)), Vector256.Max(Vector256.Abs(v2), Vector256.Abs(v3)));
                    var m128 = Vector128.Max(max.GetLower(), max.GetUpper());
                    m128 = Vector128.Max(m128, Sse.Shuffle(m128, m128, 0b_01_00_11_10));
                    m128 = Vector128.Max(m128, Sse.Shuffle(m128, m128, 0b_10_11_00_01));
                    float amax = m128.ToScalar(), d = amax / 127f, id = d != 0 ? 1f / d : 0f;
                    ps[b] = (float)(Half)d;
                    var scale = Vector256.Create(id);
                    var i0 = Avx.ConvertToVector256Int32(Avx.Multiply(v0, scale)); var i1 = Avx.ConvertToVector256Int32(Avx.Multiply(v1, scale));
                    var i2 = Avx.ConvertToVector256Int32(Avx.Multiply(v2, scale)); var i3 = Avx.ConvertToVector256Int32(Avx.Multiply(v3, scale));
                    var s01 = Avx2.PackSignedSaturate(i0, i1); var s23 = Avx2.PackSignedSaturate(i2, i3);
                    var bytes = Avx2.PackSignedSaturate(s01, s23);
                    // The packs interleave 128-bit lanes; restore element order.
                    bytes = Avx2.PermuteVar8x32(bytes.AsInt32(), Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7)).AsSByte();
                    Avx.Store(q, bytes);
                    if (!sums.IsEmpty)
                    {
                        var pairs = Avx2.MultiplyAddAdjacent(Vector256.Create((byte)1), bytes);
                        sums[b] = ps[b] * Vector256.Sum(Avx2.MultiplyAddAdjacent(pairs, Vector256.Create((short)1)));
                    }
                }
                else
                {
                    float amax = 0;
                    for (int j = 0; j < BlockSize; j++) amax = MathF.Max(amax, MathF.Abs(v[j]));
                    float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
                    ps[b] = (float)(Half)d;
                    int total = 0;
                    for (int j = 0; j < BlockSize; j++) total += q[j] = (sbyte)MathF.Round(v[j] * id, MidpointRounding.ToEven);
                    if (!sums.IsEmpty) sums[b] = ps[b] * total;
                }
            }
        }
    }

    /// <summary>Σ dequant(w)·dequant(x) over <paramref name="blocks"/> Q8_0 weight blocks and quantised activations.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static float DotQ8_0(byte* w, sbyte* xq, float* xd, int blocks)
    {
        float* toFloat = HalfToFloat;
        if (Avx2.IsSupported && Fma.IsSupported)
        {
            var acc0 = Vector256<float>.Zero;
            var acc1 = Vector256<float>.Zero;
            int b = 0;
            for (; b + 1 < blocks; b += 2, w += 68)
            {
                acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(MulSum(Avx.LoadVector256((sbyte*)(w + 2)), Avx.LoadVector256(xq + 32 * b))),
                    Vector256.Create(toFloat[*(ushort*)w] * xd[b]), acc0);
                acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(MulSum(Avx.LoadVector256((sbyte*)(w + 36)), Avx.LoadVector256(xq + 32 * b + 32))),
                    Vector256.Create(toFloat[*(ushort*)(w + 34)] * xd[b + 1]), acc1);
            }
            if (b < blocks)
                acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(MulSum(Avx.LoadVector256((sbyte*)(w + 2)), Avx.LoadVector256(xq + 32 * b))),
                    Vector256.Create(toFloat[*(ushort*)w] * xd[b]), acc0);
            return Vector256.Sum(acc0 + acc1);
        }
        return DotQ8_0Scalar(w, xq, xd, blocks);
    }

    /// <summary>
    /// Σ dequant(w)·dequant(x) over <paramref name="blocks"/> Q4_0 weight blocks. The nibbles q ∈ [0, 15] multiply the
    /// signed activations directly (no sign juggling) and the −8 offset comes back as −8·Σ_b d_w·(d_x·Σq_x) from
    /// <paramref name="xs"/>, the per-block activation sums of <see cref="QuantizeRow"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static float DotQ4_0(byte* w, sbyte* xq, float* xd, float* xs, int blocks)
    {
        float* toFloat = HalfToFloat;
        if (Avx2.IsSupported && Fma.IsSupported)
        {
            var acc0 = Vector256<float>.Zero;
            var acc1 = Vector256<float>.Zero;
            float offset = 0;
            var ones = Vector256.Create((short)1);
            int b = 0;
            for (; b + 1 < blocks; b += 2, w += 36)
            {
                float d0 = toFloat[*(ushort*)w], d1 = toFloat[*(ushort*)(w + 18)];
                var p0 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Nibbles(w + 2), Avx.LoadVector256(xq + 32 * b)), ones);
                var p1 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Nibbles(w + 20), Avx.LoadVector256(xq + 32 * b + 32)), ones);
                acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(p0), Vector256.Create(d0 * xd[b]), acc0);
                acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(p1), Vector256.Create(d1 * xd[b + 1]), acc1);
                offset += d0 * xs[b] + d1 * xs[b + 1];
            }
            if (b < blocks)
            {
                float d0 = toFloat[*(ushort*)w];
                var p0 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Nibbles(w + 2), Avx.LoadVector256(xq + 32 * b)), ones);
                acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(p0), Vector256.Create(d0 * xd[b]), acc0);
                offset += d0 * xs[b];
            }
            return Vector256.Sum(acc0 + acc1) - 8 * offset;
        }
        return DotQ4_0Scalar(w, xq, xd, blocks);
    }

    /// <summary>
    /// Two Q8_0 rows against four tokens (prefill): each weight block (and its absolute value) is loaded once for four
    /// tokens and each activation block once for two rows. Results go to <paramref name="y"/>[token·ldy + row].
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void DotQ8_0Tile2x4(byte* w, int rowBytes, sbyte* xq, float* xd, int columns, int blocks, float* y, int ldy)
    {
        float* toFloat = HalfToFloat;
        var a00 = Vector256<float>.Zero; var a01 = Vector256<float>.Zero; var a02 = Vector256<float>.Zero; var a03 = Vector256<float>.Zero;
        var a10 = Vector256<float>.Zero; var a11 = Vector256<float>.Zero; var a12 = Vector256<float>.Zero; var a13 = Vector256<float>.Zero;
        var ones = Vector256.Create((short)1);
        byte* w0 = w, w1 = w + rowBytes;
        sbyte* x0 = xq, x1 = xq + columns, x2 = xq + 2 * columns, x3 = xq + 3 * columns;
        float* d0 = xd, d1 = xd + blocks, d2 = xd + 2 * blocks, d3 = xd + 3 * blocks;
        for (int b = 0; b < blocks; b++, w0 += 34, w1 += 34)
        {
            // |w| once per row, x·sign(w) per row and token (see MulSum for why the sign goes on x).
            var q0 = Avx.LoadVector256((sbyte*)(w0 + 2)); var a0 = Avx2.Abs(q0);
            var q1 = Avx.LoadVector256((sbyte*)(w1 + 2)); var a1 = Avx2.Abs(q1);
            float s0 = toFloat[*(ushort*)w0], s1 = toFloat[*(ushort*)w1];
            var x = Avx.LoadVector256(x0 + 32 * b);
            a00 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(a0, Avx2.Sign(x, q0)), ones)), Vector256.Create(s0 * d0[b]), a00);
            a10 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(a1, Avx2.Sign(x, q1)), ones)), Vector256.Create(s1 * d0[b]), a10);
            x = Avx.LoadVector256(x1 + 32 * b);
            a01 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(a0, Avx2.Sign(x, q0)), ones)), Vector256.Create(s0 * d1[b]), a01);
            a11 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(a1, Avx2.Sign(x, q1)), ones)), Vector256.Create(s1 * d1[b]), a11);
            x = Avx.LoadVector256(x2 + 32 * b);
            a02 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(a0, Avx2.Sign(x, q0)), ones)), Vector256.Create(s0 * d2[b]), a02);
            a12 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(a1, Avx2.Sign(x, q1)), ones)), Vector256.Create(s1 * d2[b]), a12);
            x = Avx.LoadVector256(x3 + 32 * b);
            a03 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(a0, Avx2.Sign(x, q0)), ones)), Vector256.Create(s0 * d3[b]), a03);
            a13 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(a1, Avx2.Sign(x, q1)), ones)), Vector256.Create(s1 * d3[b]), a13);
        }
        y[0] = Vector256.Sum(a00); y[1] = Vector256.Sum(a10);
        y[ldy] = Vector256.Sum(a01); y[ldy + 1] = Vector256.Sum(a11);
        y[2 * ldy] = Vector256.Sum(a02); y[2 * ldy + 1] = Vector256.Sum(a12);
        y[3 * ldy] = Vector256.Sum(a03); y[3 * ldy + 1] = Vector256.Sum(a13);
    }

    /// <summary>Two Q4_0 rows against four tokens (prefill); see <see cref="DotQ4_0"/> for the offset handling.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void DotQ4_0Tile2x4(byte* w, int rowBytes, sbyte* xq, float* xd, float* xs, int columns, int blocks, float* y, int ldy)
    {
        float* toFloat = HalfToFloat;
        var a00 = Vector256<float>.Zero; var a01 = Vector256<float>.Zero; var a02 = Vector256<float>.Zero; var a03 = Vector256<float>.Zero;
        var a10 = Vector256<float>.Zero; var a11 = Vector256<float>.Zero; var a12 = Vector256<float>.Zero; var a13 = Vector256<float>.Zero;
        var offsets = Vector256<float>.Zero; // lanes: row0 t0..t3, row1 t0..t3
        var ones = Vector256.Create((short)1);
        byte* w0 = w, w1 = w + rowBytes;
        sbyte* x0 = xq, x1 = xq + columns, x2 = xq + 2 * columns, x3 = xq + 3 * columns;
        float* d0 = xd, d1 = xd + blocks, d2 = xd + 2 * blocks, d3 = xd + 3 * blocks;
        float* s0p = xs, s1p = xs + blocks, s2p = xs + 2 * blocks, s3p = xs + 3 * blocks;
        for (int b = 0; b < blocks; b++, w0 += 18, w1 += 18)
        {
            var q0 = Nibbles(w0 + 2);
            var q1 = Nibbles(w1 + 2);
            float s0 = toFloat[*(ushort*)w0], s1 = toFloat[*(ushort*)w1];
            var x = Avx.LoadVector256(x0 + 32 * b);
            a00 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q0, x), ones)), Vector256.Create(s0 * d0[b]), a00);
            a10 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q1, x), ones)), Vector256.Create(s1 * d0[b]), a10);
            x = Avx.LoadVector256(x1 + 32 * b);
            a01 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q0, x), ones)), Vector256.Create(s0 * d1[b]), a01);
            a11 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q1, x), ones)), Vector256.Create(s1 * d1[b]), a11);
            x = Avx.LoadVector256(x2 + 32 * b);
            a02 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q0, x), ones)), Vector256.Create(s0 * d2[b]), a02);
            a12 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q1, x), ones)), Vector256.Create(s1 * d2[b]), a12);
            x = Avx.LoadVector256(x3 + 32 * b);
            a03 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q0, x), ones)), Vector256.Create(s0 * d3[b]), a03);
            a13 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q1, x), ones)), Vector256.Create(s1 * d3[b]), a13);
            offsets = Fma.MultiplyAdd(Vector256.Create(s0, s0, s0, s0, s1, s1, s1, s1), Vector256.Create(s0p[b], s1p[b], s2p[b], s3p[b], s0p[b], s1p[b], s2p[b], s3p[b]), offsets);
        }
        y[0] = Vector256.Sum(a00) - 8 * offsets.GetElement(0); y[1] = Vector256.Sum(a10) - 8 * offsets.GetElement(4);
        y[ldy] = Vector256.Sum(a01) - 8 * offsets.GetElement(1); y[ldy + 1] = Vector256.Sum(a11) - 8 * offsets.GetElement(5);
        y[2 * ldy] = Vector256.Sum(a02) - 8 * offsets.GetElement(2); y[2 * ldy + 1] = Vector256.Sum(a12) - 8 * offsets.GetElement(6);
        y[3 * ldy] = Vector256.Sum(a03) - 8 * offsets.GetElement(3); y[3 * ldy + 1] = Vector256.Sum(a13) - 8 * offsets.GetElement(7);
    }

    /// <summary>
    /// Σ dequant(w)·dequant(x) over Q4_K super-blocks (256 elements). Each 32-element sub-block j has a 6-bit scale and
    /// min: its contribution is d·sc_j·d_x·Σq·x_q − dmin·m_j·(d_x·Σx_q). The activation blocks of 32 line up with the
    /// sub-blocks, so the per-block sums <paramref name="xs"/> of <see cref="QuantizeRow"/> give the min term directly.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static float DotQ4_K(byte* w, sbyte* xq, float* xd, float* xs, int superBlocks)
    {
        float* toFloat = HalfToFloat;
        if (!Avx2.IsSupported || !Fma.IsSupported) return DotQ4_KScalar(w, xq, xd, xs, superBlocks);
        var acc = Vector256<float>.Zero;
        var ones = Vector256.Create((short)1);
        var lowMask = Vector256.Create((byte)0x0F);
        float minimum = 0;
        for (int sb = 0; sb < superBlocks; sb++, w += 144)
        {
            float d = toFloat[*(ushort*)w], dmin = toFloat[*(ushort*)(w + 2)];
            byte* scales = w + 4;
            for (int chunk = 0; chunk < 4; chunk++)
            {
                int j = 2 * chunk, b = sb * 8 + j;
                var (s1, m1) = Dequantize.ScaleMinK4(j, new ReadOnlySpan<byte>(scales, 12));
                var (s2, m2) = Dequantize.ScaleMinK4(j + 1, new ReadOnlySpan<byte>(scales, 12));
                var packed = Avx.LoadVector256(w + 16 + 32 * chunk);
                var low = packed & lowMask;
                var high = Avx2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & lowMask;
                var p0 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(low, Avx.LoadVector256(xq + 32 * b)), ones);
                var p1 = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(high, Avx.LoadVector256(xq + 32 * b + 32)), ones);
                acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(p0), Vector256.Create(d * s1 * xd[b]), acc);
                acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(p1), Vector256.Create(d * s2 * xd[b + 1]), acc);
                minimum += dmin * (m1 * xs[b] + m2 * xs[b + 1]);
            }
        }
        return Vector256.Sum(acc) - minimum;
    }

    public static float DotQ4_KScalar(byte* w, sbyte* xq, float* xd, float* xs, int superBlocks)
    {
        float* toFloat = HalfToFloat;
        float sum = 0;
        for (int sb = 0; sb < superBlocks; sb++, w += 144)
        {
            float d = toFloat[*(ushort*)w], dmin = toFloat[*(ushort*)(w + 2)];
            for (int j = 0; j < 8; j++)
            {
                var (sc, m) = Dequantize.ScaleMinK4(j, new ReadOnlySpan<byte>(w + 4, 12));
                int b = sb * 8 + j, dot = 0;
                byte* qs = w + 16 + 32 * (j / 2);
                for (int l = 0; l < 32; l++) dot += (j % 2 == 0 ? qs[l] & 0xF : qs[l] >> 4) * xq[32 * b + l];
                sum += d * sc * xd[b] * dot - dmin * m * xs[b];
            }
        }
        return sum;
    }

    /// <summary>
    /// Σ dequant(w)·dequant(x) over Q6_K super-blocks (256 elements): 6-bit values q−32 (low 4 bits in ql, high 2 in qh)
    /// with a signed 8-bit scale per 16 elements. Each activation block of 32 meets two scales.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static float DotQ6_K(byte* w, sbyte* xq, float* xd, int superBlocks)
    {
        float* toFloat = HalfToFloat;
        if (!Avx2.IsSupported || !Fma.IsSupported) return DotQ6_KScalar(w, xq, xd, superBlocks);
        var acc = Vector256<float>.Zero;
        var ones = Vector256.Create((short)1);
        var lowMask = Vector256.Create((byte)0x0F);
        var three = Vector256.Create((byte)3);
        var offset = Vector256.Create((byte)32);
        for (int sb = 0; sb < superBlocks; sb++, w += 210)
        {
            float d = toFloat[*(ushort*)(w + 208)];
            sbyte* scales = (sbyte*)(w + 192);
            for (int half = 0; half < 2; half++)
            {
                byte* ql = w + 64 * half, qh = w + 128 + 32 * half;
                var high = Avx.LoadVector256(qh);
                for (int quarter = 0; quarter < 4; quarter++)
                {
                    var lowBits = Avx.LoadVector256(ql + (quarter % 2) * 32);
                    if (quarter >= 2) lowBits = Avx2.ShiftRightLogical(lowBits.AsUInt16(), 4).AsByte();
                    lowBits &= lowMask;
                    var highBits = Avx2.ShiftRightLogical(high.AsUInt16(), Vector128.CreateScalar((ushort)(2 * quarter))).AsByte() & three;
                    var q = Avx2.Subtract(lowBits | Avx2.ShiftLeftLogical(highBits.AsUInt16(), 4).AsByte(), offset).AsSByte();
                    int b = sb * 8 + half * 4 + quarter;
                    var x = Avx.LoadVector256(xq + 32 * b);
                    var p = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(x), Avx2.Sign(q, x)), ones);
                    // The multiply-adds stay within 128-bit lanes: int32 lanes 0–3 sum elements 0–15, lanes 4–7 elements 16–31.
                    float s = d * xd[b];
                    int si = half * 8 + quarter * 2;
                    var scale = Vector256.Create(s * scales[si], s * scales[si], s * scales[si], s * scales[si],
                        s * scales[si + 1], s * scales[si + 1], s * scales[si + 1], s * scales[si + 1]);
                    acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(p), scale, acc);
                }
            }
        }
        return Vector256.Sum(acc);
    }

    public static float DotQ6_KScalar(byte* w, sbyte* xq, float* xd, int superBlocks)
    {
        float* toFloat = HalfToFloat;
        float sum = 0;
        for (int sb = 0; sb < superBlocks; sb++, w += 210)
        {
            float d = toFloat[*(ushort*)(w + 208)];
            sbyte* scales = (sbyte*)(w + 192);
            for (int e = 0; e < 256; e++)
            {
                int half = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
                int low = (w[half * 64 + l + (quarter % 2) * 32] >> (quarter >= 2 ? 4 : 0)) & 0xF;
                int high = (w[128 + half * 32 + l] >> (2 * quarter)) & 3;
                int b = sb * 8 + e / 32;
                sum += d * scales[half * 8 + quarter * 2 + l / 16] * xd[b] * ((low | (high << 4)) - 32) * xq[32 * b + l];
            }
        }
        return sum;
    }

    /// <summary>
    /// Eight int32 sums of four products each: w·x for 32 signed bytes, via the unsigned×signed multiply-add on |w| and
    /// x·sign(w). The sign goes on the activations (|x| ≤ 127, so negating is safe) and the absolute value on the
    /// weights (|−128| = 128 read unsigned): the other way round a weight of −128 — legal in a Q8_0 file — negated to
    /// itself and the product came out with the wrong sign.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> MulSum(Vector256<sbyte> w, Vector256<sbyte> x) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(w), Avx2.Sign(x, w)), Vector256.Create((short)1));

    /// <summary>The 32 unsigned 4-bit values of a Q4_0 block: low nibbles first, then high nibbles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<byte> Nibbles(byte* qs)
    {
        var packed = Sse2.LoadVector128(qs);
        return Vector256.Create(packed, Sse2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte()) & Vector256.Create((byte)0x0F);
    }

    public static float DotQ8_0Scalar(byte* w, sbyte* xq, float* xd, int blocks)
    {
        float* toFloat = HalfToFloat;
        float sum = 0;
        for (int b = 0; b < blocks; b++, w += 34)
        {
            int dot = 0;
            sbyte* q = (sbyte*)(w + 2);
            for (int j = 0; j < 32; j++) dot += q[j] * xq[32 * b + j];
            sum += dot * (toFloat[*(ushort*)w] * xd[b]);
        }
        return sum;
    }

    public static float DotQ4_0Scalar(byte* w, sbyte* xq, float* xd, int blocks)
    {
        float* toFloat = HalfToFloat;
        float sum = 0;
        for (int b = 0; b < blocks; b++, w += 18)
        {
            int dot = 0;
            for (int j = 0; j < 16; j++)
            {
                dot += ((w[2 + j] & 0xF) - 8) * xq[32 * b + j];
                dot += ((w[2 + j] >> 4) - 8) * xq[32 * b + j + 16];
            }
            sum += dot * (toFloat[*(ushort*)w] * xd[b]);
        }
        return sum;
    }
}
