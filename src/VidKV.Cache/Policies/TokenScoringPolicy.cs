namespace VidKV.Cache;

/// <summary>
/// Base of the reducers that evict individual tokens of a head by a score (SnapKV, H2O; kvpress's scorer presses):
/// the subclass is its score function. After each append, when <see cref="ShouldScore"/> says so, the head's stored
/// keys are gathered into <see cref="Scoring"/> and <see cref="Score"/> rates them; if the head then holds more than
/// <see cref="Budget"/> tokens, the newest <see cref="RecentKept"/> stay whatever their score and of the older ones
/// (the candidates) the highest-scored stay, so that exactly <see cref="Budget"/> remain; the rest are evicted.
/// </summary>
internal abstract class TokenScoringPolicy : KvPolicy
{
    protected TokenScoringPolicy(int budget)
    {
        Budget = budget >= 1 ? budget : throw new ArgumentOutOfRangeException(nameof(budget), "budget must be at least 1");
    }

    /// <summary>Tokens a head keeps after it is compressed.</summary>
    public int Budget { get; }

    /// <summary>The newest tokens of a head that always stay (never candidates); at most <see cref="Budget"/>.</summary>
    protected abstract int RecentKept { get; }

    /// <summary>A scoring reducer reads every token it keeps (the default <see cref="KvPolicy.Select"/>), head by head.</summary>
    public override bool ConcurrentSelect => true;

    /// <summary>The gathered keys and the scoring buffers (grown to the largest head seen, then reused).</summary>
    protected TokenScoring Scoring { get; } = new();

    /// <summary>
    /// How ties at the cut fall. False (the default): the highest scores stay, the older of equal tokens staying.
    /// True: the lowest scores go, the older of equal tokens going first.
    /// </summary>
    protected virtual bool OlderGoesFirstOnTies => false;

    /// <summary>Whether this step gathers and scores the head; by default once it holds more than the budget.</summary>
    protected virtual bool ShouldScore(in KvStep step) => step.Table.TokenCount > Budget;

    /// <summary>
    /// Scores of the gathered tokens (<see cref="Scoring"/>, table order; higher stays): at least the first
    /// <paramref name="candidates"/>, the ones that may go. The span is the policy's or <see cref="Scoring"/>'s buffer,
    /// which the base may overwrite. Called whenever <see cref="ShouldScore"/> holds, even if nothing is evicted then.
    /// </summary>
    protected abstract Span<float> Score(in KvStep step, int candidates);

    public override void OnAppended(in KvStep step)
    {
        if (!ShouldScore(step)) return;
        var table = step.Table;
        Scoring.Gather(Store, table);
        int stored = Scoring.Count, recent = Math.Min(RecentKept, stored), candidates = stored - recent, keep = Budget - recent;
        var scores = Score(step, candidates)[..candidates];
        if (candidates <= keep) return;
        var remove = Scoring.ClearFlags();
        if (OlderGoesFirstOnTies)
        {
            // The lowest go: the top of the negated scores, where ties go to the lower (older) index.
            for (int i = 0; i < candidates; i++) scores[i] = -scores[i];
            foreach (int i in Scoring.Top(scores, candidates - keep)) remove[i] = true;
        }
        else
        {
            remove[..candidates].Fill(true);
            foreach (int i in Scoring.Top(scores, keep)) remove[i] = false;
        }
        Scoring.RemoveFlagged(Store, table);
    }
}
