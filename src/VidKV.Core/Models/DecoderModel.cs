using System.Diagnostics;
using VidKV.Cache;
using VidKV.Formats;
using VidKV.Tensors;
using VidKV.Text;

namespace VidKV.Models;

/// <summary>
/// A Llama-family decoder (Llama, Qwen2): RMSNorm → GQA attention with RoPE (optional q/k/v biases) → residual →
/// RMSNorm → SwiGLU feed-forward → residual, then a final norm and the output projection (tied to the token
/// embedding when <c>output.weight</c> is absent). Activations are f32; weights stay in their stored dtype.
/// </summary>
public sealed unsafe class DecoderModel : IDisposable
{
    sealed class Layer
    {
        public required float[] AttentionNorm, FeedForwardNorm;
        public required WeightMatrix Query, Key, Value, Output, Gate, Up, Down;
        public float[]? QueryBias, KeyBias, ValueBias;
    }

    readonly IWeightSource weights;
    readonly Layer[] layers;
    readonly WeightMatrix tokenEmbedding, output;
    readonly float[] outputNorm;

    /// <param name="repack">
    /// Repack weights into the layouts the kernels read fastest where this machine has such kernels (Q4_0/Q8_0/Q4_K/Q6_K
    /// rows interleaved by 16 with AVX-512BW; see <see cref="WeightMatrix.Interleave"/>), as llama.cpp's runtime
    /// repack; false keeps every matrix as stored (llama-bench's <c>--no-repack</c>).
    /// </param>
    public DecoderModel(ModelConfig config, IWeightSource weights, Vocabulary vocabulary, bool repack = true)
    {
        Config = config;
        this.weights = weights;
        Vocabulary = vocabulary;
        Tokenizer = Tokenizer.Create(vocabulary);
        if (vocabulary.Count > config.VocabSize)
            throw ModelFormatException.InFile(weights.Path, $"vocabulary has {vocabulary.Count} tokens but token_embd.weight has only {config.VocabSize} rows");

        int e = config.EmbeddingLength, qDim = config.HeadCount * config.HeadDim, kvDim = config.KvHeadCount * config.HeadDim, f = config.FeedForwardLength;
        tokenEmbedding = weights.Matrix("token_embd.weight", config.VocabSize, e);
        outputNorm = weights.Vector("output_norm.weight", e);
        output = weights.Contains("output.weight") ? weights.Matrix("output.weight", config.VocabSize, e) : tokenEmbedding;
        layers = new Layer[config.LayerCount];
        for (int i = 0; i < layers.Length; i++)
        {
            string p = $"blk.{i}.";
            layers[i] = new Layer
            {
                AttentionNorm = weights.Vector(p + "attn_norm.weight", e),
                Query = weights.Matrix(p + "attn_q.weight", qDim, e),
                Key = weights.Matrix(p + "attn_k.weight", kvDim, e),
                Value = weights.Matrix(p + "attn_v.weight", kvDim, e),
                QueryBias = weights.Contains(p + "attn_q.bias") ? weights.Vector(p + "attn_q.bias", qDim) : null,
                KeyBias = weights.Contains(p + "attn_k.bias") ? weights.Vector(p + "attn_k.bias", kvDim) : null,
                ValueBias = weights.Contains(p + "attn_v.bias") ? weights.Vector(p + "attn_v.bias", kvDim) : null,
                Output = weights.Matrix(p + "attn_output.weight", e, qDim),
                FeedForwardNorm = weights.Vector(p + "ffn_norm.weight", e),
                Gate = weights.Matrix(p + "ffn_gate.weight", f, e),
                Up = weights.Matrix(p + "ffn_up.weight", f, e),
                Down = weights.Matrix(p + "ffn_down.weight", e, f),
            };
        }
        if (repack)
        {
            // Only a GGUF file's mapping may give its pages back once a matrix is repacked.
            bool mapped = weights is GgufWeights;
            try
            {
                foreach (var matrix in Matrices()) matrix.Interleave(releaseStoredPages: mapped);
            }
            catch
            {
                foreach (var matrix in Matrices()) matrix.Dispose(); // the caller disposes the weights
                throw;
            }
        }
    }

    /// <summary>Whether any matrix was repacked at load (<see cref="WeightMatrix.Interleave"/>).</summary>
    public bool IsRepacked => Matrices().Any(m => m.IsInterleaved);

    /// <summary>Every matrix the forward pass multiplies with (an untied token embedding is only looked up by rows).</summary>
    IEnumerable<WeightMatrix> Matrices()
    {
        foreach (var l in layers)
            foreach (var m in new[] { l.Query, l.Key, l.Value, l.Output, l.Gate, l.Up, l.Down }) yield return m;
        yield return output;
    }

    public ModelConfig Config { get; }
    public Vocabulary Vocabulary { get; }
    public Tokenizer Tokenizer { get; }
    public string Path => weights.Path;
    /// <summary>Storage type of the largest matrices (what llama.cpp calls the model's file type).</summary>
    public GgmlType WeightType => layers.Length > 0 ? layers[0].Gate.Type : output.Type;

    /// <summary>
    /// A fresh KV cache and scratch space for one sequence of up to <paramref name="contextLength"/> tokens: a paged
    /// cache (32-token pages) that keeps every token (<see cref="FullPolicy"/>). Keys and values are f16 by default
    /// (llama.cpp's default; logits move by up to ~1e-2), f32 (bit-for-bit the precise path) or q8_0.
    /// </summary>
    public DecoderState CreateState(int contextLength, GgmlType keyType = GgmlType.F16, GgmlType valueType = GgmlType.F16)
    {
        var store = new PagedKvStore(PagedOptions() with { KeyType = keyType, ValueType = valueType });
        return new(new PagedKvCache(store, new KvPolicyMap(Config.LayerCount, Config.KvHeadCount, new FullPolicy()), contextLength), Config);
    }

    /// <summary>A state over a given cache (a <see cref="PagedKvCache"/> with policies, for one); the state owns and disposes it.</summary>
    public DecoderState CreateState(KvCache cache) => new(cache, Config);

    /// <summary>Weight bytes one decoded token reads: every layer matrix and the output matrix once (what bounds decode).</summary>
    public long WeightBytesPerToken =>
        layers.Sum(l => new[] { l.Query, l.Key, l.Value, l.Output, l.Gate, l.Up, l.Down }.Sum(m => (long)m.RowBytes * m.Rows)) + (long)output.RowBytes * output.Rows;

    /// <summary>FLOPs of the layer matrix products per prompt token (2 per weight; prefill computes the output matrix once per batch, so it is left out).</summary>
    public long MatMulFlopsPerToken =>
        layers.Sum(l => new[] { l.Query, l.Key, l.Value, l.Output, l.Gate, l.Up, l.Down }.Sum(m => 2L * m.Rows * m.Columns));

    /// <summary>FLOPs of attention for one query over <paramref name="keys"/> cached tokens in every layer (scores and weighted sum, 2 each).</summary>
    public long AttentionFlopsPerToken(int keys) => 4L * Config.HeadCount * Config.HeadDim * keys * Config.LayerCount;

    /// <summary>Options for a paged store shaped for this model.</summary>
    public PagedKvOptions PagedOptions(int pageSize = 32, GgmlType type = GgmlType.F16) =>
        new() { LayerCount = Config.LayerCount, KvHeadCount = Config.KvHeadCount, HeadDim = Config.HeadDim, PageSize = pageSize, KeyType = type, ValueType = type };

    /// <summary>
    /// Runs <paramref name="tokens"/> at the state's next positions, appends their keys and values to its cache, and
    /// writes logits: [tokens.Length, vocab] when <paramref name="allLogits"/>, else [vocab] for the last token.
    /// </summary>
    public void Forward(DecoderState state, ReadOnlySpan<int> tokens, Span<float> logits, bool allLogits = false)
    {
        int n = tokens.Length;
        if (n == 0) return;
        long clock = Stopwatch.GetTimestamp();
        var c = Config;
        int start = state.Cache.Length;
        if (!state.Cache.Reserve(start + n))
            throw new InvalidOperationException($"context full: {start} + {n} tokens exceed the context length {state.Cache.ContextLength}");
        if (logits.Length < (allLogits ? n : 1) * c.VocabSize) throw new ArgumentException("logits buffer too small", nameof(logits));

        int e = c.EmbeddingLength, qDim = c.HeadCount * c.HeadDim, kvDim = c.KvHeadCount * c.HeadDim, f = c.FeedForwardLength;
        var s = state.Scratch(n);
        Span<float> x = s.X.AsSpan(0, n * e), h = s.H.AsSpan(0, n * e), q = s.Q.AsSpan(0, n * qDim), attn = s.Attn.AsSpan(0, n * qDim);
        Span<float> k = s.K.AsSpan(0, n * kvDim), v = s.V.AsSpan(0, n * kvDim), gate = s.Gate.AsSpan(0, n * f), up = s.Up.AsSpan(0, n * f);

        for (int t = 0; t < n; t++)
        {
            if ((uint)tokens[t] >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[t]} at index {t} is outside the vocabulary of {c.VocabSize}");
            tokenEmbedding.DequantizeRow(tokens[t], x.Slice(t * e, e));
        }

        float scale = 1f / MathF.Sqrt(c.HeadDim);
        int half = c.RopeDims / 2;
        Span<float> cos = s.RopeCos.AsSpan(0, n * half), sin = s.RopeSin.AsSpan(0, n * half);
        for (int t = 0; t < n; t++) Kernels.RopeAngles(start + t, c.RopeDims, c.RopeFreqBase, cos.Slice(t * half, half), sin.Slice(t * half, half));
        ref var times = ref state.Times;
        times.Other += Lap(ref clock); // embedding lookup and RoPE angles
        fixed (float* px = x, ph = h, pq = q, pk = k, pv = v, pgate = gate, pup = up, pcos = cos, psin = sin)
        {
            var work = new TokenWork
            {
                X = px, H = ph, Q = pq, K = pk, V = pv, Gate = pgate, Up = pup, Cos = pcos, Sin = psin, Tokens = n,
                Embedding = e, QDim = qDim, KvDim = kvDim, FeedForward = f, HeadDim = c.HeadDim, HeadCount = c.HeadCount,
                KvHeadCount = c.KvHeadCount, Half = half, Eps = c.RmsNormEps, Mode = c.RopeMode,
            };
            for (int l = 0; l < layers.Length; l++)
            {
                var layer = layers[l];
                fixed (float* attentionNorm = layer.AttentionNorm, feedForwardNorm = layer.FeedForwardNorm,
                    queryBias = layer.QueryBias, keyBias = layer.KeyBias, valueBias = layer.ValueBias)
                {
                    // Layer l > 0 first adds the previous feed-forward output to the residual stream.
                    work.Run(TokenStage.ResidualNorm, attentionNorm, add: l > 0);
                    times.Other += Lap(ref clock);
                    WeightMatrix.MatMul(h, n, layer.Query, q, layer.Key, k, layer.Value, v);
                    times.QkvProjection += Lap(ref clock);
                    work.QueryBias = queryBias;
                    work.KeyBias = keyBias;
                    work.ValueBias = valueBias;
                    work.Run(TokenStage.BiasRope, null, add: false);
                    times.Other += Lap(ref clock);
                    state.Cache.Append(l, start, n, k, v);
                    times.KvAppend += Lap(ref clock);
                    state.Cache.Attend(l, q, start, n, c.HeadCount, scale, attn);
                    times.Attention += Lap(ref clock);
                    layer.Output.MatMul(attn, n, h);
                    times.OutputProjection += Lap(ref clock);
                    work.Run(TokenStage.ResidualNorm, feedForwardNorm, add: true);
                    times.Other += Lap(ref clock);
                    WeightMatrix.MatMul(h, n, layer.Gate, gate, layer.Up, up, null, default);
                    times.GateUp += Lap(ref clock);
                    work.Run(TokenStage.SwiGlu, null, add: false);
                    times.Other += Lap(ref clock);
                    layer.Down.MatMul(gate, n, h);
                    times.Down += Lap(ref clock);
                }
            }
            if (layers.Length > 0) work.Run(TokenStage.Residual, null, add: true);
        }
        state.Cache.Commit(start + n);

        int first = allLogits ? 0 : n - 1, count = allLogits ? n : 1;
        for (int t = 0; t < count; t++) Kernels.RmsNorm(x.Slice((first + t) * e, e), outputNorm, c.RmsNormEps, h.Slice(t * e, e));
        times.Other += Lap(ref clock);
        output.MatMul(h, count, logits);
        times.LmHead += Lap(ref clock);
        times.Tokens += n;
    }

    /// <summary>Ticks since <paramref name="clock"/>, which moves to now.</summary>
    static long Lap(ref long clock)
    {
        long now = Stopwatch.GetTimestamp(), elapsed = now - clock;
        clock = now;
        return elapsed;
    }

    enum TokenStage { ResidualNorm, BiasRope, SwiGlu, Residual }

    /// <summary>
    /// The per-token work between the weight products (residual adds, RMSNorm, biases, RoPE, SwiGLU), split over the
    /// worker pool by tokens when there are several: on one thread it was 10 % of a pp512 forward once the products got
    /// faster. Results are the same bits whichever thread computes a token.
    /// </summary>
    struct TokenWork
    {
        public float* X, H, Q, K, V, Gate, Up, Cos, Sin, Weights, QueryBias, KeyBias, ValueBias;
        public int Tokens, Embedding, QDim, KvDim, FeedForward, HeadDim, HeadCount, KvHeadCount, Half;
        public float Eps;
        public RopeMode Mode;
        public TokenStage Stage;
        public bool Add;

        public void Run(TokenStage stage, float* weights, bool add)
        {
            Stage = stage;
            Weights = weights;
            Add = add;
            fixed (TokenWork* self = &this)
            {
                if (Tokens == 1) Execute(self, 0, 1);
                else WorkerPool.Shared.Run(&Execute, self);
            }
        }

        static void Execute(void* context, int thread, int threads)
        {
            ref TokenWork w = ref *(TokenWork*)context;
            var (first, end) = WorkerPool.Split(w.Tokens, thread, threads);
            int e = w.Embedding;
            for (int t = first; t < end; t++)
            {
                switch (w.Stage)
                {
                    case TokenStage.ResidualNorm:
                    case TokenStage.Residual:
                    {
                        var x = new Span<float>(w.X + (long)t * e, e);
                        var h = new Span<float>(w.H + (long)t * e, e);
                        if (w.Add) System.Numerics.Tensors.TensorPrimitives.Add(x, h, x);
                        if (w.Stage == TokenStage.ResidualNorm) Kernels.RmsNorm(x, new ReadOnlySpan<float>(w.Weights, e), w.Eps, h);
                        break;
                    }
                    case TokenStage.BiasRope:
                    {
                        var q = new Span<float>(w.Q + (long)t * w.QDim, w.QDim);
                        var k = new Span<float>(w.K + (long)t * w.KvDim, w.KvDim);
                        if (w.QueryBias != null) System.Numerics.Tensors.TensorPrimitives.Add(q, new ReadOnlySpan<float>(w.QueryBias, w.QDim), q);
                        if (w.KeyBias != null) System.Numerics.Tensors.TensorPrimitives.Add(k, new ReadOnlySpan<float>(w.KeyBias, w.KvDim), k);
                        if (w.ValueBias != null)
                        {
                            var v = new Span<float>(w.V + (long)t * w.KvDim, w.KvDim);
                            System.Numerics.Tensors.TensorPrimitives.Add(v, new ReadOnlySpan<float>(w.ValueBias, w.KvDim), v);
                        }
                        var cos = new ReadOnlySpan<float>(w.Cos + (long)t * w.Half, w.Half);
                        var sin = new ReadOnlySpan<float>(w.Sin + (long)t * w.Half, w.Half);
                        for (int head = 0; head < w.HeadCount; head++) Kernels.Rope(q.Slice(head * w.HeadDim, w.HeadDim), cos, sin, w.Mode);
                        for (int head = 0; head < w.KvHeadCount; head++) Kernels.Rope(k.Slice(head * w.HeadDim, w.HeadDim), cos, sin, w.Mode);
                        break;
                    }
                    case TokenStage.SwiGlu:
                    {
                        var gate = new Span<float>(w.Gate + (long)t * w.FeedForward, w.FeedForward);
                        Kernels.SwiGlu(gate, new ReadOnlySpan<float>(w.Up + (long)t * w.FeedForward, w.FeedForward), gate);
                        break;
                    }
                }
            }
        }
    }

    public void Dispose()
    {
        foreach (var matrix in Matrices()) matrix.Dispose();
        weights.Dispose();
    }
}

/// <summary>Per-sequence state of a <see cref="DecoderModel"/>: its KV cache (native memory, freed by Dispose) and reusable activation buffers.</summary>
public sealed class DecoderState(KvCache cache, ModelConfig config) : IDisposable
{
    public void Dispose() => Cache.Dispose();

    internal sealed class Buffers
    {
        public float[] X = [], H = [], Q = [], Attn = [], K = [], V = [], Gate = [], Up = [], RopeCos = [], RopeSin = [];
    }

    readonly Buffers buffers = new();
    int batchCapacity;

    /// <summary>Time <see cref="DecoderModel.Forward"/> spent per phase for this sequence, summed over all calls (profiles).</summary>
    public ForwardTimes Times;

    public KvCache Cache { get; } = cache;

    /// <summary>Tokens already in the cache (the next token's position).</summary>
    public int Position => Cache.Length;

    internal Buffers Scratch(int tokens)
    {
        if (tokens > batchCapacity)
        {
            int e = config.EmbeddingLength, qDim = config.HeadCount * config.HeadDim, kvDim = config.KvHeadCount * config.HeadDim, f = config.FeedForwardLength;
            buffers.X = new float[tokens * e];
            buffers.H = new float[tokens * e];
            buffers.Q = new float[tokens * qDim];
            buffers.Attn = new float[tokens * qDim];
            buffers.K = new float[tokens * kvDim];
            buffers.V = new float[tokens * kvDim];
            buffers.Gate = new float[tokens * f];
            buffers.Up = new float[tokens * f];
            buffers.RopeCos = new float[tokens * (config.RopeDims / 2)];
            buffers.RopeSin = new float[tokens * (config.RopeDims / 2)];
            batchCapacity = tokens;
        }
        return buffers;
    }
}

/// <summary>
/// Stopwatch ticks of <see cref="DecoderModel.Forward"/> per phase, summed: the weight products (q/k/v, attention output,
/// feed-forward gate and up, down, the output head), the KV cache's append and attention (its own split is
/// <see cref="KvPhaseTimes"/>), and everything else (embedding, norms, RoPE, biases, SwiGLU, residuals).
/// </summary>
public struct ForwardTimes
{
    public long QkvProjection, KvAppend, Attention, OutputProjection, GateUp, Down, LmHead, Other;
    /// <summary>Tokens the forward passes ran.</summary>
    public long Tokens;

    public readonly long Total => QkvProjection + KvAppend + Attention + OutputProjection + GateUp + Down + LmHead + Other;

    /// <summary>Milliseconds per token of each phase since <paramref name="before"/>, by name (for JSON).</summary>
    public readonly Dictionary<string, double> MillisecondsPerToken(in ForwardTimes before)
    {
        double perTick = 1000.0 / Stopwatch.Frequency / Math.Max(1, Tokens - before.Tokens);
        return new()
        {
            ["qkv_projection"] = (QkvProjection - before.QkvProjection) * perTick,
            ["kv_append"] = (KvAppend - before.KvAppend) * perTick,
            ["attention"] = (Attention - before.Attention) * perTick,
            ["output_projection"] = (OutputProjection - before.OutputProjection) * perTick,
            ["ffn_gate_up"] = (GateUp - before.GateUp) * perTick,
            ["ffn_down"] = (Down - before.Down) * perTick,
            ["lm_head"] = (LmHead - before.LmHead) * perTick,
            ["other"] = (Other - before.Other) * perTick,
        };
    }
}
