using VidKV.Cache;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>The KV manager's mechanism: one page pool shared by sequences, forks with copy-on-write, the room check and budget, metadata on demand.</summary>
public class KvManagerTests
{
    const int Layers = 2, Heads = 3, D = 32;

    static PagedKvStore Store(int maxHotPages = 0, KvMetadata metadata = KvMetadata.None, int pageSize = 16) => new(new PagedKvOptions
    {
        LayerCount = Layers, KvHeadCount = Heads, HeadDim = D, PageSize = pageSize, MaxHotPages = maxHotPages, Metadata = metadata,
        KeyType = GgmlType.F16, ValueType = GgmlType.F16,
    });

    static void Append(KvSequence sequence, Random rng, int position, int count, int frameId = -1)
    {
        var k = new float[count * Heads * D];
        var v = new float[count * Heads * D];
        for (int i = 0; i < k.Length; i++) { k[i] = (float)(rng.NextDouble() * 2 - 1); v[i] = (float)(rng.NextDouble() * 2 - 1); }
        var frames = Enumerable.Repeat(frameId, count).ToArray();
        for (int l = 0; l < Layers; l++) Assert.True(sequence.Append(l, position, count, k, v, frames));
    }

    /// <summary>Every stored row of a sequence, (layer, head, position, frame id, key and value bytes), in table order.</summary>
    static unsafe List<(int, int, int, int, byte[])> Snapshot(KvSequence sequence)
    {
        var store = sequence.Store;
        var rows = new List<(int, int, int, int, byte[])>();
        for (int l = 0; l < Layers; l++)
            for (int h = 0; h < Heads; h++)
                foreach (int page in sequence.Table(l, h).Pages)
                {
                    byte* data = store.ReadableRows(page);
                    for (int j = 0; j < store.Count(page); j++)
                    {
                        var bytes = new byte[store.KeyRowBytes + store.ValueRowBytes];
                        new ReadOnlySpan<byte>(data + (long)j * store.KeyRowBytes, store.KeyRowBytes).CopyTo(bytes);
                        new ReadOnlySpan<byte>(data + (long)store.PageSize * store.KeyRowBytes + (long)j * store.ValueRowBytes, store.ValueRowBytes).CopyTo(bytes.AsSpan(store.KeyRowBytes));
                        rows.Add((l, h, store.Positions(page)[j], store.FrameIds(page)[j], bytes));
                    }
                }
        return rows;
    }

    static void AssertSame(List<(int, int, int, int, byte[])> want, List<(int, int, int, int, byte[])> got)
    {
        Assert.Equal(want.Count, got.Count);
        for (int i = 0; i < want.Count; i++)
        {
            Assert.Equal((want[i].Item1, want[i].Item2, want[i].Item3, want[i].Item4), (got[i].Item1, got[i].Item2, got[i].Item3, got[i].Item4));
            Assert.True(want[i].Item5.AsSpan().SequenceEqual(got[i].Item5), $"row {i} (layer {want[i].Item1} head {want[i].Item2} position {want[i].Item3}): bytes differ");
        }
    }

    /// <summary>
    /// A fork shares the parent's pages without copying; whatever the child then does (append after a partly filled
    /// shared page, evict rows of a shared page, drop whole pages, truncate) leaves the parent's rows byte-equal, and the
    /// parent can go on appending beside it; disposing the child gives back exactly the pages it made.
    /// </summary>
    [Theory]
    [InlineData(16, 37)]
    [InlineData(32, 64)]
    [InlineData(64, 5)]
    public void ForkIsCopyOnWriteAndLeavesTheParentByteEqual(int pageSize, int tokens)
    {
        var rng = new Random(pageSize + tokens);
        using var store = Store(pageSize: pageSize, metadata: KvMetadata.All);
        using var parent = store.CreateSequence();
        Append(parent, rng, 0, tokens, frameId: 7);
        int pagesBefore = store.PageCount;
        var before = Snapshot(parent);

        var child = parent.Fork();
        Assert.Equal(pagesBefore, store.PageCount); // nothing copied
        Assert.Equal(2, store.SequenceCount);
        AssertSame(before, Snapshot(child));
        Append(child, rng, tokens, 9, frameId: 8);
        child.Evict(1, 2, 0, 0b101); // rows of a shared page: the child gets a copy
        if (child.Table(0, 1).Count > 2) child.RemovePage(0, 1, 1);
        child.Truncate(tokens / 2 + 3);
        Append(child, rng, tokens / 2 + 3, 4);
        AssertSame(before, Snapshot(parent));

        Append(parent, rng, tokens, 3, frameId: 9); // the parent goes on; the child sees none of it
        var parentRows = Snapshot(parent);
        Assert.DoesNotContain(Snapshot(child), r => r.Item4 == 9);
        child.Dispose();
        AssertSame(parentRows, Snapshot(parent));
        Assert.Equal(1, store.SequenceCount);
        int parentPages = 0;
        for (int l = 0; l < Layers; l++) for (int h = 0; h < Heads; h++) parentPages += parent.Table(l, h).Count;
        Assert.Equal(parentPages, store.PageCount);
        parent.Dispose();
        Assert.Equal(0, store.PageCount);
        Assert.Equal(0, store.HotPageCount);
    }

    /// <summary>
    /// Under a budget the room check is exact: <see cref="KvSequence.PagesToAppend"/> is what an append takes, a
    /// reservation holds slots for one sequence's append against another's, an append the pool cannot hold changes
    /// nothing, and hot pages never exceed the budget.
    /// </summary>
    [Fact]
    public void RoomCheckReservesPagesAndTheBudgetHolds()
    {
        var rng = new Random(11);
        const int budget = 40;
        using var store = Store(maxHotPages: budget);
        using var a = store.CreateSequence();
        using var b = store.CreateSequence();
        Append(a, rng, 0, 20); // 2 pages per head: 12 hot slots
        Assert.Equal(12, store.HotPageCount);
        int need = a.PagesToAppend(13); // 12 in the second pages' rest, one more page per head
        Assert.Equal(6, need);
        Append(a, rng, 20, 13);
        Assert.Equal(18, store.HotPageCount);
        Assert.Equal(Layers * Heads, b.PagesToAppend(1));
        Assert.True(store.Reserve(b.PagesToAppend(16)));     // 6 slots for b
        Assert.Equal(6, store.ReservedPages);
        Assert.Equal(18, a.PagesToAppend(48));
        Assert.False(store.Reserve(a.PagesToAppend(48)));    // 18 + 6 + 18 > 40
        var snapshot = Snapshot(a);
        // The reservation is for the next forward pass's appends, whichever sequence's: one layer of 140 tokens needs 24
        // slots, and 18 hot + 24 > 40 even with the 6 reserved ones; such an append changes nothing.
        var k = new float[140 * Heads * D];
        Assert.False(a.Append(0, 33, 140, k, k));
        AssertSame(snapshot, Snapshot(a));
        Append(b, rng, 0, 16);                                  // takes its reservation
        Assert.Equal(0, store.ReservedPages);
        Assert.Equal(24, store.HotPageCount);
        Assert.InRange(store.HotPageCount, 0, budget);
        store.ReleaseReservation();
        Assert.True(store.HotBudgetBytes == (long)budget * store.PageBytes);
    }

    /// <summary>A store keeps only the page metadata it was asked for: reading another kind is a clear error, and the bytes differ by what the kinds cost.</summary>
    [Fact]
    public void MetadataIsKeptOnlyOnRequest()
    {
        var rng = new Random(5);
        using var bare = Store();
        using var all = Store(metadata: KvMetadata.All);
        using var s1 = bare.CreateSequence();
        using var s2 = all.CreateSequence();
        Append(s1, rng, 0, 40);
        Append(s2, rng, 0, 40);
        int page = s1.Table(0, 0)[0];
        var e = Assert.Throws<InvalidOperationException>(() => bare.MinKey(page, 0).ToArray());
        Assert.Contains("MinMax", e.Message);
        Assert.Throws<InvalidOperationException>(() => bare.Digest(page, out _, out _));
        Assert.Throws<InvalidOperationException>(() => bare.SimHashes(page).ToArray()); // no SimHash computed on append unless asked
        Assert.Equal(16, all.SimHashes(s2.Table(0, 0)[0]).Length);
        Assert.Equal(D, all.MinKey(s2.Table(0, 0)[0], 0).Length);
        // Per page at head dim 32 and 16 tokens: min/max 256 B, centre/radius 256, key sum 128, hashes 128, scores 64.
        Assert.True(all.MetadataBytes - bare.MetadataBytes >= 64L * (256 + 256 + 128 + 128 + 64), $"{all.MetadataBytes} vs {bare.MetadataBytes}");
        // A policy reading metadata the store lacks fails when its cache is made, naming both.
        var map = new KvPolicyMap(Layers, Heads, new QuestPolicy(64));
        var error = Assert.Throws<KvConfigException>(() => new PagedKvCache(bare.CreateSequence(), map));
        Assert.Contains("quest", error.Message);
        Assert.Equal(1, bare.SequenceCount); // the failed cache's sequence was given back
    }

    /// <summary>
    /// Rows evicted all over a table leave nearly empty pages; merging neighbours that fit in one page frees their slots
    /// and keeps every surviving row — its key and value bytes, position and frame id — in the same order. Pages a fork
    /// shares stay as they are; nothing merges twice without a new edit.
    /// </summary>
    [Fact]
    public void MergingUnderfullPagesFreesSlotsAndKeepsEveryRowInOrder()
    {
        using var store = Store(metadata: KvMetadata.MinMax | KvMetadata.SimHash);
        using var sequence = store.CreateSequence();
        var rng = new Random(11);
        for (int f = 0; f < 9; f++) Append(sequence, rng, f * 16, 16, frameId: f); // 9 full pages of 16 per head
        for (int l = 0; l < Layers; l++)
            for (int h = 0; h < Heads; h++)
                for (int i = 0; i < 9; i++) sequence.Evict(l, h, i, 0xFFFFUL & ~(1UL << (i % 16)) & ~(1UL << ((3 * i + 5) % 16))); // keep 2 rows a page
        var before = Snapshot(sequence);
        int pagesBefore = store.PageCount;
        int freed = 0;
        for (int l = 0; l < Layers; l++)
            for (int h = 0; h < Heads; h++) freed += store.MergeUnderfull(sequence.Table(l, h));
        Assert.Equal(Layers * Heads * 7, freed); // per head: 8 pages of 2 rows fill one page of 16; the ninth stays apart
        AssertSame(before, Snapshot(sequence));
        Assert.Equal(pagesBefore - freed, store.PageCount);
        for (int l = 0; l < Layers; l++)
            for (int h = 0; h < Heads; h++) Assert.Equal(18, sequence.Table(l, h).TokenCount);
        Assert.Equal(0, store.MergeUnderfull(sequence.Table(0, 0))); // no edit since: nothing to do
    }

    /// <summary>
    /// The peak of hot bytes is the most pages in RAM at once: it follows the hot bytes up, stays when pages go back,
    /// and a later sequence that takes fewer pages than were once hot (reusing freed slots) does not raise it.
    /// </summary>
    [Fact]
    public void PeakHotBytesIsTheHighWaterMark()
    {
        using var store = Store();
        var rng = new Random(5);
        Assert.Equal(0, store.PeakHotBytes);
        long peak;
        using (var first = store.CreateSequence())
        {
            Append(first, rng, 0, 37, frameId: 1); // 3 pages of 16 per layer and head
            Assert.Equal(3L * Layers * Heads * store.PageBytes, store.HotBytes);
            Assert.Equal(store.HotBytes, store.PeakHotBytes);
            using var fork = first.Fork();
            Append(fork, rng, 37, 20); // the fork's own pages: its shared last page stays as it is
            Assert.True(store.HotBytes > 3L * Layers * Heads * store.PageBytes);
            peak = store.HotBytes;
            Assert.Equal(peak, store.PeakHotBytes);
        }
        Assert.Equal(0, store.HotBytes);
        Assert.Equal(peak, store.PeakHotBytes);
        using var second = store.CreateSequence();
        Append(second, rng, 0, 40);
        Assert.True(store.HotBytes < peak);
        Assert.Equal(peak, store.PeakHotBytes);
    }
}
