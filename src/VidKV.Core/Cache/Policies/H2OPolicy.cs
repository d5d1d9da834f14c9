namespace VidKV.Cache;

/// <summary>
/// H2O (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
/// NeurIPS 2023). Every stored token accumulates the attention probability each query gives it (summed over the
/// head's query group and over steps, prompt queries included); when a head holds more than <see cref="Budget"/>
/// tokens the excess with the smallest accumulated score goes, except the <see cref="Recent"/> newest, which always
/// stay (the paper's half heavy hitters, half recent by default). The paper evicts one token per decode step; a chunk
/// evicts its whole excess at once by the same rule. Scores are the policy's own softmax over the kept keys.
/// </summary>
public sealed class H2OPolicy : KvPolicy
{
    readonly TokenScoring scoring = new();
    float[][] accumulated = []; // per (layer, KV head), indexed by position
    int[] stepPositions = [];

    public H2OPolicy(int budget, int? recent = null)
    {
        Budget = budget >= 1 ? budget : throw new ArgumentOutOfRangeException(nameof(budget), "budget must be at least 1");
        Recent = recent ?? budget / 2;
        if (Recent < 0 || Recent > budget) throw new ArgumentOutOfRangeException(nameof(recent), $"recent must be in [0, budget], not {Recent}");
    }

    public int Budget { get; }
    public int Recent { get; }
    public override string Name => $"h2o:budget={Budget},recent={Recent}";
    public override bool ConcurrentSelect => true;

    public override void Attach(PagedKvStore store)
    {
        base.Attach(store);
        accumulated = new float[store.LayerCount * store.KvHeadCount][];
    }

    public override void OnAppended(in KvStep step)
    {
        int head = step.Layer * Store.KvHeadCount + step.Head;
        var table = step.Table;
        scoring.Gather(Store, table);
        if (stepPositions.Length < step.Count) stepPositions = new int[Math.Max(step.Count, 2 * stepPositions.Length)];
        for (int t = 0; t < step.Count; t++) stepPositions[t] = step.Position + t;
        var probabilities = scoring.ClearScores();
        scoring.AddAttention(step.Queries, stepPositions.AsSpan(0, step.Count), step.Group, Store.HeadDim, step.Scale, probabilities);

        var positions = scoring.Positions;
        int last = positions[^1];
        ref float[] acc = ref accumulated[head];
        if (acc == null || acc.Length <= last) Array.Resize(ref acc, Math.Max(last + 1, 2 * (acc?.Length ?? 0)));
        for (int i = 0; i < positions.Length; i++) acc[positions[i]] += probabilities[i];

        int stored = scoring.Count, excess = stored - Budget;
        if (excess <= 0) return;
        int candidates = stored - Math.Min(Recent, stored);
        // Lowest accumulated score first: the top of the negated scores (ties go to the older token).
        var negated = probabilities[..candidates];
        for (int i = 0; i < candidates; i++) negated[i] = -acc[positions[i]];
        var evict = scoring.Top(negated, excess);
        var remove = scoring.ClearFlags();
        foreach (int i in evict) remove[i] = true;
        scoring.RemoveFlagged(Store, step.Layer, step.Head, table);
    }

    public override void OnTruncated(int length)
    {
        foreach (var acc in accumulated)
            if (acc != null && acc.Length > length) acc.AsSpan(length).Clear();
    }
}
