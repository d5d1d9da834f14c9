namespace VidKV.Cache;

/// <summary>
/// H2O (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
/// NeurIPS 2023). Every stored token accumulates the attention probability each query gives it (summed over the
/// head's query group and over steps, prompt queries included); when a head holds more than <see cref="Budget"/>
/// tokens the excess with the smallest accumulated score goes, except the <see cref="Recent"/> newest, which always
/// stay (the paper's half heavy hitters, half recent by default). The paper evicts one token per decode step; a chunk
/// evicts its whole excess at once by the same rule. Scores are the policy's own softmax over the kept keys. The
/// accumulated scores live in the store beside their rows (<see cref="KvMetadata.RowScores"/>), so they take memory
/// only for the tokens kept, however long the stream runs.
/// </summary>
public sealed class H2OPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("h2o",
        "H2O (Zhang et al., NeurIPS 2023): evict the tokens with the least accumulated attention, keeping the recent ones",
        [
            KvPolicyOption.Budget("tokens kept per KV head"),
            KvPolicyOption.PolicyInt("recent", "budget/2", "most recent tokens that always stay"),
        ],
        a => new H2OPolicy(a.Int("budget"), a.OptionalInt("recent")));

    readonly TokenScoring scoring = new();
    int[] stepPositions = [];
    float[] accumulated = [];

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
    public override KvMetadata Metadata => KvMetadata.RowScores;

    public override void OnAppended(in KvStep step)
    {
        var table = step.Table;
        scoring.Gather(Store, table);
        if (stepPositions.Length < step.Count) stepPositions = new int[Math.Max(step.Count, 2 * stepPositions.Length)];
        for (int t = 0; t < step.Count; t++) stepPositions[t] = step.Position + t;
        var probabilities = scoring.ClearScores();
        scoring.AddAttention(step.Queries, stepPositions.AsSpan(0, step.Count), step.Group, Store.HeadDim, step.Scale, probabilities);

        // Add this step's probabilities to the rows' scores, in table order as gathered, and keep a copy of the sums.
        int stored = scoring.Count;
        if (accumulated.Length < stored) accumulated = new float[Math.Max(stored, 2 * accumulated.Length)];
        for (int index = 0, at = 0; index < table.Count; index++)
        {
            var scores = Store.WritableRowScores(table, index);
            for (int j = 0; j < scores.Length; j++, at++) accumulated[at] = scores[j] += probabilities[at];
        }

        int excess = stored - Budget;
        if (excess <= 0) return;
        int candidates = stored - Math.Min(Recent, stored);
        // Lowest accumulated score first: the top of the negated scores (ties go to the older token).
        var negated = probabilities[..candidates];
        for (int i = 0; i < candidates; i++) negated[i] = -accumulated[i];
        var evict = scoring.Top(negated, excess);
        var remove = scoring.ClearFlags();
        foreach (int i in evict) remove[i] = true;
        scoring.RemoveFlagged(Store, table);
    }
}
