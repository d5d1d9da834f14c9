using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Rotary embedding pairing: ggml's "normal" (adjacent pairs, Llama GGUF) or NeoX (halves, Qwen2 and HF checkpoints).
/// M-RoPE (Qwen2-VL) pairs as NeoX and takes each pair's position from one of up to four components (see
/// <see cref="Kernels.RopeAngles(ReadOnlySpan{int}, ReadOnlySpan{int}, int, float, Span{float}, Span{float})"/>).
/// </summary>
public enum RopeMode
{
    /// <summary>ggml's default: element 2i pairs with 2i+1 (Llama GGUF).</summary>
    Normal,
    /// <summary>GPT-NeoX: element i pairs with i + ropeDims/2 (Qwen2 and HF checkpoints).</summary>
    NeoX,
}

/// <summary>
/// Element-wise and row kernels of the decoder. Static span methods: sources, then arguments, then destination.
/// </summary>
internal static class Kernels
{
    /// <summary>y = x / sqrt(mean(x²) + eps) * weight, one row of <paramref name="x"/>.Length. The sum of squares is accumulated in f64 as ggml does.</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> destination)
    {
        float mean = (float)(VectorMath.SumAsDouble(x, square: true) / x.Length);
        float scale = 1f / MathF.Sqrt(mean + eps);
        TensorPrimitives.Multiply(x, scale, destination);
        TensorPrimitives.Multiply(destination, weight, destination);
    }

    /// <summary>
    /// Rotates one head vector in place for position <paramref name="position"/>: pair i turns by position · base^(−2i/ropeDims).
    /// Only the first <paramref name="ropeDims"/> elements rotate.
    /// </summary>
    public static void Rope(Span<float> head, int position, int ropeDims, float freqBase, RopeMode mode)
    {
        Span<float> cos = stackalloc float[ropeDims / 2], sin = stackalloc float[ropeDims / 2];
        RopeAngles(position, ropeDims, freqBase, cos, sin);
        Rope(head, cos, sin, mode);
    }

    /// <summary>
    /// cos and sin of the ropeDims/2 angles of <paramref name="position"/>, computed once and shared by every head of a
    /// token. Like ggml, theta advances by repeated f32 multiplication with base^(−2/ropeDims) (for parity).
    /// </summary>
    public static void RopeAngles(int position, int ropeDims, float freqBase, Span<float> cos, Span<float> sin)
    {
        float thetaScale = MathF.Pow(freqBase, -2f / ropeDims);
        float theta = position;
        for (int i = 0; i < ropeDims / 2; i++)
        {
            (sin[i], cos[i]) = MathF.SinCos(theta);
            theta *= thetaScale;
        }
    }

    /// <summary>
    /// Multi-section RoPE (M-RoPE, Qwen2-VL; ggml's rope_multi): pair i of the ropeDims/2 takes its position from component
    /// c of <paramref name="position"/> for the section its index i mod Σ sections falls in (sections of t, h, w, e
    /// pairs), turning by position_c · base^(−2i/ropeDims). Each component's theta advances by repeated f32
    /// multiplication, as ggml's, so equal components give <see cref="RopeAngles(int, int, float, Span{float}, Span{float})"/>
    /// bit for bit. Components past <paramref name="position"/>'s length count as 0.
    /// </summary>
    public static void RopeAngles(ReadOnlySpan<int> position, ReadOnlySpan<int> sections, int ropeDims, float freqBase, Span<float> cos, Span<float> sin)
    {
        float thetaScale = MathF.Pow(freqBase, -2f / ropeDims);
        Span<float> theta = stackalloc float[4];
        for (int c = 0; c < 4; c++) theta[c] = c < position.Length ? position[c] : 0;
        int total = 0;
        foreach (int s in sections) total += s;
        if (total <= 0) throw new ArgumentException("M-RoPE sections must add up to at least one pair", nameof(sections));
        for (int i = 0; i < ropeDims / 2; i++)
        {
            int sector = i % total, component = 0, edge = sections[0];
            while (sector >= edge && component + 1 < sections.Length) edge += sections[++component];
            (sin[i], cos[i]) = MathF.SinCos(theta[component]);
            for (int c = 0; c < 4; c++) theta[c] *= thetaScale;
        }
    }

    /// <summary>
    /// 2-D RoPE of the Qwen2-VL / Qwen2.5-VL ViT (ggml's rope_multi in vision mode, Hugging Face's
    /// <c>VisionRotaryEmbedding</c>): of a head's d/2 NeoX pairs the first d/4 turn by the patch row
    /// <paramref name="y"/>, the rest by its column <paramref name="x"/>, pair i of each half by p · base^(−4i/d); theta
    /// advances by repeated f32 multiplication and restarts at the second half, as ggml's.
    /// </summary>
    public static void VisionRopeAngles(int y, int x, int headDim, float freqBase, Span<float> cos, Span<float> sin)
    {
        int pairs = headDim / 2, quarter = headDim / 4;
        float thetaScale = MathF.Pow(freqBase, -2f / pairs), rowTheta = y, columnTheta = x;
        for (int i = 0; i < pairs; i++)
        {
            if (i == quarter) columnTheta = x;
            (sin[i], cos[i]) = MathF.SinCos(i < quarter ? rowTheta : columnTheta);
            rowTheta *= thetaScale;
            columnTheta *= thetaScale;
        }
    }

    /// <summary>
    /// y = (x − mean) / √(var + eps) · weight + bias over one row (ggml_norm then mul and add: mean and variance summed
    /// in f64). <paramref name="bias"/> may be empty.
    /// </summary>
    public static void LayerNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> destination)
    {
        float mean = (float)(VectorMath.SumAsDouble(x, square: false) / x.Length);
        TensorPrimitives.Subtract(x, mean, destination);
        float scale = 1f / MathF.Sqrt((float)(VectorMath.SumAsDouble(destination[..x.Length], square: true) / x.Length) + eps);
        VectorMath.NormalizeAffine(destination[..x.Length], scale, weight, bias, destination);
    }

    /// <summary>
    /// GELU, tanh form, as ggml-cpu computes it (<c>GGML_GELU_FP16</c>): x ≤ −10 → 0, x ≥ 10 → x, else a table indexed by
    /// x rounded to fp16 whose entries are 0.5·h·(1 + tanh(√(2/π)·h·(1 + 0.044715·h²))) rounded to fp16. Matching its
    /// rounding keeps ViT embeddings within ~1e-4 of llama.cpp's instead of ~2e-3. Destination may alias x.
    /// </summary>
    public static void Gelu(ReadOnlySpan<float> x, Span<float> destination) => LookUp(HalfTables.Gelu, x, destination, clampAtTen: true);

    /// <summary>Elements converted to fp16 at a time by the table activations (a stack buffer).</summary>
    const int HalfChunk = 256;

    /// <summary>Quick GELU (CLIP) as ggml-cpu computes it (<c>GGML_GELU_QUICK_FP16</c>): x·σ(1.702·x) looked up at fp16(x), the result an fp16 value. Destination may alias x.</summary>
    public static void QuickGelu(ReadOnlySpan<float> x, Span<float> destination) => LookUp(HalfTables.QuickGelu, x, destination, clampAtTen: false);

    /// <summary>
    /// destination[i] = table[fp16 bits of x[i]] (with <paramref name="clampAtTen"/>: 0 at x ≤ −10 and x at x ≥ 10, as
    /// ggml's GELU), 256 values rounded to fp16 at a time, then 8 lookups per AVX2 gather: the scalar loop took 2.5 ns
    /// an element, 47 ms of a 512² SigLIP-B/16 frame (AMD EPYC Zen 4).
    /// </summary>
    static unsafe void LookUp(float[] table, ReadOnlySpan<float> x, Span<float> destination, bool clampAtTen)
    {
        if (destination.Length < x.Length) throw new ArgumentException("destination shorter than x", nameof(destination));
        Span<Half> halves = stackalloc Half[HalfChunk];
        fixed (float* pt = table, px = x, pd = destination)
        fixed (Half* ph = halves)
        {
            var low = Vector256.Create(-10f);
            var high = Vector256.Create(10f);
            for (int start = 0; start < x.Length; start += HalfChunk)
            {
                int n = Math.Min(HalfChunk, x.Length - start), i = 0;
                TensorPrimitives.ConvertToHalf(x.Slice(start, n), halves[..n]); // vectorised fp16 rounding (nearest even, as the cast)
                float* source = px + start, target = pd + start;
                ushort* bits = (ushort*)ph;
                if (Avx2.IsSupported)
                    for (; i + 8 <= n; i += 8)
                    {
                        var index = Avx2.ConvertToVector256Int32(bits + i);
                        var value = Avx2.GatherVector256(pt, index, 4);
                        if (clampAtTen)
                        {
                            var v = Avx.LoadVector256(source + i);
                            value = Vector256.ConditionalSelect(Vector256.LessThanOrEqual(v, low), Vector256<float>.Zero, value);
                            value = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(v, high), v, value);
                        }
                        Avx.Store(target + i, value);
                    }
                for (; i < n; i++)
                {
                    float v = source[i];
                    target[i] = clampAtTen && v <= -10f ? 0f : clampAtTen && v >= 10f ? v : pt[bits[i]];
                }
            }
        }
    }

    /// <summary>ggml's fp16 activation tables, widened to f32 (256 KiB each), built on first use.</summary>
    static class HalfTables
    {
        public static readonly float[] Gelu = Build(static h => 0.5f * h * (1f + MathF.Tanh(0.79788456080286535587989211986876f * h * (1f + 0.044715f * h * h))));
        public static readonly float[] QuickGelu = Build(static h => h * (1f / (1f + MathF.Exp(-1.702f * h))));

        static float[] Build(Func<float, float> f)
        {
            var table = new float[1 << 16];
            for (int i = 0; i < table.Length; i++) table[i] = (float)(Half)f((float)BitConverter.UInt16BitsToHalf((ushort)i));
            return table;
        }
    }

    /// <summary>Rotates one head vector in place by precomputed angles (<see cref="RopeAngles(int, int, float, Span{float}, Span{float})"/>, or the M-RoPE overload).</summary>
    public static void Rope(Span<float> head, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, RopeMode mode)
    {
        int half = cos.Length;
        for (int i = 0; i < half; i++)
        {
            int a = mode == RopeMode.Normal ? 2 * i : i;
            int b = mode == RopeMode.Normal ? 2 * i + 1 : i + half;
            float x0 = head[a], x1 = head[b];
            head[a] = x0 * cos[i] - x1 * sin[i];
            head[b] = x0 * sin[i] + x1 * cos[i];
        }
    }

    /// <summary>
    /// destination = silu(gate) · up = gate / (1 + e^−gate) · up, the SwiGLU gate of the feed-forward block, vectorised
    /// with <see cref="VectorMath"/>'s exp (a few ulp from the scalar formula). Destination may alias gate.
    /// </summary>
    public static void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> destination) => VectorMath.SwiGlu(gate, up, destination);

    /// <summary>Σ |a[i] − b[i]| over two byte rows of one length (psadbw: 32 or 64 bytes per instruction).</summary>
    public static long SumAbsoluteDifferences(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"rows of {a.Length} and {b.Length} bytes");
        long sum = 0;
        int i = 0;
        if (Avx512BW.IsSupported)
        {
            var total = Vector512<ulong>.Zero;
            for (; i + 64 <= a.Length; i += 64)
                total += Avx512BW.SumAbsoluteDifferences(Vector512.Create(a.Slice(i, 64)), Vector512.Create(b.Slice(i, 64))).AsUInt64();
            sum += (long)Vector512.Sum(total);
        }
        if (Avx2.IsSupported)
        {
            var total = Vector256<ulong>.Zero;
            for (; i + 32 <= a.Length; i += 32)
                total += Avx2.SumAbsoluteDifferences(Vector256.Create(a.Slice(i, 32)), Vector256.Create(b.Slice(i, 32))).AsUInt64();
            sum += (long)Vector256.Sum(total);
        }
        for (; i < a.Length; i++) sum += Math.Abs(a[i] - b[i]);
        return sum;
    }
}
