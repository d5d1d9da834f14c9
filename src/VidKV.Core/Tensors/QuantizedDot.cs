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
public static unsafe class QuantizedDot
{
    public const int BlockSize = 32;

    /// <summary>f16 bits → f32 for every 16-bit pattern (256 KiB), for per-block scales.</summary>
    internal static readonly float[] HalfToFloat = BuildHalfTable();

    static float[] BuildHalfTable()
    {
        var table = new float[65536];
        for (int i = 0; i < table.Length; i++) table[i] = (float)BitConverter.UInt16BitsToHalf((ushort)i);
        return table;
    }

    /// <summary>Quantises one row (a multiple of 32 long) to int8 <paramref name="quants"/> and one scale per block.</summary>
    public static void QuantizeRow(ReadOnlySpan<float> x, Span<sbyte> quants, Span<float> scales)
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
                }
                else
                {
                    float amax = 0;
                    for (int j = 0; j < BlockSize; j++) amax = MathF.Max(amax, MathF.Abs(v[j]));
                    float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
                    ps[b] = (float)(Half)d;
                    for (int j = 0; j < BlockSize; j++) q[j] = (sbyte)MathF.Round(v[j] * id, MidpointRounding.ToEven);
                }
            }
        }
    }

    /// <summary>Σ dequant(w)·dequant(x) over <paramref name="blocks"/> Q8_0 weight blocks and quantised activations.</summary>
    public static float DotQ8_0(byte* w, sbyte* xq, float* xd, int blocks)
    {
        if (Avx2.IsSupported && Fma.IsSupported)
        {
            var acc0 = Vector256<float>.Zero;
            var acc1 = Vector256<float>.Zero;
            int b = 0;
            for (; b + 1 < blocks; b += 2, w += 68)
            {
                acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(MulSum(Avx.LoadVector256((sbyte*)(w + 2)), Avx.LoadVector256(xq + 32 * b))),
                    Vector256.Create(HalfToFloat[*(ushort*)w] * xd[b]), acc0);
                acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(MulSum(Avx.LoadVector256((sbyte*)(w + 36)), Avx.LoadVector256(xq + 32 * b + 32))),
                    Vector256.Create(HalfToFloat[*(ushort*)(w + 34)] * xd[b + 1]), acc1);
            }
            if (b < blocks)
                acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(MulSum(Avx.LoadVector256((sbyte*)(w + 2)), Avx.LoadVector256(xq + 32 * b))),
                    Vector256.Create(HalfToFloat[*(ushort*)w] * xd[b]), acc0);
            return Vector256.Sum(acc0 + acc1);
        }
        return DotQ8_0Scalar(w, xq, xd, blocks);
    }

    /// <summary>Σ dequant(w)·dequant(x) over <paramref name="blocks"/> Q4_0 weight blocks and quantised activations.</summary>
    public static float DotQ4_0(byte* w, sbyte* xq, float* xd, int blocks)
    {
        if (Avx2.IsSupported && Fma.IsSupported)
        {
            var acc0 = Vector256<float>.Zero;
            var acc1 = Vector256<float>.Zero;
            int b = 0;
            for (; b + 1 < blocks; b += 2, w += 36)
            {
                acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(MulSum(Nibbles(w + 2), Avx.LoadVector256(xq + 32 * b))),
                    Vector256.Create(HalfToFloat[*(ushort*)w] * xd[b]), acc0);
                acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(MulSum(Nibbles(w + 20), Avx.LoadVector256(xq + 32 * b + 32))),
                    Vector256.Create(HalfToFloat[*(ushort*)(w + 18)] * xd[b + 1]), acc1);
            }
            if (b < blocks)
                acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(MulSum(Nibbles(w + 2), Avx.LoadVector256(xq + 32 * b))),
                    Vector256.Create(HalfToFloat[*(ushort*)w] * xd[b]), acc0);
            return Vector256.Sum(acc0 + acc1);
        }
        return DotQ4_0Scalar(w, xq, xd, blocks);
    }

    /// <summary>Eight int32 sums of four products each: w·x for 32 signed bytes (|x| ≤ 127), via the unsigned×signed multiply-add.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> MulSum(Vector256<sbyte> w, Vector256<sbyte> x) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(x), Avx2.Sign(w, x)), Vector256.Create((short)1));

    /// <summary>The 32 signed 4-bit values of a Q4_0 block: low nibbles first, then high nibbles, minus 8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<sbyte> Nibbles(byte* qs)
    {
        var packed = Sse2.LoadVector128(qs);
        var both = Vector256.Create(packed, Sse2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte()) & Vector256.Create((byte)0x0F);
        return Avx2.Subtract(both, Vector256.Create((byte)8)).AsSByte();
    }

    public static float DotQ8_0Scalar(byte* w, sbyte* xq, float* xd, int blocks)
    {
        float sum = 0;
        for (int b = 0; b < blocks; b++, w += 34)
        {
            int dot = 0;
            sbyte* q = (sbyte*)(w + 2);
            for (int j = 0; j < 32; j++) dot += q[j] * xq[32 * b + j];
            sum += dot * (HalfToFloat[*(ushort*)w] * xd[b]);
        }
        return sum;
    }

    public static float DotQ4_0Scalar(byte* w, sbyte* xq, float* xd, int blocks)
    {
        float sum = 0;
        for (int b = 0; b < blocks; b++, w += 18)
        {
            int dot = 0;
            for (int j = 0; j < 16; j++)
            {
                dot += ((w[2 + j] & 0xF) - 8) * xq[32 * b + j];
                dot += ((w[2 + j] >> 4) - 8) * xq[32 * b + j + 16];
            }
            sum += dot * (HalfToFloat[*(ushort*)w] * xd[b]);
        }
        return sum;
    }
}
