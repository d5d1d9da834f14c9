using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>
/// What a policy sees for one (layer, KV head) in one forward step: the queries of the step's tokens for the head's
/// query group ([Count, Group, HeadDim], rotated, unscaled), their first position, and the head's page table.
/// </summary>
public readonly ref struct KvStep
{
    /// <summary>The decoder layer.</summary>
    public required int Layer { get; init; }
    /// <summary>The KV head within the layer.</summary>
    public required int Head { get; init; }
    /// <summary>Position of the step's first token.</summary>
    public required int Position { get; init; }
    /// <summary>Tokens in the step (1 when decoding).</summary>
    public required int Count { get; init; }
    /// <summary>Query heads that share this KV head.</summary>
    public required int Group { get; init; }
    /// <summary>The step's queries for this KV head's group, [Count, Group, HeadDim], rotated and unscaled.</summary>
    public required ReadOnlySpan<float> Queries { get; init; }
    /// <summary>1/√headDim.</summary>
    public required float Scale { get; init; }
    /// <summary>The head's pages in position order, the step's tokens already appended.</summary>
    public required PageTable Table { get; init; }
    /// <summary>Forward steps the cache has run (counts decode steps and batches alike).</summary>
    public required long StepIndex { get; init; }

    /// <summary>Queries of the step's last token ([Group, HeadDim]).</summary>
    public ReadOnlySpan<float> LastQueries => Queries.Slice((Count - 1) * Group * (Queries.Length / (Count * Group)), Queries.Length / Count);
}

/// <summary>
/// A KV cache policy behind one interface (like kvpress's presses): hooks after append (evict, merge, compress, move
/// cold) and on select (which pages and rows a head reads for the current queries). A policy may serve many
/// (layer, head) pairs; it keeps any per-head state itself, sized in <see cref="Attach"/>. Policies compose with
/// <see cref="ComposedPolicy"/> (an ingest-time reducer, then a query-time retriever).
/// </summary>
public abstract class KvPolicy
{
    KvSequence? sequence;

    /// <summary>The name and options as a spec string (<c>quest:budget=2048</c>).</summary>
    public abstract string Name { get; }

    /// <summary>The page metadata this policy reads; the store keeps only what its policies declare.</summary>
    public virtual KvMetadata Metadata => KvMetadata.None;

    /// <summary>The sequence this policy runs on (one policy object serves one sequence).</summary>
    protected KvSequence Sequence => sequence ?? throw new InvalidOperationException($"policy {Name} is not attached to a sequence");
    /// <summary>The page pool of <see cref="Sequence"/>: page metadata, rows and the table operations.</summary>
    protected PagedKvStore Store => Sequence.Store;

    /// <summary>Index of (layer, KV head) in per-head arrays.</summary>
    protected int HeadIndex(int layer, int head) => Store.HeadIndex(layer, head);

    /// <summary>Called once, before any step, with the sequence this policy serves; allocate per-(layer, head) state here.</summary>
    public virtual void Attach(KvSequence sequence)
    {
        if (this.sequence != null && this.sequence != sequence)
            throw new InvalidOperationException($"policy {Name} already serves another sequence (create one policy map per sequence)");
        this.sequence = sequence;
    }

    /// <summary>After the step's tokens were appended and attended for (layer, head): evict, merge or move pages cold.</summary>
    public virtual void OnAppended(in KvStep step) { }

    /// <summary>The cache was rewound to <paramref name="length"/> positions: forget state about later ones. The default forgets nothing.</summary>
    public virtual void OnTruncated(int length) { }

    /// <summary>
    /// Table indices of the pages (layer, head) expects to read on the next step (FreeKV's speculative selection), asked
    /// after each step so the cache can start bringing cold ones back in the background. The default predicts nothing.
    /// </summary>
    public virtual ReadOnlySpan<int> NextPages(int layer, int head) => default;

    /// <summary>
    /// Whether <see cref="Select"/> may run for different KV heads of one layer at the same time (on the worker pool):
    /// true for a policy whose Select touches only that head's state and thread-local scratch.
    /// </summary>
    public virtual bool ConcurrentSelect => false;

    /// <summary>Adds the pages and rows (layer, head) reads for this step. The default reads everything.</summary>
    public virtual void Select(in KvStep step, PageSelection selection) => selection.AddAll(step.Table.Count);

    /// <summary>
    /// The pages a step must read whatever the scores: those holding the step's own tokens (positions ≥
    /// <see cref="KvStep.Position"/>), so every query sees itself. Returns the table index of the first of them.
    /// </summary>
    protected int FirstPageOfStep(in KvStep step)
    {
        var table = step.Table;
        int index = table.Count;
        while (index > 0 && Store.LastPosition(table[index - 1]) >= step.Position) index--;
        return index;
    }
}

/// <summary>Reads every page; the reference every other policy is measured against.</summary>
public sealed class FullPolicy : KvPolicy
{
    internal static readonly KvPolicyDescriptor Descriptor = new("full", "read every token (the reference every other policy is measured against)", [],
        _ => new FullPolicy());

    /// <inheritdoc/>
    public override string Name => "full";
    /// <summary>True: reading everything touches no state.</summary>
    public override bool ConcurrentSelect => true;
}

/// <summary>The pages (by index into the head's table) and rows one head reads in one step.</summary>
public sealed class PageSelection
{
    int[] indices = new int[64];
    ulong[] masks = new ulong[64];

    /// <summary>Pages selected.</summary>
    public int Count { get; private set; }
    /// <summary>Table index of each selected page, in the order added ([Count]).</summary>
    public ReadOnlySpan<int> Indices => indices.AsSpan(0, Count);
    /// <summary>Rows read of each selected page: bit j selects row j, all bits set selects every row ([Count]).</summary>
    public ReadOnlySpan<ulong> Masks => masks.AsSpan(0, Count);
    /// <summary>True when the last <see cref="AddAll"/> selected the whole table.</summary>
    public bool IsAll { get; private set; }

    /// <summary>Selects nothing (the cache clears the selection before each Select).</summary>
    public void Clear()
    {
        Count = 0;
        IsAll = false;
    }

    /// <summary>Selects rows <paramref name="mask"/> of table page <paramref name="index"/> (all rows by default).</summary>
    public void Add(int index, ulong mask = KvPageView.AllRows)
    {
        if (Count == indices.Length)
        {
            Array.Resize(ref indices, Count * 2);
            Array.Resize(ref masks, Count * 2);
        }
        indices[Count] = index;
        masks[Count++] = mask;
    }

    /// <summary>Selects every row of table pages <paramref name="start"/> up to, not including, <paramref name="end"/>.</summary>
    public void AddRange(int start, int end)
    {
        for (int i = start; i < end; i++) Add(i);
    }

    /// <summary>Replaces the selection with every row of the first <paramref name="pageCount"/> table pages (the whole table) and sets <see cref="IsAll"/>.</summary>
    public void AddAll(int pageCount)
    {
        Clear();
        AddRange(0, pageCount);
        IsAll = true;
    }

    /// <summary>
    /// Selects the rows holding <paramref name="sortedPositions"/> (ascending; positions not in the table are
    /// ignored): one binary search over the pages per position.
    /// </summary>
    public void AddPositions(PagedKvStore store, PageTable table, ReadOnlySpan<int> sortedPositions)
    {
        int row = 0;
        ulong mask = 0;
        int current = -1;
        foreach (int position in sortedPositions)
        {
            // Advance to the page holding the position: pages ascend, so search only forward.
            if (current < 0 || position > store.LastPosition(table[current]))
            {
                if (current >= 0 && mask != 0) Add(current, mask);
                mask = 0;
                int lo = current + 1, hi = table.Count - 1;
                while (lo < hi)
                {
                    int mid = (lo + hi) / 2;
                    if (store.LastPosition(table[mid]) < position) lo = mid + 1; else hi = mid;
                }
                if (lo >= table.Count) { current = -1; break; }
                current = lo;
                row = 0;
            }
            var rows = store.Positions(table[current]);
            while (row < rows.Length && rows[row] < position) row++;
            if (row < rows.Length && rows[row] == position) mask |= 1UL << row;
        }
        if (current >= 0 && mask != 0) Add(current, mask);
    }

    /// <summary>Sorts by table index and merges duplicates (OR of masks), as the attention kernel needs.</summary>
    public void Normalize()
    {
        if (IsAll || Count < 2) return;
        int ascending = 1;
        while (ascending < Count && indices[ascending - 1] < indices[ascending]) ascending++;
        if (ascending == Count) return; // already sorted and unique (ranges and top-k picks added in order)
        Array.Sort(indices, masks, 0, Count);
        int write = 0;
        for (int i = 0; i < Count; i++)
        {
            if (write > 0 && indices[write - 1] == indices[i]) masks[write - 1] |= masks[i];
            else { indices[write] = indices[i]; masks[write] = masks[i]; write++; }
        }
        Count = write;
    }
}

/// <summary>A reducer at ingest composed with a retriever at query time: appends go through both, selection is the retriever's.</summary>
internal sealed class ComposedPolicy(KvPolicy reducer, KvPolicy retriever) : KvPolicy
{
    public KvPolicy Reducer { get; } = reducer;
    public KvPolicy Retriever { get; } = retriever;
    public override string Name => Reducer.Name + "+" + Retriever.Name;

    public override KvMetadata Metadata => Reducer.Metadata | Retriever.Metadata;

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        Reducer.Attach(sequence);
        Retriever.Attach(sequence);
    }

    public override void OnAppended(in KvStep step)
    {
        Reducer.OnAppended(step);
        Retriever.OnAppended(step);
    }

    public override void Select(in KvStep step, PageSelection selection) => Retriever.Select(step, selection);

    public override ReadOnlySpan<int> NextPages(int layer, int head) => Retriever.NextPages(layer, head);

    public override bool ConcurrentSelect => Retriever.ConcurrentSelect;

    public override void OnTruncated(int length)
    {
        Reducer.OnTruncated(length);
        Retriever.OnTruncated(length);
    }
}
