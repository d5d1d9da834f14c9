namespace VidKV.Cache;

/// <summary>
/// FreeKV (Liu et al., "FreeKV: Boosting KV Cache Retrieval for Efficient LLM Inference", 2025): a budget of sink
/// pages + recent pages + retrieved pages. Pages are scored with the centre ± radius digest
/// (c = (max+min)/2, r = mean|k−c|). Speculative retrieval: step t reads the pages chosen with q_{t−1}; per KV head,
/// if the mean cosine similarity of q_t and q_{t−1} over its query heads falls below τ, that head is corrected by
/// selecting again with q_t. Then the selection for t+1 is made with q_t (the paper overlaps it, and the recall of
/// its pages from the cold tier, with the step's compute). τ = 1 reproduces exact selection. Defaults (paper's system
/// path): budget 2048 = sink 512 + recent 512 + retrieved; here sink and recent default to a quarter of the budget
/// each, which is the paper's ratio at its budget. Pages holding the step's own tokens are always read. With a mapped
/// cold tier (the default on Linux and macOS) selected cold pages are read in place and nothing is recalled. Without
/// one, with <c>prefetch</c> the pages chosen for t+1 are announced through <see cref="NextPages"/>, and the cache
/// recalls the cold ones on a background thread while the rest of the step runs (the paper's double-buffered
/// recall). By default
/// (<c>auto</c>) that happens only when a core is left over beside the worker pool: on a machine whose cores all
/// run kernels, the reader thread preempts them and costs more than the synchronous reads it saves (measured: 2 cores,
/// cold file in the page cache, 8192 tokens, budget 2048: 28.1 t/s with prefetch against 33.9 without).
/// </summary>
internal sealed class FreeKvPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("freekv",
        "FreeKV (Liu et al., 2025): sink + recent + pages chosen by centre ± radius with the previous query, corrected below tau, recalled in the background",
        [
            KvPolicyOption.Budget("tokens read per KV head per step"),
            KvPolicyOption.Int("sinks", "budget/4", a => a.Int("budget") / 4, "first tokens always read"),
            KvPolicyOption.Int("recent", "budget/4", a => a.Int("budget") / 4, "most recent tokens always read"),
            KvPolicyOption.Float("tau", 0.8f, "query cosine similarity below which a head selects again with the current query"),
            KvPolicyOption.Switch("prefetch", "announce the next step's pages for background recall (auto: when a core is free)"),
        ],
        a => new FreeKvPolicy(a.Int("budget"), a.Int("sinks"), a.Int("recent"), a.Float("tau"), a.Switch("prefetch"))) { Example = "budget=100,sinks=10,recent=20,tau=0.8125001,prefetch=0" };

    // Per (layer, head): q of the previous step ([group, d]), the speculative selection for this step (table indices), its table version.
    float[][] previousQuery = [];
    int[][] speculative = [];
    int[] speculativeCount = [], speculativeVersion = [], speculativeStart = [], speculativeEnd = [];
    bool[] hasPrevious = [];
    DigestMatrix[] digests = [];

    public FreeKvPolicy(int budget, int? sinks = null, int? recent = null, float tau = 0.8f, bool? prefetch = null)
    {
        Prefetch = prefetch;
        if (budget < 1) throw new ArgumentOutOfRangeException(nameof(budget), $"budget must be at least 1 token, not {budget}");
        if (tau is < 0 or > 1) throw new ArgumentOutOfRangeException(nameof(tau), $"tau must be in [0, 1], not {tau}");
        Budget = budget;
        Sinks = sinks ?? budget / 4;
        Recent = recent ?? budget / 4;
        if (Sinks < 0 || Recent < 0 || Sinks + Recent > budget)
            throw new ArgumentOutOfRangeException(nameof(sinks), $"sink {Sinks} + recent {Recent} tokens exceed the budget {budget}");
        Tau = tau;
    }

    public int Budget { get; }
    public int Sinks { get; }
    public int Recent { get; }
    public float Tau { get; }
    /// <summary>Whether the next step's pages are announced for background recall; null = when a core is free beside the worker pool.</summary>
    public bool? Prefetch { get; }
    public override string Name => FormattableString.Invariant($"freekv:budget={Budget},sinks={Sinks},recent={Recent},tau={Tau}") + Prefetch switch { true => ",prefetch=1", false => ",prefetch=0", _ => "" };

    public override KvMetadata Metadata => KvMetadata.Digest;

    public override ReadOnlySpan<int> NextPages(int layer, int head)
    {
        int index = HeadIndex(layer, head);
        bool prefetch = Prefetch ?? Environment.ProcessorCount > Tensors.WorkerPool.Shared.ThreadCount;
        return prefetch && hasPrevious[index] ? speculative[index].AsSpan(0, speculativeCount[index]) : default;
    }

    /// <summary>Head-steps that reused the speculative selection, and those corrected with the current query.</summary>
    public long Reused => Interlocked.Read(ref reused);
    public long Corrected => Interlocked.Read(ref corrected);
    long reused, corrected;

    public override bool ConcurrentSelect => true;

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        var store = sequence.Store;
        int heads = store.HeadSlots;
        previousQuery = new float[heads][];
        speculative = new int[heads][];
        for (int i = 0; i < heads; i++) speculative[i] = [];
        speculativeCount = new int[heads];
        speculativeVersion = new int[heads];
        speculativeStart = new int[heads];
        speculativeEnd = new int[heads];
        hasPrevious = new bool[heads];
        digests = new DigestMatrix[heads];
        for (int i = 0; i < heads; i++) digests[i] = new DigestMatrix(store.HeadDim);
    }

    public override void OnTruncated(int length) => Array.Clear(hasPrevious);

    public override void Select(in KvStep step, PageSelection selection)
    {
        var table = step.Table;
        int head = HeadIndex(step.Layer, step.Head);
        var q = step.LastQueries;
        if (table.TokenCount <= Budget)
        {
            selection.AddAll(table.Count);
            Remember(head, q);
            hasPrevious[head] = false; // nothing speculative to reuse yet
            return;
        }
        // Sink pages from the front and recent pages from the back, whole pages, then retrieved pages in between.
        var (sinkEnd, recentStart) = SinkAndRecent(table, FirstPageOfStep(step));
        int k = Math.Max(0, (Budget - Sinks - Recent) / Store.PageSize);

        // Reuse needs the same candidate pages as when it was chosen (a page crossing out of the recent window forces a fresh choice).
        bool reuse = step.Count == 1 && hasPrevious[head] && speculativeVersion[head] == table.Version
            && speculativeStart[head] == sinkEnd && speculativeEnd[head] == recentStart
            && MeanCosine(q, previousQuery[head], step.Group) >= Tau;
        if (reuse) Interlocked.Increment(ref reused);
        else
        {
            Interlocked.Increment(ref corrected);
            Choose(head, step, sinkEnd, recentStart, k, q);
        }
        selection.AddRange(0, sinkEnd);
        foreach (int index in speculative[head].AsSpan(0, speculativeCount[head])) selection.Add(index);
        selection.AddRange(recentStart, table.Count);

        // Selection for the next step with this step's query.
        if (reuse) Choose(head, step, sinkEnd, recentStart, k, q);
        Remember(head, q);
        hasPrevious[head] = true;
    }

    /// <summary>
    /// With a cold tier, pages between the sinks and the recent window leave RAM once the context passes the budget
    /// (they come back for the steps that select them). A failing cold write (full or unwritable disk) is recorded on
    /// the store and stops offloading; the pages stay hot and the session goes on.
    /// </summary>
    public override void OnAppended(in KvStep step)
    {
        var table = step.Table;
        if (!Store.HasColdTier || Store.ColdError != null || table.TokenCount <= Budget) return;
        var (sinkEnd, recentStart) = SinkAndRecent(table, table.Count);
        // Walk back from the window's edge: pages further back were moved on earlier steps.
        for (int i = recentStart - 1; i >= sinkEnd && Store.IsHot(table[i]); i--)
        {
            try { Store.MoveCold(table[i]); }
            catch (IOException e) { Store.ColdError = e.Message; return; }
        }
    }

    /// <summary>
    /// Table indices where the sink pages end (whole pages from the front holding at least <see cref="Sinks"/> tokens)
    /// and the recent pages start (pages from <paramref name="alwaysRecent"/> on, plus earlier ones until they hold at
    /// least <see cref="Recent"/> tokens).
    /// </summary>
    (int SinkEnd, int RecentStart) SinkAndRecent(PageTable table, int alwaysRecent)
    {
        int sinkEnd = 0, tokens = 0;
        while (sinkEnd < table.Count && tokens < Sinks) tokens += Store.Count(table[sinkEnd++]);
        int recentStart = Math.Min(table.Count, alwaysRecent);
        tokens = 0;
        for (int i = recentStart; i < table.Count; i++) tokens += Store.Count(table[i]);
        while (recentStart > sinkEnd && tokens < Recent) tokens += Store.Count(table[--recentStart]);
        return (sinkEnd, recentStart);
    }

    void Choose(int head, in KvStep step, int start, int end, int k, ReadOnlySpan<float> q)
    {
        var picked = PagePicker.ForCurrentThread.Choose(Store, step.Table, start, end, q, step.Group, step.Scale, PageScoring.Bound.CentreRadius, k, digests[head]);
        if (speculative[head].Length < picked.Length) speculative[head] = new int[Math.Max(picked.Length, 2 * speculative[head].Length)];
        picked.CopyTo(speculative[head]);
        speculativeCount[head] = picked.Length;
        speculativeVersion[head] = step.Table.Version;
        speculativeStart[head] = start;
        speculativeEnd[head] = end;
    }

    void Remember(int head, ReadOnlySpan<float> q)
    {
        if (previousQuery[head] == null || previousQuery[head].Length != q.Length) previousQuery[head] = new float[q.Length];
        q.CopyTo(previousQuery[head]);
    }

    static float MeanCosine(ReadOnlySpan<float> a, ReadOnlySpan<float> b, int group)
    {
        int d = a.Length / group;
        float sum = 0;
        for (int h = 0; h < group; h++) sum += System.Numerics.Tensors.TensorPrimitives.CosineSimilarity(a.Slice(h * d, d), b.Slice(h * d, d));
        return sum / group;
    }

}
