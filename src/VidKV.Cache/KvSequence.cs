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
    public bool Append(int layer, int position, int count, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, ReadOnlySpan<int> frameIds = default) =>
        Append(layer, position, count, keys, values, frameIds, position);

    /// <summary>
    /// As the overload above, the keys rotated at key positions <paramref name="keyPosition"/>.. rather than at their
    /// positions (<see cref="PagedKvStore.KeyPositions"/>; a sequence with <see cref="KvPositions.Compact"/> positions).
    /// </summary>
    public bool Append(int layer, int position, int count, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, ReadOnlySpan<int> frameIds, int keyPosition)
    {
        int heads = Store.KvHeadCount, d = Store.HeadDim, kvRow = heads * d;
        ObjectDisposedException.ThrowIf(disposed, this);
        if (keys.Length < count * kvRow || values.Length < count * kvRow) throw new ArgumentException("keys/values shorter than count × kvHeads × headDim");
        if (!frameIds.IsEmpty && frameIds.Length < count) throw new ArgumentException("fewer frame ids than tokens", nameof(frameIds));
        int needed = 0;
        for (int h = 0; h < heads; h++) needed += Store.PagesToAppend(Table(layer, h), count);
        if (!Store.TryTakePages(needed)) return false;
        for (int h = 0; h < heads; h++)
            Store.AppendRows(Table(layer, h), position, count, keys[(h * d)..], values[(h * d)..], kvRow, frameIds, keyPosition);
        return true;
    }

    /// <summary>
    /// Compact positions (<see cref="KvPositions.Compact"/>; StreamingLLM's positions within the cache, Xiao et al.,
    /// 2023, §3.2): the rows each (layer, KV head) keeps take consecutive key positions in their causal order, ending
    /// right before the returned next position, which is the most rows any head keeps. When every head keeps the same
    /// rows (each policy that evicts whole rows or frames for all heads alike) the K kept rows sit at 0..K−1 and new
    /// rows go on at K; a head that keeps fewer (a streaming head beside full ones) has its rows end at the same next
    /// position, so each head's newest kept row is one step before the next row. Stored keys are re-rotated by their
    /// shift with <paramref name="rotation"/> (<see cref="PagedKvStore.ShiftKeyPositions"/>, whose summary says what
    /// that costs): after an append that evicted nothing, one check per head. Returns the next key position;
    /// <paramref name="rotated"/> counts the rows re-rotated.
    /// </summary>
    public int CompactKeyPositions(KeyRotation rotation, out long rotated)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        int kept = 0;
        foreach (var table in tables) kept = Math.Max(kept, table.TokenCount);
        rotated = 0;
        foreach (var table in tables) rotated += Store.ShiftKeyPositions(table, kept - table.TokenCount, rotation);
        return kept;
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
