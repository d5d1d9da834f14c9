using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>The kernels the shared blocks add (M-RoPE angles, LayerNorm, GELU, bidirectional attention) against plain f64 references on odd sizes.</summary>
public class BlockTests
{
    /// <summary>M-RoPE: equal components give plain RoPE bit for bit; distinct ones turn each pair by its section's component.</summary>
    [Theory]
    [InlineData(64, new[] { 16, 8, 8 })]
    [InlineData(128, new[] { 16, 24, 24 })]
    [InlineData(80, new[] { 3, 5, 7, 5 })]
    public void MultiSectionRopeAngles(int dims, int[] sections)
    {
        var rng = new Random(dims);
        int half = dims / 2;
        var cos = new float[half];
        var sin = new float[half];
        var plainCos = new float[half];
        var plainSin = new float[half];
        foreach (int p in new[] { 0, 1, 7, 1000, 32767 })
        {
            Kernels.RopeAngles(Enumerable.Repeat(p, sections.Length).ToArray(), sections, dims, 10000f, cos, sin);
            Kernels.RopeAngles(p, dims, 10000f, plainCos, plainSin);
            Assert.Equal(plainCos, cos);
            Assert.Equal(plainSin, sin);
        }
        for (int round = 0; round < 20; round++)
        {
            var position = Enumerable.Range(0, sections.Length).Select(_ => rng.Next(0, 5000)).ToArray();
            Kernels.RopeAngles(position, sections, dims, 1e6f, cos, sin);
            int total = sections.Sum();
            for (int i = 0; i < half; i++)
            {
                int sector = i % total, component = 0, edge = sections[0];
                while (sector >= edge) edge += sections[++component];
                double angle = position[component] * Math.Pow(1e6, -2.0 * i / dims);
                Assert.True(Math.Abs(Math.Cos(angle) - cos[i]) <= 2e-3 && Math.Abs(Math.Sin(angle) - sin[i]) <= 2e-3,
                    $"pair {i} (component {component}, position {position[component]}): cos {cos[i]} vs {Math.Cos(angle)}");
            }
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(768)]
    [InlineData(1153)]
    public void LayerNormMatchesItsDefinition(int n)
    {
        var rng = new Random(n);
        var x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 6 - 2)).ToArray();
        var w = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2)).ToArray();
        var b = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        var y = new float[n];
        Kernels.LayerNorm(x, w, b, 1e-6f, y);
        double mean = x.Average(v => (double)v), variance = x.Average(v => (v - mean) * (v - mean));
        for (int i = 0; i < n; i++)
        {
            double want = (x[i] - mean) / Math.Sqrt(variance + 1e-6) * w[i] + b[i];
            Assert.True(Math.Abs(want - y[i]) <= 1e-4 * (1 + Math.Abs(want)), $"{i}: {y[i]} vs {want}");
        }
        Kernels.LayerNorm(x, w, default, 1e-6f, y); // without a bias
        Assert.True(Math.Abs((x[0] - mean) / Math.Sqrt(variance + 1e-6) * w[0] - y[0]) <= 1e-4);
    }

    /// <summary>
    /// LayerNorm and RMSNorm give the bits of ggml's scalar order (sums in f64 one element after another, then the
    /// normalisation, the weight and the bias each rounded to f32 on its own) on random rows of odd widths: the
    /// vector f64 sums only add in another order.
    /// </summary>
    [Fact]
    public void NormsGiveTheBitsOfGgmlsScalarOrder()
    {
        var rng = new Random(11);
        foreach (int n in new[] { 1, 7, 31, 33, 65, 576, 768, 1153 })
            for (int row = 0; row < 50; row++)
            {
                float spread = (float)Math.Pow(10, rng.Next(-3, 4));
                float[] x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 3 - 1) * spread).ToArray();
                float[] w = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2)).ToArray();
                float[] b = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
                float[] got = new float[n], want = new float[n];

                double sum = 0;
                for (int i = 0; i < n; i++) sum += x[i];
                float mean = (float)(sum / n);
                double squares = 0;
                for (int i = 0; i < n; i++) { want[i] = x[i] - mean; squares += (double)(want[i] * want[i]); }
                float scale = 1f / MathF.Sqrt((float)(squares / n) + 1e-6f);
                for (int i = 0; i < n; i++) { float v = want[i] * scale; v *= w[i]; want[i] = v + b[i]; }
                Kernels.LayerNorm(x, w, b, 1e-6f, got);
                Assert.Equal(want, got);

                squares = 0;
                for (int i = 0; i < n; i++) squares += (double)(x[i] * x[i]);
                scale = 1f / MathF.Sqrt((float)(squares / n) + 1e-5f);
                for (int i = 0; i < n; i++) { float v = x[i] * scale; want[i] = v * w[i]; }
                Kernels.RmsNorm(x, w, 1e-5f, got);
                Assert.Equal(want, got);
            }
    }

    /// <summary>
    /// GELU and quick GELU as ggml's fp16 tables: the input rounded to fp16, the formula evaluated in f32 there (as
    /// ggml builds its tables), the result rounded to fp16; GELU passes x ≥ 10 through and zeroes x ≤ −10. Where f32
    /// does not cancel (GELU above −4) the values are also within half an fp16 step of the definition in f64.
    /// </summary>
    [Fact]
    public void GeluFormsMatchGgmlsHalfTables()
    {
        var random = new Random(5);
        var x = Enumerable.Range(0, 4001).Select(i => (float)((i - 2000) / 100.0)).Concat(Enumerable.Range(0, 3001).Select(_ => (float)(random.NextDouble() * 30 - 15))).ToArray();
        var y = new float[x.Length];
        Kernels.Gelu(x, y);
        for (int i = 0; i < x.Length; i++)
        {
            float h = (float)(Half)x[i];
            float want = x[i] <= -10 ? 0 : x[i] >= 10 ? x[i] : (float)(Half)(0.5f * h * (1f + MathF.Tanh(0.7978845608f * h * (1f + 0.044715f * h * h))));
            Assert.True(want == y[i], $"gelu({x[i]}) = {y[i]}, want {want}");
            if (x[i] <= -4 || x[i] >= 10) continue;
            double exact = 0.5 * h * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (h + 0.044715 * h * h * h)));
            double step = Math.Max(Math.Pow(2, Math.Floor(Math.Log2(Math.Abs(exact) + 1e-30)) - 10), Math.Pow(2, -24));
            Assert.True(Math.Abs(y[i] - exact) <= 0.5 * step + 1e-7, $"gelu({x[i]}) = {y[i]}, exact {exact}");
        }
        Kernels.QuickGelu(x, y);
        for (int i = 0; i < x.Length; i++)
        {
            float h = (float)(Half)x[i];
            Assert.True((float)(Half)(h / (1f + MathF.Exp(-1.702f * h))) == y[i], $"quick_gelu({x[i]}) = {y[i]}");
        }
    }

    /// <summary>Bidirectional attention: every query sees every row, as full softmax attention in f64, with GQA.</summary>
    [Theory]
    [InlineData(1, 2, 1, 16)]
    [InlineData(13, 4, 2, 24)]
    [InlineData(197, 6, 3, 64)]
    [InlineData(600, 2, 1, 72)] // blocks of 64 queries and a tail of 24, SigLIP so400m's head size
    [InlineData(5, 3, 3, 7)]
    public void BidirectionalAttentionSeesEveryRow(int tokens, int heads, int kvHeads, int d)
    {
        var rng = new Random(tokens * heads);
        float[] Random(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var q = Random(tokens * heads * d);
        var k = Random(tokens * kvHeads * d);
        var v = Random(tokens * kvHeads * d);
        var o = new float[q.Length];
        float scale = 1f / MathF.Sqrt(d);
        Attention.Bidirectional(q, k, v, tokens, heads, kvHeads, d, scale, o);
        int group = heads / kvHeads;
        for (int t = 0; t < tokens; t++)
            for (int h = 0; h < heads; h++)
            {
                int g = h / group;
                var scores = Scores(q, k, t, h, g, tokens, heads, kvHeads, d, scale, x => x);
                double max = scores.Max(), sum = scores.Sum(s => Math.Exp(s - max));
                for (int i = 0; i < d; i++)
                {
                    double want = 0;
                    for (int j = 0; j < tokens; j++) want += Math.Exp(scores[j] - max) / sum * v[(j * kvHeads + g) * d + i];
                    Assert.True(Math.Abs(want - o[(t * heads + h) * d + i]) <= 1e-4, $"token {t} head {h} dim {i}: {o[(t * heads + h) * d + i]} vs {want}");
                }
            }
    }

    /// <summary>
    /// Bidirectional attention in bf16 (<see cref="Bf16Tiles"/>) against f64 attention of the bf16-rounded queries, keys
    /// and values with the softmax's numerators rounded to bf16: the kernel's f32 scores may round a numerator to the
    /// neighbouring bf16, which moves an output by at most 2^−8 of Σ p·|v| / Σ p. Odd token counts (a key pair with a
    /// zero partner), partial channel tiles (24, 72, 80) and GQA; a width the kernel cannot take (odd) runs in f32.
    /// </summary>
    [Theory]
    [InlineData(1, 2, 1, 16)]
    [InlineData(13, 4, 2, 24)]
    [InlineData(197, 6, 3, 64)]
    [InlineData(600, 2, 1, 72)]
    [InlineData(129, 2, 2, 80)]
    [InlineData(5, 3, 3, 7)]
    public void Bf16AttentionIsAttentionOfBf16Rows(int tokens, int heads, int kvHeads, int d)
    {
        var rng = new Random(tokens * heads + d);
        float[] Random(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        var q = Random(tokens * heads * d);
        var k = Random(tokens * kvHeads * d);
        var v = Random(tokens * kvHeads * d);
        var o = new float[q.Length];
        var exact = new float[q.Length];
        float scale = 1f / MathF.Sqrt(d);
        Attention.Bidirectional(q, k, v, tokens, heads, kvHeads, d, scale, o, bf16: true);
        Attention.Bidirectional(q, k, v, tokens, heads, kvHeads, d, scale, exact);
        if (!Bf16Tiles.Handles(d))
        {
            Assert.Equal(exact, o);
            return;
        }
        Assert.NotEqual(exact, o);
        static double Bf16(float x) => BitConverter.Int32BitsToSingle(Quantize.ToBF16(x) << 16);
        int group = heads / kvHeads;
        for (int t = 0; t < tokens; t++)
            for (int h = 0; h < heads; h++)
            {
                int g = h / group;
                var scores = Scores(q, k, t, h, g, tokens, heads, kvHeads, d, scale, Bf16);
                double max = scores.Max();
                var p = scores.Select(s => Math.Exp(s - max)).ToArray();
                double sum = p.Sum();
                for (int i = 0; i < d; i++)
                {
                    double want = 0, spread = 0;
                    for (int j = 0; j < tokens; j++)
                    {
                        double value = Bf16(v[(j * kvHeads + g) * d + i]);
                        want += Bf16((float)p[j]) * value;
                        spread += p[j] * Math.Abs(value);
                    }
                    want /= sum;
                    double got = o[(t * heads + h) * d + i], bound = Math.ScaleB(spread / sum, -8) + 1e-6;
                    Assert.True(Math.Abs(want - got) <= bound, $"token {t} head {h} dim {i}: {got} vs {want} (bound {bound})");
                }
            }
    }

    /// <summary>scale · q_t,h · k_j,g for every key j in f64, each element through <paramref name="element"/> first (bf16 rounding, or as it is).</summary>
    static double[] Scores(float[] q, float[] k, int t, int h, int g, int tokens, int heads, int kvHeads, int d, float scale, Func<float, double> element)
    {
        var scores = new double[tokens];
        for (int j = 0; j < tokens; j++)
        {
            double s = 0;
            for (int i = 0; i < d; i++) s += element(q[(t * heads + h) * d + i]) * element(k[(j * kvHeads + g) * d + i]);
            scores[j] = s * scale;
        }
        return scores;
    }
}
