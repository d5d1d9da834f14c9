using System.Numerics.Tensors;

namespace VidKV.Cache;

/// <summary>Page scores shared by the page-selecting retrievers, and the GQA group reduction.</summary>
public static class PageScoring
{
    /// <summary>
    /// Quest's bound on max_k q·k over one page: Σ_d max(q_d·min_d, q_d·max_d) per 16-token block, maximum over the
    /// page's blocks (LServe's physical page of logical pages). Never below the true maximum of the stored keys.
    /// </summary>
    public static float QuestBound(PagedKvStore store, int page, ReadOnlySpan<float> q)
    {
        float best = float.NegativeInfinity;
        for (int b = 0; b < store.DigestBlockCount(page); b++)
        {
            best = MathF.Max(best, BlockBound(q, store.MinKey(page, b), store.MaxKey(page, b)));
        }
        return best;
    }

    /// <summary>Σ_d max(q_d·min_d, q_d·max_d), vectorised.</summary>
    public static float BlockBound(ReadOnlySpan<float> q, ReadOnlySpan<float> min, ReadOnlySpan<float> max)
    {
        int i = 0, n = q.Length;
        float s = 0;
        if (System.Numerics.Vector.IsHardwareAccelerated && n >= System.Numerics.Vector<float>.Count)
        {
            var acc = System.Numerics.Vector<float>.Zero;
            for (; i + System.Numerics.Vector<float>.Count <= n; i += System.Numerics.Vector<float>.Count)
            {
                var qv = new System.Numerics.Vector<float>(q[i..]);
                acc += System.Numerics.Vector.Max(qv * new System.Numerics.Vector<float>(min[i..]), qv * new System.Numerics.Vector<float>(max[i..]));
            }
            s = System.Numerics.Vector.Sum(acc);
        }
        for (; i < n; i++) s += MathF.Max(q[i] * min[i], q[i] * max[i]);
        return s;
    }

    /// <summary>FreeKV's score with the centre ± radius digest: Σ_d max(q_d(c_d−r_d), q_d(c_d+r_d)) = q·c + Σ_d |q_d|·r_d.</summary>
    public static float CentreRadiusScore(PagedKvStore store, int page, ReadOnlySpan<float> q)
    {
        store.Digest(page, out var c, out var r);
        int i = 0, n = q.Length;
        float s = 0;
        if (System.Numerics.Vector.IsHardwareAccelerated && n >= System.Numerics.Vector<float>.Count)
        {
            var acc = System.Numerics.Vector<float>.Zero;
            for (; i + System.Numerics.Vector<float>.Count <= n; i += System.Numerics.Vector<float>.Count)
            {
                var qv = new System.Numerics.Vector<float>(q[i..]);
                acc += qv * new System.Numerics.Vector<float>(c[i..]) + System.Numerics.Vector.Abs(qv) * new System.Numerics.Vector<float>(r[i..]);
            }
            s = System.Numerics.Vector.Sum(acc);
        }
        for (; i < n; i++) s += q[i] * c[i] + MathF.Abs(q[i]) * r[i];
        return s;
    }

    public enum Bound { Quest, CentreRadius }

    /// <summary>
    /// Scores of table pages [start, end) for a GQA group: each query head's scaled page scores are turned into a
    /// softmax over the candidates, and the group's softmaxes are averaged (LServe's and FreeKV's GQA rule), so one
    /// selection serves every query head of the KV head. <paramref name="queries"/> is [group, headDim].
    /// </summary>
    public static void GroupScores(PagedKvStore store, PageTable table, int start, int end, ReadOnlySpan<float> queries, int group, float scale,
        Bound bound, Span<float> scores, Span<float> scratch)
    {
        int n = end - start, d = queries.Length / group;
        if (n <= 0) return;
        scores[..n].Clear();
        var row = scratch[..n];
        for (int h = 0; h < group; h++)
        {
            var q = queries.Slice(h * d, d);
            for (int i = 0; i < n; i++)
            {
                int page = table[start + i];
                row[i] = scale * (bound == Bound.Quest ? QuestBound(store, page, q) : CentreRadiusScore(store, page, q));
            }
            TensorPrimitives.SoftMax(row, row);
            TensorPrimitives.Add(scores[..n], row, scores[..n]);
        }
        TensorPrimitives.Divide(scores[..n], group, scores[..n]);
    }

    /// <summary>Indices of the <paramref name="k"/> largest scores, in ascending index order (ties to the lower index).</summary>
    public static int TopK(ReadOnlySpan<float> scores, int k, Span<int> result, Span<float> keyScratch)
    {
        int n = scores.Length;
        k = Math.Min(k, n);
        if (k <= 0) return 0;
        var order = result[..n];
        var keys = keyScratch[..n];
        for (int i = 0; i < n; i++) { order[i] = i; keys[i] = -scores[i]; }
        keys.Sort(order); // unstable, but ties only swap equal scores
        order[..k].Sort();
        return k;
    }
}

/// <summary>
/// Picks the top pages of a table range for a GQA group (<see cref="PageScoring.GroupScores"/> then
/// <see cref="PageScoring.TopK"/>) with buffers reused across steps.
/// </summary>
public sealed class PagePicker
{
    float[] scores = [], scratch = [], keys = [];
    int[] order = [];

    /// <summary>Table indices of the <paramref name="k"/> best pages in [start, end), ascending.</summary>
    public ReadOnlySpan<int> Choose(PagedKvStore store, PageTable table, int start, int end, ReadOnlySpan<float> queries, int group, float scale,
        PageScoring.Bound bound, int k)
    {
        int n = Math.Max(0, end - start);
        if (scores.Length < n)
        {
            int size = Math.Max(n, scores.Length * 2);
            scores = new float[size];
            scratch = new float[size];
            keys = new float[size];
            order = new int[size];
        }
        PageScoring.GroupScores(store, table, start, end, queries, group, scale, bound, scores, scratch);
        int picked = PageScoring.TopK(scores.AsSpan(0, n), k, order, keys);
        for (int i = 0; i < picked; i++) order[i] += start;
        return order.AsSpan(0, picked);
    }
}
