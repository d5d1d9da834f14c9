namespace VidKV.Cache;

/// <summary>
/// SnapKV (Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024). The last
/// <see cref="Window"/> queries (the observation window) vote for the earlier tokens with their attention
/// probabilities, summed over the window and the head's query group; the votes are max-pooled over
/// <see cref="Kernel"/> neighbours so kept tokens come in runs; the top budget − window earlier tokens stay, with the
/// window's own tokens. The paper compresses the prompt once. For a stream the window is the last queries this head
/// has seen (a ring, prefill and decode alike), and compression runs whenever the head holds more than budget +
/// <see cref="Slack"/> tokens, cutting it back to exactly <see cref="TokenScoringPolicy.Budget"/> — with the default slack of one window
/// the O(window · tokens) scoring runs once per window of steps.
/// </summary>
internal sealed class SnapKvPolicy : TokenScoringPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("snapkv",
        "SnapKV (Li et al., NeurIPS 2024): the last window of queries votes (max-pooled) for the tokens kept beside it, whenever a head passes budget + slack",
        [
            KvPolicyOption.Budget("tokens kept per KV head"),
            KvPolicyOption.Int("window", 32, "observation window: the last queries that vote, and whose tokens stay"),
            KvPolicyOption.Int("kernel", 7, "max-pooling width over neighbouring tokens' votes (odd)"),
            KvPolicyOption.PolicyInt("slack", "window", "tokens a head may pass the budget by before it is cut back"),
        ],
        a => new SnapKvPolicy(a.Int("budget"), a.Int("window"), a.Int("kernel"), a.OptionalInt("slack"))) { Example = "budget=100,window=16,kernel=5,slack=3" };

    // Per (layer, KV head): the last Window steps' queries ([Window][group × headDim]) and positions, oldest first from `next`.
    float[][] ringQueries = [];
    int[][] ringPositions = [];
    int[] ringCount = [], ringNext = [];
    float[] windowQueries = [];
    int[] windowPositions = [];

    public SnapKvPolicy(int budget, int window = 32, int kernel = 7, int? slack = null) : base(budget)
    {
        Window = window >= 1 ? Math.Min(window, budget) : throw new ArgumentOutOfRangeException(nameof(window), "window must be at least 1");
        Kernel = kernel >= 1 && kernel % 2 == 1 ? kernel : throw new ArgumentOutOfRangeException(nameof(kernel), $"kernel must be odd and at least 1, not {kernel}");
        Slack = slack ?? Window;
        if (Slack < 0) throw new ArgumentOutOfRangeException(nameof(slack), "slack must be at least 0");
    }

    public int Window { get; }
    public int Kernel { get; }
    public int Slack { get; }
    public override string Name => $"snapkv:budget={Budget},window={Window},kernel={Kernel},slack={Slack}";
    protected override int RecentKept => Window;

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        var store = sequence.Store;
        int heads = store.HeadSlots;
        ringQueries = new float[heads][];
        ringPositions = new int[heads][];
        ringCount = new int[heads];
        ringNext = new int[heads];
    }

    /// <summary>Every step's queries join the head's window; then the base compresses when the head is past budget + slack.</summary>
    public override void OnAppended(in KvStep step)
    {
        int head = HeadIndex(step.Layer, step.Head), row = step.Group * Store.HeadDim;
        var queries = ringQueries[head] ??= new float[Window * row];
        var positions = ringPositions[head] ??= new int[Window];
        for (int t = Math.Max(0, step.Count - Window); t < step.Count; t++)
        {
            int slot = ringNext[head];
            step.Queries.Slice(t * row, row).CopyTo(queries.AsSpan(slot * row, row));
            positions[slot] = step.Position + t;
            ringNext[head] = (slot + 1) % Window;
            ringCount[head] = Math.Min(Window, ringCount[head] + 1);
        }
        base.OnAppended(step);
    }

    protected override bool ShouldScore(in KvStep step) => step.Table.TokenCount > Budget + Slack;

    /// <summary>The window's votes: its queries' attention probabilities summed, max-pooled over <see cref="Kernel"/> neighbours.</summary>
    protected override Span<float> Score(in KvStep step, int candidates)
    {
        int head = HeadIndex(step.Layer, step.Head), d = Store.HeadDim, row = step.Group * d;
        var queries = ringQueries[head];
        var positions = ringPositions[head];
        // The window's queries in time order, for the causal mask.
        int m = ringCount[head];
        if (windowQueries.Length < m * row) windowQueries = new float[Window * row];
        if (windowPositions.Length < m) windowPositions = new int[Window];
        for (int i = 0; i < m; i++)
        {
            int slot = (ringNext[head] - m + i + Window) % Window;
            queries.AsSpan(slot * row, row).CopyTo(windowQueries.AsSpan(i * row, row));
            windowPositions[i] = positions[slot];
        }
        var votes = Scoring.ClearScores();
        Scoring.AddAttention(windowQueries.AsSpan(0, m * row), windowPositions.AsSpan(0, m), step.Group, d, step.Scale, votes);
        return Scoring.MaxPool(votes[..candidates], Kernel);
    }

    public override void OnTruncated(int length)
    {
        // Forget the window's queries at or after the cut (they are the newest in each ring).
        for (int head = 0; head < ringCount.Length; head++)
        {
            var positions = ringPositions[head];
            while (ringCount[head] > 0 && positions[(ringNext[head] - 1 + Window) % Window] >= length)
            {
                ringNext[head] = (ringNext[head] - 1 + Window) % Window;
                ringCount[head]--;
            }
        }
    }
}
