namespace VidKV.Tensors;

/// <summary>
/// Plain scalar versions of every kernel (f64 accumulation, no SIMD, no threads). They define what the fast kernels
/// must compute; tests compare the two on random data of every length 0–256 and large odd sizes.
/// </summary>
internal static class ReferenceKernels
{
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> destination)
    {
        double sum = 0;
        foreach (float v in x) sum += (double)v * v;
        double scale = 1.0 / Math.Sqrt(sum / Math.Max(1, x.Length) + eps);
        for (int i = 0; i < x.Length; i++) destination[i] = (float)(x[i] * scale * weight[i]);
    }

    public static long SumAbsoluteDifferences(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        long sum = 0;
        for (int i = 0; i < a.Length; i++) sum += Math.Abs(a[i] - b[i]);
        return sum;
    }

    public static void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> destination)
    {
        for (int i = 0; i < gate.Length; i++) destination[i] = (float)(gate[i] / (1 + Math.Exp(-gate[i])) * up[i]);
    }

    /// <summary>Pair i rotates by position · base^(−2i/ropeDims); normal mode pairs (2i, 2i+1), NeoX pairs (i, i + ropeDims/2).</summary>
    public static void Rope(Span<float> head, int position, int ropeDims, float freqBase, RopeMode mode)
    {
        int half = ropeDims / 2;
        for (int i = 0; i < half; i++)
        {
            double theta = position * Math.Pow(freqBase, -2.0 * i / ropeDims);
            int a = mode == RopeMode.Normal ? 2 * i : i, b = mode == RopeMode.Normal ? 2 * i + 1 : i + half;
            double x0 = head[a], x1 = head[b];
            head[a] = (float)(x0 * Math.Cos(theta) - x1 * Math.Sin(theta));
            head[b] = (float)(x0 * Math.Sin(theta) + x1 * Math.Cos(theta));
        }
    }

    /// <summary>y[t, r] = Σ_c dequant(W)[r, c] · x[t, c].</summary>
    public static void MatMul(WeightMatrix w, ReadOnlySpan<float> x, int tokens, Span<float> y)
    {
        var row = new float[w.Columns];
        for (int r = 0; r < w.Rows; r++)
        {
            w.DequantizeRow(r, row);
            for (int t = 0; t < tokens; t++)
            {
                double sum = 0;
                for (int c = 0; c < w.Columns; c++) sum += (double)row[c] * x[t * w.Columns + c];
                y[t * w.Rows + r] = (float)sum;
            }
        }
    }

    /// <summary>Q8_0-style activation quantisation: per 32, d = max|x|/127 rounded to f16, q = round-half-even(x·(1/d)).</summary>
    public static void QuantizeActivations(ReadOnlySpan<float> x, Span<sbyte> quants, Span<float> scales)
    {
        for (int b = 0; b < x.Length / 32; b++)
        {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = Math.Max(amax, Math.Abs(x[32 * b + j]));
            float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
            scales[b] = (float)(Half)d;
            for (int j = 0; j < 32; j++) quants[32 * b + j] = (sbyte)MathF.Round(x[32 * b + j] * id, MidpointRounding.ToEven);
        }
    }

    /// <summary>
    /// What the Q8_0/Q4_0 matmul computes: activations quantised by <see cref="QuantizeActivations"/>, then an exact
    /// dot product of the dequantised values.
    /// </summary>
    public static void MatMulQuantizedActivations(WeightMatrix w, ReadOnlySpan<float> x, int tokens, Span<float> y)
    {
        var dequantized = new float[tokens * w.Columns];
        var quants = new sbyte[w.Columns];
        var scales = new float[w.Columns / 32];
        for (int t = 0; t < tokens; t++)
        {
            QuantizeActivations(x.Slice(t * w.Columns, w.Columns), quants, scales);
            for (int c = 0; c < w.Columns; c++) dequantized[t * w.Columns + c] = quants[c] * scales[c / 32];
        }
        MatMul(w, dequantized, tokens, y);
    }

    /// <summary>
    /// What the BF16 prefill computes (<see cref="Bf16Tiles"/>): activations rounded to bf16 (nearest even), then an
    /// exact dot product.
    /// </summary>
    public static void MatMulBF16Activations(WeightMatrix w, ReadOnlySpan<float> x, int tokens, Span<float> y)
    {
        var rounded = new float[tokens * w.Columns];
        for (int i = 0; i < rounded.Length; i++) rounded[i] = BitConverter.Int32BitsToSingle(Quantize.ToBF16(x[i]) << 16);
        MatMul(w, rounded, tokens, y);
    }

    /// <summary>Causal GQA attention, one query at a time, as <see cref="Attention.Causal(ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float}, int, int, int, int, int, float, Span{float}, WorkerPool?)"/> specifies.</summary>
    public static void CausalAttention(ReadOnlySpan<float> queries, ReadOnlySpan<float> keys, ReadOnlySpan<float> values,
        int tokenCount, int startPosition, int headCount, int kvHeadCount, int headDim, float scale, Span<float> destination)
    {
        int group = headCount / kvHeadCount, kvRow = kvHeadCount * headDim, qRow = headCount * headDim;
        for (int t = 0; t < tokenCount; t++)
        {
            for (int h = 0; h < headCount; h++)
            {
                int kvh = h / group, visible = startPosition + t + 1;
                var p = new double[visible];
                double max = double.NegativeInfinity, sum = 0;
                for (int j = 0; j < visible; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < headDim; d++) dot += (double)queries[t * qRow + h * headDim + d] * keys[j * kvRow + kvh * headDim + d];
                    p[j] = dot * scale;
                    max = Math.Max(max, p[j]);
                }
                for (int j = 0; j < visible; j++) sum += p[j] = Math.Exp(p[j] - max);
                for (int d = 0; d < headDim; d++)
                {
                    double acc = 0;
                    for (int j = 0; j < visible; j++) acc += p[j] / sum * values[j * kvRow + kvh * headDim + d];
                    destination[t * qRow + h * headDim + d] = (float)acc;
                }
            }
        }
    }
}
