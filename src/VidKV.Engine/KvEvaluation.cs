using VidKV.Cache;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Engine;

/// <summary>One row of <see cref="KvEvaluation"/>: a policy at a budget against the full cache.</summary>
internal sealed record KvEvaluationRow(string Policy, int? Budget, int Steps, double Perplexity, double PerplexityRatio, double KlDivergence,
    double Top1Agreement, double? RecallMean, double? RecallP5, double? OutputErrorMean, double BytesPerStep, double KeptTokensPerHead)
{
    /// <summary>Milliseconds of the policies' one-time preparation and per-append upkeep (<see cref="KvPolicyWork"/>), summed over chunks; null when no policy reports any.</summary>
    public double? PrepareMs { get; init; }
    public double? AppendMs { get; init; }
}

/// <summary>
/// Judges KV policies against the full cache on a text (ALGORITHMS.md, "How to judge a policy"). Each chunk of
/// <c>contextLength</c> tokens is decoded one token at a time (teacher forcing, BOS first), so every step runs
/// under the policy, in lockstep with a Full run. Over the second half of each chunk (llama-perplexity's scored
/// half): perplexity, KL(full ‖ policy) and top-1 agreement of the next-token distributions; per layer, KV head, query
/// head and step, the attention recall R(S) = Σ_{i∈S} p_i of the rows the policy read, with p the softmax of the
/// policy's query over the full run's keys, and the relative output error ‖o_S − o‖/‖o‖ with o_S the same attention
/// renormalised over S (skipped when <c>attentionMetrics</c> is false); and KV bytes read per step.
/// For long synthetic contexts the text can be repeated (<c>repeat</c>), the unscored part of each chunk prefilled in
/// batches of 512 (<c>prefillFirstHalf</c>) under both caches instead of token by token, and only the last
/// <c>scoredTokens</c> predictions of each chunk scored instead of its second half (a 16384-token context then costs
/// two prefills and a few hundred decode steps per policy, not 8192 steps). Full's own row runs one cache: its
/// numbers against itself are exact by definition (KL 0, top-1 agreement 1).
/// </summary>
internal static class KvEvaluation
{
    public static List<KvEvaluationRow> Run(DecoderModel model, string text, int contextLength, IReadOnlyList<string> policies,
        IReadOnlyList<int> budgets, int pageSize = 16, GgmlType type = GgmlType.F16, int maxChunks = 0, Action<string>? progress = null, bool attentionMetrics = true,
        int repeat = 1, bool prefillFirstHalf = false, int scoredTokens = 0)
    {
        if (scoredTokens < 0 || scoredTokens > contextLength - 2)
            throw new ArgumentOutOfRangeException(nameof(scoredTokens), $"scored tokens must be 0 (the second half) to {contextLength - 2} (context {contextLength} less the first token and the last), not {scoredTokens}");
        if (contextLength < 4) throw new ArgumentOutOfRangeException(nameof(contextLength), "context length must be at least 4");
        if (repeat < 1) throw new ArgumentOutOfRangeException(nameof(repeat), $"repeat must be at least 1, not {repeat}");
        if (text.EndsWith('\n')) text = text[..^1];
        if (repeat > 1) text = string.Join("\n", Enumerable.Repeat(text, repeat));
        var tokens = model.Tokenizer.Encode(text, addSpecial: true, parseSpecial: false);
        int chunks = tokens.Count / contextLength;
        if (chunks == 0) throw new ArgumentException($"the text has {tokens.Count} tokens; -c {contextLength} needs at least {contextLength}");
        if (maxChunks > 0) chunks = Math.Min(chunks, maxChunks);
        var config = new KvCacheConfig { PageSize = pageSize, Type = type };
        // Parse every spec before any work, so a typo fails at once.
        foreach (var spec in policies) foreach (int b in budgets) config.For(spec, b).BuildPolicies(model.Config.LayerCount, model.Config.KvHeadCount);

        var rows = new List<KvEvaluationRow>();
        var runs = new List<(string Spec, int? Budget)> { ("full", null) };
        foreach (var spec in policies.Where(p => p != "full")) foreach (int b in budgets) runs.Add((spec, b));
        double fullNll = 0;
        foreach (var (spec, budget) in runs)
        {
            progress?.Invoke(budget is int bb ? $"{spec} at budget {bb}" : spec);
            var stats = new Stats();
            for (int c = 0; c < chunks; c++)
            {
                var chunk = tokens.Skip(c * contextLength).Take(contextLength).ToArray();
                if (model.Vocabulary.AddBos && model.Vocabulary.BosId >= 0) chunk[0] = model.Vocabulary.BosId;
                RunChunk(model, config.For(spec, budget), chunk, stats, attentionMetrics, prefillFirstHalf, scoredTokens);
            }
            double nll = stats.Nll / stats.Scored;
            if (budget == null) fullNll = nll;
            rows.Add(new KvEvaluationRow(budget == null ? "full" : spec, budget, (int)stats.Scored, Math.Exp(nll), Math.Exp(nll - fullNll),
                stats.Kl / stats.Scored, stats.Agree / (double)stats.Scored, stats.Recall.Count > 0 ? stats.Recall.Average() : null,
                Percentile(stats.Recall, 0.05), stats.Error.Count > 0 ? stats.Error.Average() : null, stats.Bytes / (double)stats.Steps, stats.Kept / stats.KeptSamples)
            {
                PrepareMs = stats.Reported ? KvPhaseTimes.Milliseconds(stats.PrepareTicks) : null,
                AppendMs = stats.Reported ? KvPhaseTimes.Milliseconds(stats.AppendTicks) : null,
            });
        }
        return rows;
    }

    static KvCacheConfig For(this KvCacheConfig config, string spec, int? budget) => config with { Default = spec, Budget = budget };

    sealed class Stats
    {
        public double Nll, Kl, Kept;
        public long Scored, Agree, Steps, KeptSamples, PrepareTicks, AppendTicks;
        public bool Reported;
        public double Bytes;
        public readonly List<double> Recall = [], Error = [];
    }

    static void RunChunk(DecoderModel model, KvCacheConfig config, int[] chunk, Stats stats, bool attentionMetrics, bool prefillFirstHalf, int scoredTokens)
    {
        var c = model.Config;
        var fullConfig = new KvCacheConfig { PageSize = config.PageSize, Type = config.Type };
        // Full against itself: one cache serves both sides.
        bool reference = config.Default == "full" && config.Layers.Count == 0 && config.Heads.Count == 0 && config.ColdPath == null && config.MaxHotPages == 0;
        using var full = model.CreateState(fullConfig.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim));
        var cache = reference ? (PagedKvCache)full.Cache : config.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim, rotation: model.KeyRotation);
        using var state = reference ? null : model.CreateState(cache);
        var fullCache = (PagedKvCache)full.Cache;
        var fullStore = fullCache.Store;
        int vocab = c.VocabSize, first = scoredTokens > 0 ? chunk.Length - 1 - scoredTokens : chunk.Length / 2;
        var fullLogits = new float[vocab];
        var logits = new float[vocab];
        bool scoring = false;
        cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> read) =>
        {
            if (!scoring || !attentionMetrics) return;
            var selected = new HashSet<int>();
            unsafe
            {
                foreach (var view in read)
                    for (int j = 0; j < view.Count; j++)
                        if (view.Mask == KvPageView.AllRows || (view.Mask >> j & 1) != 0) selected.Add(view.Positions[j]);
            }
            AttentionComparison.Compare(fullStore, fullCache.Sequence.Table(step.Layer, step.Head), step.LastQueries, step.Group, step.Scale,
                selected.Contains, stats.Recall, stats.Error);
        };
        int start = 0;
        if (prefillFirstHalf && first > 1)
        {
            var head = chunk.AsSpan(0, first).ToArray();
            Generator.Prefill(model, full, head, fullLogits);
            if (state != null) Generator.Prefill(model, state, head, logits);
            start = first;
        }
        for (int t = start; t < chunk.Length - 1; t++)
        {
            scoring = t >= first;
            long before = cache.RowBytesRead;
            model.Forward(full, chunk.AsSpan(t, 1), fullLogits);
            if (state != null) model.Forward(state, chunk.AsSpan(t, 1), logits);
            else fullLogits.CopyTo(logits);
            if (!scoring) continue;
            stats.Steps++;
            stats.Bytes += cache.RowBytesRead - before;
            stats.Nll += Perplexity.NegativeLogLikelihood(logits, chunk[t + 1]);
            stats.Kl += KlDivergence(fullLogits, logits);
            if (TensorPrimitivesArgMax(fullLogits) == TensorPrimitivesArgMax(logits)) stats.Agree++;
            stats.Scored++;
        }
        for (int l = 0; l < c.LayerCount; l++)
            for (int h = 0; h < c.KvHeadCount; h++) { stats.Kept += cache.Sequence.Table(l, h).TokenCount; stats.KeptSamples++; }
        foreach (var (_, work) in KvPolicyWork.Of(cache.Policies))
        {
            stats.PrepareTicks += work.PrepareTicks;
            stats.AppendTicks += work.AppendTicks;
            stats.Reported = true;
        }
    }

    static int TensorPrimitivesArgMax(ReadOnlySpan<float> x) => System.Numerics.Tensors.TensorPrimitives.IndexOfMax(x);

    /// <summary>KL(p ‖ q) of the softmaxes of two logit vectors, in f64.</summary>
    public static double KlDivergence(ReadOnlySpan<float> p, ReadOnlySpan<float> q)
    {
        double pMax = System.Numerics.Tensors.TensorPrimitives.Max(p), qMax = System.Numerics.Tensors.TensorPrimitives.Max(q), pSum = 0, qSum = 0;
        for (int i = 0; i < p.Length; i++) { pSum += Math.Exp(p[i] - pMax); qSum += Math.Exp(q[i] - qMax); }
        double logP = Math.Log(pSum), logQ = Math.Log(qSum), kl = 0;
        for (int i = 0; i < p.Length; i++)
        {
            double lp = p[i] - pMax - logP, lq = q[i] - qMax - logQ;
            kl += Math.Exp(lp) * (lp - lq);
        }
        return Math.Max(0, kl);
    }

    /// <summary>The value at <paramref name="fraction"/> of the sorted list; null when it is empty (attention metrics skipped).</summary>
    static double? Percentile(List<double> values, double fraction)
    {
        if (values.Count == 0) return null;
        var sorted = values.Order().ToArray();
        return sorted[(int)Math.Floor(fraction * (sorted.Length - 1))];
    }
}
