using System.Diagnostics;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Engine;

/// <summary>One row of a benchmark: a test (ppN or tgN) at a depth and thread count, repeated.</summary>
internal sealed record BenchmarkResult(string Model, string Type, string Test, int Depth, int Threads, int Repetitions,
    double TokensPerSecond, double TokensPerSecondSd, double[] Samples, long PeakRssBytes, long KvBytes)
{
    /// <summary>KV policy of the cache ("full" for the default cache).</summary>
    public string Policy { get; init; } = "full";
    /// <summary>KV bytes in RAM and in the cold file after the test (paged caches).</summary>
    public long HotKvBytes { get; init; }
    public long ColdKvBytes { get; init; }
    /// <summary>Milliseconds per token in each phase of a paged cache's attention (select, recall, attention, update); null for the plain cache.</summary>
    public IReadOnlyDictionary<string, double>? KvMsPerToken { get; init; }
    /// <summary>Milliseconds per token in each phase of the forward pass (weight products, KV append and attention, the rest); see <see cref="ForwardTimes"/>.</summary>
    public IReadOnlyDictionary<string, double>? MsPerToken { get; init; }
    /// <summary>
    /// The roofline bound of this test on this machine (when measured): decode = read bandwidth ÷ (weight bytes + KV
    /// bytes read per token), prefill = f32 FMA FLOP/s ÷ (matrix + attention FLOPs per token). Only for full attention.
    /// </summary>
    public double? CeilingTokensPerSecond { get; init; }
    /// <summary>
    /// Work each policy did apart from decode's phases (<see cref="Cache.KvPolicyWork"/>): before the test (while the
    /// context was filled) and per token of the test; null for the plain cache or when no policy reports any.
    /// </summary>
    public IReadOnlyList<KvPolicyWorkRow>? PolicyWork { get; init; }
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
/// One policy's own work in a benchmark row: its one-time preparation and per-append upkeep before the test (on the
/// fill: ingest), the same per token of the test (decode), and its latest preparation of all heads at one position
/// (keys per head × heads in milliseconds).
/// </summary>
public sealed record KvPolicyWorkRow(string Policy, double PrepareMs, double AppendMs, double PrepareMsPerToken, double AppendMsPerToken,
    int LastPrepareKeys, int LastPrepareHeads, double LastPrepareMs);

/// <summary>
/// llama-bench's measurements: <c>ppN</c> = one prompt of N random tokens in batches of 512, <c>tgN</c> = N tokens
/// decoded one at a time, each after <c>depth</c> tokens already in the cache (that prefill is not timed; depths are
/// filled in ascending order into one cache, which is cut back to the depth before each repetition). Tokenisation is
/// not involved. With <c>interleave</c> every (cache, depth) gets its own cache and the repetitions of one test take
/// turns across them (the first cache's sample, the second's, …, then the next round), so on a machine whose speed
/// drifts by tens of percent within minutes the rows of one run are compared under the same conditions.
/// </summary>
internal static class Benchmark
{
    public static IEnumerable<BenchmarkResult> Run(DecoderModel model, string modelName, int promptTokens, int generatedTokens,
        IReadOnlyList<int> depths, IReadOnlyList<int> threadCounts, int repetitions, GgmlType keyType = GgmlType.F16,
        GgmlType valueType = GgmlType.F16, Action<string>? progress = null, IReadOnlyList<Cache.KvCacheConfig?>? caches = null,
        bool roofline = false, bool interleave = false)
    {
        caches ??= [null];
        var rng = new Random(1234);
        int vocab = model.Config.VocabSize;
        int[] ordered = depths.Distinct().Order().ToArray();
        int context = ordered[^1] + Math.Max(promptTokens, generatedTokens) + 1;
        foreach (int threads in threadCounts)
        {
            WorkerPool.SetSharedThreadCount(threads);
            (double ReadBytesPerSecond, double FlopsPerSecond)? limits = null;
            if (roofline)
            {
                progress?.Invoke($"measuring read bandwidth and FMA throughput ({threads} threads)");
                limits = MachineLimits.Measure(WorkerPool.Shared);
            }
            // Sequential: one cache per config for all depths, filled incrementally in ascending order (deep contexts
            // take minutes to fill), each test's repetitions back to back. Interleaved: a cache per (config, depth).
            var groups = interleave ? caches.SelectMany(kv => ordered.Select(depth => (Kv: kv, Depths: new[] { depth }))).ToList()
                : caches.Select(kv => (Kv: kv, Depths: ordered)).ToList();
            var cells = new List<Cell>();
            try
            {
                foreach (var (kv, groupDepths) in groups)
                {
                    var config = interleave && kv?.ColdPath is string cold ? kv with { ColdPath = $"{cold}.{groupDepths[0]}" } : kv;
                    var c = model.Config;
                    var state = config == null ? model.CreateState(context, keyType, valueType)
                        : model.CreateState(config.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim, context, model.KeyRotation));
                    bool owner = true;
                    foreach (int depth in groupDepths)
                    {
                        var cell = new Cell(state, config, depth, owner);
                        owner = false;
                        if (interleave) cell.Fill(model, rng, progress, threads);
                        cells.Add(cell);
                    }
                }
                var logits = new float[vocab];
                var tests = new List<(string Name, int Tokens, Action<DecoderState> Body, Func<int, double?> Ceiling)>();
                if (promptTokens > 0)
                {
                    int[] prompt = RandomTokens(rng, promptTokens, vocab);
                    tests.Add(($"pp{promptTokens}", promptTokens, state => Generator.Prefill(model, state, prompt, logits),
                        // The f32 FMA roofline bounds f32-FMA products only: Q4_0/Q8_0 prefill runs on integer tiles (no bound given).
                        depth => IntegerTiles.Supports(model.WeightType) ? null
                            : limits?.FlopsPerSecond / (model.MatMulFlopsPerToken + model.AttentionFlopsPerToken(depth + promptTokens / 2))));
                }
                if (generatedTokens > 0)
                {
                    var single = new int[1];
                    tests.Add(($"tg{generatedTokens}", generatedTokens, state =>
                    {
                        for (int i = 0; i < generatedTokens; i++)
                        {
                            single[0] = rng.Next(vocab);
                            model.Forward(state, single, logits);
                        }
                    }, depth => limits?.ReadBytesPerSecond / (model.WeightBytesPerToken + KvBytesPerToken(model, depth + generatedTokens / 2, keyType, valueType))));
                }
                if (interleave)
                    foreach (var test in tests)
                    {
                        progress?.Invoke($"{test.Name} at depths {string.Join(", ", ordered)}, {threads} threads, interleaved");
                        foreach (var cell in cells) cell.Begin(repetitions);
                        for (int r = -1; r < repetitions; r++) // r = -1 is a warm-up round
                            foreach (var cell in cells) cell.Sample(r, test.Tokens, test.Body);
                        foreach (var cell in cells) yield return cell.Result(model, modelName, test.Name, test.Tokens, threads, repetitions, test.Ceiling(cell.Depth), limits);
                    }
                else
                    foreach (var cell in cells)
                    {
                        cell.Fill(model, rng, progress, threads);
                        foreach (var test in tests)
                        {
                            progress?.Invoke($"{test.Name} at depth {cell.Depth}, {threads} threads");
                            cell.Begin(repetitions);
                            for (int r = -1; r < repetitions; r++) cell.Sample(r, test.Tokens, test.Body);
                            yield return cell.Result(model, modelName, test.Name, test.Tokens, threads, repetitions, test.Ceiling(cell.Depth), limits);
                        }
                    }
            }
            finally
            {
                foreach (var cell in cells) if (cell.OwnsState) cell.State.Dispose();
            }
        }
    }

    /// <summary>One cache at one depth: its fill, the samples of the test being measured and the phase times before it.</summary>
    sealed class Cell(DecoderState state, Cache.KvCacheConfig? config, int depth, bool ownsState)
    {
        public DecoderState State => state;
        public int Depth => depth;
        public bool OwnsState => ownsState;
        Cache.PagedKvCache? Paged => state.Cache as Cache.PagedKvCache;
        double[] samples = [];
        Cache.KvPhaseTimes kvBefore;
        ForwardTimes forwardBefore;
        Dictionary<string, Cache.KvPolicyWork> workBefore = [];

        public void Fill(DecoderModel model, Random rng, Action<string>? progress, int threads)
        {
            state.Cache.Truncate(Math.Min(state.Cache.Length, depth));
            if (depth <= state.Cache.Length) return;
            progress?.Invoke($"filling {depth} tokens of context ({threads} threads)");
            Generator.Prefill(model, state, RandomTokens(rng, depth - state.Cache.Length, model.Config.VocabSize), new float[model.Config.VocabSize]);
        }

        public void Begin(int repetitions)
        {
            samples = new double[repetitions];
            kvBefore = Paged?.Times ?? default;
            forwardBefore = state.Times;
            workBefore = Paged is { } paged ? Cache.KvPolicyWork.Of(paged.Policies).ToDictionary(w => w.Policy, w => w.Work) : [];
        }

        /// <summary>Runs the test once from the depth; repetition −1 is the warm-up and is not kept.</summary>
        public void Sample(int repetition, int tokens, Action<DecoderState> body)
        {
            state.Cache.Truncate(depth);
            long start = Stopwatch.GetTimestamp();
            body(state);
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            if (repetition >= 0) samples[repetition] = tokens / seconds;
        }

        public BenchmarkResult Result(DecoderModel model, string modelName, string test, int tokens, int threads, int repetitions, double? ceiling,
            (double ReadBytesPerSecond, double FlopsPerSecond)? limits)
        {
            double mean = samples.Average();
            double sd = samples.Length > 1 ? Math.Sqrt(samples.Sum(s => (s - mean) * (s - mean)) / (samples.Length - 1)) : 0;
            using var process = Process.GetCurrentProcess();
            Dictionary<string, double>? phases = null;
            List<KvPolicyWorkRow>? work = null;
            var paged = Paged;
            if (paged != null)
            {
                var after = paged.Times;
                double perToken = 1.0 / ((repetitions + 1) * (double)tokens);
                phases = new()
                {
                    ["select"] = Cache.KvPhaseTimes.Milliseconds(after.Select - kvBefore.Select) * perToken,
                    ["recall"] = Cache.KvPhaseTimes.Milliseconds(after.Recall - kvBefore.Recall) * perToken,
                    ["attention"] = Cache.KvPhaseTimes.Milliseconds(after.Attention - kvBefore.Attention) * perToken,
                    ["update"] = Cache.KvPhaseTimes.Milliseconds(after.Update - kvBefore.Update) * perToken,
                };
                foreach (var (policy, now) in Cache.KvPolicyWork.Of(paged.Policies))
                {
                    var before = workBefore.GetValueOrDefault(policy);
                    (work ??= []).Add(new KvPolicyWorkRow(policy, before.PrepareMilliseconds, before.AppendMilliseconds,
                        Cache.KvPhaseTimes.Milliseconds(now.PrepareTicks - before.PrepareTicks) * perToken,
                        Cache.KvPhaseTimes.Milliseconds(now.AppendTicks - before.AppendTicks) * perToken,
                        now.LastPrepareKeys, now.LastPrepareHeads, now.LastPrepareMilliseconds));
                }
            }
            return new BenchmarkResult(modelName, GgmlTypes.Name(model.WeightType), test, depth, threads, repetitions, mean, sd, samples, process.PeakWorkingSet64, state.Cache.AllocatedBytes)
            {
                Policy = paged?.Policies.Describe() ?? "full",
                HotKvBytes = paged?.Store.HotBytes ?? state.Cache.AllocatedBytes,
                ColdKvBytes = paged?.Store.ColdBytes ?? 0,
                KvMsPerToken = phases,
                PolicyWork = work,
                MsPerToken = state.Times.MillisecondsPerToken(forwardBefore),
                CeilingTokensPerSecond = config == null ? ceiling : null,
                ReadBytesPerSecond = limits?.ReadBytesPerSecond,
                FlopsPerSecond = limits?.FlopsPerSecond,
            };
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
