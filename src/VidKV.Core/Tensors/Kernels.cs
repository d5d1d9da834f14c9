using System.Numerics.Tensors;

namespace VidKV.Tensors;

/// <summary>Rotary embedding pairing: ggml's "normal" (adjacent pairs, Llama GGUF) or NeoX (halves, Qwen2 and HF checkpoints).</summary>
public enum RopeMode { Normal, NeoX }

/// <summary>
/// Element-wise and row kernels of the decoder. Static span methods: sources, then arguments, then destination.
/// </summary>
public static class Kernels
{
    /// <summary>y = x / sqrt(mean(x²) + eps) * weight, one row of <paramref name="x"/>.Length. The sum of squares is accumulated in f64 as ggml does.</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> destination)
    {
        double sum = 0;
        for (int i = 0; i < x.Length; i++) sum += (double)(x[i] * x[i]);
        float mean = (float)(sum / x.Length);
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

    /// <summary>Rotates one head vector in place by precomputed angles (<see cref="RopeAngles"/>).</summary>
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
}
