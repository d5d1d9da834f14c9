using System.Numerics.Tensors;
using VidKV.Cache;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// The rows of one sequence in a batch for <see cref="SelfAttention"/>: its cache, the first row and the row count,
/// and its length before the batch (the first row's place in the sequence).
/// </summary>
internal readonly record struct AttentionRun(KvCache Cache, int FirstRow, int Count, int Start);

/// <summary>
/// Multi-head attention with grouped-query KV heads: q/k/v projections (optional biases), RoPE on queries and keys,
/// then either causal attention of each sequence's rows over its KV cache (the rows' keys and values appended first;
/// a decoder) or attention of every row over every row of the batch (no cache; a ViT), and the output projection.
/// </summary>
internal sealed unsafe class SelfAttention(Linear query, Linear key, Linear value, Linear output, int headCount, int kvHeadCount, int headDim, Rope? rope)
{
    public Linear Query { get; } = query;
    public Linear Key { get; } = key;
    public Linear Value { get; } = value;
    public Linear Output { get; } = output;
    public int HeadCount { get; } = headCount;
    public int KvHeadCount { get; } = kvHeadCount;
    public int HeadDim { get; } = headDim;
    public Rope? Rope { get; } = rope;
    /// <summary>
    /// Whether attention without a cache (a ViT's) multiplies in bf16 (see <see cref="Attention.Bidirectional"/>): set
    /// for towers stored in 16 bits or fewer, whose products already round their inputs as much or more.
    /// </summary>
    public bool Bf16Attention { get; init; }

    /// <summary>
    /// Attention of <paramref name="tokens"/> rows: <paramref name="h"/> [tokens, embedding] in (normalised), the
    /// output projection out into the same buffer. <paramref name="cos"/>/<paramref name="sin"/> are the rows' RoPE
    /// angles ([tokens, Rope.Pairs], <see cref="Rope.Angles"/>). With <paramref name="runs"/> each sequence's rows
    /// append to its cache at layer <paramref name="layer"/> (with <paramref name="frames"/>, the rows' frame ids) and
    /// attend causally over it; with none the rows attend to each other.
    /// </summary>
    public void Forward(Span<float> h, int tokens, Activations buffers, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin,
        int layer, ReadOnlySpan<AttentionRun> runs, ReadOnlySpan<int> frames, ForwardProfile? profile) =>
        Forward(h, tokens, buffers, cos, sin, layer, runs, frames, default, profile);

    /// <summary>
    /// As the overload above; without runs, <paramref name="windows"/> (ascending row boundaries, 0 first and
    /// <paramref name="tokens"/> last) restrict each row to the rows of its window (Qwen2.5-VL's window attention).
    /// </summary>
    public void Forward(Span<float> h, int tokens, Activations buffers, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin,
        int layer, ReadOnlySpan<AttentionRun> runs, ReadOnlySpan<int> frames, ReadOnlySpan<int> windows, ForwardProfile? profile)
    {
        int qDim = HeadCount * HeadDim, kvDim = KvHeadCount * HeadDim;
        Span<float> q = buffers.Q(tokens * qDim), k = buffers.K(tokens * kvDim), v = buffers.V(tokens * kvDim), attention = buffers.Attention(tokens * qDim);
        Linear.ForwardShared(h, tokens, Query, q, Key, k, Value, v, profile);
        BiasAndRotate(q, k, v, tokens, cos, sin);
        profile?.Lap(ForwardPhase.Other);
        float scale = 1f / MathF.Sqrt(HeadDim);
        if (runs.IsEmpty && windows.Length <= 2)
        {
            Attention.Bidirectional(q, k, v, tokens, HeadCount, KvHeadCount, HeadDim, scale, attention, bf16: Bf16Attention);
            profile?.Lap(ForwardPhase.Attention);
        }
        else if (runs.IsEmpty)
        {
            for (int w = 0; w + 1 < windows.Length; w++)
            {
                int first = windows[w], count = windows[w + 1] - first;
                Attention.Bidirectional(q.Slice(first * qDim, count * qDim), k.Slice(first * kvDim, count * kvDim), v.Slice(first * kvDim, count * kvDim),
                    count, HeadCount, KvHeadCount, HeadDim, scale, attention.Slice(first * qDim, count * qDim), bf16: Bf16Attention);
            }
            profile?.Lap(ForwardPhase.Attention);
        }
        else
        {
            foreach (var run in runs)
                run.Cache.Append(layer, run.Start, run.Count, k.Slice(run.FirstRow * kvDim, run.Count * kvDim), v.Slice(run.FirstRow * kvDim, run.Count * kvDim),
                    frames.IsEmpty ? default : frames.Slice(run.FirstRow, run.Count));
            profile?.Lap(ForwardPhase.KvAppend);
            foreach (var run in runs)
                run.Cache.Attend(layer, q.Slice(run.FirstRow * qDim, run.Count * qDim), run.Start, run.Count, HeadCount, scale, attention.Slice(run.FirstRow * qDim, run.Count * qDim));
            profile?.Lap(ForwardPhase.Attention);
        }
        Output.Forward(attention, tokens, h, profile);
    }

    /// <summary>q/k/v biases and RoPE per row, split over the pool by rows.</summary>
    void BiasAndRotate(Span<float> q, Span<float> k, Span<float> v, int tokens, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        if (Rope == null && Query.Bias == null && Key.Bias == null && Value.Bias == null) return;
        fixed (float* pq = q, pk = k, pv = v, pcos = cos, psin = sin, qb = Query.Bias, kb = Key.Bias, vb = Value.Bias)
        {
            var job = new Job
            {
                Q = pq, K = pk, V = pv, Cos = pcos, Sin = psin, QueryBias = qb, KeyBias = kb, ValueBias = vb, Tokens = tokens,
                HeadCount = HeadCount, KvHeadCount = KvHeadCount, HeadDim = HeadDim, Half = Rope?.Pairs ?? 0, Mode = Rope?.Mode ?? RopeMode.NeoX,
            };
            TokenParallel.Run(tokens, &Execute, &job);
        }
    }

    struct Job
    {
        public float* Q, K, V, Cos, Sin, QueryBias, KeyBias, ValueBias;
        public int Tokens, HeadCount, KvHeadCount, HeadDim, Half;
        public RopeMode Mode;
    }

    static void Execute(void* context, int thread, int threads)
    {
        ref Job w = ref *(Job*)context;
        var (start, end) = TokenParallel.Share(w.Tokens, thread, threads);
        int qDim = w.HeadCount * w.HeadDim, kvDim = w.KvHeadCount * w.HeadDim;
        for (int t = start; t < end; t++)
        {
            var q = new Span<float>(w.Q + (long)t * qDim, qDim);
            var k = new Span<float>(w.K + (long)t * kvDim, kvDim);
            if (w.QueryBias != null) TensorPrimitives.Add(q, new ReadOnlySpan<float>(w.QueryBias, qDim), q);
            if (w.KeyBias != null) TensorPrimitives.Add(k, new ReadOnlySpan<float>(w.KeyBias, kvDim), k);
            if (w.ValueBias != null)
            {
                var v = new Span<float>(w.V + (long)t * kvDim, kvDim);
                TensorPrimitives.Add(v, new ReadOnlySpan<float>(w.ValueBias, kvDim), v);
            }
            if (w.Half == 0) continue;
            var cos = new ReadOnlySpan<float>(w.Cos + (long)t * w.Half, w.Half);
            var sin = new ReadOnlySpan<float>(w.Sin + (long)t * w.Half, w.Half);
            for (int head = 0; head < w.HeadCount; head++) Kernels.Rope(q.Slice(head * w.HeadDim, w.HeadDim), cos, sin, w.Mode);
            for (int head = 0; head < w.KvHeadCount; head++) Kernels.Rope(k.Slice(head * w.HeadDim, w.HeadDim), cos, sin, w.Mode);
        }
    }
}
