using VidKV.Cache;
using VidKV.Engine;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>The paged KV store and every policy, on the real stories260K model (5 layers, 4 KV heads, head dim 8).</summary>
public class KvCacheTests
{
    static DecoderModel Stories() => ModelLoader.Load(TestData.Model("stories260K"));

    static int[] StoryTokens(DecoderModel model, int count)
    {
        var tokens = model.Tokenizer.Encode(File.ReadAllText(TestData.File_("text/story_eval.txt")), addSpecial: true, parseSpecial: false);
        Assert.True(tokens.Count >= count, $"story_eval.txt has {tokens.Count} tokens, the test needs {count}");
        return tokens.Take(count).ToArray();
    }

    static PagedKvCache Paged(DecoderModel model, string spec, int pageSize = 16, GgmlType type = GgmlType.F32, int? budget = null) =>
        new KvCacheConfig { Default = ResolveSpec(spec), PageSize = pageSize, Type = type, Budget = budget }
            .CreateCache(model.Config.LayerCount, model.Config.KvHeadCount, model.Config.HeadDim);

    /// <summary>
    /// Options the policy theories give a registered policy whose defaults do not suit them: keynorm at ratio 1 keeps
    /// every token (the ratio-0-changes-nothing case; its reduction has its own test), duo needs a head pattern of this
    /// model. Every other policy runs by its bare name (its defaults, with the test's budget), so a newly registered
    /// policy joins the theories without a line here.
    /// </summary>
    static readonly Dictionary<string, string> TestOptions = new() { ["keynorm"] = "ratio=1", ["duo"] = "pattern={heads}" };

    /// <summary>A registered policy's spec in the theories; <c>{heads}</c> stands for a head pattern file (<see cref="ResolveSpec"/>).</summary>
    internal static string TestSpec(KvPolicyDescriptor policy) => TestOptions.TryGetValue(policy.Name, out var options) ? $"{policy.Name}:{options}" : policy.Name;

    /// <summary>The spec with <c>{heads}</c> replaced by a pattern file for stories260K's 5 layers × 4 KV heads, written once per process.</summary>
    internal static string ResolveSpec(string spec) => spec.Replace("{heads}", HeadPattern.Value);

    static readonly Lazy<string> HeadPattern = new(() =>
    {
        var pattern = new float[5, 4];
        for (int i = 0; i < 20; i++) pattern[i / 4, i % 4] = i * 7 % 20; // a permutation: retrieval heads spread over the layers
        string path = Path.Combine(Path.GetTempPath(), $"vidkv-heads-{Environment.ProcessId}.tsv");
        PatternFile.Write(path, pattern, "test pattern for stories260K");
        AppDomain.CurrentDomain.ProcessExit += (_, _) => File.Delete(path);
        return path;
    });

    /// <summary>Runs a prefill batch then decodes the rest one token at a time; returns every step's last logits.</summary>
    static float[][] Run(DecoderModel model, KvCache cache, int[] tokens, int prefill, Action<int>? afterStep = null)
    {
        using var state = model.CreateState(cache);
        int vocab = model.Config.VocabSize;
        var result = new List<float[]>();
        var logits = new float[vocab];
        model.Forward(state, tokens.AsSpan(0, prefill), logits);
        result.Add((float[])logits.Clone());
        afterStep?.Invoke(prefill);
        for (int i = prefill; i < tokens.Length; i++)
        {
            model.Forward(state, tokens.AsSpan(i, 1), logits);
            result.Add((float[])logits.Clone());
            afterStep?.Invoke(i + 1);
        }
        return [.. result];
    }

    /// <summary>
    /// The paged Full cache (the decoder's default) gives bit for bit the logits of plain causal attention over one
    /// contiguous store (<see cref="ContiguousReference"/>), whatever the page size: pages change where rows live, not
    /// what is computed.
    /// </summary>
    [Theory]
    [InlineData(16, GgmlType.F32)]
    [InlineData(32, GgmlType.F16)]
    [InlineData(64, GgmlType.F16)]
    public void PagedFullIsBitwiseOneContiguousStore(int pageSize, GgmlType type)
    {
        using var model = Stories();
        var tokens = StoryTokens(model, 300);
        var want = Run(model, new ContiguousReference(model.Config.LayerCount, model.Config.KvHeadCount * model.Config.HeadDim, 512, type), tokens, 200);
        var got = Run(model, Paged(model, "full", pageSize, type), tokens, 200);
        for (int i = 0; i < want.Length; i++) Assert.True(want[i].AsSpan().SequenceEqual(got[i]), $"step {i}: logits differ");
        using var state = model.CreateState(512, type, type);
        Assert.Equal("full", Assert.IsType<PagedKvCache>(state.Cache).Policies.Describe());
    }

    /// <summary>Every position of a layer in one [position, kvHead, headDim] buffer, read by <see cref="Attention.Causal(ReadOnlySpan{float}, ReadOnlySpan{byte}, GgmlType, ReadOnlySpan{byte}, GgmlType, int, int, int, int, int, float, Span{float}, WorkerPool?)"/>.</summary>
    sealed class ContiguousReference(int layers, int rowLength, int context, GgmlType type) : KvCache
    {
        readonly byte[][] keys = Enumerable.Range(0, layers).Select(_ => new byte[context * (int)GgmlTypes.RowBytes(type, rowLength)]).ToArray();
        readonly byte[][] values = Enumerable.Range(0, layers).Select(_ => new byte[context * (int)GgmlTypes.RowBytes(type, rowLength)]).ToArray();
        int length;
        readonly int row = (int)GgmlTypes.RowBytes(type, rowLength);

        public override int Length => length;
        public override int ContextLength => context;
        public override long AllocatedBytes => 2L * layers * context * row;
        public override bool Reserve(int endPosition) => endPosition <= context;

        public override void Append(int layer, int position, int count, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<int> frameIds = default)
        {
            for (int t = 0; t < count; t++)
            {
                Quantize.Row(type, k.Slice(t * rowLength, rowLength), keys[layer].AsSpan((position + t) * row, row));
                Quantize.Row(type, v.Slice(t * rowLength, rowLength), values[layer].AsSpan((position + t) * row, row));
            }
        }

        public override void Attend(int layer, ReadOnlySpan<float> queries, int position, int count, int headCount, float scale, Span<float> destination) =>
            Attention.Causal(queries, keys[layer], type, values[layer], type, count, position, headCount, rowLength / (queries.Length / count / headCount), queries.Length / count / headCount, scale, destination);

        public override void Commit(int length) => this.length = length;
        public override void Truncate(int length) => this.length = length;
        public override void Dispose() { }
    }

    /// <summary>Every registered policy (<see cref="KvPolicies.All"/>, with <see cref="TestSpec"/>'s options), then variants and compositions.</summary>
    public static TheoryData<string> Specs => new(KvPolicies.All.Select(TestSpec).Concat(
    [
        "freekv:tau=1", "sinkwindow:window=150+quest", "sinkwindow:window=150+freekv", "sinkwindow:window=150+clusterkv", "h2o+clusterkv", "snapkv:slack=0,window=8", "h2o:recent=0", "h2o+quest",
    ]));

    /// <summary>With a budget at least the context, every policy reads everything: logits identical to Full.</summary>
    [Theory]
    [MemberData(nameof(Specs))]
    public void BudgetCoveringTheContextIsFull(string spec)
    {
        using var model = Stories();
        var tokens = StoryTokens(model, 180);
        var want = Run(model, Paged(model, "full"), tokens, 100);
        var got = Run(model, Paged(model, spec.Replace("window=150", "window=500"), budget: 512), tokens, 100);
        for (int i = 0; i < want.Length; i++) Assert.True(want[i].AsSpan().SequenceEqual(got[i]), $"{spec} step {i}: logits differ from full");
    }

    /// <summary>
    /// At a small budget, every step of every (layer, head): the step's own token is read; only stored tokens are read;
    /// an evicted token never comes back; sinks are read; and the kept or read counts are exactly what the policy says.
    /// </summary>
    [Theory]
    [MemberData(nameof(Specs))]
    public void PolicyInvariantsHoldEveryStep(string spec)
    {
        const int budget = 64;
        using var model = Stories();
        var tokens = StoryTokens(model, 260);
        using var cache = Paged(model, spec, budget: budget);
        var store = cache.Store;
        var seq = cache.Sequence;
        int heads = model.Config.LayerCount * model.Config.KvHeadCount;
        var everStored = Enumerable.Range(0, heads).Select(_ => new HashSet<int>()).ToArray();
        var evicted = Enumerable.Range(0, heads).Select(_ => new HashSet<int>()).ToArray();
        var policy = cache.Policies[0, 0];
        var reducer = (policy as ComposedPolicy)?.Reducer as SinkWindowPolicy ?? policy as SinkWindowPolicy;
        var snap = policy as SnapKvPolicy;
        var h2o = (policy as ComposedPolicy)?.Reducer as H2OPolicy ?? policy as H2OPolicy;
        var retriever = policy is ComposedPolicy c ? c.Retriever : policy;
        int checkedSteps = 0;

        cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> read) =>
        {
            var stored = StoredPositions(store, step.Table);
            var selected = SelectedPositions(read);
            string where = $"{spec} layer {step.Layer} head {step.Head} position {step.Position}";
            Assert.Contains(step.Position + step.Count - 1, selected);
            Assert.True(selected.IsSubsetOf(stored), $"{where}: read a token that is not stored");
            Assert.Equal(selected.Count, SelectedCount(read));
            int tokensStored = stored.Count;
            switch (retriever)
            {
                case ClusterKvPolicy cluster:
                    Assert.Equal(Math.Min(tokensStored, cluster.Budget), selected.Count);
                    if (tokensStored > cluster.Budget) Assert.True(FirstStored(stored, cluster.Sinks).IsSubsetOf(selected), $"{where}: sinks not read");
                    break;
                case QuestPolicy quest when tokensStored > quest.Budget:
                    int k = Math.Max(3, quest.Budget / store.PageSize) - 1;
                    Assert.InRange(read.Length, Math.Min(step.Table.Count, k + 1), Math.Min(step.Table.Count, k + 1 + (quest.Reuse - 1)));
                    break;
                case FreeKvPolicy free when tokensStored > free.Budget:
                    Assert.True(FirstStored(stored, free.Sinks).IsSubsetOf(selected), $"{where}: sinks not read");
                    Assert.True(stored.Order().TakeLast(free.Recent).ToHashSet().IsSubsetOf(selected), $"{where}: recent tokens not read");
                    Assert.InRange(selected.Count, 1, free.Budget + 2 * store.PageSize);
                    break;
                // The frame reducers and retrievers have nothing to reduce or choose in text: everything stored is read.
                case FullPolicy or SinkWindowPolicy or QuestPolicy or FreeKvPolicy or SnapKvPolicy or H2OPolicy or KeyNormPolicy or DuoAttentionPolicy
                    or QuickPrefillPolicy or VideoScanPolicy or InfiniPotVPolicy or LiveVlmPolicy or ReSvPolicy:
                    Assert.Equal(tokensStored, selected.Count);
                    break;
            }
            checkedSteps++;
        };
        Run(model, cache, tokens, 16, position =>
        {
            for (int l = 0; l < model.Config.LayerCount; l++)
                for (int h = 0; h < model.Config.KvHeadCount; h++)
                {
                    int i = l * model.Config.KvHeadCount + h;
                    var stored = StoredPositions(store, seq.Table(l, h));
                    Assert.False(stored.Overlaps(evicted[i]), $"{spec} layer {l} head {h}: an evicted token came back");
                    evicted[i].UnionWith(everStored[i].Except(stored));
                    everStored[i].UnionWith(stored);
                    Assert.Equal(seq.Table(l, h).TokenCount, stored.Count);
                    if (reducer != null)
                    {
                        Assert.Equal(Math.Min(position, reducer.Sinks + reducer.Window), stored.Count);
                        Assert.True(Enumerable.Range(0, reducer.Sinks).All(stored.Contains), $"{spec}: a sink was evicted");
                    }
                    else if (snap != null)
                    {
                        // Cut back to exactly the budget whenever it passes budget + slack; the window's tokens always stay.
                        Assert.InRange(stored.Count, Math.Min(position, snap.Budget), Math.Min(position, snap.Budget + snap.Slack));
                        Assert.True(Enumerable.Range(Math.Max(0, position - snap.Window), Math.Min(position, snap.Window)).All(stored.Contains), $"{spec}: a token of the observation window was evicted");
                    }
                    else if (h2o != null)
                    {
                        Assert.Equal(Math.Min(position, h2o.Budget), stored.Count);
                        Assert.True(Enumerable.Range(Math.Max(0, position - h2o.Recent), Math.Min(position, h2o.Recent)).All(stored.Contains), $"{spec}: a recent token was evicted");
                    }
                    else Assert.Equal(position, stored.Count);
                }
        });
        Assert.Equal(245 * heads, checkedSteps);
    }

    /// <summary>
    /// Key norm (QuickPrefill): a prefill group of 16 keeps exactly the 8 tokens whose keys have the smallest norm averaged
    /// over the layer's KV heads — recomputed here from a Full cache's keys — the same 8 in every head; decode tokens all stay.
    /// </summary>
    [Fact]
    public void KeyNormKeepsTheSmallestMeanNormsOfEachGroup()
    {
        using var model = Stories();
        var tokens = StoryTokens(model, 40);
        int layers = model.Config.LayerCount, kvHeads = model.Config.KvHeadCount, d = model.Config.HeadDim;
        var expected = new HashSet<int>[layers];
        using (var full = Paged(model, "full", type: GgmlType.F16))
            Run(model, full, tokens[..16], 16, _ =>
            {
                for (int l = 0; l < layers; l++)
                {
                    var mean = new double[16];
                    for (int h = 0; h < kvHeads; h++)
                        foreach (int page in full.Sequence.Table(l, h).Pages)
                        {
                            var keys = new float[full.Store.Count(page) * d];
                            full.Store.ReadKeys(page, keys);
                            var positions = full.Store.Positions(page);
                            for (int j = 0; j < positions.Length; j++)
                                mean[positions[j]] += Math.Sqrt(keys.AsSpan(j * d, d).ToArray().Sum(x => (double)x * x)) / kvHeads;
                        }
                    expected[l] = Enumerable.Range(0, 16).OrderBy(t => mean[t]).Take(8).ToHashSet();
                }
            });
        using var cache = Paged(model, "keynorm", type: GgmlType.F16);
        int checkedLayers = 0;
        Run(model, cache, tokens, 16, position =>
        {
            for (int l = 0; l < layers; l++)
                for (int h = 0; h < kvHeads; h++)
                {
                    var stored = StoredPositions(cache.Store, cache.Sequence.Table(l, h));
                    Assert.Equal(8 + position - 16, stored.Count);
                    Assert.True(expected[l].SetEquals(stored.Where(p => p < 16)), $"layer {l} head {h}: kept {string.Join(",", stored.Where(p => p < 16).Order())}, want {string.Join(",", expected[l].Order())}");
                    Assert.True(Enumerable.Range(16, position - 16).All(stored.Contains), $"layer {l} head {h}: a decode token was dropped");
                    checkedLayers++;
                }
        });
        Assert.Equal(25 * layers * kvHeads, checkedLayers);
    }

    /// <summary>
    /// SnapKV and H2O keep the tokens their scores say: recomputed here in f64 from the stored keys (f32 pages) and the
    /// queries the policy saw, the evicted tokens of the first compression are exactly the lowest-scored ones.
    /// </summary>
    [Theory]
    [InlineData("snapkv:budget=40,window=8,slack=0")]
    [InlineData("h2o:budget=40,recent=10")]
    public void TokenScorersEvictTheLowestScored(string spec)
    {
        using var model = Stories();
        var tokens = StoryTokens(model, 60);
        using var cache = Paged(model, spec);
        var store = cache.Store;
        var seq = cache.Sequence;
        var policy = cache.Policies[0, 0];
        int d = model.Config.HeadDim, group = model.Config.HeadCount / model.Config.KvHeadCount;
        // Per (layer 0, head 0): the queries of every step, and the f32 keys of every position while still stored.
        var queries = new List<(int Position, float[] Q)>();
        var keys = new Dictionary<int, float[]>();
        var h2oScores = new Dictionary<int, double>();
        bool compared = false, checkedCompression = false;
        HashSet<int>? pending = null;
        cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> read) =>
        {
            if (step.Layer != 0 || step.Head != 0 || compared) return;
            int rowLength = group * d;
            for (int t = 0; t < step.Count; t++) queries.Add((step.Position + t, step.Queries.Slice(t * rowLength, rowLength).ToArray()));
            foreach (int page in step.Table.Pages)
            {
                var k = new float[store.Count(page) * d];
                store.ReadKeys(page, k);
                var positions = store.Positions(page);
                for (int j = 0; j < positions.Length; j++) keys[positions[j]] = k.AsSpan(j * d, d).ToArray();
            }
            var before = StoredPositions(store, step.Table).Order().ToArray();
            if (policy is H2OPolicy)
                for (int t = 0; t < step.Count; t++)
                    foreach (var (p, prob) in Probabilities(queries[^(step.Count - t)].Q, step.Position + t, before))
                        h2oScores[p] = h2oScores.GetValueOrDefault(p) + prob;
            if (before.Length <= 40) return;
            // This step compresses (after the observer): predict what stays.
            HashSet<int> want;
            if (policy is SnapKvPolicy snap)
            {
                var window = queries.TakeLast(snap.Window).ToArray();
                int candidates = before.Length - snap.Window;
                var votes = new double[candidates];
                foreach (var (qp, q) in window)
                    foreach (var (p, prob) in Probabilities(q, qp, before))
                    {
                        int i = Array.IndexOf(before, p);
                        if (i < candidates) votes[i] += prob;
                    }
                var pooled = Enumerable.Range(0, candidates).Select(i => Enumerable.Range(Math.Max(0, i - 3), Math.Min(candidates, i + 4) - Math.Max(0, i - 3)).Max(j => votes[j])).ToArray();
                want = Enumerable.Range(0, candidates).OrderByDescending(i => pooled[i]).ThenBy(i => i).Take(40 - snap.Window).Select(i => before[i])
                    .Concat(before.TakeLast(snap.Window)).ToHashSet();
            }
            else
            {
                var h2o = (H2OPolicy)policy;
                int candidates = before.Length - h2o.Recent;
                var evict = before.Take(candidates).OrderBy(p => h2oScores[p]).ThenBy(p => p).Take(before.Length - 40).ToHashSet();
                want = before.Where(p => !evict.Contains(p)).ToHashSet();
            }
            pending = want;
            compared = true;
        };
        Run(model, cache, tokens, 16, position =>
        {
            if (pending == null) return;
            var stored = StoredPositions(store, seq.Table(0, 0));
            Assert.True(pending.SetEquals(stored), $"{spec} at {position}: kept {string.Join(",", stored.Order())}, want {string.Join(",", pending.Order())}");
            pending = null;
            checkedCompression = true;
        });
        Assert.True(checkedCompression, "no compression happened");

        IEnumerable<(int Position, double Probability)> Probabilities(float[] q, int queryPosition, int[] stored)
        {
            var visible = stored.Where(p => p <= queryPosition).ToArray();
            for (int h = 0; h < group; h++)
            {
                var logits = visible.Select(p => Enumerable.Range(0, d).Sum(i => (double)q[h * d + i] * keys[p][i]) / Math.Sqrt(d)).ToArray();
                double max = logits.Max(), sum = logits.Sum(x => Math.Exp(x - max));
                for (int i = 0; i < visible.Length; i++) yield return (visible[i], Math.Exp(logits[i] - max) / sum);
            }
        }
    }

    /// <summary>A cache rewound to the start and fed the same tokens again gives exactly the logits of a fresh one (no stale policy state).</summary>
    [Theory]
    [MemberData(nameof(Specs))]
    public void RewoundCacheEqualsAFreshOne(string spec)
    {
        using var model = Stories();
        var tokens = StoryTokens(model, 160);
        var want = Run(model, Paged(model, spec, budget: 64), tokens, 8);
        using var cache = Paged(model, spec, budget: 64);
        using var state = model.CreateState(cache);
        var logits = new float[model.Config.VocabSize];
        foreach (int t in tokens) model.Forward(state, [t], logits);
        cache.Truncate(0);
        var got = new List<float[]>();
        model.Forward(state, tokens.AsSpan(0, 8), logits);
        got.Add((float[])logits.Clone());
        for (int i = 8; i < tokens.Length; i++)
        {
            model.Forward(state, tokens.AsSpan(i, 1), logits);
            got.Add((float[])logits.Clone());
        }
        for (int i = 0; i < want.Length; i++) Assert.True(want[i].AsSpan().SequenceEqual(got[i]), $"{spec} step {i}: rewound cache differs from a fresh one");
    }

    /// <summary>
    /// FreeKV with a cold tier (pages leave RAM past the recent window) gives exactly the logits of FreeKV in RAM, with
    /// fewer pages hot, whether selected cold pages are read in place in the mapped file, copied back when selected, or
    /// copied back in the background for the next step (prefetch).
    /// </summary>
    [Theory]
    [InlineData(16, "mapped")]
    [InlineData(32, "mapped")]
    [InlineData(16, "prefetch")]
    [InlineData(32, "prefetch")]
    [InlineData(32, "recall")]
    public void ColdTierChangesNoLogits(int pageSize, string mode)
    {
        using var model = Stories();
        var tokens = StoryTokens(model, 300);
        var want = Run(model, Paged(model, "freekv", pageSize, GgmlType.F16, budget: 96), tokens, 40);
        string path = Path.Combine(Path.GetTempPath(), $"vidkv-cold-{Environment.ProcessId}-{Guid.NewGuid():N}.bin");
        bool prefetch = mode == "prefetch", mapped = mode == "mapped";
        string spec = prefetch ? "freekv:prefetch=1" : "freekv:prefetch=0";
        using var cache = new KvCacheConfig { Default = spec, PageSize = pageSize, Type = GgmlType.F16, Budget = 96, ColdPath = path, ColdMapped = mapped }
            .CreateCache(model.Config.LayerCount, model.Config.KvHeadCount, model.Config.HeadDim);
        Assert.Equal(mapped, cache.Store.ReadsColdInPlace);
        int maxHot = 0, maxCold = 0;
        var got = Run(model, cache, tokens, 40, _ =>
        {
            maxHot = Math.Max(maxHot, cache.Store.HotPageCount);
            maxCold = Math.Max(maxCold, cache.Store.ColdOnlyPageCount);
        });
        for (int i = 0; i < want.Length; i++) Assert.True(want[i].AsSpan().SequenceEqual(got[i]), $"step {i}: logits differ with the cold tier");
        Assert.True(maxCold > 0, "nothing went cold");
        Assert.Equal(0, cache.Store.PageCount); // disposing the state gave every page back, cold ones included
        Assert.Equal(0, cache.Store.HotPageCount);
        int heads = model.Config.LayerCount * model.Config.KvHeadCount;
        int retrieved = (96 - 2 * 24) / pageSize;
        if (mapped)
        {
            // Nothing is copied back: retrieved pages are read where they lie, so only sink and recent pages (plus a
            // partial page at each end) are hot.
            Assert.Equal(0, cache.RecalledBytes);
            Assert.True(cache.ColdBytesReadInPlace > 0, "no cold page was read");
            Assert.True(maxHot <= heads * (96 / pageSize - retrieved + 3), $"{maxHot} pages hot for {heads} heads");
        }
        else
        {
            Assert.True(cache.RecalledBytes > 0, "nothing was recalled");
            Assert.Equal(0, cache.ColdBytesReadInPlace);
            // Hot per head: sink and recent pages plus the retrieved ones, at most the budget in pages plus a partial
            // page at each end; prefetching adds at most the next step's retrieved pages (the second buffer).
            Assert.True(maxHot <= heads * (96 / pageSize + 3 + (prefetch ? retrieved : 0)), $"{maxHot} pages hot for {heads} heads");
        }
        if (prefetch)
        {
            Assert.True(cache.PrefetchHits > 0, $"no prefetched page was used ({cache.PrefetchedPages} prefetched)");
            Assert.True(cache.PrefetchHits <= cache.PrefetchedPages);
        }
        else Assert.Equal(0, cache.PrefetchedPages);
        Assert.Null(cache.Store.ColdError);
    }

    /// <summary>A background recall brings back the same rows as a direct one; cancelling or removing a page with a read in flight frees its hot slot.</summary>
    [Fact]
    public void PrefetchedPagesMatchDirectRecall()
    {
        const int d = 16;
        string path = Path.Combine(Path.GetTempPath(), $"vidkv-cold-{Environment.ProcessId}-{Guid.NewGuid():N}.bin");
        var store = new PagedKvStore(new PagedKvOptions { LayerCount = 1, KvHeadCount = 1, HeadDim = d, PageSize = 16, ColdPath = path, MapColdTier = false });
        var seq = store.CreateSequence();
        var rng = new Random(3);
        var k = new float[d];
        var v = new float[d];
        for (int t = 0; t < 160; t++)
        {
            for (int i = 0; i < d; i++) { k[i] = (float)rng.NextDouble(); v[i] = (float)rng.NextDouble(); }
            Assert.True(seq.Append(0, t, 1, k, v));
        }
        var table = seq.Table(0, 0);
        var pages = table.Pages.ToArray();
        var before = pages.Select(p => Rows(store, p)).ToArray();
        foreach (int page in pages) store.MoveCold(page);
        Assert.Equal(0, store.HotPageCount);
        for (int i = 0; i < pages.Length; i++) Assert.True(store.Prefetch(pages[i]));
        Assert.False(store.Prefetch(pages[0])); // already on its way
        Assert.Equal(pages.Length, store.HotPageCount); // the slots being filled count as hot
        store.CancelPrefetch(pages[1]);
        Assert.False(store.IsHot(pages[1]));
        Assert.Equal(pages.Length - 1, store.HotPageCount);
        seq.RemovePage(0, 0, table.Count - 1); // the last page, with its read in flight
        Assert.Equal(pages.Length - 2, store.HotPageCount);
        for (int i = 0; i < pages.Length - 1; i++)
        {
            Assert.True(store.Recall(pages[i]));
            Assert.Equal(before[i], Rows(store, pages[i]));
        }
        for (int i = 0; i < 3; i++) store.MoveCold(pages[i]);
        for (int i = 0; i < 3; i++) Assert.True(store.Prefetch(pages[i]));
        store.Dispose(); // reads in flight finish before the slots are freed
        Assert.False(File.Exists(path));

        static float[] Rows(PagedKvStore store, int page)
        {
            var row = new float[d];
            var all = new List<float>();
            for (int j = 0; j < store.Count(page); j++) { store.ReadKey(page, j, row); all.AddRange(row); store.ReadValue(page, j, row); all.AddRange(row); }
            return all.ToArray();
        }
    }

    /// <summary>
    /// A cold file with a limit of three pages: a page going cold into a full file drops the page that went cold first,
    /// from every sequence that holds it (a fork too); a recalled page, hot again, only loses its cold copy; the pages
    /// that stay read back unchanged; the file never grows past the limit; each mapped or copied-back read still works.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ColdTierKeepsItsLimitByDroppingTheOldestPages(bool mapped)
    {
        const int d = 16, pageSize = 16;
        string path = Path.Combine(Path.GetTempPath(), $"vidkv-cold-{Environment.ProcessId}-{Guid.NewGuid():N}.bin");
        var shape = new PagedKvOptions { LayerCount = 1, KvHeadCount = 1, HeadDim = d, PageSize = pageSize };
        int pageBytes;
        using (var probe = new PagedKvStore(shape)) pageBytes = probe.PageBytes;
        using var store = new PagedKvStore(shape with { ColdPath = path, MapColdTier = mapped, MaxColdBytes = 3L * pageBytes + pageBytes / 2 });
        Assert.Equal(3, store.MaxColdPages);
        using var seq = store.CreateSequence();
        var rng = new Random(5);
        var k = new float[d];
        var v = new float[d];
        for (int t = 0; t < 8 * pageSize; t++)
        {
            for (int i = 0; i < d; i++) { k[i] = (float)rng.NextDouble(); v[i] = (float)rng.NextDouble(); }
            Assert.True(seq.Append(0, t, 1, k, v));
        }
        using var fork = seq.Fork();
        var pages = seq.Table(0, 0).Pages.ToArray();
        var before = pages.Select(p => Rows(store, p)).ToArray();
        for (int i = 0; i < 3; i++) store.MoveCold(pages[i]);
        Assert.True(store.Recall(pages[1])); // hot again, its clean copy still in the file
        Assert.Equal(0, store.ColdDroppedPages);

        store.MoveCold(pages[3]); // full: page 0 went cold first and is cold only, so it is gone
        Assert.Equal(1, store.ColdDroppedPages);
        Assert.Equal(2 * pageSize, store.ColdDroppedRows); // both sequences lost its rows
        foreach (var table in new[] { seq.Table(0, 0), fork.Table(0, 0) })
        {
            Assert.Equal(pages[1..], table.Pages.ToArray());
            Assert.Equal(7 * pageSize, table.TokenCount);
        }
        store.MoveCold(pages[4]); // full: page 1's copy is the oldest, and page 1 is hot: only the copy goes
        Assert.Equal(1, store.ColdDroppedPages);
        Assert.True(store.IsHot(pages[1]));
        store.MoveCold(pages[1]); // written again, the newest copy now; full: page 2 goes
        Assert.Equal(2, store.ColdDroppedPages);
        Assert.Equal(new[] { pages[1] }.Concat(pages[3..]), seq.Table(0, 0).Pages.ToArray());
        Assert.Equal(seq.Table(0, 0).Pages.ToArray(), fork.Table(0, 0).Pages.ToArray());
        Assert.Equal(3, store.ColdOnlyPageCount);
        Assert.True(store.ColdFileBytes <= 3L * pageBytes, $"cold file {store.ColdFileBytes} bytes");
        foreach (int i in new[] { 1, 3, 4, 5, 6, 7 }) Assert.Equal(before[i], Rows(store, pages[i]));
        Assert.Equal(6 * pageSize, seq.Table(0, 0).TokenCount);

        static float[] Rows(PagedKvStore store, int page) // from either tier
        {
            var keys = new float[store.PageSize * d];
            var values = new float[store.PageSize * d];
            store.ReadKeys(page, keys);
            store.ReadValues(page, values);
            return [.. keys.AsSpan(0, store.Count(page) * d), .. values.AsSpan(0, store.Count(page) * d)];
        }
    }

    static HashSet<int> FirstStored(HashSet<int> stored, int count) => stored.Order().Take(count).ToHashSet();

    static HashSet<int> StoredPositions(PagedKvStore store, PageTable table)
    {
        var set = new HashSet<int>();
        foreach (int page in table.Pages) foreach (int p in store.Positions(page)) Assert.True(set.Add(p), $"position {p} stored twice");
        return set;
    }

    static unsafe HashSet<int> SelectedPositions(ReadOnlySpan<KvPageView> read)
    {
        var set = new HashSet<int>();
        foreach (var view in read)
            for (int j = 0; j < view.Count; j++)
                if (view.Mask == KvPageView.AllRows || (view.Mask >> j & 1) != 0) set.Add(view.Positions[j]);
        return set;
    }

    static int SelectedCount(ReadOnlySpan<KvPageView> read)
    {
        int n = 0;
        foreach (var view in read) n += view.Mask == KvPageView.AllRows ? view.Count : System.Numerics.BitOperations.PopCount(view.Mask);
        return n;
    }

    static string WritePattern(float[,] pattern)
    {
        string path = Path.Combine(Path.GetTempPath(), $"vidkv-pattern-{Environment.ProcessId}-{Guid.NewGuid():N}.tsv");
        PatternFile.Write(path, pattern, "test pattern");
        return path;
    }

    /// <summary>
    /// DuoAttention: the top half of the pattern's heads keep every token, the others exactly sinks + recent; with
    /// fraction 1 the logits are Full's, with fraction 0 they are StreamingLLM's with the same sinks and window.
    /// </summary>
    [Fact]
    public void DuoKeepsTheTopHeadsFullAndStreamsTheRest()
    {
        using var model = Stories();
        var c = model.Config;
        var tokens = StoryTokens(model, 200);
        var rng = new Random(9);
        var pattern = new float[c.LayerCount, c.KvHeadCount];
        for (int l = 0; l < c.LayerCount; l++) for (int h = 0; h < c.KvHeadCount; h++) pattern[l, h] = (float)rng.NextDouble();
        string path = WritePattern(pattern);
        try
        {
            var ranked = Enumerable.Range(0, c.LayerCount * c.KvHeadCount).OrderByDescending(i => pattern[i / c.KvHeadCount, i % c.KvHeadCount]).ToArray();
            var retrieval = ranked.Take(ranked.Length / 2).ToHashSet();
            using var cache = Paged(model, $"duo:pattern={path},fraction=0.5,sinks=4,recent=32");
            Run(model, cache, tokens, 100, length =>
            {
                for (int l = 0; l < c.LayerCount; l++)
                    for (int h = 0; h < c.KvHeadCount; h++)
                        Assert.Equal(retrieval.Contains(l * c.KvHeadCount + h) ? length : Math.Min(length, 36), cache.Sequence.Table(l, h).TokenCount);
            });
            var full = Run(model, Paged(model, "full"), tokens, 100);
            var allRetrieve = Run(model, Paged(model, $"duo:pattern={path},fraction=1"), tokens, 100);
            var streaming = Run(model, Paged(model, "sinkwindow:sinks=4,window=32"), tokens, 100);
            var allStream = Run(model, Paged(model, $"duo:pattern={path},fraction=0,sinks=4,recent=32"), tokens, 100);
            for (int i = 0; i < full.Length; i++)
            {
                Assert.True(full[i].AsSpan().SequenceEqual(allRetrieve[i]), $"step {i}: fraction 1 differs from full");
                Assert.True(streaming[i].AsSpan().SequenceEqual(allStream[i]), $"step {i}: fraction 0 differs from sinkwindow");
            }
        }
        finally { File.Delete(path); }
    }

    /// <summary>
    /// The calibrated pattern (streaming error per head) picks better retrieval heads than its inverse: with half the
    /// heads streaming, keeping the heads it ranks highest loses less (KL to full) than keeping the lowest.
    /// </summary>
    [Fact]
    public void CalibratedPatternBeatsItsInverse()
    {
        using var model = Stories();
        string text = File.ReadAllText(TestData.File_("text/story_eval.txt"));
        var scores = HeadCalibration.Run(model, text, 256, sinks: 4, recent: 28, maxChunks: 2);
        var c = model.Config;
        var inverse = new float[c.LayerCount, c.KvHeadCount];
        for (int l = 0; l < c.LayerCount; l++)
            for (int h = 0; h < c.KvHeadCount; h++)
            {
                Assert.True(float.IsFinite(scores[l, h]) && scores[l, h] >= 0, $"layer {l} head {h}: score {scores[l, h]}");
                inverse[l, h] = -scores[l, h];
            }
        string best = WritePattern(scores), worst = WritePattern(inverse);
        try
        {
            var read = PatternFile.Read(best);
            for (int l = 0; l < c.LayerCount; l++) for (int h = 0; h < c.KvHeadCount; h++) Assert.Equal(scores[l, h], read[l, h]);
            var rows = KvEvaluation.Run(model, text, 256, [$"duo:pattern={best},sinks=4,recent=28", $"duo:pattern={worst},sinks=4,recent=28"], [0],
                maxChunks: 2, attentionMetrics: false);
            Assert.True(rows[1].KlDivergence < rows[2].KlDivergence, $"calibrated KL {rows[1].KlDivergence} vs inverse {rows[2].KlDivergence}");
        }
        finally { File.Delete(best); File.Delete(worst); }
    }

    [Theory]
    [InlineData("1\t2\n3\tx\n", "line 2, column 2: 'x' is not a number")]
    [InlineData("1\t2\n3\n", "line 2 has 1 heads")]
    [InlineData("# nothing\n", "no layers")]
    [InlineData("1\t2\t3\t4\n", "has 1 layers × 4 KV heads, the model 5 × 4")]
    public void BadPatternFileNamesTheLineAndField(string content, string expected)
    {
        string path = Path.Combine(Path.GetTempPath(), $"vidkv-pattern-{Environment.ProcessId}-{Guid.NewGuid():N}.tsv");
        File.WriteAllText(path, content);
        try
        {
            var e = Assert.ThrowsAny<ArgumentException>(() =>
            {
                var map = KvCacheConfig.Parse($"{{\"default\": \"duo:pattern={path}\"}}", "test.json").BuildPolicies(5, 4);
                using var cache = new PagedKvCache(new PagedKvStore(new PagedKvOptions { LayerCount = 5, KvHeadCount = 4, HeadDim = 8, PageSize = 16 }), map);
            });
            Assert.Contains(expected, e.Message);
            Assert.Contains(path, e.Message);
        }
        finally { File.Delete(path); }
    }

    /// <summary>
    /// The per-token SimHash (ReSV) against its definition in f64: bit b is set when the key's projection on plane b is
    /// positive, for odd head sizes and every bit count's vector paths (1, 17, 32, 64 bits); projections too close to
    /// zero for f32 to decide are skipped (a few in a thousand). Keys are stored f32 so the hashed key is the key given.
    /// </summary>
    [Theory]
    [InlineData(24, 1)]
    [InlineData(40, 17)]
    [InlineData(64, 32)]
    [InlineData(72, 64)]
    public void SimHashMatchesItsDefinition(int d, int bits)
    {
        var rng = new Random(d * 100 + bits);
        using var store = new PagedKvStore(new PagedKvOptions
        {
            LayerCount = 1, KvHeadCount = 1, HeadDim = d, PageSize = 16, SimHashBits = bits, KeyType = GgmlType.F32, ValueType = GgmlType.F32,
        });
        var planes = store.HashPlanes.ToArray();
        Assert.Equal(bits * d, planes.Length);
        var key = new float[d];
        int decided = 0;
        for (int round = 0; round < 300; round++)
        {
            for (int i = 0; i < d; i++) key[i] = (float)(rng.NextDouble() * 2 - 1);
            ulong hash = store.SimHash(key);
            if (bits < 64) Assert.Equal(0UL, hash >> bits);
            double norm = Math.Sqrt(key.Sum(v => (double)v * v));
            for (int b = 0; b < bits; b++)
            {
                double dot = 0, scale = 0;
                for (int i = 0; i < d; i++) { dot += (double)planes[b * d + i] * key[i]; scale += (double)planes[b * d + i] * planes[b * d + i]; }
                if (Math.Abs(dot) < 1e-5 * norm * Math.Sqrt(scale)) continue;
                decided++;
                Assert.True((dot > 0) == ((hash >> b & 1) == 1), $"d={d}, round {round}, bit {b}: projection {dot:R} but bit {(hash >> b) & 1}");
            }
        }
        Assert.True(decided > 290 * bits);
    }

    /// <summary>
    /// The batched centre ± radius scores over a head's kept digest matrix equal the per-page formula, also after pages
    /// lose rows (their digest changes), leave the table (later pages move down a slot) and new pages arrive.
    /// </summary>
    [Theory]
    [InlineData(16, 7, 64, 300)]
    [InlineData(32, 2, 20, 45)]
    [InlineData(64, 3, 5, 700)]
    public void CentreRadiusScoresMatchThePerPageFormula(int pageSize, int group, int d, int tokens)
    {
        var rng = new Random(pageSize + d);
        using var store = new PagedKvStore(new PagedKvOptions { LayerCount = 1, KvHeadCount = 1, HeadDim = d, PageSize = pageSize, Metadata = KvMetadata.Digest });
        using var seq = store.CreateSequence();
        var k = new float[d];
        for (int t = 0; t < tokens; t++)
        {
            for (int i = 0; i < d; i++) k[i] = (float)(rng.NextDouble() * 4 - 2);
            Assert.True(seq.Append(0, t, 1, k, k));
        }
        var q = Enumerable.Range(0, group * d).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var matrix = new DigestMatrix(d);
        for (int round = 0; round < 3; round++)
        {
            var table = seq.Table(0, 0);
            matrix.Update(store, table, table.Count);
            // Ranges starting and ending inside, at and across the 16-page panels.
            foreach (var (start, end) in new[] { (1, table.Count), (0, table.Count), (17, table.Count - 1), (3, 5), (16, 32) })
            {
                if (end > table.Count || start >= end) continue;
                int n = end - start;
                var scores = new float[group * n];
                PageScoring.CentreRadiusScores(matrix, start, end, q, group, 0.3f, scores, new float[PageScoring.CentreRadiusScratch(d, group)]);
                for (int h = 0; h < group; h++)
                    for (int i = 0; i < n; i++)
                    {
                        float want = 0.3f * PageScoring.CentreRadiusScore(store, table[start + i], q.AsSpan(h * d, d));
                        // The quantisation bound of CentreRadiusScores: half a step of each side times the other side, summed.
                        store.Digest(table[start + i], out var c, out var r);
                        var x = q.AsSpan(h * d, d).ToArray().Select(v => 0.3 * v).ToArray();
                        var v = c.ToArray().Concat(r.ToArray()).Select(e => (double)e).ToArray();
                        double queryStep = x.Max(Math.Abs) / matrix.Levels, pageStep = v.Max(Math.Abs) / matrix.Levels;
                        double bound = Enumerable.Range(0, 2 * d).Sum(e => (Math.Abs(x[e % d]) * pageStep + Math.Abs(v[e]) * queryStep + queryStep * pageStep / 2) / 2);
                        Assert.True(Math.Abs(scores[h * n + i] - want) <= bound + 1e-5 * (1 + Math.Abs(want)),
                            $"round {round} [{start}, {end}) head {h} page {i}: {scores[h * n + i]} vs {want}, bound {bound}");
                    }
            }
            if (round == 0) seq.RemoveRows(0, 0, 2, 0b1011); // page 2 loses rows: its digest changes
            if (round == 1) seq.RemovePage(0, 0, 1); // every later page moves one slot down
            for (int t = 0; t < 40; t++)
            {
                for (int i = 0; i < d; i++) k[i] = (float)(rng.NextDouble() * 4 - 2);
                Assert.True(seq.Append(0, tokens + round * 40 + t, 1, k, k));
            }
        }
    }

    /// <summary>
    /// Top-k equals sorting by (score descending, index ascending), ties included: integer levels with many ties,
    /// negative and positive values with −0 and +0 counted as equal, infinities, and spread-out floats.
    /// </summary>
    [Fact]
    public void TopKEqualsSortedSelectionWithTies()
    {
        var rng = new Random(5);
        var special = new[] { 0f, -0f, float.PositiveInfinity, float.NegativeInfinity, float.Epsilon, -float.Epsilon, float.MaxValue, -float.MaxValue };
        foreach (int n in new[] { 1, 2, 7, 64, 333, 1000, 2016 })
            foreach (int levels in new[] { 2, 5, 1000, 0 })
                foreach (int k in new[] { 1, n / 3, n - 1, n, n + 4 })
                {
                    if (k <= 0) continue;
                    var scores = Enumerable.Range(0, n).Select(_ => levels switch
                    {
                        0 => rng.Next(8) == 0 ? special[rng.Next(special.Length)] : (float)(rng.NextDouble() * 2 - 1) * MathF.Pow(10, rng.Next(-30, 30)),
                        _ => (float)rng.Next(levels) - levels / 2, // negative, zero and positive
                    }).ToArray();
                    var result = new int[n];
                    int picked = PageScoring.TopK(scores, k, result, new float[n]);
                    var want = Enumerable.Range(0, n).OrderByDescending(i => scores[i]).ThenBy(i => i).Take(k).Order().ToArray();
                    Assert.Equal(want, result.AsSpan(0, picked).ToArray());
                }
    }

    /// <summary>Quest's page bound is never below the true max q·k over the stored (rounded) keys of its page.</summary>
    [Theory]
    [InlineData(16, GgmlType.F16)]
    [InlineData(32, GgmlType.Q8_0)]
    [InlineData(64, GgmlType.F32)]
    public void QuestBoundIsNeverBelowTheTrueMax(int pageSize, GgmlType type)
    {
        const int d = 64, tokens = 1000;
        var rng = new Random(pageSize);
        using var store = new PagedKvStore(new PagedKvOptions { LayerCount = 1, KvHeadCount = 1, HeadDim = d, PageSize = pageSize, KeyType = type, ValueType = type, Metadata = KvMetadata.MinMax });
        using var seq = store.CreateSequence();
        var k = new float[d];
        for (int t = 0; t < tokens; t++)
        {
            for (int i = 0; i < d; i++) k[i] = (float)(rng.NextDouble() * 4 - 2 + (i % 7 == 0 ? 3 : 0));
            Assert.True(seq.Append(0, t * 2, 1, k, k));
        }
        var q = new float[d];
        var key = new float[d];
        for (int trial = 0; trial < 50; trial++)
        {
            for (int i = 0; i < d; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
            foreach (int page in seq.Table(0, 0).Pages)
            {
                float max = float.NegativeInfinity;
                for (int j = 0; j < store.Count(page); j++)
                {
                    store.ReadKey(page, j, key);
                    max = MathF.Max(max, (float)Enumerable.Range(0, d).Sum(i => (double)q[i] * key[i]));
                }
                float bound = PageScoring.QuestBound(store, page, q);
                // The vectorised bound equals the plain formula over the page's 16-token blocks.
                double scalar = double.NegativeInfinity;
                for (int b = 0; b < store.DigestBlockCount(page); b++)
                {
                    var lo = store.MinKey(page, b).ToArray();
                    var hi = store.MaxKey(page, b).ToArray();
                    scalar = Math.Max(scalar, Enumerable.Range(0, d).Sum(i => Math.Max((double)q[i] * lo[i], (double)q[i] * hi[i])));
                }
                Assert.True(Math.Abs(bound - scalar) <= 1e-4 * (1 + Math.Abs(scalar)), $"page {page}: bound {bound}, scalar {scalar}");
                Assert.True(bound >= max - 1e-4f * MathF.Abs(max), $"page {page}: bound {bound} < true max {max}");
            }
        }
    }

    /// <summary>
    /// The forward profile behind <c>vidkv bench</c>'s <c>ms_per_token</c>: every weight product and the cache's phases
    /// are timed, the phases do not overlap (their sum fits in the time measured around the calls), and tokens are counted.
    /// </summary>
    [Fact]
    public void ForwardTimesCoverEveryPhaseOnce()
    {
        using var model = Stories();
        var tokens = StoryTokens(model, 40);
        using var state = model.CreateState(64);
        var logits = new float[model.Config.VocabSize];
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        model.Forward(state, tokens.AsSpan(0, 32), logits);
        for (int i = 32; i < tokens.Length; i++) model.Forward(state, tokens.AsSpan(i, 1), logits);
        long elapsed = System.Diagnostics.Stopwatch.GetTimestamp() - start;
        var t = state.Times;
        Assert.Equal(40, t.Tokens);
        foreach (var (name, ticks) in new[] { ("qkv", t.QkvProjection), ("append", t.KvAppend), ("attention", t.Attention), ("output", t.OutputProjection),
            ("gate/up", t.GateUp), ("down", t.Down), ("head", t.LmHead), ("other", t.Other) })
            Assert.True(ticks > 0, $"{name} was not timed");
        Assert.InRange(t.Total, 1, elapsed);
        var perToken = t.MillisecondsPerToken(default);
        Assert.Equal(8, perToken.Count);
        Assert.Equal(t.Total * 1000.0 / System.Diagnostics.Stopwatch.Frequency / 40, perToken.Values.Sum(), 6);
    }

    /// <summary>
    /// <c>vidkv bench</c>'s runner, back to back and interleaved: one row per (policy, depth) and test, each reporting its
    /// own cache (the deeper row holds more KV), its samples and its phase times; interleaved rows each own a cache,
    /// with a cold file of their own.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void BenchmarkRowsReportTheirOwnCache(bool interleave)
    {
        using var model = Stories();
        string dir = Directory.CreateTempSubdirectory("vidkv-bench-").FullName;
        try
        {
            var caches = new KvCacheConfig?[] { null, new KvCacheConfig { Default = "freekv", Budget = 64, PageSize = 16, ColdPath = Path.Combine(dir, "cold.bin") } };
            var rows = new List<BenchmarkResult>();
            int coldFiles = 0;
            foreach (var row in Benchmark.Run(model, "stories", 8, 3, [40, 130], [WorkerPool.Shared.ThreadCount], repetitions: 2, caches: caches, interleave: interleave))
            {
                if (rows.Count == 0) coldFiles = Directory.GetFiles(dir).Length; // while the caches are open
                rows.Add(row);
            }
            Assert.Equal(2 * 2 * 2, rows.Count); // caches × depths × tests
            foreach (var policyRows in rows.GroupBy(r => r.Policy))
                foreach (var test in new[] { "pp8", "tg3" })
                {
                    var byDepth = policyRows.Where(r => r.Test == test).OrderBy(r => r.Depth).ToArray();
                    Assert.Equal([40, 130], byDepth.Select(r => r.Depth));
                    Assert.True(byDepth[1].HotKvBytes + byDepth[1].ColdKvBytes > byDepth[0].HotKvBytes + byDepth[0].ColdKvBytes, $"{policyRows.Key} {test}: the deeper row reports no more KV");
                    foreach (var row in byDepth)
                    {
                        Assert.Equal(2, row.Samples.Length);
                        Assert.All(row.Samples, sample => Assert.True(sample > 0));
                        Assert.NotNull(row.MsPerToken);
                        Assert.True(row.MsPerToken!["qkv_projection"] > 0);
                        Assert.NotNull(row.KvMsPerToken); // the default cache is paged too
                    }
                }
            // Interleaved, each depth's FreeKV cache has a cold file of its own.
            Assert.Equal(interleave ? 2 : 1, coldFiles);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <summary>FreeKV with τ = 1 reads exactly the pages an exact selection with the current query reads (recomputed here from the stored keys).</summary>
    [Fact]
    public void FreeKvWithTauOneIsExactSelection()
    {
        const int budget = 64;
        using var model = Stories();
        var tokens = StoryTokens(model, 200);
        using var cache = Paged(model, "freekv:tau=1", budget: budget);
        var store = cache.Store;
        var seq = cache.Sequence;
        var policy = (FreeKvPolicy)cache.Policies[0, 0];
        int compared = 0;
        cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> read) =>
        {
            if (step.Table.TokenCount <= budget) return;
            var table = step.Table;
            int d = store.HeadDim, pages = table.Count;
            int sinkEnd = 0, seen = 0;
            while (seen < policy.Sinks) seen += store.Count(table[sinkEnd++]);
            int recentStart = pages - 1;
            seen = store.Count(table[recentStart]);
            while (recentStart > sinkEnd && seen < policy.Recent) seen += store.Count(table[--recentStart]);
            // Scalar centre ± radius digest from the keys, quantised as PageScoring.CentreRadiusScores defines the score
            // (both sides to `levels` steps of their largest magnitude), scores softmaxed per query head and averaged.
            var candidates = Enumerable.Range(sinkEnd, recentStart - sinkEnd).ToArray();
            var average = new double[candidates.Length];
            var queries = step.LastQueries.ToArray();
            float scale = step.Scale;
            int levels = new DigestMatrix(d).Levels;
            static (int[] Values, double Step) Quantise(float[] v, int levels)
            {
                float max = v.Max(MathF.Abs), inverse = max > 0 ? levels / max : 0;
                return (v.Select(e => (int)MathF.Round(e * inverse)).ToArray(), max > 0 ? max / levels : 0);
            }
            var digests = candidates.Select(index =>
            {
                int page = table[index], n = store.Count(page);
                var keys = new float[n * d];
                store.ReadKeys(page, keys);
                var v = new float[2 * d];
                for (int i = 0; i < d; i++)
                {
                    var column = Enumerable.Range(0, n).Select(j => keys[j * d + i]).ToArray();
                    double c = (column.Min() + column.Max()) / 2.0, r = column.Average(x => Math.Abs(x - c));
                    v[i] = (float)c;
                    v[d + i] = (float)r;
                }
                return Quantise(v, levels);
            }).ToArray();
            for (int h = 0; h < step.Group; h++)
            {
                var x = Enumerable.Range(0, 2 * d).Select(e => e < d ? scale * queries[h * d + e] : MathF.Abs(scale * queries[h * d + e - d])).ToArray();
                var (qx, queryStep) = Quantise(x, levels);
                var raw = digests.Select(p => (double)Enumerable.Range(0, 2 * d).Sum(e => (long)qx[e] * p.Values[e]) * queryStep * p.Step).ToArray();
                double max = raw.Max(), sum = raw.Sum(x => Math.Exp(x - max));
                for (int i = 0; i < raw.Length; i++) average[i] += Math.Exp(raw[i] - max) / sum / step.Group;
            }
            int k = (budget - policy.Sinks - policy.Recent) / store.PageSize;
            var want = Enumerable.Range(0, sinkEnd).Concat(Enumerable.Range(recentStart, pages - recentStart))
                .Concat(candidates.Select((index, i) => (index, score: average[i])).OrderByDescending(x => x.score).Take(k).Select(x => x.index)).Order().ToArray();
            var got = new List<int>();
            foreach (var view in read)
                unsafe { got.Add(IndexOfPage(store, table, view.Positions[0])); }
            Assert.Equal(want, got.ToArray());
            compared++;
        };
        Run(model, cache, tokens, 8);
        Assert.True(compared > 100 * model.Config.LayerCount * model.Config.KvHeadCount, $"only {compared} selections compared");
        Assert.Equal(0, policy.Reused);
    }

    static int IndexOfPage(PagedKvStore store, PageTable table, int firstPosition)
    {
        for (int i = 0; i < table.Count; i++) if (store.FirstPosition(table[i]) == firstPosition) return i;
        return -1;
    }

    [Theory]
    [InlineData("{\"default\": \"qest\"}", "unknown policy")]
    [InlineData("{\"default\": \"quest:budget=abc\"}", "option 'budget': 'abc' is not an integer")]
    [InlineData("{\"default\": \"quest:bugdet=12\"}", "unknown option 'bugdet'")]
    [InlineData("{\"default\": \"quest\"}", "option 'budget' is required")]
    [InlineData("{\"page_size\": 20}", "field 'page_size': 20")]
    [InlineData("{\"type\": \"q4_0\"}", "field 'type': 'q4_0'")]
    [InlineData("{\"layers\": {\"2-x\": \"full\"}}", "field 'layers': key '2-x'")]
    [InlineData("{\"heads\": {\"9.0\": \"full\"}}", "9.0 is past the model")]
    [InlineData("{\"budget\": \"big\"}", "field 'budget': \"big\" is not an integer")]
    [InlineData("{\"colour\": 1}", "unknown field 'colour'")]
    [InlineData("{\"default\": \"freekv:budget=64,prefetch=maybe\"}", "option 'prefetch': 'maybe' is not 1, 0 or auto")]
    [InlineData("{\"default\": \"duo\"}", "option 'pattern' is required")]
    [InlineData("{\"default\": \"freekv:budget=64,tau=2\"}", "tau must be in [0, 1], not 2")]
    [InlineData("{\"default\": \"snapkv:budget=64,kernel=4\"}", "kernel must be odd and at least 1, not 4")]
    [InlineData("{\"default\": \"h2o:budget=64,recent=65\"}", "recent must be in [0, budget], not 65")]
    [InlineData("{\"default\": \"keynorm:ratio=0\"}", "ratio must be in (0, 1], not 0")]
    public void BadConfigNamesTheFieldAndValue(string json, string expected)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => KvCacheConfig.Parse(json, "test.json").BuildPolicies(5, 4));
        Assert.Contains(expected, e.Message);
    }

    /// <summary>Per-layer and per-head overrides land where the config says.</summary>
    [Fact]
    public void ConfigAssignsPoliciesPerLayerAndHead()
    {
        var map = KvCacheConfig.Parse("{\"budget\": 64, \"default\": \"quest\", \"layers\": {\"0-1\": \"full\"}, \"heads\": {\"3.2\": \"sinkwindow+freekv\"}}").BuildPolicies(5, 4);
        Assert.IsType<FullPolicy>(map[0, 3]);
        Assert.IsType<FullPolicy>(map[1, 0]);
        Assert.IsType<QuestPolicy>(map[2, 0]);
        var composed = Assert.IsType<ComposedPolicy>(map[3, 2]);
        Assert.IsType<SinkWindowPolicy>(composed.Reducer);
        Assert.Equal(60, ((SinkWindowPolicy)composed.Reducer).Window);
        Assert.IsType<QuestPolicy>(map[3, 1]);
    }

    /// <summary>Pages moved to the cold file and recalled come back bit for bit; a failing cold write keeps the page hot.</summary>
    [Fact]
    public void ColdTierRoundTripsAndAFullDiskKeepsPagesHot()
    {
        string path = Path.Combine(Path.GetTempPath(), $"vidkv-cold-{Environment.ProcessId}-{Guid.NewGuid():N}.bin");
        var rng = new Random(3);
        var k = new float[2 * 32];
        using (var store = new PagedKvStore(new PagedKvOptions { LayerCount = 1, KvHeadCount = 2, HeadDim = 32, PageSize = 16, ColdPath = path }))
        {
            var seq = store.CreateSequence();
            for (int t = 0; t < 50; t++)
            {
                for (int i = 0; i < k.Length; i++) k[i] = (float)rng.NextDouble();
                seq.Append(0, t, 1, k, k);
            }
            var table = seq.Table(0, 1);
            var before = new float[store.Count(table[1]) * 32];
            store.ReadKeys(table[1], before);
            store.MoveCold(table[1]);
            Assert.False(store.IsHot(table[1]));
            Assert.Equal(store.PageBytes, store.ColdBytes);
            var after = new float[before.Length];
            if (OperatingSystem.IsLinux())
            {
                // Read in place through the mapping, while the page is cold; a page written after the mapping was made is seen too.
                Assert.True(store.ReadsColdInPlace);
                unsafe { Assert.True(store.ReadableRows(table[1]) != null); }
                store.ReadKeys(table[1], after);
                Assert.Equal(before, after);
                var first = new float[store.Count(table[0]) * 32];
                store.ReadKeys(table[0], first);
                store.MoveCold(table[0]);
                var firstCold = new float[first.Length];
                store.ReadKeys(table[0], firstCold);
                Assert.Equal(first, firstCold);
            }
            Assert.True(store.Recall(table[1]));
            Array.Clear(after);
            store.ReadKeys(table[1], after);
            Assert.Equal(before, after);
        }
        Assert.False(File.Exists(path), "the cold file outlived its store");

        var missing = Assert.Throws<IOException>(() => new PagedKvStore(new PagedKvOptions { LayerCount = 1, KvHeadCount = 1, HeadDim = 32, ColdPath = "/nonexistent-dir/cold.bin" }));
        Assert.Contains("/nonexistent-dir/cold.bin", missing.Message);

        using var full = new PagedKvStore(new PagedKvOptions { LayerCount = 1, KvHeadCount = 1, HeadDim = 32, PageSize = 16, ColdPath = "/dev/full" });
        using var fullSequence = full.CreateSequence();
        for (int t = 0; t < 20; t++) fullSequence.Append(0, t, 1, k, k);
        int page = fullSequence.Table(0, 0)[0];
        var e = Assert.Throws<IOException>(() => full.MoveCold(page));
        Assert.Contains("/dev/full", e.Message);
        Assert.True(full.IsHot(page));
        var row = new float[32];
        full.ReadKey(page, 3, row);
        Assert.Equal((float)(Half)k[0], row[0]);
    }

    /// <summary>
    /// Fidelity on the real model (stories260K, story_eval.txt, -c 512, budget 128, every step decoded under the
    /// policy): Quest, ClusterKV and FreeKV stay within 5% of Full's perplexity; SinkWindow, the floor, is evaluated
    /// alongside and the retrievers must not be worse than it by more than noise.
    /// </summary>
    [Fact]
    public void RetrieversStayWithinFivePercentOfFullOnStories()
    {
        using var model = Stories();
        string text = File.ReadAllText(TestData.File_("text/story_eval.txt"));
        var rows = Engine.KvEvaluation.Run(model, text, 512, ["sinkwindow", "quest", "clusterkv", "freekv"], [128], maxChunks: 2, attentionMetrics: false);
        var full = rows.Single(r => r.Policy == "full");
        Assert.Equal(1.0, full.PerplexityRatio, 12);
        Assert.Equal(1.0, full.Top1Agreement);
        foreach (var name in new[] { "quest", "clusterkv", "freekv" })
        {
            var row = rows.Single(r => r.Policy == name);
            Assert.True(row.PerplexityRatio <= 1.05, $"{name}: perplexity {row.Perplexity:F4} is {row.PerplexityRatio:F4}× full {full.Perplexity:F4}");
            Assert.True(row.BytesPerStep < 0.5 * full.BytesPerStep, $"{name} read {row.BytesPerStep} bytes per step, full {full.BytesPerStep}");
        }
        var floor = rows.Single(r => r.Policy == "sinkwindow");
        Assert.Equal(128, floor.KeptTokensPerHead);
        Assert.True(floor.PerplexityRatio > 1.0, "evicting all but 128 tokens should cost something");
    }

    /// <summary>
    /// Scoring only the last N predictions after a prefilled head: N steps per chunk for every policy; Full's row, run
    /// on one cache, is exact against itself; a window policy still differs; N must leave a first token.
    /// </summary>
    [Fact]
    public void EvaluationScoresTheLastTokensAfterAPrefill()
    {
        using var model = Stories();
        string text = File.ReadAllText(TestData.File_("text/story_eval.txt"));
        var rows = Engine.KvEvaluation.Run(model, text, 256, ["full", "sinkwindow"], [64], maxChunks: 2, attentionMetrics: false, prefillFirstHalf: true, scoredTokens: 40);
        Assert.Equal(2, rows.Count);
        Assert.All(rows, r => Assert.Equal(2 * 40, r.Steps));
        var full = rows.Single(r => r.Policy == "full");
        Assert.Equal(0, full.KlDivergence);
        Assert.Equal(1.0, full.Top1Agreement);
        var window = rows.Single(r => r.Policy == "sinkwindow");
        Assert.True(window.KlDivergence > 0, "a 64-token window at positions 215..255 must change some distribution");
        Assert.Equal(64, window.KeptTokensPerHead);
        var bad = Assert.Throws<ArgumentOutOfRangeException>(() => Engine.KvEvaluation.Run(model, text, 256, ["full"], [64], scoredTokens: 255));
        Assert.Contains("not 255", bad.Message);
    }
}
