namespace VidKV.Cache;

/// <summary>
/// The rows of one video frame as appended: frame id and the positions of its first and last row. Rows may have been
/// evicted since; a row's spatial slot is its position minus <see cref="First"/> (the encoder's raster order).
/// </summary>
internal readonly record struct FrameSpan(int Frame, int First, int Last)
{
    public int Rows => Last - First + 1;
}

/// <summary>
/// Follows the frames of one table (or one layer) row by row as steps append them: a frame is a run of rows with one
/// frame id ≥ 0, finished when a row of another frame or a text row (frame id −1) follows it. The frame being
/// appended stays open, so a frame split over several steps is one frame.
/// </summary>
internal sealed class FrameTracker
{
    /// <summary>The open frame's id (−1: none, the last row was text or nothing was seen).</summary>
    public int Frame { get; private set; } = -1;
    /// <summary>Position of the open frame's first row.</summary>
    public int First { get; private set; }
    /// <summary>Position of the last row seen.</summary>
    public int Last { get; private set; } = -1;

    /// <summary>Feeds the next row; true with the frame it finishes when it starts another frame or is text (any text, a frame's own included).</summary>
    public bool Add(int position, int frame, out FrameSpan finished)
    {
        finished = default;
        frame = Math.Max(frame, FrameIds.None);
        bool done = false;
        if (frame != Frame)
        {
            if (Frame >= 0) { finished = new FrameSpan(Frame, First, Last); done = true; }
            Frame = frame;
            First = position;
        }
        Last = position;
        return done;
    }

    /// <summary>Forgets rows at or after <paramref name="length"/>: an open frame that started there is dropped.</summary>
    public void Truncate(int length)
    {
        if (Last >= length) Last = length - 1;
        if (Frame >= 0 && First >= length) Frame = -1;
    }
}

/// <summary>
/// Row access by position for the per-frame reducers: the rows a step appended, gathering a position range with keys
/// and values, locating and evicting rows by position. Buffers grow to the largest request and are reused (one
/// instance per policy: reducers run after attention, one head after another).
/// </summary>
internal sealed class FrameRows
{
    int[] positions = [], frames = [];
    float[] keys = [], values = [];

    /// <summary>Rows gathered by the last call.</summary>
    public int Count { get; private set; }
    /// <summary>Positions of the gathered rows, ascending ([Count]).</summary>
    public Span<int> Positions => positions.AsSpan(0, Count);
    /// <summary>Frame ids of the gathered rows ([Count]).</summary>
    public Span<int> Frames => frames.AsSpan(0, Count);
    /// <summary>Keys of the gathered rows as f32 ([Count, headDim]), when asked for.</summary>
    public Span<float> Keys(int headDim) => keys.AsSpan(0, Count * headDim);
    /// <summary>Values of the gathered rows as f32 ([Count, headDim]), when asked for.</summary>
    public Span<float> Values(int headDim) => values.AsSpan(0, Count * headDim);

    /// <summary>Table index of the first page whose last position is ≥ <paramref name="position"/> (table.Count when none).</summary>
    public static int FirstPageFrom(PagedKvStore store, PageTable table, int position)
    {
        int lo = 0, hi = table.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) / 2;
            if (store.LastPosition(table[mid]) < position) lo = mid + 1; else hi = mid;
        }
        return lo;
    }

    /// <summary>
    /// Gathers the stored rows of <paramref name="table"/> with positions in [<paramref name="first"/>,
    /// <paramref name="last"/>] (from either tier), with their frame ids, and their keys and values when asked.
    /// </summary>
    public void Gather(PagedKvStore store, PageTable table, int first, int last, bool withKeys = false, bool withValues = false)
    {
        int d = store.HeadDim;
        Count = 0;
        for (int index = FirstPageFrom(store, table, first); index < table.Count; index++)
        {
            int id = table[index];
            if (store.FirstPosition(id) > last) break;
            var rows = store.Positions(id);
            var ids = store.FrameIds(id);
            int from = 0, to = rows.Length;
            while (from < to && rows[from] < first) from++;
            while (to > from && rows[to - 1] > last) to--;
            if (from == to) continue;
            int n = to - from;
            Grow(ref positions, Count + n);
            Grow(ref frames, Count + n);
            rows[from..to].CopyTo(positions.AsSpan(Count));
            ids[from..to].CopyTo(frames.AsSpan(Count));
            if (withKeys)
            {
                Grow(ref keys, (Count + n) * d);
                store.ReadKeys(id, from, n, keys.AsSpan(Count * d, n * d));
            }
            if (withValues)
            {
                Grow(ref values, (Count + n) * d);
                store.ReadValues(id, from, n, values.AsSpan(Count * d, n * d));
            }
            Count += n;
        }
    }

    /// <summary>Table index and row of the stored row at <paramref name="position"/>; false when it is not stored.</summary>
    public static bool Locate(PagedKvStore store, PageTable table, int position, out int index, out int row)
    {
        index = FirstPageFrom(store, table, position);
        row = index < table.Count ? store.Positions(table[index]).IndexOf(position) : -1;
        return row >= 0;
    }

    /// <summary>Evicts the stored rows at <paramref name="sortedPositions"/> (ascending), walking back so indices stay valid.</summary>
    public static void Evict(PagedKvStore store, PageTable table, ReadOnlySpan<int> sortedPositions)
    {
        int next = sortedPositions.Length - 1;
        for (int index = table.Count - 1; index >= 0 && next >= 0; index--)
        {
            int id = table[index];
            if (store.Count(id) == 0 || store.FirstPosition(id) > sortedPositions[next]) continue;
            var rows = store.Positions(id);
            ulong mask = 0;
            for (int j = rows.Length - 1; j >= 0 && next >= 0; j--)
            {
                while (next >= 0 && sortedPositions[next] > rows[j]) next--;
                if (next >= 0 && sortedPositions[next] == rows[j]) { mask |= 1UL << j; next--; }
            }
            store.Evict(table, index, mask);
        }
    }

    /// <summary>Makes <paramref name="array"/> at least <paramref name="length"/> long, keeping its contents (runs are gathered into it piece by piece).</summary>
    static void Grow<T>(ref T[] array, int length)
    {
        if (array.Length < length) Array.Resize(ref array, Math.Max(length, 2 * array.Length));
    }
}
