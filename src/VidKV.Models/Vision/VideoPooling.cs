namespace VidKV.Models;

/// <summary>
/// LLaVA-OneVision's pooling of a video frame's projected rows (Li et al., 2024, "LLaVA-OneVision: Easy Visual Task
/// Transfer"; Hugging Face <c>LlavaOnevisionModel.apply_pooling</c>): the side × side grid (27 × 27 for SigLIP
/// so400m/14 at 384) resized to ⌈side/2⌉² (14 × 14 = 196 rows per frame) by PyTorch's
/// <c>interpolate(mode="bilinear", align_corners=False)</c>, each feature channel alone. llama.cpp has no such step.
/// For output index o of n from m inputs: s = max((m/n)·(o + ½) − ½, 0), i₀ = ⌊s⌋, i₁ = min(i₀ + 1, m − 1),
/// λ = s − i₀, and the value is (1 − λ_y)((1 − λ_x)·v[y₀][x₀] + λ_x·v[y₀][x₁]) + λ_y((1 − λ_x)·v[y₁][x₀] + λ_x·v[y₁][x₁]),
/// in f32 as PyTorch's CPU kernel computes it.
/// </summary>
public static class VideoPooling
{
    /// <summary>Output grid side for an input side: ⌈side / 2⌉.</summary>
    public static int PooledSide(int side) => (side + 1) / 2;

    /// <summary>
    /// Pools <paramref name="source"/> ([side², width], raster) into <paramref name="destination"/>
    /// ([<see cref="PooledSide"/>², width], raster).
    /// </summary>
    public static void Pool(ReadOnlySpan<float> source, int side, int width, Span<float> destination)
    {
        int outSide = PooledSide(side);
        if (source.Length < side * side * width || destination.Length < outSide * outSide * width)
            throw new ArgumentException($"pooling {side}² rows of {width} into {outSide}² needs {side * side * width} and {outSide * outSide * width} values");
        float scale = (float)side / outSide;
        Span<int> low = stackalloc int[outSide], high = stackalloc int[outSide];
        Span<float> lambda = stackalloc float[outSide];
        for (int o = 0; o < outSide; o++)
        {
            float s = Math.Max(scale * (o + 0.5f) - 0.5f, 0f);
            low[o] = (int)s;
            high[o] = low[o] + (low[o] < side - 1 ? 1 : 0);
            lambda[o] = s - low[o];
        }
        for (int oy = 0; oy < outSide; oy++)
        {
            float ly = lambda[oy], hy = 1f - ly;
            for (int ox = 0; ox < outSide; ox++)
            {
                float lx = lambda[ox], hx = 1f - lx;
                var v00 = source.Slice((low[oy] * side + low[ox]) * width, width);
                var v01 = source.Slice((low[oy] * side + high[ox]) * width, width);
                var v10 = source.Slice((high[oy] * side + low[ox]) * width, width);
                var v11 = source.Slice((high[oy] * side + high[ox]) * width, width);
                var target = destination.Slice((oy * outSide + ox) * width, width);
                for (int c = 0; c < width; c++)
                    target[c] = hy * (hx * v00[c] + lx * v01[c]) + ly * (hx * v10[c] + lx * v11[c]);
            }
        }
    }
}
