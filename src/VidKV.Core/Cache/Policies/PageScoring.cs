using System.Numerics.Tensors;
using VidKV.Tensors;

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

    /// <summary>
    /// FreeKV's score of one page with the centre ± radius digest, Σ_d max(q_d(c_d−r_d), q_d(c_d+r_d)) = q·c + Σ_d |q_d|·r_d,
    /// as a plain loop: the reference the batched <see cref="CentreRadiusScores"/> is tested against.
    /// </summary>
    public static float CentreRadiusScore(PagedKvStore store, int page, ReadOnlySpan<float> q)
    {
        store.Digest(page, out var c, out var r);
        float s = 0;
        for (int i = 0; i < q.Length; i++) s += q[i] * c[i] + MathF.Abs(q[i]) * r[i];
        return s;
    }

    public enum Bound { Quest, CentreRadius }

    /// <summary>
    /// FreeKV's score for every query head of a group and every page of table [start, end) at once:
    /// scores[h, i] = scale·(q_h·c_i + |q_h|·r_i), one small product [q_h, |q_h|] · [c_i; r_i] over the head's
    /// <see cref="DigestMatrix"/> (digests kept transposed in table order; see <see cref="SmallMatrix"/>).
    /// </summary>
    /// <param name="scores">[group, end − start]</param>
    /// <param name="scratch">at least <see cref="CentreRadiusScratch"/>(headDim, group) floats</param>
    public static unsafe void CentreRadiusScores(DigestMatrix digests, int start, int end, ReadOnlySpan<float> queries, int group, float scale,
        Span<float> scores, Span<float> scratch)
    {
        int n = end - start, d = digests.HeadDim, k = 2 * d;
        if (n <= 0) return;
        if (end > digests.Columns) throw new ArgumentOutOfRangeException(nameof(end), $"digest matrix holds {digests.Columns} pages, not {end}");
        if (scratch.Length < CentreRadiusScratch(d, group) || scores.Length < group * n || queries.Length < group * d)
            throw new ArgumentException("scores, queries or scratch too short");
        fixed (float* lanes = scratch, output = scores, matrix = digests.Data)
        {
            for (int h = 0; h < group; h++)
                for (int i = 0; i < d; i++)
                {
                    float q = scale * queries[h * d + i];
                    lanes[h * k + i] = q;
                    lanes[h * k + d + i] = MathF.Abs(q);
                }
            // One product per panel of 16 pages: each reads its 2d × 16 digests as one contiguous block.
            for (int c = start; c < end;)
            {
                int panelEnd = Math.Min(end, (c / DigestMatrix.PanelColumns + 1) * DigestMatrix.PanelColumns);
                SmallMatrix.Multiply(lanes, k, group, matrix + digests.Offset(c), DigestMatrix.PanelColumns, k, panelEnd - c, output + (c - start), n, accumulate: false);
                c = panelEnd;
            }
        }
    }

    /// <summary>Floats of scratch <see cref="CentreRadiusScores"/> needs.</summary>
    public static int CentreRadiusScratch(int headDim, int group) => 2 * headDim * group;

    /// <summary>
    /// Scores of table pages [start, end) for a GQA group: each query head's scaled page scores are turned into a
    /// softmax over the candidates, and the group's softmaxes are averaged (LServe's and FreeKV's GQA rule), so one
    /// selection serves every query head of the KV head. <paramref name="queries"/> is [group, headDim];
    /// <paramref name="perHead"/> holds [group, end − start] floats and <paramref name="scratch"/>
    /// <see cref="CentreRadiusScratch"/> floats.
    /// </summary>
    public static void GroupScores(PagedKvStore store, PageTable table, int start, int end, ReadOnlySpan<float> queries, int group, float scale,
        Bound bound, Span<float> scores, Span<float> perHead, Span<float> scratch, DigestMatrix? digests = null)
    {
        int n = end - start, d = queries.Length / group;
        if (n <= 0) return;
        if (bound == Bound.CentreRadius)
        {
            if (digests == null) throw new ArgumentNullException(nameof(digests), "centre ± radius scores need the head's digest matrix");
            digests.Update(store, table, end);
            CentreRadiusScores(digests, start, end, queries, group, scale, perHead, scratch);
        }
        else
            for (int h = 0; h < group; h++)
            {
                var q = queries.Slice(h * d, d);
                for (int i = 0; i < n; i++) perHead[h * n + i] = scale * QuestBound(store, table[start + i], q);
            }
        scores[..n].Clear();
        for (int h = 0; h < group; h++)
        {
            var row = perHead.Slice(h * n, n);
            TensorPrimitives.SoftMax(row, row);
            TensorPrimitives.Add(scores[..n], row, scores[..n]);
        }
        TensorPrimitives.Divide(scores[..n], group, scores[..n]);
    }

    /// <summary>
    /// Indices of the <paramref name="k"/> largest scores, in ascending index order; among equal scores at the cut the
    /// lower indices win. Expected linear time: the k-th largest value is found by quickselect on a copy.
    /// </summary>
    public static int TopK(ReadOnlySpan<float> scores, int k, Span<int> result, Span<float> keyScratch)
    {
        int n = scores.Length;
        k = Math.Min(k, n);
        if (k <= 0) return 0;
        var values = keyScratch[..n];
        scores.CopyTo(values);
        float threshold = KthLargest(values, k);
        int above = 0;
        for (int i = 0; i < n; i++) if (scores[i] > threshold) above++;
        int picked = 0, ties = k - above;
        for (int i = 0; i < n && picked < k; i++)
        {
            if (scores[i] > threshold) result[picked++] = i;
            else if (scores[i] == threshold && ties > 0) { result[picked++] = i; ties--; }
        }
        return picked;
    }

    /// <summary>The k-th largest value (1-based) of <paramref name="values"/>, which it reorders (Hoare quickselect, middle pivot).</summary>
    static float KthLargest(Span<float> values, int k)
    {
        int lo = 0, hi = values.Length - 1, target = k - 1; // position in descending order
        while (lo < hi)
        {
            float pivot = values[lo + (hi - lo) / 2];
            int i = lo, j = hi;
            while (i <= j)
            {
                while (values[i] > pivot) i++;
                while (values[j] < pivot) j--;
                if (i <= j) { (values[i], values[j]) = (values[j], values[i]); i++; j--; }
            }
            // Now [lo, j] ≥ pivot ≥ [i, hi], and everything strictly between j and i equals the pivot.
            if (target <= j) hi = j;
            else if (target >= i) lo = i;
            else return pivot;
        }
        return values[target];
    }
}

/// <summary>
/// Picks the top pages of a table range for a GQA group (<see cref="PageScoring.GroupScores"/> then
/// <see cref="PageScoring.TopK"/>) with buffers reused across steps.
/// </summary>
public sealed class PagePicker
{
    [ThreadStatic] static PagePicker? current;

    /// <summary>This thread's picker (policies choose pages for several heads at once on the worker pool).</summary>
    public static PagePicker ForCurrentThread => current ??= new PagePicker();

    float[] scores = [], perHead = [], scratch = [], keys = [];
    int[] order = [];

    /// <summary>Table indices of the <paramref name="k"/> best pages in [start, end), ascending.</summary>
    /// <param name="digests">the head's digest matrix, for <see cref="PageScoring.Bound.CentreRadius"/> without a gather</param>
    public ReadOnlySpan<int> Choose(PagedKvStore store, PageTable table, int start, int end, ReadOnlySpan<float> queries, int group, float scale,
        PageScoring.Bound bound, int k, DigestMatrix? digests = null)
    {
        int n = Math.Max(0, end - start);
        if (scores.Length < n)
        {
            int size = Math.Max(n, scores.Length * 2);
            scores = new float[size];
            keys = new float[size];
            order = new int[size];
        }
        if (perHead.Length < group * n) perHead = new float[Math.Max(group * n, 2 * perHead.Length)];
        int need = PageScoring.CentreRadiusScratch(store.HeadDim, group);
        if (scratch.Length < need) scratch = new float[need];
        PageScoring.GroupScores(store, table, start, end, queries, group, scale, bound, scores, perHead, scratch, digests);
        int picked = PageScoring.TopK(scores.AsSpan(0, n), k, order, keys);
        for (int i = 0; i < picked; i++) order[i] += start;
        return order.AsSpan(0, picked);
    }
}

/// <summary>
/// One head's centre ± radius page digests (FreeKV), transposed and in table order: column i is table page i, row
/// e &lt; headDim its c_e and row headDim + e its r_e. Stored in panels of <see cref="PanelColumns"/> pages, each a
/// contiguous [2·headDim, 16] block, so scoring streams through memory: with one long row per e the product walked
/// 2·headDim rows at once, more streams than the prefetchers follow, and at 65536 tokens (2048 pages of 32 per head)
/// choosing pages cost 6.7 ms per token. Kept across steps so that scoring all candidate pages needs no gather. A
/// column is rewritten when its table slot holds another page or the page's keys changed
/// (<see cref="PagedKvStore.DigestStamp"/>).
/// </summary>
public sealed class DigestMatrix(int headDim)
{
    public const int PanelColumns = 16;

    float[] data = [];
    int[] pageOf = [], stampOf = [];

    public int HeadDim { get; } = headDim;
    /// <summary>Columns there is room for (a multiple of <see cref="PanelColumns"/>).</summary>
    public int Capacity { get; private set; }
    /// <summary>Columns that are current (after the last <see cref="Update"/>).</summary>
    public int Columns { get; private set; }
    public float[] Data => data;

    /// <summary>Index in <see cref="Data"/> of row 0 of column <paramref name="column"/>; row e is PanelColumns·e further.</summary>
    public int Offset(int column) => column / PanelColumns * (2 * HeadDim * PanelColumns) + column % PanelColumns;

    /// <summary>Makes columns [0, <paramref name="end"/>) the current digests of the table's first pages.</summary>
    public void Update(PagedKvStore store, PageTable table, int end)
    {
        if (end > Capacity) Grow(Math.Max(end, 2 * Capacity));
        int d = HeadDim;
        for (int i = 0; i < end; i++)
        {
            int page = table[i], stamp = store.DigestStamp(page);
            if (i < Columns && pageOf[i] == page && stampOf[i] == stamp) continue;
            store.Digest(page, out var centre, out var radius);
            int at = Offset(i);
            for (int e = 0; e < d; e++)
            {
                data[at + e * PanelColumns] = centre[e];
                data[at + (d + e) * PanelColumns] = radius[e];
            }
            pageOf[i] = page;
            stampOf[i] = stamp;
        }
        Columns = end;
    }

    void Grow(int capacity)
    {
        capacity = Math.Max(capacity, 64) + PanelColumns - 1 & ~(PanelColumns - 1);
        var grown = new float[2 * HeadDim * capacity];
        Array.Copy(data, grown, data.Length); // panels are contiguous: the used ones keep their place
        data = grown;
        Array.Resize(ref pageOf, capacity);
        Array.Resize(ref stampOf, capacity);
        Capacity = capacity;
    }
}
