namespace VidKV.Cache;

/// <summary>
/// Which policy runs each (layer, KV head): one default, overridden per layer and per head (DuoAttention's retrieval
/// vs streaming heads, LongGen's per-layer kinds). Each distinct policy object is attached to the store once.
/// </summary>
public sealed class KvPolicyMap
{
    readonly KvPolicy[] policies;

    /// <summary>A map that runs <paramref name="defaultPolicy"/> on every (layer, KV head) until overridden.</summary>
    public KvPolicyMap(int layerCount, int kvHeadCount, KvPolicy defaultPolicy)
    {
        LayerCount = layerCount;
        KvHeadCount = kvHeadCount;
        policies = new KvPolicy[layerCount * kvHeadCount];
        Array.Fill(policies, defaultPolicy);
    }

    /// <summary>Layers of the model the map is for; the store it attaches to must match.</summary>
    public int LayerCount { get; }
    /// <summary>KV heads per layer of the model the map is for.</summary>
    public int KvHeadCount { get; }

    /// <summary>The policy of KV head <paramref name="head"/> of <paramref name="layer"/>; set it to override the default.</summary>
    public KvPolicy this[int layer, int head]
    {
        get => policies[PagedKvStore.HeadIndex(layer, head, KvHeadCount)];
        set => policies[PagedKvStore.HeadIndex(layer, head, KvHeadCount)] = value;
    }

    /// <summary>The distinct policies in use.</summary>
    public IEnumerable<KvPolicy> Distinct => policies.Distinct();

    /// <summary>A short description: the default, or every distinct policy with how many heads run it.</summary>
    public string Describe()
    {
        var groups = policies.GroupBy(p => p).ToList();
        return groups.Count == 1 ? groups[0].Key.Name : string.Join("; ", groups.Select(g => $"{g.Key.Name} ×{g.Count()}"));
    }

    /// <summary>The page metadata the policies read (the store must keep it).</summary>
    public KvMetadata Metadata
    {
        get
        {
            var needs = KvMetadata.None;
            foreach (var policy in Distinct) needs |= policy.Metadata;
            return needs;
        }
    }

    internal void Attach(KvSequence sequence)
    {
        var store = sequence.Store;
        if (store.LayerCount != LayerCount || store.KvHeadCount != KvHeadCount)
            throw new ArgumentException($"policy map is for {LayerCount} layers × {KvHeadCount} KV heads, the store has {store.LayerCount} × {store.KvHeadCount}");
        foreach (var policy in Distinct)
            if ((store.Metadata & policy.Metadata) != policy.Metadata)
                throw new KvConfigException($"policy '{policy.Name}' reads {policy.Metadata} page metadata, but the store keeps only {store.Metadata} (create it with PagedKvOptions.Metadata including the policies' KvPolicyMap.Metadata)");
        foreach (var policy in Distinct) policy.Attach(sequence);
    }
}
