namespace VidKV.Cache;

/// <summary>
/// The key-norm reducer of Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression"
/// (EMNLP 2024), the rule QuickPrefill (<see cref="QuickPrefillPolicy"/>) applies per group of frames, here applied per
/// appended chunk: after each group of at least <see cref="MinGroup"/>
/// tokens is appended (a group of frames, a prompt chunk), keep the ⌈<see cref="Ratio"/> · n⌉ of its n tokens whose
/// keys have the smallest L2 norm averaged over the layer's KV heads — one selection shared by every head of the layer —
/// and drop the rest. Low-norm keys are the ones attention concentrates on (value norm scores much worse). Single
/// decode tokens are always kept. The selection is made once per (layer, step), at the first head's call, from the
/// keys as appended; heads served by another policy instance make their own, from the heads still holding the group.
/// It is not a <see cref="TokenScoringPolicy"/>: that base scores one head's whole cache against a token budget, where
/// this one scores only the group just appended, across all of the layer's heads at once, keeps a share of the group
/// rather than a budget, and reads just the group's keys — fitting it would mean a second, shared-selection path
/// through the base and gathering every head's whole cache on every step.
/// </summary>
internal sealed class KeyNormPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("keynorm",
        "Key norm (Devoto et al., EMNLP 2024; QuickPrefill's rule per appended chunk): of each appended group keep the tokens with the smallest key norm, shared by the layer's heads",
        [
            KvPolicyOption.Float("ratio", 0.5f, "share of each group kept"),
            KvPolicyOption.Int("group", 2, "smallest appended group reduced (single decode tokens always stay)"),
        ],
        a => new KeyNormPolicy(a.Float("ratio"), a.Int("group"))) { Example = "ratio=0.3125001,group=4" };

    int decidedLayer = -1;
    long decidedStep = -1;
    float[] norms = [], key = [], scratch = [];
    int[] counts = [];
    int[] order = [];
    bool[] drop = [];

    public KeyNormPolicy(float ratio = 0.5f, int minGroup = 2)
    {
        Ratio = ratio is > 0 and <= 1 ? ratio : throw new ArgumentOutOfRangeException(nameof(ratio), $"ratio must be in (0, 1], not {ratio}");
        MinGroup = minGroup >= 2 ? minGroup : throw new ArgumentOutOfRangeException(nameof(minGroup), $"group must be at least 2, not {minGroup}");
    }

    public float Ratio { get; }
    public int MinGroup { get; }
    public override string Name => FormattableString.Invariant($"keynorm:ratio={Ratio},group={MinGroup}");
    public override bool ConcurrentSelect => true;

    /// <summary>Tokens of an appended group of <paramref name="n"/> that stay.</summary>
    public int Kept(int n) => n < MinGroup ? n : (int)Math.Ceiling(Ratio * n - 1e-6);

    public override void OnAppended(in KvStep step)
    {
        int n = step.Count;
        if (n < MinGroup) return;
        if (decidedLayer != step.Layer || decidedStep != step.StepIndex) Decide(step);
        // Drop this head's flagged tokens of the group (the tail of its table), walking back so indices stay valid.
        var table = step.Table;
        for (int index = table.Count - 1; index >= 0; index--)
        {
            int page = table[index];
            if (Store.LastPosition(page) < step.Position) break;
            var positions = Store.Positions(page);
            ulong mask = 0;
            for (int j = 0; j < positions.Length; j++)
            {
                int t = positions[j] - step.Position;
                if (t >= 0 && t < n && drop[t]) mask |= 1UL << j;
            }
            Store.Evict(step.Table, index, mask);
        }
    }

    void Decide(in KvStep step)
    {
        int n = step.Count, d = Store.HeadDim;
        if (norms.Length < n) { norms = new float[n]; counts = new int[n]; order = new int[n]; scratch = new float[n]; drop = new bool[n]; }
        if (key.Length < d) key = new float[d];
        norms.AsSpan(0, n).Clear();
        counts.AsSpan(0, n).Clear();
        for (int h = 0; h < Store.KvHeadCount; h++)
        {
            var table = Sequence.Table(step.Layer, h);
            for (int index = table.Count - 1; index >= 0; index--)
            {
                int page = table[index];
                if (Store.LastPosition(page) < step.Position) break;
                var positions = Store.Positions(page);
                for (int j = 0; j < positions.Length; j++)
                {
                    int t = positions[j] - step.Position;
                    if (t < 0 || t >= n) continue;
                    Store.ReadKey(page, j, key);
                    norms[t] += System.Numerics.Tensors.TensorPrimitives.Norm(key.AsSpan(0, d));
                    counts[t]++;
                }
            }
        }
        // Largest mean norms go; a token no head holds any more counts as largest (it is gone already).
        for (int t = 0; t < n; t++) norms[t] = counts[t] > 0 ? norms[t] / counts[t] : float.PositiveInfinity;
        int removed = PageScoring.TopK(norms.AsSpan(0, n), n - Kept(n), order, scratch);
        drop.AsSpan(0, n).Clear();
        for (int i = 0; i < removed; i++) drop[order[i]] = true;
        decidedLayer = step.Layer;
        decidedStep = step.StepIndex;
    }
}
