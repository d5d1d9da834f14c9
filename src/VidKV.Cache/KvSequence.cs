namespace VidKV.Cache;

/// <summary>
/// One sequence's page tables in a <see cref="PagedKvStore"/>: per (layer, KV head) its pages in position order,
/// where a row's position is its place in the sequence (the causal order; the RoPE position that rotated its key
/// may differ, as with M-RoPE). Mechanism only: policies act on it through <see cref="PagedKvCache"/>.
/// <see cref="Fork"/> gives a sequence that shares every page (copy-on-write: whichever sequence changes a shared
/// page's rows gets its own copy first, and appends after a shared page start a new one), so a question can branch
/// off a live stream without copying it. Dispose gives the pages back (the last holder frees them).
/// </summary>
public sealed class KvSequence : IDisposable
{
    readonly PageTable[] tables;
    bool disposed;

    internal KvSequence(PagedKvStore store)
    {
        Store = store;
        tables = new PageTable[store.HeadSlots];
        for (int i = 0; i < tables.Length; i++) tables[i] = new PageTable();
        store.TablesOpened(tables);
        store.SequenceOpened();
    }

    KvSequence(KvSequence parent)
    {
        Store = parent.Store;
        tables = new PageTable[parent.tables.Length];
        for (int i = 0; i < tables.Length; i++)
        {
            tables[i] = parent.tables[i].Clone();
            foreach (int page in tables[i].Pages) Store.Share(page);
        }
        Store.TablesOpened(tables);
        Store.SequenceOpened();
    }

    /// <summary>The pool this sequence's pages belong to.</summary>
    public PagedKvStore Store { get; }

    /// <summary>Pages of (layer, KV head) in position order.</summary>
    public PageTable Table(int layer, int head) => tables[Store.HeadIndex(layer, head)];

    /// <summary>Tokens stored over every layer and head (after evictions), for budgets and tests.</summary>
    public long StoredRows
    {
        get
        {
            long n = 0;
            foreach (var table in tables) n += table.TokenCount;
            return n;
        }
    }

    /// <summary>Hot slots appending <paramref name="tokens"/> rows to every layer and head takes (the room check before a step).</summary>
    public int PagesToAppend(int tokens)
    {
        int slots = 0;
        foreach (var table in tables) slots += Store.PagesToAppend(table, tokens);
        return slots;
    }

    /// <summary>
    /// Appends <paramref name="count"/> tokens ([count, kvHeads, headDim] f32 keys, rotated, and values) at positions
    /// <paramref name="position"/>.. to every head of <paramref name="layer"/>, with each row's video frame id
    /// (<paramref name="frameIds"/>, [count]; empty for none). Returns false, and changes nothing, when the pool has
    /// neither reserved (<see cref="PagedKvStore.Reserve"/>) nor free slots for the new pages.
    /// </summary>
    public bool Append(int layer, int position, int count, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, ReadOnlySpan<int> frameIds = default)
    {
        int heads = Store.KvHeadCount, d = Store.HeadDim, kvRow = heads * d;
        ObjectDisposedException.ThrowIf(disposed, this);
        if (keys.Length < count * kvRow || values.Length < count * kvRow) throw new ArgumentException("keys/values shorter than count × kvHeads × headDim");
        if (!frameIds.IsEmpty && frameIds.Length < count) throw new ArgumentException("fewer frame ids than tokens", nameof(frameIds));
        int needed = 0;
        for (int h = 0; h < heads; h++) needed += Store.PagesToAppend(Table(layer, h), count);
        if (!Store.TryTakePages(needed)) return false;
        for (int h = 0; h < heads; h++)
            Store.AppendRows(Table(layer, h), position, count, keys[(h * d)..], values[(h * d)..], kvRow, frameIds);
        return true;
    }

    /// <summary>Drops every token at or after <paramref name="length"/> (all layers and heads).</summary>
    public void Truncate(int length)
    {
        foreach (var table in tables) Store.Truncate(table, length);
    }

    /// <summary>A sequence holding the same pages (see the class summary); dispose it to let them go.</summary>
    public KvSequence Fork()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        return new KvSequence(this);
    }

    /// <summary>Evicts the rows <paramref name="mask"/> selects of page <paramref name="index"/> of (layer, head)'s table; see <see cref="PagedKvStore.Evict"/>.</summary>
    public void Evict(int layer, int head, int index, ulong mask) => Store.Evict(Table(layer, head), index, mask);
    /// <summary>Removes the rows <paramref name="mask"/> selects of page <paramref name="index"/> of (layer, head)'s table, compacting it; see <see cref="PagedKvStore.RemoveRows"/>.</summary>
    public void RemoveRows(int layer, int head, int index, ulong mask) => Store.RemoveRows(Table(layer, head), index, mask);
    /// <summary>Removes page <paramref name="index"/> of (layer, head)'s table with all its tokens; see <see cref="PagedKvStore.RemovePage"/>.</summary>
    public void RemovePage(int layer, int head, int index) => Store.RemovePage(Table(layer, head), index);

    /// <summary>Gives every page back to the store (freed where this was the last holder); the sequence is unusable after.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        Store.TablesClosed(tables);
        foreach (var table in tables)
            while (table.Count > 0) Store.RemovePage(table, table.Count - 1);
        Store.SequenceClosed();
    }
}
