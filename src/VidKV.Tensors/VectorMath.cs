using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// e^x for f32 vectors, written here because <c>TensorPrimitives.Exp</c>/<c>Sigmoid</c> (System.Numerics.Tensors 11)
/// measured 1.6 / 2.2 ns per element on this machine — a fifth of decode attention at 4096 keys and most of SwiGLU —
/// where a vector polynomial takes about a tenth of that.
/// <para>
/// Method (Cephes' expf, as ggml's vector exp also does): n = round(x·log₂e), r = x − n·ln2 with ln2 split in two so
/// the reduction is exact, e^r by a degree-6 polynomial on |r| ≤ ln2/2, and 2^n added to the exponent bits. Error ≤ 2
/// ulp over the normal range (tested against f64). x below −87.33 (where e^x leaves the normal f32 range) gives 0,
/// −∞ gives 0, x above 88.72 and +∞ give +∞, NaN stays NaN.
/// </para>
/// </summary>
internal static class VectorMath
{
    const float Log2E = 1.44269504088896341f, Ln2Hi = 0.693359375f, Ln2Lo = -2.12194440e-4f;
    const float Highest = 88.7228394f, Lowest = -87.3365479f;
    const float P0 = 1.9875691500e-4f, P1 = 1.3981999507e-3f, P2 = 8.3334519073e-3f, P3 = 4.1665795894e-2f, P4 = 1.6666665459e-1f, P5 = 5.0000001201e-1f;

    /// <summary>e^x per lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        var clamped = Vector512.Min(Vector512.Max(x, Vector512.Create(Lowest)), Vector512.Create(Highest));
        var n = Vector512.Round(clamped * Vector512.Create(Log2E));
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Hi), clamped);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Lo), r);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(P0), r, Vector512.Create(P1));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P2));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P3));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P4));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P5));
        p = Vector512.FusedMultiplyAdd(p, r * r, r) + Vector512<float>.One;
        Vector512<float> result;
        // p·2^n, one rounding: vscalefps where there is AVX-512F (one instruction for the eight below: a third of the
        // exp), else 2^n in two factors so n = 128 does not overflow the exponent field (n ∈ [−126, 128] after the
        // clamp). Either way p·2^n is rounded once, and for x ≥ Lowest it is normal: the same bits.
        if (Avx512F.IsSupported) result = Avx512F.Scale(p, n);
        else
        {
            var half = Vector512.ShiftRightArithmetic(Vector512.ConvertToInt32(n), 1);
            var a = Vector512.ShiftLeft(half + Vector512.Create(127), 23).AsSingle();
            var b = Vector512.ShiftLeft(Vector512.ConvertToInt32(n) - half + Vector512.Create(127), 23).AsSingle();
            result = p * a * b;
        }
        result = Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512.Create(Lowest)), Vector512<float>.Zero, result);
        result = Vector512.ConditionalSelect(Vector512.GreaterThan(x, Vector512.Create(Highest)), Vector512.Create(float.PositiveInfinity), result);
        return Vector512.ConditionalSelect(Vector512.Equals(x, x), result, x); // NaN stays NaN
    }

    /// <summary>e^x per lane (the same method on 256-bit vectors).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        var clamped = Vector256.Min(Vector256.Max(x, Vector256.Create(Lowest)), Vector256.Create(Highest));
        var n = Vector256.Round(clamped * Vector256.Create(Log2E));
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), clamped);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(P0), r, Vector256.Create(P1));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P3));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P5));
        p = Vector256.FusedMultiplyAdd(p, r * r, r) + Vector256<float>.One;
        var half = Vector256.ShiftRightArithmetic(Vector256.ConvertToInt32(n), 1);
        var a = Vector256.ShiftLeft(half + Vector256.Create(127), 23).AsSingle();
        var b = Vector256.ShiftLeft(Vector256.ConvertToInt32(n) - half + Vector256.Create(127), 23).AsSingle();
        var result = p * a * b;
        result = Vector256.ConditionalSelect(Vector256.LessThan(x, Vector256.Create(Lowest)), Vector256<float>.Zero, result);
        result = Vector256.ConditionalSelect(Vector256.GreaterThan(x, Vector256.Create(Highest)), Vector256.Create(float.PositiveInfinity), result);
        return Vector256.ConditionalSelect(Vector256.Equals(x, x), result, x);
    }

    /// <summary>The scalar form of the same method (tails and machines without vectors), so every lane agrees.</summary>
    public static float Exp(float x)
    {
        if (float.IsNaN(x)) return x;
        if (x < Lowest) return 0f;
        if (x > Highest) return float.PositiveInfinity;
        float n = MathF.Round(x * Log2E);
        float r = MathF.FusedMultiplyAdd(n, -Ln2Hi, x);
        r = MathF.FusedMultiplyAdd(n, -Ln2Lo, r);
        float p = MathF.FusedMultiplyAdd(P0, r, P1);
        p = MathF.FusedMultiplyAdd(p, r, P2);
        p = MathF.FusedMultiplyAdd(p, r, P3);
        p = MathF.FusedMultiplyAdd(p, r, P4);
        p = MathF.FusedMultiplyAdd(p, r, P5);
        p = MathF.FusedMultiplyAdd(p, r * r, r) + 1f;
        int k = (int)n, half = k >> 1;
        return p * BitConverter.Int32BitsToSingle((half + 127) << 23) * BitConverter.Int32BitsToSingle((k - half + 127) << 23);
    }

    /// <summary>destination[i] = e^source[i] (may alias).</summary>
    public static unsafe void Exp(ReadOnlySpan<float> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination shorter than source", nameof(destination));
        fixed (float* s = source, d = destination)
        {
            int n = source.Length, i = 0;
            if (Vector512.IsHardwareAccelerated)
                for (; i + 16 <= n; i += 16) Exp(Vector512.Load(s + i)).Store(d + i);
            if (Vector256.IsHardwareAccelerated)
                for (; i + 8 <= n; i += 8) Exp(Vector256.Load(s + i)).Store(d + i);
            for (; i < n; i++) d[i] = Exp(s[i]);
        }
    }

    /// <summary>
    /// row[i] = e^(row[i] − shift) in place, returning their sum: the softmax's exp and denominator in one pass (−∞
    /// entries, masked scores, give 0).
    /// </summary>
    public static float ExpShiftedSum(Span<float> row, float shift) => ExpScaledShiftedSum(row, 1f, shift); // x·1 is x: the same bits

    /// <summary>
    /// row[i] = e^(scale·row[i] − shift), the product rounded before the subtraction (no fused multiply-add: the bits of
    /// scaling the row first and then <see cref="ExpShiftedSum"/>), returning Σ row[i] (16 lanes, then 8, then one at a
    /// time); one pass where those took two.
    /// </summary>
    public static unsafe float ExpScaledShiftedSum(Span<float> row, float scale, float shift)
    {
        fixed (float* p = row) return ExpSum(p, row.Length, scale, shift, null);
    }

    /// <summary>
    /// <see cref="ExpScaledShiftedSum"/> that writes the exponentials rounded to bf16
    /// (<see cref="Quantize.ToBF16"/>) to <paramref name="destination"/> and leaves <paramref name="row"/> as it was; the
    /// sum is of the f32 values, in the same order.
    /// </summary>
    public static unsafe float ExpScaledShiftedSumToBf16(ReadOnlySpan<float> row, float scale, float shift, ushort* destination)
    {
        fixed (float* p = row) return ExpSum(p, row.Length, scale, shift, destination);
    }

    /// <summary>The exponentials back into <paramref name="p"/>, or rounded to bf16 into <paramref name="bf16"/> when it is not null.</summary>
    static unsafe float ExpSum(float* p, int n, float scale, float shift, ushort* bf16)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var s = Vector512.Create(shift);
            var k = Vector512.Create(scale);
            var total = Vector512<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                var e = Exp(Vector512.Load(p + i) * k - s);
                if (bf16 == null) e.Store(p + i);
                else Avx512F.ConvertToVector256UInt16(Bf16Tiles.RoundBits(e.AsUInt32())).Store(bf16 + i);
                total += e;
            }
            sum = Vector512.Sum(total);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var s = Vector256.Create(shift);
            var k = Vector256.Create(scale);
            var total = Vector256<float>.Zero;
            for (; i + 8 <= n; i += 8)
            {
                var e = Exp(Vector256.Load(p + i) * k - s);
                if (bf16 == null) e.Store(p + i);
                else for (int j = 0; j < 8; j++) bf16[i + j] = Quantize.ToBF16(e[j]);
                total += e;
            }
            sum += Vector256.Sum(total);
        }
        for (; i < n; i++)
        {
            float e = Exp(p[i] * scale - shift);
            if (bf16 == null) p[i] = e;
            else bf16[i] = Quantize.ToBF16(e);
            sum += e;
        }
        return sum;
    }

    /// <summary>destination[i] = silu(gate[i])·up[i] = gate/(1 + e^−gate)·up (may alias gate), the SwiGLU of ggml.</summary>
    public static unsafe void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> destination)
    {
        if (up.Length < gate.Length || destination.Length < gate.Length) throw new ArgumentException("up or destination shorter than gate");
        fixed (float* g = gate, u = up, d = destination)
        {
            int n = gate.Length, i = 0;
            if (Vector512.IsHardwareAccelerated)
                for (; i + 16 <= n; i += 16)
                {
                    var x = Vector512.Load(g + i);
                    (x / (Vector512<float>.One + Exp(-x)) * Vector512.Load(u + i)).Store(d + i);
                }
            if (Vector256.IsHardwareAccelerated)
                for (; i + 8 <= n; i += 8)
                {
                    var x = Vector256.Load(g + i);
                    (x / (Vector256<float>.One + Exp(-x)) * Vector256.Load(u + i)).Store(d + i);
                }
            for (; i < n; i++) d[i] = g[i] / (1f + Exp(-g[i])) * u[i];
        }
    }

    /// <summary>
    /// Σ x[i] (<paramref name="square"/>: Σ x[i]·x[i], each product rounded to f32 first) accumulated in f64, as ggml's
    /// norms sum in <c>ggml_float</c>: eight f64 lanes in four independent chains instead of one scalar chain (a
    /// 768-wide row took about 4 cycles an element on the add's latency). Only the order of the f64 additions differs
    /// from a sequential sum; with 29 bits to spare beyond f32 the sum rounded to f32 is the same.
    /// </summary>
    public static unsafe double SumAsDouble(ReadOnlySpan<float> x, bool square)
    {
        fixed (float* p = x)
        {
            int n = x.Length, i = 0;
            double sum = 0;
            if (Vector512.IsHardwareAccelerated && n >= 32)
            {
                Vector512<double> a = default, b = default, c = default, d = default;
                for (; i + 32 <= n; i += 32)
                {
                    var u = Vector512.Load(p + i);
                    var v = Vector512.Load(p + i + 16);
                    if (square) { u *= u; v *= v; }
                    var (u0, u1) = Vector512.Widen(u);
                    var (v0, v1) = Vector512.Widen(v);
                    a += u0; b += u1; c += v0; d += v1;
                }
                sum = Vector512.Sum((a + b) + (c + d));
            }
            for (; i < n; i++) sum += square ? (double)(p[i] * p[i]) : p[i];
            return sum;
        }
    }

    /// <summary>
    /// destination = (x − mean)·scale·weight + bias, each step rounded to f32 as ggml's norm, mul and add ops round it
    /// (no FMA), in one pass; <paramref name="bias"/> may be empty. Destination may alias x.
    /// </summary>
    public static unsafe void NormalizeAffine(ReadOnlySpan<float> centred, float scale, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, Span<float> destination)
    {
        fixed (float* x = centred, w = weight, b = bias, y = destination)
        {
            int n = centred.Length, i = 0;
            bool hasBias = !bias.IsEmpty;
            if (Vector512.IsHardwareAccelerated)
            {
                var s = Vector512.Create(scale);
                for (; i + 16 <= n; i += 16)
                {
                    var v = Vector512.Load(x + i) * s * Vector512.Load(w + i);
                    if (hasBias) v += Vector512.Load(b + i);
                    v.Store(y + i);
                }
            }
            for (; i < n; i++)
            {
                float v = x[i] * scale * w[i];
                y[i] = hasBias ? v + b[i] : v;
            }
        }
    }

    /// <summary>
    /// The largest element of a non-empty row, for a softmax's shift: vmaxps in four chains (TensorPrimitives.Max also
    /// orders −0 below +0 and tests every vector for NaN, 2–4 % of a ViT pass's attention). A NaN in the row may or may
    /// not come out, but it reaches the row's exponentials and sum either way.
    /// </summary>
    public static unsafe float Max(ReadOnlySpan<float> row)
    {
        if (row.IsEmpty) throw new ArgumentException("an empty row has no maximum", nameof(row));
        fixed (float* p = row)
        {
            int n = row.Length, i = 0;
            float max = p[0];
            if (Vector512.IsHardwareAccelerated && n >= 64)
            {
                Vector512<float> a = Vector512.Load(p), b = a, c = a, d = a;
                for (; i + 64 <= n; i += 64)
                {
                    a = Vector512.MaxNative(a, Vector512.Load(p + i));
                    b = Vector512.MaxNative(b, Vector512.Load(p + i + 16));
                    c = Vector512.MaxNative(c, Vector512.Load(p + i + 32));
                    d = Vector512.MaxNative(d, Vector512.Load(p + i + 48));
                }
                for (; i + 16 <= n; i += 16) a = Vector512.MaxNative(a, Vector512.Load(p + i));
                a = Vector512.MaxNative(Vector512.MaxNative(a, b), Vector512.MaxNative(c, d));
                var h = Vector256.MaxNative(a.GetLower(), a.GetUpper());
                var q = Vector128.MaxNative(h.GetLower(), h.GetUpper());
                q = Vector128.MaxNative(q, Vector128.Shuffle(q, Vector128.Create(2, 3, 0, 1)));
                q = Vector128.MaxNative(q, Vector128.Shuffle(q, Vector128.Create(1, 0, 3, 2)));
                max = q.ToScalar();
            }
            for (; i < n; i++) max = p[i] > max ? p[i] : max;
            return max;
        }
    }
}
