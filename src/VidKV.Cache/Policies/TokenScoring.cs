using System.Numerics.Tensors;

namespace VidKV.Cache;

/// <summary>
/// Token-level scoring for the reducers that evict individual tokens (<see cref="TokenScoringPolicy"/>): a head's stored
/// keys gathered as f32 in table order, attention probabilities of queries over them, pooling, and removal of flagged
/// tokens. Buffers grow to the largest head seen and are reused.
/// </summary>
internal sealed class TokenScoring
{
    float[] keys = [], logits = [], scores = [], pooled = [], scratch = [];
    int[] positions = [], picked = [];
    bool[] remove = [];

    /// <summary>Original positions of the gathered tokens (ascending).</summary>
    public ReadOnlySpan<int> Positions => positions.AsSpan(0, Count);
    /// <summary>Tokens gathered by the last <see cref="Gather"/>.</summary>
    public int Count { get; private set; }

    /// <summary>Reads every stored key of a head's table as f32, in table (= position) order, from either tier.</summary>
    public void Gather(PagedKvStore store, PageTable table)
    {
        int d = store.HeadDim, n = table.TokenCount;
        Grow(ref keys, n * d);
        Grow(ref positions, n);
        int at = 0;
        for (int i = 0; i < table.Count; i++)
        {
            int page = table[i], rows = store.Count(page);
            store.ReadKeys(page, keys.AsSpan(at * d, rows * d));
            store.Positions(page).CopyTo(positions.AsSpan(at));
            at += rows;
        }
        Count = at;
    }

    /// <summary>Scores of the gathered tokens, zeroed to <see cref="Count"/> entries.</summary>
    public Span<float> ClearScores()
    {
        Grow(ref scores, Count);
        var s = scores.AsSpan(0, Count);
        s.Clear();
        return s;
    }

    /// <summary>
    /// Adds to <paramref name="scores"/> the attention probabilities softmax(scale · q·k) of each query in
    /// <paramref name="queries"/> ([queryPositions.Length × group, headDim]; query row r is at position
    /// queryPositions[r / group]) over the gathered keys at positions ≤ the query's (causal).
    /// </summary>
    public void AddAttention(ReadOnlySpan<float> queries, ReadOnlySpan<int> queryPositions, int group, int headDim, float scale, Span<float> scores)
    {
        Grow(ref logits, Count);
        var k = keys.AsSpan(0, Count * headDim);
        var pos = Positions;
        for (int r = 0; r < queryPositions.Length * group; r++)
        {
            var q = queries.Slice(r * headDim, headDim);
            int limit = queryPositions[r / group], visible = pos.Length;
            while (visible > 0 && pos[visible - 1] > limit) visible--;
            if (visible == 0) continue;
            var l = logits.AsSpan(0, visible);
            for (int i = 0; i < visible; i++) l[i] = scale * TensorPrimitives.Dot(q, k.Slice(i * headDim, headDim));
            float max = TensorPrimitives.Max(l);
            TensorPrimitives.Subtract(l, max, l);
            TensorPrimitives.Exp(l, l);
            float sum = TensorPrimitives.Sum(l);
            TensorPrimitives.MultiplyAdd(l, 1f / sum, scores[..visible], scores[..visible]);
        }
    }

    /// <summary>Each score becomes the maximum over a window of <paramref name="kernel"/> neighbours (SnapKV's pooling; odd kernel, same length).</summary>
    public Span<float> MaxPool(ReadOnlySpan<float> values, int kernel)
    {
        Grow(ref pooled, values.Length);
        int half = kernel / 2;
        for (int i = 0; i < values.Length; i++)
        {
            float m = float.NegativeInfinity;
            for (int j = Math.Max(0, i - half); j <= Math.Min(values.Length - 1, i + half); j++) m = Math.Max(m, values[j]);
            pooled[i] = m;
        }
        return pooled.AsSpan(0, values.Length);
    }

    /// <summary>Indices (ascending) of the <paramref name="k"/> highest of <paramref name="values"/>; ties to the lower index.</summary>
    public ReadOnlySpan<int> Top(ReadOnlySpan<float> values, int k)
    {
        Grow(ref picked, values.Length);
        Grow(ref scratch, values.Length);
        int n = PageScoring.TopK(values, k, picked, scratch);
        return picked.AsSpan(0, n);
    }

    /// <summary>Flags for the gathered tokens, all false: set the ones to evict, then <see cref="RemoveFlagged"/>.</summary>
    public Span<bool> ClearFlags()
    {
        Grow(ref remove, Count);
        var f = remove.AsSpan(0, Count);
        f.Clear();
        return f;
    }

    /// <summary>
    /// Evicts the flagged tokens (flags in table order, as gathered; see <see cref="PagedKvStore.Evict"/>), walking the
    /// table backwards so earlier indices stay valid.
    /// </summary>
    public void RemoveFlagged(PagedKvStore store, PageTable table)
    {
        var flags = remove.AsSpan(0, Count);
        int ordinal = Count;
        for (int index = table.Count - 1; index >= 0; index--)
        {
            int page = table[index], n = store.Count(page);
            ordinal -= n;
            ulong mask = 0;
            for (int j = 0; j < n; j++) if (flags[ordinal + j]) mask |= 1UL << j;
            store.Evict(table, index, mask);
        }
    }

    static void Grow<T>(ref T[] array, int length)
    {
        if (array.Length < length) array = new T[Math.Max(length, 2 * array.Length)];
    }
}
