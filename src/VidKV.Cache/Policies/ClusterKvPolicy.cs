using System.Numerics.Tensors;

namespace VidKV.Cache;

/// <summary>
/// ClusterKV (Liu et al., "ClusterKV: Manipulating LLM KV Cache in Semantic Space for Recallable Compression", 2024):
/// when the context first exceeds the budget, each KV head clusters its keys (post-RoPE, all but the first
/// <see cref="Sinks"/>) by k-means on cosine distance; a step scores clusters by q·centroid and reads whole clusters
/// in descending order until the budget is met, truncating the last one to hit it exactly. Tokens that arrive later
/// are read as a recent window until <see cref="Window"/> of them gather, then clustered into
/// <see cref="NewClusters"/> more. Paper defaults: 400 clusters, 20 iterations, 16 sinks, window 320, 8 new clusters.
/// Choices made here: clusters are assigned by cosine but scored with the mean of their raw keys (the score attention
/// uses); at most one cluster per 8 tokens, and the window at most a quarter of the budget, so small contexts and
/// budgets keep the paper's proportions; GQA heads average their softmaxed cluster scores.
/// </summary>
internal sealed class ClusterKvPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("clusterkv",
        "ClusterKV (Liu et al., 2024): cosine k-means clusters of keys, whole clusters read by q·centroid up to the budget",
        [
            KvPolicyOption.Budget("tokens read per KV head per step"),
            KvPolicyOption.Int("clusters", 400, "clusters of the first clustering"),
            KvPolicyOption.Int("iterations", 20, "k-means iterations"),
            KvPolicyOption.Int("sinks", 16, "first tokens always read, never clustered (at most budget/2)"),
            KvPolicyOption.Int("window", 320, "recent tokens gathered before they are clustered (at most a quarter of the budget)"),
            KvPolicyOption.Int("new", 8, "clusters made of each window"),
        ],
        a => new ClusterKvPolicy(a.Int("budget"), a.Int("clusters"), a.Int("iterations"), a.Int("sinks"), a.Int("window"), a.Int("new"))) { Example = "budget=1000,clusters=50,iterations=5,sinks=8,window=64,new=4" };

    sealed class HeadState
    {
        public int ClusteredUpTo = -1; // positions ≤ this are sinks or clustered
        public int Clusters;
        public float[] Centroids = []; // [Clusters, d] raw-key means
        public int[] Members = [];     // positions grouped by cluster
        public int[] Start = [0];      // cluster c owns Members[Start[c] .. Start[c+1])
    }

    HeadState[] heads = [];
    float[] scores = [], scratch = [], keys = [], rowKeys = [];
    int[] order = [], selected = [], positionBuffer = [];

    public ClusterKvPolicy(int budget, int clusters = 400, int iterations = 20, int sinks = 16, int window = 320, int newClusters = 8)
    {
        if (budget < 1) throw new ArgumentOutOfRangeException(nameof(budget), $"budget must be at least 1 token, not {budget}");
        if (clusters < 1 || iterations < 1 || newClusters < 1) throw new ArgumentOutOfRangeException(nameof(clusters), "clusters, iterations and new clusters must be at least 1");
        Budget = budget;
        MaxClusters = clusters;
        Iterations = iterations;
        Sinks = Math.Min(sinks, budget / 2);
        Window = Math.Max(1, Math.Min(window, (budget - Sinks) / 4));
        NewClusters = newClusters;
    }

    public int Budget { get; }
    public int MaxClusters { get; }
    public int Iterations { get; }
    public int Sinks { get; }
    public int Window { get; }
    public int NewClusters { get; }
    public override string Name => $"clusterkv:budget={Budget},clusters={MaxClusters},iterations={Iterations},sinks={Sinks},window={Window},new={NewClusters}";

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        var store = sequence.Store;
        heads = new HeadState[store.HeadSlots];
        for (int i = 0; i < heads.Length; i++) heads[i] = new HeadState();
    }

    /// <summary>Clusters hold positions; after a rewind they are rebuilt from what is stored.</summary>
    public override void OnTruncated(int length)
    {
        for (int i = 0; i < heads.Length; i++) heads[i] = new HeadState();
    }

    public override void Select(in KvStep step, PageSelection selection)
    {
        var table = step.Table;
        if (table.TokenCount <= Budget) { selection.AddAll(table.Count); return; }
        var state = heads[HeadIndex(step.Layer, step.Head)];
        int sinkEnd = SinkBoundary(table); // last sink position
        if (state.Clusters == 0)
        {
            state.ClusteredUpTo = sinkEnd;
            Cluster(state, table, sinkEnd, step.Position, MaxClusters);
        }
        else if (CountBetween(table, state.ClusteredUpTo, step.Position) >= Window)
            Cluster(state, table, state.ClusteredUpTo, step.Position, NewClusters);

        // Sinks and the unclustered recent tokens always; then clusters by score until the budget.
        int count = 0;
        EnsureSelected(table.TokenCount);
        foreach (int page in table.Pages)
            foreach (int position in Store.Positions(page))
                if (position <= sinkEnd || position > state.ClusteredUpTo) selected[count++] = position;
        int room = Budget - count;
        if (room > 0 && state.Clusters > 0)
        {
            ClusterScores(state, step);
            var ranking = order.AsSpan(0, state.Clusters);
            for (int c = 0; c < ranking.Length; c++) { ranking[c] = c; keys[c] = -scores[c]; }
            keys.AsSpan(0, state.Clusters).Sort(ranking);
            foreach (int c in ranking)
            {
                int take = Math.Min(room, state.Start[c + 1] - state.Start[c]);
                state.Members.AsSpan(state.Start[c], take).CopyTo(selected.AsSpan(count));
                count += take;
                room -= take;
                if (room == 0) break;
            }
        }
        var chosen = selected.AsSpan(0, count);
        chosen.Sort();
        selection.AddPositions(Store, table, chosen);
    }

    int SinkBoundary(PageTable table)
    {
        int seen = 0, last = -1;
        foreach (int page in table.Pages)
            foreach (int position in Store.Positions(page))
            {
                if (seen++ == Sinks) return last;
                last = position;
            }
        return last;
    }

    int CountBetween(PageTable table, int after, int before)
    {
        int n = 0;
        for (int i = table.Count - 1; i >= 0; i--)
        {
            var positions = Store.Positions(table[i]);
            if (positions[^1] <= after) break;
            foreach (int p in positions) if (p > after && p < before) n++;
        }
        return n;
    }

    /// <summary>k-means (cosine) over the keys with positions in (after, before); appends the clusters to the head's state.</summary>
    void Cluster(HeadState state, PageTable table, int after, int before, int wanted)
    {
        int d = Store.HeadDim, n = 0;
        EnsureRows(table.TokenCount * d);
        if (positionBuffer.Length < table.TokenCount) positionBuffer = new int[table.TokenCount];
        var page = new float[Store.PageSize * d];
        foreach (int p in table.Pages)
        {
            var positions = Store.Positions(p);
            if (positions[^1] <= after || positions[0] >= before) continue;
            Store.ReadKeys(p, page);
            for (int j = 0; j < positions.Length; j++)
                if (positions[j] > after && positions[j] < before)
                {
                    page.AsSpan(j * d, d).CopyTo(rowKeys.AsSpan(n * d));
                    positionBuffer[n++] = positions[j];
                }
        }
        if (n == 0) return;
        int k = Math.Max(1, Math.Min(wanted, n / 8));
        var assignment = new int[n];
        var centroids = KMeansCosine(rowKeys.AsSpan(0, n * d), n, d, k, Iterations, assignment);

        // Append the new clusters (rare: once at the first step, then every Window tokens).
        int old = state.Clusters, oldMembers = state.Start[old];
        var start = new int[old + k + 1];
        state.Start.AsSpan(0, old + 1).CopyTo(start);
        var members = new int[oldMembers + n];
        state.Members.AsSpan(0, oldMembers).CopyTo(members);
        var sizes = new int[k];
        foreach (int a in assignment) sizes[a]++;
        for (int c = 0; c < k; c++) start[old + c + 1] = start[old + c] + sizes[c];
        var fill = new int[k];
        for (int i = 0; i < n; i++) members[start[old + assignment[i]] + fill[assignment[i]]++] = positionBuffer[i];
        var all = new float[(old + k) * d];
        state.Centroids.AsSpan(0, old * d).CopyTo(all);
        centroids.CopyTo(all.AsSpan(old * d));
        state.Centroids = all;
        state.Members = members;
        state.Start = start;
        state.Clusters = old + k;
        state.ClusteredUpTo = Math.Max(state.ClusteredUpTo, before - 1);
    }

    /// <summary>
    /// Spherical k-means: centres start at evenly spaced keys; each iteration assigns every key to the centre of
    /// highest cosine and re-centres on the mean of the members' unit vectors. Returns the raw-key mean of each cluster.
    /// </summary>
    public static float[] KMeansCosine(ReadOnlySpan<float> keys, int n, int d, int k, int iterations, Span<int> assignment)
    {
        var unit = new float[n * d];
        for (int i = 0; i < n; i++)
        {
            var row = unit.AsSpan(i * d, d);
            keys.Slice(i * d, d).CopyTo(row);
            float norm = TensorPrimitives.Norm(row);
            if (norm > 0) TensorPrimitives.Divide(row, norm, row);
        }
        var centres = new float[k * d];
        for (int c = 0; c < k; c++) unit.AsSpan((int)((long)c * n / k) * d, d).CopyTo(centres.AsSpan(c * d));
        var sums = new float[k * d];
        var sizes = new int[k];
        for (int it = 0; it < iterations; it++)
        {
            bool changed = it == 0;
            for (int i = 0; i < n; i++)
            {
                var row = unit.AsSpan(i * d, d);
                int best = 0;
                float bestScore = float.NegativeInfinity;
                for (int c = 0; c < k; c++)
                {
                    float s = TensorPrimitives.Dot(row, centres.AsSpan(c * d, d));
                    if (s > bestScore) { bestScore = s; best = c; }
                }
                if (assignment[i] != best) changed = true;
                assignment[i] = best;
            }
            if (!changed) break;
            sums.AsSpan().Clear();
            sizes.AsSpan().Clear();
            for (int i = 0; i < n; i++)
            {
                var sum = sums.AsSpan(assignment[i] * d, d);
                TensorPrimitives.Add(sum, unit.AsSpan(i * d, d), sum);
                sizes[assignment[i]]++;
            }
            for (int c = 0; c < k; c++)
            {
                if (sizes[c] == 0) continue; // an empty cluster keeps its centre
                var centre = centres.AsSpan(c * d, d);
                sums.AsSpan(c * d, d).CopyTo(centre);
                float norm = TensorPrimitives.Norm(centre);
                if (norm > 0) TensorPrimitives.Divide(centre, norm, centre);
            }
        }
        var means = new float[k * d];
        sizes.AsSpan().Clear();
        for (int i = 0; i < n; i++)
        {
            var mean = means.AsSpan(assignment[i] * d, d);
            TensorPrimitives.Add(mean, keys.Slice(i * d, d), mean);
            sizes[assignment[i]]++;
        }
        for (int c = 0; c < k; c++) if (sizes[c] > 0) TensorPrimitives.Divide(means.AsSpan(c * d, d), sizes[c], means.AsSpan(c * d, d));
        return means;
    }

    void ClusterScores(HeadState state, in KvStep step)
    {
        int k = state.Clusters, d = Store.HeadDim;
        if (scores.Length < k) { scores = new float[2 * k]; scratch = new float[2 * k]; keys = new float[2 * k]; order = new int[2 * k]; }
        var total = scores.AsSpan(0, k);
        total.Clear();
        var row = scratch.AsSpan(0, k);
        var q = step.LastQueries;
        for (int h = 0; h < step.Group; h++)
        {
            for (int c = 0; c < k; c++) row[c] = step.Scale * TensorPrimitives.Dot(q.Slice(h * d, d), state.Centroids.AsSpan(c * d, d));
            TensorPrimitives.SoftMax(row, row);
            TensorPrimitives.Add(total, row, total);
        }
    }

    void EnsureSelected(int n)
    {
        if (selected.Length < n) selected = new int[Math.Max(n, selected.Length * 2)];
    }

    void EnsureRows(int n)
    {
        if (rowKeys.Length < n) rowKeys = new float[Math.Max(n, rowKeys.Length * 2)];
    }
}
