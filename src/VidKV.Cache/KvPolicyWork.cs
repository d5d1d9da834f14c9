namespace VidKV.Cache;

/// <summary>
/// Work a policy does apart from choosing rows each step, in stopwatch ticks summed over heads (they run one after
/// another): one-time preparation (ClusterKV's clustering of all the keys it holds, and its re-clusterings) and
/// upkeep per append (assigning keys that arrive between clusterings, clustering a window of generated ones). Reported
/// apart from decode's phases (<see cref="KvPhaseTimes"/>), so each cost shows where it is paid: on ingest or on
/// decode. <see cref="LastPrepareKeys"/> × <see cref="LastPrepareHeads"/> in <see cref="LastPrepareTicks"/> is the
/// latest preparation of all heads at one position (e.g. 16,368 keys × 48 heads).
/// </summary>
internal readonly record struct KvPolicyWork(long PrepareTicks, long AppendTicks, int LastPrepareKeys, int LastPrepareHeads, long LastPrepareTicks)
{
    public double PrepareMilliseconds => KvPhaseTimes.Milliseconds(PrepareTicks);
    public double AppendMilliseconds => KvPhaseTimes.Milliseconds(AppendTicks);
    public double LastPrepareMilliseconds => KvPhaseTimes.Milliseconds(LastPrepareTicks);

    /// <summary>The policies of a map that report their work (inside compositions too), each once, by name.</summary>
    public static IEnumerable<(string Policy, KvPolicyWork Work)> Of(KvPolicyMap map)
    {
        var seen = new HashSet<KvPolicy>();
        foreach (var policy in map.Distinct)
            foreach (var part in Parts(policy))
                if (part is IKvPolicyWorkSource source && seen.Add(part)) yield return (part.Name, source.Work);
    }

    static IEnumerable<KvPolicy> Parts(KvPolicy policy)
    {
        if (policy is ComposedPolicy composed)
        {
            foreach (var part in Parts(composed.Reducer)) yield return part;
            foreach (var part in Parts(composed.Retriever)) yield return part;
        }
        else yield return policy;
    }
}

/// <summary>A policy that does work outside its per-step select and reports it (<see cref="KvPolicyWork"/>).</summary>
internal interface IKvPolicyWorkSource
{
    KvPolicyWork Work { get; }
}
