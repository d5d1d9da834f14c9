namespace VidKV.Cache;

/// <summary>
/// Query-aware page selection. Quest (Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM
/// Inference", ICML 2024): each 16-token block keeps element-wise min and max keys, and a page's score
/// Σ_d max(q_d·min_d, q_d·max_d) bounds q·k inside it. LServe (Yang et al., "LServe: Efficient Long-sequence LLM
/// Serving with Unified Sparse Attention", MLSys 2025): physical pages of several 16-token logical pages score as
/// their best logical page; a fixed token budget (dense while the context fits); max(3, B/page)−1 pages plus the
/// newest; the selection reused for a few decode steps; the first layers may stay dense. For GQA the query heads'
/// softmaxed page scores are averaged. Pages holding the step's own tokens are always read.
/// </summary>
internal sealed class QuestPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("quest",
        "Quest (Tang et al., ICML 2024): min/max keys per 16 tokens bound q·k; read the pages with the top bounds",
        [
            KvPolicyOption.Budget("tokens read per KV head per step"),
            KvPolicyOption.Int("reuse", 1, "decode steps one selection serves"),
            KvPolicyOption.Int("dense", 0, "leading layers that read everything"),
        ],
        a => new QuestPolicy(a.Int("budget"), a.Int("reuse"), a.Int("dense"))) { Example = "budget=100,reuse=2,dense=1" };

    public static readonly KvPolicyDescriptor LServeDescriptor = new("lserve",
        "LServe (Yang et al., MLSys 2025): Quest on logical 16-token pages, the selection reused for 4 decode steps",
        [
            KvPolicyOption.Int("budget", "--budget or 4096", a => a.Budget ?? 4096, "tokens read per KV head per step"),
            KvPolicyOption.Int("reuse", 4, "decode steps one selection serves"),
            KvPolicyOption.Int("dense", 0, "leading layers that read everything"),
        ],
        a => new QuestPolicy(a.Int("budget"), a.Int("reuse"), a.Int("dense"), "lserve")) { Example = "budget=100,reuse=3,dense=1" };

    readonly string name;
    // Per (layer, head): the pages chosen last time (table indices), and the table version, first own page and step then.
    int[][] chosen = [];
    int[] chosenCount = [], chosenVersion = [], chosenOwn = [];
    long[] chosenStep = [];

    /// <param name="budget">tokens read per head per step (LServe's B)</param>
    /// <param name="reuse">decode steps one selection serves (LServe: 4; Quest: 1)</param>
    /// <param name="denseLayers">leading layers that read everything</param>
    public QuestPolicy(int budget, int reuse = 1, int denseLayers = 0, string name = "quest")
    {
        if (budget < 1) throw new ArgumentOutOfRangeException(nameof(budget), $"budget must be at least 1 token, not {budget}");
        if (reuse < 1) throw new ArgumentOutOfRangeException(nameof(reuse), $"reuse must be at least 1 step, not {reuse}");
        Budget = budget;
        Reuse = reuse;
        DenseLayers = Math.Max(0, denseLayers);
        this.name = name;
    }

    public int Budget { get; }
    public int Reuse { get; }
    public int DenseLayers { get; }
    public override string Name => $"{name}:budget={Budget},reuse={Reuse},dense={DenseLayers}";

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        var store = sequence.Store;
        int heads = store.HeadSlots;
        chosen = new int[heads][];
        for (int i = 0; i < heads; i++) chosen[i] = [];
        chosenCount = new int[heads];
        chosenVersion = new int[heads];
        chosenOwn = new int[heads];
        chosenStep = new long[heads];
        chosenStep.AsSpan().Fill(long.MinValue / 2);
    }

    public override bool ConcurrentSelect => true;
    public override KvMetadata Metadata => KvMetadata.MinMax;

    public override void OnTruncated(int length) => chosenStep.AsSpan().Fill(long.MinValue / 2);

    public override void Select(in KvStep step, PageSelection selection)
    {
        var table = step.Table;
        if (table.TokenCount <= Budget || step.Layer < DenseLayers) { selection.AddAll(table.Count); return; }
        int head = HeadIndex(step.Layer, step.Head);
        int own = FirstPageOfStep(step);
        // Pages besides the step's own: max(3, B/page) − 1, LServe's rule.
        int k = Math.Max(3, Budget / Store.PageSize) - 1;
        bool reusable = step.Count == 1 && step.StepIndex - chosenStep[head] < Reuse && chosenVersion[head] == table.Version
            && chosenOwn[head] <= own;
        if (!reusable)
        {
            var picked = PagePicker.ForCurrentThread.Choose(Store, table, 0, own, step.LastQueries, step.Group, step.Scale, PageScoring.Bound.Quest, k);
            if (chosen[head].Length < picked.Length) chosen[head] = new int[Math.Max(picked.Length, 2 * chosen[head].Length)];
            picked.CopyTo(chosen[head]);
            chosenCount[head] = picked.Length;
            chosenVersion[head] = table.Version;
            chosenOwn[head] = own;
            chosenStep[head] = step.StepIndex;
        }
        foreach (int index in chosen[head].AsSpan(0, chosenCount[head])) selection.Add(index);
        // The step's own pages, and any that appeared since the selection was made: always read.
        selection.AddRange(chosenOwn[head], table.Count);
    }

}
