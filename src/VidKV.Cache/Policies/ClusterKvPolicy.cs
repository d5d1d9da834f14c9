using System.Diagnostics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>
/// ClusterKV (Liu et al., "ClusterKV: Manipulating LLM KV Cache in Semantic Space for Recallable Compression", 2024):
/// once the context reaches the budget, each KV head clusters its keys (post-RoPE, all but the first
/// <see cref="Sinks"/>) by k-means on cosine distance; a step scores clusters by q·centroid and reads whole clusters
/// in descending order until the budget is met, truncating the last one to hit it exactly. Tokens generated later are
/// read as a recent window until <see cref="Window"/> of them gather, then clustered into <see cref="NewClusters"/>
/// more. Paper defaults: 400 clusters, 20 iterations, 16 sinks, window 320, 8 new clusters.
/// <para>
/// Where the work is paid: the clustering runs after the append that brings the context to the budget (so the next
/// step already reads under it; a batch that crosses the budget clusters what came before it in its select), and
/// the window's after the append that fills it: on ingest, never as a stall on a later decode step. Keys that arrive
/// in batches (prefill, ingested frames) are the prompt: each batch's keys join their nearest clusters
/// (<see cref="SphericalKMeans.Nearest"/>), and once the keys have doubled since the last clustering all are clustered
/// afresh, so ingest pays at most about twice the cost of one clustering of everything (the paper clusters the whole
/// prompt once after prefill; a stream has no end of prefill). The k-means (<see cref="SphericalKMeans"/>) runs on
/// the worker pool, the KV heads of a layer in one job per pass, and its time is reported apart from decode (<see cref="Work"/>).
/// </para>
/// <para>
/// Choices made here: clusters are assigned by cosine but scored with the mean of their raw keys (the score attention
/// uses); at most one cluster per 8 tokens, and the window at most a quarter of the budget, so small contexts and
/// budgets keep the paper's proportions; GQA heads average their softmaxed cluster scores. A rewind drops the members
/// past the new end and recomputes the means from what is stored.
/// </para>
/// </summary>
internal sealed unsafe class ClusterKvPolicy : KvPolicy, IKvPolicyWorkSource
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

    /// <summary>One head's clusters: the clustered positions (ascending) with their clusters, and per cluster its unit centre, raw-key sum and size.</summary>
    sealed class HeadState
    {
        public int ClusteredUpTo = -1; // positions ≤ this are sinks or clustered
        public int Clusters, Keys;
        public int FullKeys;           // keys of the last clustering of everything (batches re-cluster once Keys doubles it)
        public int Edits;              // the table's edit count when members were last checked against it
        public int Capacity;           // clusters the arrays below have room for
        public int[] Positions = [], Labels = [];
        public float[] Centres = [], Sums = []; // [Capacity, d]: unit centres (assign later keys), raw-key sums
        public int[] Sizes = [];
        public float[] MeansT = [];    // [d, Capacity]: raw-key means, transposed for scoring
        public int[] Members = [], Start = [0]; // positions grouped by cluster (ascending in each): cluster c owns Members[Start[c] .. Start[c+1])
    }

    /// <summary>Buffers of one KV head of a layer: its select, its gathered keys and its k-means.</summary>
    sealed class Scratch
    {
        public readonly SphericalKMeans KMeans = new();
        public float[] Keys = [], Page = [], Query = [], Scores = [], Total = [];
        public int[] Positions = [], Heap = [];
        public ulong[] Marked = [];
    }

    HeadState[] heads = [];
    Scratch[] scratches = []; // per KV head of a layer (its heads select side by side and cluster together)
    readonly List<Pending> pending = [];
    readonly List<SphericalKMeans.Problem> problems = [];
    readonly object workGate = new();
    long prepareTicks, appendTicks, lastPrepareTicks, gatherTicks;
    int lastPrepareEnd = -1, lastPrepareKeys, lastPrepareHeads;

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

    /// <summary>Heads select side by side, each with its own state and scratch; not when cold pages are read through the store's one staging buffer.</summary>
    public override bool ConcurrentSelect => !(Store.HasColdTier && !Store.ReadsColdInPlace);

    /// <summary>Time spent clustering (prepare: everything at once; append: batches' keys joining clusters and windows of generated keys).</summary>
    public KvPolicyWork Work
    {
        get
        {
            lock (workGate) return new KvPolicyWork(prepareTicks, appendTicks, lastPrepareKeys, lastPrepareHeads, lastPrepareTicks);
        }
    }

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        var store = sequence.Store;
        heads = new HeadState[store.HeadSlots];
        for (int i = 0; i < heads.Length; i++) heads[i] = new HeadState();
        scratches = new Scratch[store.KvHeadCount];
        for (int i = 0; i < scratches.Length; i++) scratches[i] = new Scratch();
    }

    public override void Select(in KvStep step, PageSelection selection)
    {
        var table = step.Table;
        if (table.TokenCount <= Budget) { selection.AddAll(table.Count); return; }
        var state = heads[HeadIndex(step.Layer, step.Head)];
        var scratch = scratches[step.Head];
        int sinkEnd = SinkBoundary(table);
        if (state.Clusters == 0)
        {
            // The budget was crossed inside this batch (appends cluster ahead otherwise): cluster the keys before it, on this thread.
            long start = Stopwatch.GetTimestamp();
            state.ClusteredUpTo = Math.Max(state.ClusteredUpTo, sinkEnd);
            if (Gather(table, sinkEnd, step.Position, scratch) is int keys and > 0)
            {
                ClusterAll(state, keys, step.Position, scratch);
                NotePrepare(step.Position, keys, 1, Stopwatch.GetTimestamp() - start);
            }
        }

        // Sinks and the unclustered recent tokens always; then clusters by score until the budget. Positions are
        // marked in a bitmap, which becomes each page's row mask: no sort, and a page read whole takes attention's
        // whole-page path.
        int last = Store.LastPosition(table[table.Count - 1]), words = (last >> 6) + 2;
        if (scratch.Marked.Length < words) scratch.Marked = new ulong[Math.Max(words, 2 * scratch.Marked.Length)];
        var marked = scratch.Marked.AsSpan(0, words);
        marked.Clear();
        int count = 0;
        foreach (int page in table.Pages)
        {
            if (Store.FirstPosition(page) > sinkEnd) break;
            foreach (int position in Store.Positions(page))
                if (position <= sinkEnd) count += Mark(marked, position);
        }
        for (int i = table.Count - 1; i >= 0 && Store.LastPosition(table[i]) > state.ClusteredUpTo; i--)
            foreach (int position in Store.Positions(table[i]))
                if (position > state.ClusteredUpTo) count += Mark(marked, position);
        int room = Budget - count;
        if (room > 0 && state.Clusters > 0)
        {
            // Clusters by descending score from a max-heap: only as many are ordered as the budget takes.
            int k = ClusterScores(state, step, scratch).Length;
            if (scratch.Heap.Length < k) scratch.Heap = new int[Math.Max(k, 2 * scratch.Heap.Length)];
            fixed (float* score = scratch.Total)
            fixed (int* heap = scratch.Heap, members = state.Members, start = state.Start)
            fixed (ulong* bits = marked)
            {
                for (int c = 0; c < k; c++) heap[c] = c;
                for (int i = k / 2 - 1; i >= 0; i--) SiftDown(score, heap, k, i);
                for (int left = k; room > 0 && left > 0;)
                {
                    int c = heap[0];
                    heap[0] = heap[--left];
                    SiftDown(score, heap, left, 0);
                    // Members lie below the last position; one that is a sink now (a reducer evicted an earlier one) counts once.
                    for (int j = start[c]; j < start[c + 1] && room > 0; j++)
                    {
                        ulong* word = bits + (members[j] >> 6);
                        ulong bit = 1UL << members[j];
                        if ((*word & bit) == 0) { *word |= bit; room--; }
                    }
                }
            }
        }
        AddMasks(table, marked, selection);
    }

    /// <summary>
    /// The marked positions as row masks of the pages holding them, in table order. A table that holds positions 0
    /// to TokenCount − 1 in full pages (but the last; no eviction, the usual case) maps position p to page p / PageSize,
    /// a page inside one word of the bitmap (page sizes divide 64), and reads nothing of the store. Otherwise only the
    /// pages under marked words are visited (galloping from the last page taken, then a binary search), and each
    /// page's whole mask is taken at once. Either way the cost follows the marked words, not the table's length.
    /// </summary>
    void AddMasks(PageTable table, ReadOnlySpan<ulong> marked, PageSelection selection)
    {
        var store = Store;
        var pages = table.Pages;
        int size = store.PageSize, tokens = table.TokenCount;
        if (store.FirstPosition(pages[0]) == 0 && store.LastPosition(pages[^1]) == tokens - 1 && pages.Length == (tokens + size - 1) / size)
        {
            for (int w = 0; w < marked.Length && w << 6 < tokens; w++)
            {
                if (marked[w] == 0) continue;
                for (int i = (w << 6) / size; i < pages.Length && i * size < (w + 1) << 6; i++)
                {
                    int rows = Math.Min(size, tokens - i * size);
                    ulong all = rows == 64 ? ulong.MaxValue : (1UL << rows) - 1, mask = marked[w] >> (i * size & 63) & all;
                    if (mask != 0) selection.Add(i, mask == all ? KvPageView.AllRows : mask);
                }
            }
            return;
        }
        int next = 0;
        for (int w = 0; w < marked.Length && next < pages.Length; w++)
        {
            if (marked[w] == 0) continue;
            int from = w << 6, lo = next, hi = pages.Length;
            for (int stride = 1; lo < hi && store.LastPosition(pages[lo]) < from; stride *= 2)
            {
                if (lo + stride >= hi || store.LastPosition(pages[lo + stride]) >= from)
                {
                    hi = Math.Min(hi, lo + stride);
                    while (lo < hi)
                    {
                        int mid = (lo + hi) >> 1;
                        if (store.LastPosition(pages[mid]) < from) lo = mid + 1; else hi = mid;
                    }
                    break;
                }
                lo += stride;
            }
            for (next = lo; next < pages.Length; next++)
            {
                int* positions = store.PositionPointer(pages[next]);
                int rows = store.Count(pages[next]), first = positions[0];
                if (first >= from + 64) break;
                ulong mask = 0;
                if (positions[rows - 1] - first == rows - 1) mask = Slice(marked, first, rows);
                else
                    for (int j = 0; j < rows; j++) mask |= (marked[positions[j] >> 6] >> (positions[j] & 63) & 1) << j;
                if (mask != 0) selection.Add(next, mask == (rows == 64 ? ulong.MaxValue : (1UL << rows) - 1) ? KvPageView.AllRows : mask);
            }
        }
    }

    /// <summary>Bits [<paramref name="first"/>, first + <paramref name="count"/>) of the bitmap (count ≤ 64; the bitmap has a word past the last bit).</summary>
    static ulong Slice(ReadOnlySpan<ulong> bits, int first, int count)
    {
        int word = first >> 6, offset = first & 63;
        ulong value = bits[word] >> offset;
        if (offset != 0) value |= bits[word + 1] << (64 - offset);
        return count == 64 ? value : value & ((1UL << count) - 1);
    }

    /// <summary>Restores the max-heap of cluster indices (by score) below entry <paramref name="i"/>.</summary>
    static void SiftDown(float* score, int* heap, int count, int i)
    {
        int item = heap[i];
        float value = score[item];
        while (true)
        {
            int child = 2 * i + 1;
            if (child >= count) break;
            if (child + 1 < count && score[heap[child + 1]] > score[heap[child]]) child++;
            if (score[heap[child]] <= value) break;
            heap[i] = heap[child];
            i = child;
        }
        heap[i] = item;
    }

    /// <summary>Marks a position; 1 if it was not marked yet.</summary>
    static int Mark(Span<ulong> marked, int position)
    {
        ulong bit = 1UL << (position & 63);
        ref ulong word = ref marked[position >> 6];
        int fresh = (word & bit) == 0 ? 1 : 0;
        word |= bit;
        return fresh;
    }

    /// <summary>
    /// After an append: once the context reaches the budget, cluster (the next step reads under the budget); then a
    /// batch's keys join their nearest clusters (all are re-clustered once they have doubled), and generated keys
    /// gather until a window of them is clustered. Each head's keys are gathered here; the work waits for the layer's
    /// last KV head, and then the heads' k-means run together on the worker pool (<see cref="Flush"/>).
    /// </summary>
    public override void OnAppended(in KvStep step)
    {
        if (pending.Count > 0 && (pending[0].Layer != step.Layer || pending[0].StepIndex != step.StepIndex)) Flush(); // a layer this policy left before its last head
        var table = step.Table;
        var state = heads[HeadIndex(step.Layer, step.Head)];
        if (table.Edits != state.Edits) DropEvicted(state, table, scratches[step.Head]);
        if (table.TokenCount >= Budget && table.Count > 0) Plan(step, table);
        if (step.Head == Store.KvHeadCount - 1) Flush();
    }

    /// <summary>
    /// Members a reducer evicted leave their clusters (ClusterKV composed after an evicting policy), so a step's
    /// budget goes to rows that exist; the clusters' means stay those of the keys they were made of.
    /// </summary>
    void DropEvicted(HeadState state, PageTable table, Scratch scratch)
    {
        state.Edits = table.Edits;
        if (state.Keys == 0 || table.Count == 0) return;
        int words = (Math.Max(Store.LastPosition(table[table.Count - 1]), state.Positions[state.Keys - 1]) >> 6) + 1;
        if (scratch.Marked.Length < words) scratch.Marked = new ulong[Math.Max(words, 2 * scratch.Marked.Length)];
        var stored = scratch.Marked.AsSpan(0, words);
        stored.Clear();
        foreach (int page in table.Pages)
            foreach (int position in Store.Positions(page)) Mark(stored, position);
        int kept = 0;
        for (int i = 0; i < state.Keys; i++)
        {
            int position = state.Positions[i];
            if ((stored[position >> 6] >> (position & 63) & 1) == 0) continue;
            state.Positions[kept] = position;
            state.Labels[kept++] = state.Labels[i];
        }
        if (kept == state.Keys) return;
        state.Keys = kept;
        Rebuild(state);
    }

    enum HeadWork { Full, Window, Assign }

    /// <summary>A head's work after an append: its keys in (After, End) are gathered in its scratch.</summary>
    readonly record struct Pending(int Layer, int Head, long StepIndex, HeadWork Kind, int End, int Keys);

    void Plan(in KvStep step, PageTable table)
    {
        var state = heads[HeadIndex(step.Layer, step.Head)];
        int sinkEnd = SinkBoundary(table), end = Store.LastPosition(table[table.Count - 1]) + 1;
        HeadWork kind;
        if (state.Clusters == 0)
        {
            state.ClusteredUpTo = Math.Max(state.ClusteredUpTo, sinkEnd);
            kind = HeadWork.Full;
        }
        else
        {
            int tail = CountAfter(table, state.ClusteredUpTo);
            if (tail == 0) return;
            if (step.Count > 1) kind = state.Keys + tail >= 2 * state.FullKeys ? HeadWork.Full : HeadWork.Assign;
            else if (tail >= Window) kind = HeadWork.Window;
            else return;
        }
        long start = Stopwatch.GetTimestamp();
        int keys = Gather(table, kind == HeadWork.Full ? sinkEnd : state.ClusteredUpTo, end, scratches[step.Head]);
        gatherTicks += Stopwatch.GetTimestamp() - start;
        if (keys > 0) pending.Add(new Pending(step.Layer, step.Head, step.StepIndex, kind, end, keys));
    }

    /// <summary>
    /// Runs the pending heads' work: their clusterings in lockstep (<see cref="SphericalKMeans.RunTogether"/>: each
    /// pass one worker-pool job over all their keys, so the threads stay evenly loaded however each head converges),
    /// and batches joining clusters one after another. The wall time counts as preparation when any head clustered
    /// everything, else as upkeep.
    /// </summary>
    void Flush()
    {
        if (pending.Count == 0) return;
        long start = Stopwatch.GetTimestamp();
        int d = Store.HeadDim;
        problems.Clear();
        foreach (var item in pending)
        {
            var state = heads[HeadIndex(item.Layer, item.Head)];
            var scratch = scratches[item.Head];
            int n = item.Keys;
            if (item.Kind == HeadWork.Assign) { AssignTail(state, n, item.End, scratch); continue; }
            if (item.Kind == HeadWork.Full)
            {
                state.Clusters = state.Keys = 0; // all clustered afresh
                int k = FullClusters(n);
                Reserve(state, k, n);
                problems.Add(new SphericalKMeans.Problem(scratch.KMeans, scratch.Keys.AsMemory(0, n * d), n, k, state.Labels.AsMemory(0, n),
                    state.Centres.AsMemory(0, k * d), state.Sums.AsMemory(0, k * d), state.Sizes.AsMemory(0, k)));
            }
            else
            {
                int k = WindowClusters(n), old = state.Clusters;
                Reserve(state, old + k, state.Keys + n);
                problems.Add(new SphericalKMeans.Problem(scratch.KMeans, scratch.Keys.AsMemory(0, n * d), n, k, state.Labels.AsMemory(state.Keys, n),
                    state.Centres.AsMemory(old * d, k * d), state.Sums.AsMemory(old * d, k * d), state.Sizes.AsMemory(old, k)));
            }
        }
        SphericalKMeans.RunTogether(CollectionsMarshal.AsSpan(problems), d, Iterations, WorkerPool.Shared);
        int full = 0, keys = 0;
        foreach (var item in pending)
        {
            var state = heads[HeadIndex(item.Layer, item.Head)];
            if (item.Kind == HeadWork.Full)
            {
                AddClusters(state, FullClusters(item.Keys), item.Keys, item.End, scratches[item.Head]);
                state.FullKeys = item.Keys;
                full++;
                keys = Math.Max(keys, item.Keys);
            }
            else if (item.Kind == HeadWork.Window) AddClusters(state, WindowClusters(item.Keys), item.Keys, item.End, scratches[item.Head]);
        }
        long ticks = Stopwatch.GetTimestamp() - start + gatherTicks; // reading the keys counts with the work on them
        gatherTicks = 0;
        if (full > 0) NotePrepare(pending[0].End, keys, full, ticks);
        else lock (workGate) appendTicks += ticks;
        pending.Clear();
    }

    /// <summary>Clusters of a clustering of everything: at most one per 8 keys.</summary>
    int FullClusters(int keys) => Math.Max(1, Math.Min(MaxClusters, keys / 8));

    /// <summary>Clusters made of a window of generated keys (the paper's rule; at most one per 8 keys).</summary>
    int WindowClusters(int keys) => Math.Max(1, Math.Min(NewClusters, keys / 8));

    /// <summary>
    /// After a clustering of the <paramref name="n"/> keys gathered in the scratch into <paramref name="k"/> clusters
    /// (labels, centres, sums and sizes written after the head's existing ones): the keys become members of clusters
    /// numbered after the existing ones, and everything up to <paramref name="end"/> is clustered.
    /// </summary>
    void AddClusters(HeadState state, int k, int n, int end, Scratch scratch)
    {
        int old = state.Clusters;
        var labels = state.Labels.AsSpan(state.Keys, n);
        if (old > 0) for (int i = 0; i < n; i++) labels[i] += old;
        scratch.Positions.AsSpan(0, n).CopyTo(state.Positions.AsSpan(state.Keys));
        state.Clusters += k;
        state.Keys += n;
        state.ClusteredUpTo = end - 1;
        Rebuild(state);
    }

    /// <summary>Members past the new end leave their clusters; the means are recomputed from the keys still stored.</summary>
    public override void OnTruncated(int length)
    {
        Flush();
        for (int i = 0; i < heads.Length; i++)
        {
            var state = heads[i];
            if (state.ClusteredUpTo < length) continue;
            int keep = state.Positions.AsSpan(0, state.Keys).BinarySearch(length);
            keep = keep < 0 ? ~keep : keep;
            if (keep == 0) { heads[i] = new HeadState(); continue; }
            state.Keys = keep;
            state.ClusteredUpTo = length - 1;
            RecomputeSums(state, Sequence.Table(i / Store.KvHeadCount, i % Store.KvHeadCount));
            while (state.Clusters > 1 && state.Sizes[state.Clusters - 1] == 0) state.Clusters--;
            Rebuild(state);
        }
    }

    /// <summary>Counts a clustering of everything: <paramref name="headCount"/> heads of up to <paramref name="keys"/> keys up to <paramref name="end"/>, in <paramref name="ticks"/> of wall time.</summary>
    void NotePrepare(int end, int keys, int headCount, long ticks)
    {
        lock (workGate)
        {
            prepareTicks += ticks;
            if (end != lastPrepareEnd) (lastPrepareEnd, lastPrepareKeys, lastPrepareHeads, lastPrepareTicks) = (end, 0, 0, 0);
            lastPrepareKeys = Math.Max(lastPrepareKeys, keys);
            lastPrepareHeads += headCount;
            lastPrepareTicks += ticks;
        }
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

    int CountAfter(PageTable table, int after)
    {
        int n = 0;
        for (int i = table.Count - 1; i >= 0 && Store.LastPosition(table[i]) > after; i--)
            foreach (int p in Store.Positions(table[i])) if (p > after) n++;
        return n;
    }

    /// <summary>Clusters the <paramref name="n"/> keys gathered in the scratch (all past the sinks, up to <paramref name="end"/>) afresh, on this thread.</summary>
    void ClusterAll(HeadState state, int n, int end, Scratch scratch)
    {
        int d = Store.HeadDim, k = FullClusters(n);
        state.Clusters = state.Keys = 0;
        Reserve(state, k, n);
        scratch.KMeans.Run(scratch.Keys.AsMemory(0, n * d), n, d, k, Iterations, state.Labels.AsMemory(0, n), state.Centres.AsMemory(0, k * d),
            state.Sums.AsMemory(0, k * d), state.Sizes.AsMemory(0, k), pool: null);
        AddClusters(state, k, n, end, scratch);
        state.FullKeys = n;
    }

    /// <summary>A batch's <paramref name="n"/> gathered keys (up to <paramref name="end"/>) join the clusters of nearest unit centre.</summary>
    void AssignTail(HeadState state, int n, int end, Scratch scratch)
    {
        int d = Store.HeadDim;
        Reserve(state, state.Clusters, state.Keys + n);
        var labels = state.Labels.AsSpan(state.Keys, n);
        scratch.KMeans.Nearest(scratch.Keys, n, d, state.Centres, state.Clusters, labels);
        for (int i = 0; i < n; i++)
        {
            var sum = state.Sums.AsSpan(labels[i] * d, d);
            TensorPrimitives.Add(sum, scratch.Keys.AsSpan(i * d, d), sum);
            state.Sizes[labels[i]]++;
        }
        scratch.Positions.AsSpan(0, n).CopyTo(state.Positions.AsSpan(state.Keys));
        state.Keys += n;
        state.ClusteredUpTo = end - 1;
        Rebuild(state);
    }

    /// <summary>Keys with positions in (<paramref name="after"/>, <paramref name="end"/>) into the scratch's rows and positions; returns their count.</summary>
    int Gather(PageTable table, int after, int end, Scratch scratch)
    {
        int d = Store.HeadDim, first = table.Count, bound = 0;
        while (first > 0 && Store.LastPosition(table[first - 1]) > after) bound += Store.Count(table[--first]);
        if (scratch.Keys.Length < bound * d) scratch.Keys = new float[bound * d];
        if (scratch.Positions.Length < bound) scratch.Positions = new int[bound];
        if (scratch.Page.Length < Store.PageSize * d) scratch.Page = new float[Store.PageSize * d];
        int n = 0;
        for (int i = first; i < table.Count; i++)
        {
            int page = table[i];
            var positions = Store.Positions(page);
            if (positions[0] >= end) break;
            if (positions[0] > after && positions[^1] < end)
            {
                Store.ReadKeys(page, scratch.Keys.AsSpan(n * d, positions.Length * d));
                positions.CopyTo(scratch.Positions.AsSpan(n));
                n += positions.Length;
                continue;
            }
            Store.ReadKeys(page, scratch.Page);
            for (int j = 0; j < positions.Length; j++)
                if (positions[j] > after && positions[j] < end)
                {
                    scratch.Page.AsSpan(j * d, d).CopyTo(scratch.Keys.AsSpan(n * d));
                    scratch.Positions[n++] = positions[j];
                }
        }
        return n;
    }

    /// <summary>Room for <paramref name="clusters"/> clusters and <paramref name="keys"/> keys, keeping what is there.</summary>
    void Reserve(HeadState state, int clusters, int keys)
    {
        int d = Store.HeadDim;
        if (state.Capacity < clusters)
        {
            int capacity = Math.Max(clusters, 2 * state.Capacity);
            Array.Resize(ref state.Centres, capacity * d);
            Array.Resize(ref state.Sums, capacity * d);
            Array.Resize(ref state.Sizes, capacity);
            state.MeansT = new float[d * capacity];
            state.Start = new int[capacity + 1];
            state.Capacity = capacity;
        }
        if (state.Positions.Length < keys)
        {
            int capacity = Math.Max(keys, 2 * state.Positions.Length);
            Array.Resize(ref state.Positions, capacity);
            Array.Resize(ref state.Labels, capacity);
            state.Members = new int[capacity];
        }
    }

    /// <summary>The members grouped by cluster (a stable counting sort, so ascending in each) and the transposed means, from positions, labels, sums and sizes.</summary>
    void Rebuild(HeadState state)
    {
        int k = state.Clusters, n = state.Keys, d = Store.HeadDim;
        var start = state.Start.AsSpan(0, k + 1);
        start.Clear();
        for (int i = 0; i < n; i++) start[state.Labels[i] + 1]++;
        for (int c = 0; c < k; c++) start[c + 1] += start[c];
        for (int i = 0; i < n; i++) state.Members[start[state.Labels[i]]++] = state.Positions[i];
        for (int c = k; c > 0; c--) start[c] = start[c - 1]; // the fill moved each start to the next cluster's
        start[0] = 0;
        for (int c = 0; c < k; c++)
            for (int e = 0; e < d; e++)
                state.MeansT[e * state.Capacity + c] = state.Sizes[c] > 0 ? state.Sums[c * d + e] / state.Sizes[c] : 0f;
    }

    /// <summary>Sums and sizes of the clusters from the keys of their members still stored (after a rewind).</summary>
    void RecomputeSums(HeadState state, PageTable table)
    {
        int d = Store.HeadDim, k = state.Clusters, member = 0;
        state.Sums.AsSpan(0, k * d).Clear();
        state.Sizes.AsSpan(0, k).Clear();
        var scratch = scratches[0];
        var page = scratch.Page.Length >= Store.PageSize * d ? scratch.Page : scratch.Page = new float[Store.PageSize * d];
        foreach (int p in table.Pages)
        {
            var positions = Store.Positions(p);
            while (member < state.Keys && state.Positions[member] < positions[0]) member++; // evicted by a reducer
            if (member == state.Keys) break;
            if (state.Positions[member] > positions[^1]) continue;
            Store.ReadKeys(p, page);
            for (int j = 0; j < positions.Length && member < state.Keys; j++)
            {
                if (positions[j] != state.Positions[member]) continue;
                int c = state.Labels[member++];
                var sum = state.Sums.AsSpan(c * d, d);
                TensorPrimitives.Add(sum, page.AsSpan(j * d, d), sum);
                state.Sizes[c]++;
            }
        }
    }

    /// <summary>Per cluster, the group's softmaxed scores q·mean·scale, summed over its query heads.</summary>
    Span<float> ClusterScores(HeadState state, in KvStep step, Scratch scratch)
    {
        int k = state.Clusters, d = Store.HeadDim, group = step.Group;
        if (scratch.Query.Length < group * d) scratch.Query = new float[group * d];
        if (scratch.Scores.Length < group * k) scratch.Scores = new float[Math.Max(group * k, 2 * scratch.Scores.Length)];
        if (scratch.Total.Length < k) scratch.Total = new float[Math.Max(k, 2 * scratch.Total.Length)];
        TensorPrimitives.Multiply(step.LastQueries, step.Scale, scratch.Query.AsSpan(0, group * d));
        fixed (float* q = scratch.Query, means = state.MeansT, scores = scratch.Scores)
            SmallMatrix.Multiply(q, d, group, means, state.Capacity, d, k, scores, k, accumulate: false);
        var total = scratch.Total.AsSpan(0, k);
        total.Clear();
        for (int h = 0; h < group; h++)
        {
            var row = scratch.Scores.AsSpan(h * k, k);
            float sum = VectorMath.ExpShiftedSum(row, TensorPrimitives.Max(row)); // the softmax: e^(s − max), then ÷ Σ
            TensorPrimitives.MultiplyAdd(row, 1f / sum, total, total);
        }
        return total;
    }
}
