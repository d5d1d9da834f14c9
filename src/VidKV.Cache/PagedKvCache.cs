using System.Diagnostics;
using System.Runtime.InteropServices;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>
/// Stopwatch ticks a paged cache spent per phase of attention: choosing pages (the Select and Gather stages: policies'
/// Select and building views), reading pages back from the cold tier (in either stage), the attention kernel, and the
/// Update stage after it (the policies' eviction, moving pages cold, prefetch).
/// </summary>
public struct KvPhaseTimes
{
    /// <summary>Ticks choosing pages: the policies' Select and building the page views.</summary>
    public long Select;
    /// <summary>Ticks reading pages back from the cold tier, in either the select or the gather stage.</summary>
    public long Recall;
    /// <summary>Ticks in the attention kernel.</summary>
    public long Attention;
    /// <summary>Ticks in the policies' update after attention: eviction, moving pages cold, prefetch.</summary>
    public long Update;

    /// <summary>Converts <see cref="Stopwatch"/> ticks (as these fields hold) to milliseconds.</summary>
    public static double Milliseconds(long ticks) => ticks * 1000.0 / Stopwatch.Frequency;
}

/// <summary>Sees one (layer, KV head) step: its queries and the rows attention read.</summary>
internal delegate void KvObserver(in KvStep step, ReadOnlySpan<KvPageView> read);

/// <summary>
/// A decoder's KV cache over a <see cref="PagedKvStore"/> (mechanism) run by a <see cref="KvPolicyMap"/> (policy):
/// append stores the batch in pages; attend asks each (layer, KV head)'s policy which pages and rows to read, brings
/// cold ones back (or reads them in place in the mapped cold file), runs <see cref="Attention.Paged"/>, then lets the
/// policy evict or move pages. With <see cref="FullPolicy"/> everywhere this is plain causal attention over every
/// position (<see cref="Attention.Causal(ReadOnlySpan{float}, ReadOnlySpan{byte}, GgmlType, ReadOnlySpan{byte}, GgmlType, int, int, int, int, int, float, Span{float}, WorkerPool?)"/>
/// over one contiguous store, bit for bit), and the decoder's default cache.
/// </summary>
public sealed unsafe class PagedKvCache : KvCache
{
    readonly PagedKvStore store;
    readonly KvSequence sequence;
    readonly KvPolicyMap policies;
    readonly bool ownsStore;
    readonly PageSelection[] selections;
    KvPageView[] views = new KvPageView[256];
    readonly int[] headStart;
    // Per (layer, KV head): pages brought back from the cold tier that are still hot; lastRead: the step each page was last read at.
    readonly List<(int Page, int Generation)>[] recalled;
    // Per KV head, for the current layer: what its select job recalled (heads run concurrently).
    readonly long[] headRecallTicks, headRecalledBytes;
    // Per layer: pages whose background recall was started after the previous step (for the policies' predicted pages).
    readonly List<(int Page, int Generation)>[] prefetched;
    long[] lastRead = [];
    float[] groupQueries = [];
    int length;
    int ropeShift; // positions the rows' RoPE positions lag their places by: 0, or what compaction took out
    long steps;
    readonly KeyRotation? compactRotation;
    bool isFork;
    // A weak handle to this cache for the worker-pool job that runs the heads' Select.
    nint self;

    /// <summary>A cache over its own store (disposed with it): one sequence, nothing shared.</summary>
    /// <param name="compactPositions">
    /// null keeps every row at its original position (<see cref="KvPositions.Original"/>); the model's key rotation
    /// compacts positions after evictions (<see cref="KvPositions.Compact"/>, see <see cref="Commit"/>)
    /// </param>
    public PagedKvCache(PagedKvStore store, KvPolicyMap policies, int contextLength = int.MaxValue, KeyRotation? compactPositions = null)
        : this(store.CreateSequence(), policies, contextLength, ownsStore: true, compactPositions) { }

    /// <summary>
    /// A cache over one sequence of a shared store (the KV manager's pool): the policies are this sequence's own; the
    /// cache disposes the sequence (its pages go back to the pool), never the store.
    /// </summary>
    /// <param name="compactPositions">
    /// null keeps every row at its original position (<see cref="KvPositions.Original"/>); the model's key rotation
    /// compacts positions after evictions (<see cref="KvPositions.Compact"/>, see <see cref="Commit"/>)
    /// </param>
    public PagedKvCache(KvSequence sequence, KvPolicyMap policies, int contextLength = int.MaxValue, KeyRotation? compactPositions = null)
        : this(sequence, policies, contextLength, ownsStore: false, compactPositions) { }

    PagedKvCache(KvSequence sequence, KvPolicyMap policies, int contextLength, bool ownsStore, KeyRotation? compactPositions)
    {
        store = sequence.Store;
        this.sequence = sequence;
        this.policies = policies;
        this.ownsStore = ownsStore;
        ContextLength = contextLength;
        compactRotation = compactPositions;
        try
        {
            compactPositions?.Validate(store.HeadDim);
            policies.Attach(sequence);
        }
        catch
        {
            sequence.Dispose();
            if (ownsStore) store.Dispose();
            throw;
        }
        selections = new PageSelection[store.KvHeadCount];
        for (int i = 0; i < selections.Length; i++) selections[i] = new PageSelection();
        headStart = new int[store.KvHeadCount + 1];
        self = GCHandle.ToIntPtr(GCHandle.Alloc(this, GCHandleType.Weak));
        recalled = new List<(int, int)>[store.HeadSlots];
        for (int l = 0; l < recalled.Length; l++) recalled[l] = [];
        headRecallTicks = new long[store.KvHeadCount];
        headRecalledBytes = new long[store.KvHeadCount];
        prefetched = new List<(int, int)>[store.LayerCount];
        for (int l = 0; l < prefetched.Length; l++) prefetched[l] = [];
    }

    /// <summary>The page pool this cache's sequence lives in (its own, or the KV manager's shared one).</summary>
    public PagedKvStore Store => store;
    /// <summary>This cache's page tables in the store.</summary>
    public KvSequence Sequence => sequence;
    /// <summary>The policy of each (layer, KV head) of this cache.</summary>
    public KvPolicyMap Policies => policies;

    /// <summary>
    /// A cache that shares this one's pages and length (<see cref="KvSequence.Fork"/>) under its own policies (a fresh
    /// map: policy state is per sequence): a question asked on a live stream, whose tokens go away with it. Under
    /// compact positions the fork goes on from the stream's compact positions but does not compact again: re-rotating
    /// would copy every page it shares with the stream for the few rows its own tokens evict (a question's rows then
    /// sit at most its own length further on). The stream compacting while the fork lives copies the shared pages it
    /// re-rotates first, so the fork's keys never change under it.
    /// </summary>
    public PagedKvCache Fork(KvPolicyMap forkPolicies)
    {
        var child = new PagedKvCache(sequence.Fork(), forkPolicies, ContextLength, ownsStore: false, compactRotation);
        child.length = length;
        child.ropeShift = ropeShift;
        child.isFork = true;
        return child;
    }
    /// <inheritdoc/>
    public override int NextRopePosition => length - ropeShift;
    /// <inheritdoc/>
    public override KvPositions Positions => compactRotation == null ? KvPositions.Original : KvPositions.Compact;
    /// <summary>The key rotation compact positions turn stored keys with; null under <see cref="KvPositions.Original"/>.</summary>
    public KeyRotation? KeyRotation => compactRotation;
    /// <summary>Stored keys re-rotated to compact positions so far, over every layer and head (<see cref="KvPositions.Compact"/>).</summary>
    public long RerotatedRows { get; private set; }
    /// <inheritdoc/>
    public override int Length => length;
    /// <inheritdoc/>
    public override int ContextLength { get; }
    /// <summary>Bytes of hot slots the store allocated (used or free), over every sequence that shares it.</summary>
    public override long AllocatedBytes => store.AllocatedBytes;
    /// <summary>Bytes of KV rows attention read, summed over all steps, layers and heads.</summary>
    public long RowBytesRead { get; private set; }
    /// <summary>Background recalls started for pages the policies predicted, and how many of those pages were then read.</summary>
    public long PrefetchedPages { get; private set; }
    /// <summary>Of <see cref="PrefetchedPages"/>, the pages attention then read.</summary>
    public long PrefetchHits { get; private set; }
    /// <summary>Bytes copied back from the cold tier into hot slots, summed over all steps.</summary>
    public long RecalledBytes { get; private set; }
    /// <summary>Bytes of cold pages attention read in place in the mapped cold file, summed over all steps.</summary>
    public long ColdBytesReadInPlace { get; private set; }

    /// <summary>Time spent in each phase of <see cref="Attend"/>, summed over all calls (for profiles; see <see cref="KvPhaseTimes"/>).</summary>
    public KvPhaseTimes Times;

    /// <summary>Called after every (layer, KV head) attention with the group's queries and what was read, for evaluation tools.</summary>
    internal KvObserver? Observer { get; set; }

    /// <summary>
    /// Whether places below <paramref name="endPosition"/> fit the context length: their RoPE positions do, which under
    /// compact positions lag the places by what evictions took out, so a compacted stream goes on past the context length
    /// in places while its positions stay inside it. Pages are taken as rows are appended.
    /// </summary>
    public override bool Reserve(int endPosition) => endPosition - ropeShift <= ContextLength;

    /// <inheritdoc/>
    public override int PagesToAppend(int tokens) => sequence.PagesToAppend(tokens);

    /// <summary>
    /// Stores keys (rotated) and values, [count, kvHeads, headDim] f32, of positions <paramref name="position"/>.. in
    /// every KV head's pages of <paramref name="layer"/>, with each row's video frame id (empty: none); throws when the
    /// hot tier has no slot left for a new page.
    /// </summary>
    public override void Append(int layer, int position, int count, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, ReadOnlySpan<int> frameIds = default)
    {
        int keyPosition = position - ropeShift;
        if (!sequence.Append(layer, position, count, keys, values, frameIds, keyPosition))
            throw new InvalidOperationException(
                $"KV hot tier full: layer {layer} needs pages for {count} more tokens at position {position} ({store.HotPageCount} pages of {store.Options.MaxHotPages} in use); use a policy that evicts or moves pages cold, or raise the page limit");
    }

    /// <summary>
    /// Attention for one layer in four stages: <see cref="Select"/> (the policies choose what each KV head reads),
    /// <see cref="Gather"/> (page views of it), <see cref="AttendGathered"/> (the kernel), <see cref="Update"/> (the
    /// policies act on what was appended, recalled pages settle, predicted pages start coming back).
    /// </summary>
    public override void Attend(int layer, ReadOnlySpan<float> queries, int position, int count, int headCount, float scale, Span<float> destination)
    {
        int pages = Select(layer, queries, position, count, headCount, scale);
        int viewCount = Gather(layer, pages);
        AttendGathered(queries, position, count, headCount, scale, viewCount, destination);
        Update(layer, position, count, headCount / store.KvHeadCount, scale);
    }

    /// <summary>
    /// Select: each KV head's policy adds the pages and rows it reads to its <see cref="PageSelection"/>, and the head
    /// recalls the cold ones it newly chose (<see cref="RecallSelected"/>); the heads run on the worker pool when every
    /// policy of the layer allows it. Returns the pages chosen over all heads. Timed as Select, the heads' recalls
    /// (side by side: the longest) as Recall.
    /// </summary>
    int Select(int layer, ReadOnlySpan<float> queries, int position, int count, int headCount, float scale)
    {
        int kvHeads = store.KvHeadCount, groupLength = headCount * count * store.HeadDim;
        if (groupQueries.Length < groupLength) groupQueries = new float[groupLength];
        long clock = Stopwatch.GetTimestamp(), jobRecallTicks = 0;
        bool concurrent = kvHeads > 1 && WorkerPool.Shared.ThreadCount > 1;
        for (int g = 0; g < kvHeads && concurrent; g++) concurrent = policies[layer, g].ConcurrentSelect;
        if (concurrent)
            fixed (float* q = queries)
            {
                var job = new SelectJob { Cache = self, Queries = q, Length = queries.Length, Layer = layer, Position = position, Count = count, HeadCount = headCount, Scale = scale };
                WorkerPool.Shared.Run(&RunSelect, &job);
            }
        else
            for (int g = 0; g < kvHeads; g++) SelectHead(layer, g, queries, position, count, headCount, scale);
        int total = 0;
        for (int g = 0; g < kvHeads; g++)
        {
            total += selections[g].Count;
            jobRecallTicks = Math.Max(jobRecallTicks, headRecallTicks[g]); // the heads recalled side by side
            RecalledBytes += headRecalledBytes[g];
        }
        Times.Select += Stopwatch.GetTimestamp() - clock - jobRecallTicks;
        Times.Recall += jobRecallTicks;
        return total;
    }

    /// <summary>
    /// Gather: one <see cref="KvPageView"/> per selected page, head after head (head g's from <c>headStart[g]</c>),
    /// over its rows where they are (hot, or in place in the mapped cold file); a page whose background read is still
    /// in flight is waited for here. Predicted pages nobody selected go back to waiting in the cold tier. Returns the
    /// views' count. Timed as Select, the waits as Recall.
    /// </summary>
    int Gather(int layer, int pageCount)
    {
        int kvHeads = store.KvHeadCount;
        long clock = Stopwatch.GetTimestamp(), recallTicks = 0;
        if (views.Length < pageCount) views = new KvPageView[Math.Max(pageCount, 2 * views.Length)];
        int v = 0;
        // lastRead matters only for pages that can be recalled (copy-back cold tier): default Full decode skips it.
        bool recalls = store.HasColdTier && !store.ReadsColdInPlace;
        for (int g = 0; g < kvHeads; g++)
        {
            headStart[g] = v;
            var table = sequence.Table(layer, g);
            var selection = selections[g];
            for (int i = 0; i < selection.Count; i++)
            {
                int page = table[selection.Indices[i]];
                byte* rows = store.ReadableRows(page); // hot, or in the mapped cold file
                bool track = recalls;
                if (rows == null) // a page whose background read is in flight: Select left it for here
                {
                    long recallStart = Stopwatch.GetTimestamp();
                    if (store.IsPrefetching(page)) PrefetchHits++;
                    if (!store.Recall(page)) throw new InvalidOperationException($"KV hot tier full: no slot to recall page {page} of layer {layer} head {g}");
                    recalled[store.HeadIndex(layer, g)].Add((page, store.Generation(page)));
                    RecalledBytes += store.PageBytes;
                    recallTicks += Stopwatch.GetTimestamp() - recallStart;
                    rows = store.ReadableRows(page);
                    track = true;
                }
                else if (!store.IsHot(page)) ColdBytesReadInPlace += store.PageBytes;
                if (track)
                {
                    if (lastRead.Length <= page) Array.Resize(ref lastRead, Math.Max(page + 1, 2 * lastRead.Length));
                    lastRead[page] = steps;
                }
                ulong mask = selection.Masks[i];
                views[v++] = new KvPageView
                {
                    Keys = rows, Values = rows + (long)store.PageSize * store.KeyRowBytes, KeyStride = store.KeyRowBytes, ValueStride = store.ValueRowBytes,
                    Positions = store.PositionPointer(page), Count = store.Count(page), Mask = mask,
                };
                int selectedRows = mask == KvPageView.AllRows ? store.Count(page) : System.Numerics.BitOperations.PopCount(mask);
                RowBytesRead += (long)selectedRows * (store.KeyRowBytes + store.ValueRowBytes);
            }
        }
        headStart[kvHeads] = v;
        // Predicted pages this step did not select go back to waiting in the cold tier.
        foreach (var (page, generation) in prefetched[layer])
            if (store.Generation(page) == generation && store.IsPrefetching(page)) store.CancelPrefetch(page);
        prefetched[layer].Clear();
        Times.Recall += recallTicks;
        Times.Select += Stopwatch.GetTimestamp() - clock - recallTicks;
        return v;
    }

    /// <summary>Attend: <see cref="Attention.Paged"/> over the gathered views, every query head at once. Timed as Attention.</summary>
    void AttendGathered(ReadOnlySpan<float> queries, int position, int count, int headCount, float scale, int viewCount, Span<float> destination)
    {
        long clock = Stopwatch.GetTimestamp();
        Attention.Paged(queries, count, position, headCount, store.KvHeadCount, store.HeadDim, scale, views.AsSpan(0, viewCount), headStart, store.KeyType, store.ValueType, destination);
        Times.Attention += Stopwatch.GetTimestamp() - clock;
    }

    /// <summary>
    /// Update: the <see cref="Observer"/> sees what each head read; recalled pages this step did not read go back
    /// cold (<see cref="ReleaseUnreadRecalls"/>); each head's policy acts on the appended tokens
    /// (<see cref="KvPolicy.OnAppended"/>: evict, move cold); the pages the policies expect next step start coming
    /// back in the background (<see cref="PrefetchNextPages"/>). Timed as Update.
    /// </summary>
    void Update(int layer, int position, int count, int group, float scale)
    {
        int kvHeads = store.KvHeadCount;
        long clock = Stopwatch.GetTimestamp();
        if (Observer != null)
            for (int g = 0; g < kvHeads; g++)
            {
                var step = Step(layer, g, position, count, group, scale);
                Observer(step, views.AsSpan(headStart[g], headStart[g + 1] - headStart[g]));
            }
        ReleaseUnreadRecalls(layer);
        for (int g = 0; g < kvHeads; g++) policies[layer, g].OnAppended(Step(layer, g, position, count, group, scale));
        for (int g = 0; g < kvHeads; g++) store.MergeUnderfull(sequence.Table(layer, g)); // evicted rows give their slots back
        if (store.HasColdTier) PrefetchNextPages(layer);
        Times.Update += Stopwatch.GetTimestamp() - clock;
    }

    /// <summary>
    /// Recalled pages stay hot while they keep being selected (only newly selected pages move); one not read this step
    /// goes back to the cold tier, where its clean copy still is, so nothing is written. Hot stays ≤ what was read.
    /// </summary>
    void ReleaseUnreadRecalls(int layer)
    {
        for (int g = 0; g < store.KvHeadCount; g++)
        {
            var list = recalled[store.HeadIndex(layer, g)];
            for (int i = list.Count - 1; i >= 0; i--)
            {
                var (page, generation) = list[i];
                bool alive = store.Generation(page) == generation && store.Count(page) > 0;
                if (alive && lastRead[page] == steps) continue;
                if (alive && store.IsHot(page)) store.MoveCold(page);
                list.RemoveAt(i);
            }
        }
    }

    /// <summary>Starts reading the cold pages the policies expect to need next step; by the time this layer runs again they are in.</summary>
    void PrefetchNextPages(int layer)
    {
        for (int g = 0; g < store.KvHeadCount; g++)
        {
            var table = sequence.Table(layer, g);
            foreach (int index in policies[layer, g].NextPages(layer, g))
            {
                if (index >= table.Count) continue;
                int page = table[index];
                if (!store.Prefetch(page)) continue;
                prefetched[layer].Add((page, store.Generation(page)));
                PrefetchedPages++;
            }
        }
    }

    struct SelectJob
    {
        public nint Cache;
        public float* Queries;
        public int Length, Layer, Position, Count, HeadCount;
        public float Scale;
    }

    static void RunSelect(void* context, int thread, int threads)
    {
        ref var job = ref *(SelectJob*)context;
        var cache = (PagedKvCache)GCHandle.FromIntPtr(job.Cache).Target!;
        var (start, end) = WorkerPool.Split(cache.store.KvHeadCount, thread, threads);
        for (int g = start; g < end; g++)
            cache.SelectHead(job.Layer, g, new ReadOnlySpan<float>(job.Queries, job.Length), job.Position, job.Count, job.HeadCount, job.Scale);
    }

    void SelectHead(int layer, int g, ReadOnlySpan<float> queries, int position, int count, int headCount, float scale)
    {
        var step = MakeStep(layer, g, queries, position, count, headCount / store.KvHeadCount, headCount, scale);
        var selection = selections[g];
        selection.Clear();
        policies[layer, g].Select(step, selection);
        selection.Normalize();
        RecallSelected(layer, g);
    }

    /// <summary>
    /// Reads this head's newly selected cold pages back into hot slots, inside its select job so the heads' reads run
    /// side by side. Pages with a background read in flight are left to <see cref="Gather"/>, which waits for them.
    /// Nothing to do when the cold tier is mapped: attention reads those pages where they are.
    /// </summary>
    void RecallSelected(int layer, int g)
    {
        headRecallTicks[g] = headRecalledBytes[g] = 0;
        if (!store.HasColdTier || store.ReadsColdInPlace) return;
        var table = sequence.Table(layer, g);
        var selection = selections[g];
        var list = recalled[store.HeadIndex(layer, g)];
        long start = Stopwatch.GetTimestamp(), bytes = 0;
        for (int i = 0; i < selection.Count; i++)
        {
            int page = table[selection.Indices[i]];
            if (store.IsHot(page) || store.IsPrefetching(page)) continue;
            if (!store.Recall(page)) throw new InvalidOperationException($"KV hot tier full: no slot to recall page {page} of layer {layer} head {g}");
            list.Add((page, store.Generation(page)));
            bytes += store.PageBytes;
        }
        if (bytes > 0) headRecallTicks[g] = Stopwatch.GetTimestamp() - start;
        headRecalledBytes[g] = bytes;
    }

    /// <summary>The step of KV head <paramref name="g"/>, its group's queries copied into that head's own slice of the buffer.</summary>
    KvStep MakeStep(int layer, int g, ReadOnlySpan<float> queries, int position, int count, int group, int headCount, float scale)
    {
        int d = store.HeadDim, qRow = headCount * d;
        var mine = groupQueries.AsSpan(g * count * group * d, count * group * d);
        for (int t = 0; t < count; t++) queries.Slice(t * qRow + g * group * d, group * d).CopyTo(mine.Slice(t * group * d));
        return Step(layer, g, position, count, group, scale);
    }

    /// <summary>The step of KV head <paramref name="g"/> over the queries <see cref="MakeStep"/> already copied this call.</summary>
    KvStep Step(int layer, int g, int position, int count, int group, float scale)
    {
        int length = count * group * store.HeadDim;
        return new KvStep
        {
            Layer = layer, Head = g, Position = position, Count = count, Group = group, Queries = groupQueries.AsSpan(g * length, length), Scale = scale,
            Table = sequence.Table(layer, g), StepIndex = steps,
        };
    }

    /// <summary>
    /// Marks positions below <paramref name="length"/> as filled once every layer appended them. With compact positions
    /// the rows kept after this step's evictions take their compact key positions here, once per step and after every
    /// layer's policies acted (<see cref="KvSequence.CompactKeyPositions"/>): per frame that costs one check per
    /// (layer, KV head) when nothing was evicted, and otherwise re-rotating the kept rows after the first row that
    /// moved — for a sink + window policy the whole window (its rows × layers × KV heads, each headDim/2 rotations
    /// plus the key type's dequantise and quantise), far below the frame's attention over that window.
    /// </summary>
    public override void Commit(int length)
    {
        this.length = length;
        steps++;
        CompactPositions();
    }

    void CompactPositions()
    {
        if (compactRotation == null || isFork) return;
        ropeShift = length - sequence.CompactKeyPositions(compactRotation, out long rotated);
        RerotatedRows += rotated;
    }

    /// <summary>Forgets positions at and after <paramref name="length"/>: their rows leave the pages, pending prefetches are cancelled, and the policies are told.</summary>
    public override void Truncate(int length)
    {
        if (length < 0 || length > this.length) throw new ArgumentOutOfRangeException(nameof(length));
        foreach (var list in prefetched)
        {
            foreach (var (page, generation) in list)
                if (store.Generation(page) == generation) store.CancelPrefetch(page);
            list.Clear();
        }
        sequence.Truncate(length);
        foreach (var policy in policies.Distinct) policy.OnTruncated(length);
        this.length = length;
        CompactPositions();
    }

    /// <summary>Gives this cache's pages back to the store, and disposes the store too when the cache was built over a store of its own.</summary>
    public override void Dispose()
    {
        foreach (var list in prefetched)
        {
            foreach (var (page, generation) in list)
                if (store.Generation(page) == generation) store.CancelPrefetch(page);
            list.Clear();
        }
        sequence.Dispose();
        if (ownsStore) store.Dispose();
        if (self != 0) GCHandle.FromIntPtr(self).Free();
        self = 0;
    }
}
