namespace VidKV.Cache;

public static partial class KvPolicies
{
    /// <summary>
    /// Every policy a spec can name, in the order help and the README list them. Adding a policy is its file (the
    /// class, with a descriptor) and one line here; parsing, help, docs and the policy test theories follow.
    /// </summary>
    public static readonly IReadOnlyList<KvPolicyDescriptor> All =
    [
        Descriptors.Full,
        Descriptors.SinkWindow,
        Descriptors.Quest,
        Descriptors.LServe,
        Descriptors.FreeKv,
        Descriptors.ClusterKv,
        Descriptors.Duo,
        Descriptors.SnapKv,
        Descriptors.H2O,
        Descriptors.KeyNorm,
    ];

    /// <summary>
    /// The built-in descriptors, one per policy. Each belongs in its policy's file (<c>public static readonly
    /// KvPolicyDescriptor Descriptor</c>, listed above as <c>SinkWindowPolicy.Descriptor</c>); they wait here while
    /// those files are being reworked.
    /// </summary>
    static class Descriptors
    {
        public static readonly KvPolicyDescriptor Full = new("full", "read every token (the reference every other policy is measured against)", [],
            _ => new FullPolicy());

        public static readonly KvPolicyDescriptor SinkWindow = new("sinkwindow",
            "StreamingLLM (Xiao et al., 2023): keep the first sinks and the most recent window tokens, evict the rest",
            [
                KvPolicyOption.Int("sinks", 4, "first tokens kept"),
                KvPolicyOption.Int("window", "--budget − sinks", a => a.Budget - a.Int("sinks"), "most recent tokens kept"),
            ],
            a => new SinkWindowPolicy(a.Int("sinks"), a.Int("window"))) { Aliases = ["streamingllm"] };

        public static readonly KvPolicyDescriptor Quest = new("quest",
            "Quest (Tang et al., ICML 2024): min/max keys per 16 tokens bound q·k; read the pages with the top bounds",
            [
                KvPolicyOption.Budget("tokens read per KV head per step"),
                KvPolicyOption.Int("reuse", 1, "decode steps one selection serves"),
                KvPolicyOption.Int("dense", 0, "leading layers that read everything"),
            ],
            a => new QuestPolicy(a.Int("budget"), a.Int("reuse"), a.Int("dense")));

        public static readonly KvPolicyDescriptor LServe = new("lserve",
            "LServe (Yang et al., MLSys 2025): Quest on logical 16-token pages, the selection reused for 4 decode steps",
            [
                KvPolicyOption.Int("budget", "--budget or 4096", a => a.Budget ?? 4096, "tokens read per KV head per step"),
                KvPolicyOption.Int("reuse", 4, "decode steps one selection serves"),
                KvPolicyOption.Int("dense", 0, "leading layers that read everything"),
            ],
            a => new QuestPolicy(a.Int("budget"), a.Int("reuse"), a.Int("dense"), "lserve"));

        public static readonly KvPolicyDescriptor FreeKv = new("freekv",
            "FreeKV (Liu et al., 2025): sink + recent + pages chosen by centre ± radius with the previous query, corrected below tau, recalled in the background",
            [
                KvPolicyOption.Budget("tokens read per KV head per step"),
                KvPolicyOption.Int("sinks", "budget/4", a => a.Int("budget") / 4, "first tokens always read"),
                KvPolicyOption.Int("recent", "budget/4", a => a.Int("budget") / 4, "most recent tokens always read"),
                KvPolicyOption.Float("tau", 0.8f, "query cosine similarity below which a head selects again with the current query"),
                KvPolicyOption.Switch("prefetch", "announce the next step's pages for background recall (auto: when a core is free)"),
            ],
            a => new FreeKvPolicy(a.Int("budget"), a.Int("sinks"), a.Int("recent"), a.Float("tau"), a.Switch("prefetch")));

        public static readonly KvPolicyDescriptor ClusterKv = new("clusterkv",
            "ClusterKV (Liu et al., 2024): cosine k-means clusters of keys, whole clusters read by q·centroid up to the budget",
            [
                KvPolicyOption.Budget("tokens read per KV head per step"),
                KvPolicyOption.Int("clusters", 400, "clusters of the first clustering"),
                KvPolicyOption.Int("iterations", 20, "k-means iterations"),
                KvPolicyOption.Int("sinks", 16, "first tokens always read, never clustered (at most budget/2)"),
                KvPolicyOption.Int("window", 320, "recent tokens gathered before they are clustered (at most a quarter of the budget)"),
                KvPolicyOption.Int("new", 8, "clusters made of each window"),
            ],
            a => new ClusterKvPolicy(a.Int("budget"), a.Int("clusters"), a.Int("iterations"), a.Int("sinks"), a.Int("window"), a.Int("new")));

        public static readonly KvPolicyDescriptor Duo = new("duo",
            "DuoAttention (Xiao et al., 2024): the top heads of a pattern file (vidkv kv calibrate) read everything, the rest keep sinks + recent",
            [
                KvPolicyOption.RequiredString("pattern", "(a head pattern file, e.g. from `vidkv kv calibrate`)", "head pattern file: one line per layer, one score per KV head"),
                KvPolicyOption.Float("fraction", 0.5f, "share of heads, highest scores first, that read everything"),
                KvPolicyOption.Int("sinks", 64, "first tokens a streaming head keeps"),
                KvPolicyOption.Int("recent", 256, "most recent tokens a streaming head keeps"),
            ],
            a => new DuoAttentionPolicy(PatternFile.Read(a.String("pattern")), a.Float("fraction"), a.Int("sinks"), a.Int("recent"), a.String("pattern")))
        {
            Aliases = ["duoattention"],
        };

        public static readonly KvPolicyDescriptor SnapKv = new("snapkv",
            "SnapKV (Li et al., NeurIPS 2024): the last window of queries votes (max-pooled) for the tokens kept beside it, whenever a head passes budget + slack",
            [
                KvPolicyOption.Budget("tokens kept per KV head"),
                KvPolicyOption.Int("window", 32, "observation window: the last queries that vote, and whose tokens stay"),
                KvPolicyOption.Int("kernel", 7, "max-pooling width over neighbouring tokens' votes (odd)"),
                KvPolicyOption.PolicyInt("slack", "window", "tokens a head may pass the budget by before it is cut back"),
            ],
            a => new SnapKvPolicy(a.Int("budget"), a.Int("window"), a.Int("kernel"), a.OptionalInt("slack")));

        public static readonly KvPolicyDescriptor H2O = new("h2o",
            "H2O (Zhang et al., NeurIPS 2023): evict the tokens with the least accumulated attention, keeping the recent ones",
            [
                KvPolicyOption.Budget("tokens kept per KV head"),
                KvPolicyOption.PolicyInt("recent", "budget/2", "most recent tokens that always stay"),
            ],
            a => new H2OPolicy(a.Int("budget"), a.OptionalInt("recent")));

        public static readonly KvPolicyDescriptor KeyNorm = new("keynorm",
            "QuickPrefill (Tang et al., 2025; Devoto et al., EMNLP 2024): of each appended group keep the tokens with the smallest key norm, shared by the layer's heads",
            [
                KvPolicyOption.Float("ratio", 0.5f, "share of each group kept"),
                KvPolicyOption.Int("group", 2, "smallest appended group reduced (single decode tokens always stay)"),
            ],
            a => new KeyNormPolicy(a.Float("ratio"), a.Int("group")));
    }
}
