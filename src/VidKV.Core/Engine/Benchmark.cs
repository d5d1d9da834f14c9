using System.Diagnostics;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Engine;

/// <summary>One row of a benchmark: a test (ppN or tgN) at a depth and thread count, repeated.</summary>
public sealed record BenchmarkResult(string Model, string Type, string Test, int Depth, int Threads, int Repetitions,
    double TokensPerSecond, double TokensPerSecondSd, double[] Samples, long PeakRssBytes, long KvBytes)
{
    /// <summary>KV policy of the cache ("full" for the default cache).</summary>
    public string Policy { get; init; } = "full";
    /// <summary>KV bytes in RAM and in the cold file after the test (paged caches).</summary>
    public long HotKvBytes { get; init; }
    public long ColdKvBytes { get; init; }
    /// <summary>Milliseconds per token in each phase of a paged cache's attention (select, recall, attention, update); null for the plain cache.</summary>
    public IReadOnlyDictionary<string, double>? KvMsPerToken { get; init; }
    /// <summary>
    /// The roofline bound of this test on this machine (when measured): decode = read bandwidth ÷ (weight bytes + KV
    /// bytes read per token), prefill = f32 FMA FLOP/s ÷ (matrix + attention FLOPs per token). Only for full attention.
    /// </summary>
    public double? CeilingTokensPerSecond { get; init; }
    public double? FractionOfCeiling => CeilingTokensPerSecond is double c && c > 0 ? TokensPerSecondMedian / c : null;
    /// <summary>The measured machine limits behind <see cref="CeilingTokensPerSecond"/>.</summary>
    public double? ReadBytesPerSecond { get; init; }
    public double? FlopsPerSecond { get; init; }

    public double TokensPerSecondMedian
    {
        get
        {
            var sorted = Samples.Order().ToArray();
            return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
        }
    }
}

/// <summary>
/// llama-bench's measurements: <c>ppN</c> = one prompt of N random tokens in batches of 512, <c>tgN</c> = N tokens
/// decoded one at a time, each after <c>depth</c> tokens already in the cache (that prefill is not timed; depths are
/// filled in ascending order into one cache, which is cut back to the depth before each repetition). Tokenisation is
/// not involved.
/// </summary>
public static class Benchmark
{
    public static IEnumerable<BenchmarkResult> Run(DecoderModel model, string modelName, int promptTokens, int generatedTokens,
        IReadOnlyList<int> depths, IReadOnlyList<int> threadCounts, int repetitions, GgmlType keyType = GgmlType.F16,
        GgmlType valueType = GgmlType.F16, Action<string>? progress = null, IReadOnlyList<Cache.KvCacheConfig?>? caches = null,
        bool roofline = false)
    {
        caches ??= [null];
        var rng = new Random(1234);
        int vocab = model.Config.VocabSize;
        string type = GgmlTypes.Name(model.WeightType);
        foreach (int threads in threadCounts)
        {
            WorkerPool.SetSharedThreadCount(threads);
            (double ReadBytesPerSecond, double FlopsPerSecond)? limits = null;
            if (roofline)
            {
                progress?.Invoke($"measuring read bandwidth and FMA throughput ({threads} threads)");
                limits = MachineLimits.Measure(WorkerPool.Shared);
            }
            foreach (var kv in caches)
            {
                // One cache for all depths, filled incrementally in ascending order (deep contexts take minutes to fill).
                int[] ordered = depths.Distinct().Order().ToArray();
                int context = ordered[^1] + Math.Max(promptTokens, generatedTokens) + 1;
                var c = model.Config;
                using var state = kv == null ? model.CreateState(context, keyType, valueType)
                    : model.CreateState(kv.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim, context));
                var paged = state.Cache as Cache.PagedKvCache;
                var logits = new float[vocab];
                foreach (int depth in ordered)
                {
                    state.Cache.Truncate(Math.Min(state.Cache.Length, depth));
                    if (depth > state.Cache.Length)
                    {
                        progress?.Invoke($"filling {depth} tokens of context ({threads} threads)");
                        Generator.Prefill(model, state, RandomTokens(rng, depth - state.Cache.Length, vocab), logits);
                    }
                    if (promptTokens > 0)
                    {
                        int[] prompt = RandomTokens(rng, promptTokens, vocab);
                        yield return Measure($"pp{promptTokens}", promptTokens, () => Generator.Prefill(model, state, prompt, logits),
                            limits?.FlopsPerSecond / (model.MatMulFlopsPerToken + model.AttentionFlopsPerToken(depth + promptTokens / 2)));
                    }
                    if (generatedTokens > 0)
                    {
                        var single = new int[1];
                        yield return Measure($"tg{generatedTokens}", generatedTokens, () =>
                        {
                            for (int i = 0; i < generatedTokens; i++)
                            {
                                single[0] = rng.Next(vocab);
                                model.Forward(state, single, logits);
                            }
                        }, limits?.ReadBytesPerSecond / (model.WeightBytesPerToken + KvBytesPerToken(model, depth + generatedTokens / 2, keyType, valueType)));
                    }

                    BenchmarkResult Measure(string test, int tokens, Action body, double? ceiling)
                    {
                        progress?.Invoke($"{test} at depth {depth}, {threads} threads");
                        var samples = new double[repetitions];
                        var before = paged?.Times ?? default;
                        for (int r = -1; r < repetitions; r++) // r = -1 is a warm-up run
                        {
                            state.Cache.Truncate(depth);
                            long start = Stopwatch.GetTimestamp();
                            body();
                            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
                            if (r >= 0) samples[r] = tokens / seconds;
                        }
                        double mean = samples.Average();
                        double sd = samples.Length > 1 ? Math.Sqrt(samples.Sum(s => (s - mean) * (s - mean)) / (samples.Length - 1)) : 0;
                        using var process = Process.GetCurrentProcess();
                        Dictionary<string, double>? phases = null;
                        if (paged != null)
                        {
                            var after = paged.Times;
                            double perToken = 1.0 / ((repetitions + 1) * (double)tokens);
                            phases = new()
                            {
                                ["select"] = Cache.KvPhaseTimes.Milliseconds(after.Select - before.Select) * perToken,
                                ["recall"] = Cache.KvPhaseTimes.Milliseconds(after.Recall - before.Recall) * perToken,
                                ["attention"] = Cache.KvPhaseTimes.Milliseconds(after.Attention - before.Attention) * perToken,
                                ["update"] = Cache.KvPhaseTimes.Milliseconds(after.Update - before.Update) * perToken,
                            };
                        }
                        return new BenchmarkResult(modelName, type, test, depth, threads, repetitions, mean, sd, samples, process.PeakWorkingSet64, state.Cache.AllocatedBytes)
                        {
                            Policy = paged?.Policies.Describe() ?? "full",
                            HotKvBytes = paged?.Store.HotBytes ?? state.Cache.AllocatedBytes,
                            ColdKvBytes = paged?.Store.ColdBytes ?? 0,
                            KvMsPerToken = phases,
                            CeilingTokensPerSecond = kv == null ? ceiling : null,
                            ReadBytesPerSecond = limits?.ReadBytesPerSecond,
                            FlopsPerSecond = limits?.FlopsPerSecond,
                        };
                    }
                }
            }
        }
    }

    /// <summary>KV bytes one decoded token reads with full attention over <paramref name="keys"/> cached tokens.</summary>
    static long KvBytesPerToken(DecoderModel model, int keys, GgmlType keyType, GgmlType valueType)
    {
        var c = model.Config;
        return (long)keys * c.LayerCount * c.KvHeadCount * (GgmlTypes.RowBytes(keyType, c.HeadDim) + GgmlTypes.RowBytes(valueType, c.HeadDim));
    }

    static int[] RandomTokens(Random rng, int count, int vocab) => Enumerable.Range(0, count).Select(_ => rng.Next(vocab)).ToArray();
}
