namespace VidKV.Cache;

/// <summary>
/// H2O (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
/// NeurIPS 2023). Every stored token accumulates the attention probability each query gives it (summed over the
/// head's query group and over steps, prompt queries included); when a head holds more than <see cref="TokenScoringPolicy.Budget"/>
/// tokens the excess with the smallest accumulated score goes, except the <see cref="Recent"/> newest, which always
/// stay (the paper's half heavy hitters, half recent by default). The paper evicts one token per decode step; a chunk
/// evicts its whole excess at once by the same rule. Scores are the policy's own softmax over the kept keys. The
/// accumulated scores live in the store beside their rows (<see cref="KvMetadata.RowScores"/>), so they take memory
/// only for the tokens kept, however long the stream runs.
/// </summary>
internal sealed class H2OPolicy : TokenScoringPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("h2o",
        "H2O (Zhang et al., NeurIPS 2023): evict the tokens with the least accumulated attention, keeping the recent ones",
        [
            KvPolicyOption.Budget("tokens kept per KV head"),
            KvPolicyOption.PolicyInt("recent", "budget/2", "most recent tokens that always stay"),
        ],
        a => new H2OPolicy(a.Int("budget"), a.OptionalInt("recent"))) { Example = "budget=100,recent=10" };

    int[] stepPositions = [];

    public H2OPolicy(int budget, int? recent = null) : base(budget)
    {
        Recent = recent ?? budget / 2;
        if (Recent < 0 || Recent > budget) throw new ArgumentOutOfRangeException(nameof(recent), $"recent must be in [0, budget], not {Recent}");
    }

    public int Recent { get; }
    public override string Name => $"h2o:budget={Budget},recent={Recent}";
    public override KvMetadata Metadata => KvMetadata.RowScores;
    protected override int RecentKept => Recent;
    /// <summary>The least attended go, the older of equal ones first (the paper evicts by the smallest score).</summary>
    protected override bool OlderGoesFirstOnTies => true;

    /// <summary>Every step adds its attention to the scores, whether or not the head is over budget.</summary>
    protected override bool ShouldScore(in KvStep step) => true;

    /// <summary>The rows' accumulated scores, this step's attention probabilities (over the head's query group) added.</summary>
    protected override Span<float> Score(in KvStep step, int candidates)
    {
        if (stepPositions.Length < step.Count) stepPositions = new int[Math.Max(step.Count, 2 * stepPositions.Length)];
        for (int t = 0; t < step.Count; t++) stepPositions[t] = step.Position + t;
        var probabilities = Scoring.ClearScores();
        Scoring.AddAttention(step.Queries, stepPositions.AsSpan(0, step.Count), step.Group, Store.HeadDim, step.Scale, probabilities);
        // Add each probability to its row's score (rows in table order, as gathered); the sums are the scores.
        var table = step.Table;
        for (int index = 0, at = 0; index < table.Count; index++)
        {
            var scores = Store.WritableRowScores(table, index);
            for (int j = 0; j < scores.Length; j++, at++) probabilities[at] = scores[j] += probabilities[at];
        }
        return probabilities;
    }
}
