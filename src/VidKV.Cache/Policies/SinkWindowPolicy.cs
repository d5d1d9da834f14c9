namespace VidKV.Cache;

/// <summary>
/// StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", 2023): keep the first
/// <see cref="Sinks"/> tokens and the most recent <see cref="Window"/>, evict the rest at append. The floor every
/// retriever must beat, and the control for "sinks matter". Kept count is exactly min(tokens, sinks + window).
/// </summary>
internal sealed class SinkWindowPolicy(int sinks, int window) : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("sinkwindow",
        "StreamingLLM (Xiao et al., 2023): keep the first sinks and the most recent window tokens, evict the rest",
        [
            KvPolicyOption.Int("sinks", 4, "first tokens kept"),
            KvPolicyOption.Int("window", "--budget − sinks", a => a.Budget - a.Int("sinks"), "most recent tokens kept"),
        ],
        a => new SinkWindowPolicy(a.Int("sinks"), a.Int("window"))) { Aliases = ["streamingllm"], Example = "sinks=3,window=61" };

    public int Sinks { get; } = sinks >= 0 ? sinks : throw new ArgumentOutOfRangeException(nameof(sinks));
    public int Window { get; } = window >= 1 ? window : throw new ArgumentOutOfRangeException(nameof(window));
    public override string Name => $"sinkwindow:sinks={Sinks},window={Window}";
    public override bool ConcurrentSelect => true;

    public override void OnAppended(in KvStep step)
    {
        var table = step.Table;
        int excess = table.TokenCount - Sinks - Window, skip = Sinks, index = 0;
        while (excess > 0 && index < table.Count)
        {
            int page = table[index], n = Store.Count(page);
            if (skip >= n) { skip -= n; index++; continue; }
            int remove = Math.Min(excess, n - skip);
            excess -= remove;
            Store.Evict(step.Table, index, (remove == 64 ? ulong.MaxValue : (1UL << remove) - 1) << skip);
            if (skip == 0 && remove == n) continue; // the whole page went: the next one moved into this index
            skip = 0;
            index++;
        }
    }
}
