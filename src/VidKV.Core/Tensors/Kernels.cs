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
        int half = ropeDims / 2;
        float thetaScale = MathF.Pow(freqBase, -2f / ropeDims);
        float theta = position;
        for (int i = 0; i < half; i++)
        {
            float cos = MathF.Cos(theta), sin = MathF.Sin(theta);
            int a = mode == RopeMode.Normal ? 2 * i : i;
            int b = mode == RopeMode.Normal ? 2 * i + 1 : i + half;
            float x0 = head[a], x1 = head[b];
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
            theta *= thetaScale;
        }
    }

    /// <summary>destination = silu(gate) · up, the SwiGLU gate of the feed-forward block.</summary>
    public static void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> destination)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            float g = gate[i];
            destination[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }
}
