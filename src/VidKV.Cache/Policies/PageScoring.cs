using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>Page scores shared by the page-selecting retrievers, and the GQA group reduction.</summary>
internal static class PageScoring
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
    /// scores[h, i] = scale·(q_h·c_i + |q_h|·r_i), as one integer product of [scale·q_h, |scale·q_h|] against
    /// [c_i; r_i] over the head's <see cref="DigestMatrix"/> (see <see cref="SmallMatrix.MultiplyPairs"/>). Both sides are
    /// quantised symmetrically to <see cref="DigestMatrix.Levels"/> steps of their own largest magnitude (one scale per
    /// query head, one per page), so a score differs from the f32 formula by at most
    /// Σ_e (|x_e|·s_page + |v_e|·s_query + s_query·s_page/2)/2 over the 2·headDim entries x of the query side and v of
    /// the page's digest: about 2⁻¹² of Σ|x|·max|v| for head dim 128. Pages whose scores differ by less than that near
    /// the top-k cut may trade places; nothing else changes. The integer product reads half the bytes of an f32 one
    /// and does twice the multiply-adds per instruction: at 65536 tokens scoring was memory- and FMA-bound at once.
    /// </summary>
    /// <param name="scores">[group, end − start]</param>
    /// <param name="scratch">at least <see cref="CentreRadiusScratch"/>(headDim, group) floats</param>
    public static unsafe void CentreRadiusScores(DigestMatrix digests, int start, int end, ReadOnlySpan<float> queries, int group, float scale,
        Span<float> scores, Span<float> scratch)
    {
        int n = end - start, d = digests.HeadDim, pairs = d; // 2·headDim entries, two per int
        if (n <= 0) return;
        if (end > digests.Columns) throw new ArgumentOutOfRangeException(nameof(end), $"digest matrix holds {digests.Columns} pages, not {end}");
        if (scratch.Length < CentreRadiusScratch(d, group) || scores.Length < group * n || queries.Length < group * d)
            throw new ArgumentException("scores, queries or scratch too short");
        const int panel = DigestMatrix.PanelColumns;
        var packed = MemoryMarshal.Cast<float, int>(scratch[..(group * pairs)]);
        var queryScales = scratch.Slice(group * pairs, group);
        var partial = scratch.Slice(group * pairs + group, group * panel);
        for (int h = 0; h < group; h++)
        {
            var q = queries.Slice(h * d, d);
            float max = MathF.Abs(scale * TensorPrimitives.MaxMagnitude(q)); // MaxMagnitude keeps the sign
            float step = max > 0 ? max / digests.Levels : 0, inverse = max > 0 ? digests.Levels / max : 0;
            queryScales[h] = step;
            for (int p = 0; p < pairs; p++)
            {
                int low = (int)MathF.Round(Entry(q, scale, 2 * p) * inverse), high = (int)MathF.Round(Entry(q, scale, 2 * p + 1) * inverse);
                packed[h * pairs + p] = (ushort)low | high << 16;
            }
        }
        fixed (int* a = packed)
        fixed (float* rowScales = queryScales, part = partial, output = scores, columnScales = digests.Scales)
        fixed (short* matrix = digests.Data)
        {
            for (int c = start; c < end;)
            {
                int first = c / panel * panel, panelEnd = Math.Min(end, first + panel);
                short* b = matrix + digests.Offset(first, 0);
                if (c == first && panelEnd == first + panel)
                    SmallMatrix.MultiplyPairs(a, pairs, group, b, pairs, rowScales, columnScales + first, output + (c - start), n);
                else
                {
                    // A panel cut by the range: all 16 columns into scratch, then the wanted ones.
                    SmallMatrix.MultiplyPairs(a, pairs, group, b, pairs, rowScales, columnScales + first, part, panel);
                    for (int h = 0; h < group; h++)
                        new ReadOnlySpan<float>(part + h * panel + (c - first), panelEnd - c).CopyTo(new Span<float>(output + h * n + (c - start), panelEnd - c));
                }
                c = panelEnd;
            }
        }
    }

    /// <summary>Entry e of the query side [scale·q, |scale·q|].</summary>
    static float Entry(ReadOnlySpan<float> q, float scale, int e) => e < q.Length ? scale * q[e] : MathF.Abs(scale * q[e - q.Length]);

    /// <summary>Floats of scratch <see cref="CentreRadiusScores"/> needs: the packed query pairs, their scales and one cut panel.</summary>
    public static int CentreRadiusScratch(int headDim, int group) => group * (headDim + 1 + DigestMatrix.PanelColumns);

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
        // Σ_h softmax_h / group, one exp per score: subtract the head's max, exponentiate, then add the row scaled by 1/(Σ·group).
        scores[..n].Clear();
        for (int h = 0; h < group; h++)
        {
            var row = perHead.Slice(h * n, n);
            TensorPrimitives.Subtract(row, TensorPrimitives.Max(row), row);
            TensorPrimitives.Exp(row, row);
            TensorPrimitives.MultiplyAdd(row, 1f / (TensorPrimitives.Sum(row) * group), scores[..n], scores[..n]);
        }
    }

    /// <summary>
    /// Indices of the <paramref name="k"/> largest scores, in ascending index order; among equal scores at the cut the
    /// lower indices win (−0 equals +0; a NaN ranks by its bits, beyond the infinity of its sign). The k-th largest
    /// value is found by a binary search over the scores' order-preserving integer keys, each step one vectorised
    /// count of the keys at or above the midpoint: at most 32 branch-free passes of compare-and-add, where a
    /// quickselect's data-dependent branches cost about 8 ns per candidate page (measured in place at 16384 and 65536
    /// tokens).
    /// </summary>
    public static int TopK(ReadOnlySpan<float> scores, int k, Span<int> result, Span<float> keyScratch)
    {
        int n = scores.Length;
        k = Math.Min(k, n);
        if (k <= 0) return 0;
        var keys = MemoryMarshal.Cast<float, int>(keyScratch[..n]);
        OrderedKeys(scores, keys);
        // The largest t with at least k keys ≥ t is the k-th largest key.
        long lo = TensorPrimitives.Min<int>(keys), hi = TensorPrimitives.Max<int>(keys);
        while (lo < hi)
        {
            long mid = lo + (hi - lo + 1) / 2;
            if (CountAtLeast(keys, (int)mid) >= k) lo = mid;
            else hi = mid - 1;
        }
        int threshold = (int)lo;
        int above = threshold == int.MaxValue ? 0 : CountAtLeast(keys, threshold + 1);
        int picked = 0, ties = k - above;
        for (int i = 0; i < n && picked < k; i++)
        {
            if (keys[i] > threshold) result[picked++] = i;
            else if (keys[i] == threshold && ties > 0) { result[picked++] = i; ties--; }
        }
        return picked;
    }

    /// <summary>
    /// Integers that order like the floats: the bits of x + 0 (so −0 becomes +0), with the magnitude bits flipped
    /// for negative values.
    /// </summary>
    static void OrderedKeys(ReadOnlySpan<float> scores, Span<int> keys)
    {
        int i = 0, n = scores.Length;
        if (Vector256.IsHardwareAccelerated)
            for (; i + Vector256<float>.Count <= n; i += Vector256<float>.Count)
            {
                var bits = (Vector256.Create(scores.Slice(i, Vector256<float>.Count)) + Vector256<float>.Zero).AsInt32();
                (bits ^ (Vector256.ShiftRightArithmetic(bits, 31) & Vector256.Create(int.MaxValue))).CopyTo(keys[i..]);
            }
        for (; i < n; i++)
        {
            int bits = BitConverter.SingleToInt32Bits(scores[i] + 0f);
            keys[i] = bits ^ (bits >> 31 & int.MaxValue);
        }
    }

    static int CountAtLeast(ReadOnlySpan<int> keys, int threshold)
    {
        int i = 0, n = keys.Length, count = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var t = Vector512.Create(threshold);
            var counts = Vector512<int>.Zero;
            for (; i + Vector512<int>.Count <= n; i += Vector512<int>.Count)
                counts -= Vector512.GreaterThanOrEqual(Vector512.Create(keys.Slice(i, Vector512<int>.Count)), t); // true lanes are −1
            count = Vector512.Sum(counts);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var t = Vector256.Create(threshold);
            var counts = Vector256<int>.Zero;
            for (; i + Vector256<int>.Count <= n; i += Vector256<int>.Count)
                counts -= Vector256.GreaterThanOrEqual(Vector256.Create(keys.Slice(i, Vector256<int>.Count)), t);
            count = Vector256.Sum(counts);
        }
        for (; i < n; i++) if (keys[i] >= threshold) count++;
        return count;
    }
}

/// <summary>
/// Picks the top pages of a table range for a GQA group (<see cref="PageScoring.GroupScores"/> then
/// <see cref="PageScoring.TopK"/>) with buffers reused across steps.
/// </summary>
internal sealed class PagePicker
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
/// One head's centre ± radius page digests (FreeKV), quantised and in table order: column i is table page i, entry
/// e &lt; headDim its c_e and entry headDim + e its r_e, each entry round(v / s_i) with s_i = max|v| / <see cref="Levels"/>
/// over the page's 2·headDim entries (<see cref="Scales"/>). Stored in panels of <see cref="PanelColumns"/> pages, each a
/// contiguous block of int16 pairs: entries 2p and 2p + 1 of column j at panel offset 32p + 2j (the layout
/// <see cref="SmallMatrix.MultiplyPairs"/> reads), so scoring streams through memory: with one long row per entry the
/// product walked 2·headDim rows at once, more streams than the prefetchers follow, and at 65536 tokens (2048 pages of
/// 32 per head) choosing pages cost 6.7 ms per token. Kept across steps so that scoring all candidate pages needs no
/// gather. A column is rewritten when its table slot holds another page or the page's keys changed
/// (<see cref="PagedKvStore.DigestStamp"/>). While the table saw only appends (<see cref="PageTable.Edits"/>), only the
/// last known column and new ones are checked: reading every page's stamp, scattered over the store's metadata, cost
/// a cache miss per page per step (at 65536 tokens 98,304 per token, about as much as the scoring itself).
/// </summary>
internal sealed class DigestMatrix
{
    public const int PanelColumns = SmallMatrix.PairPanelColumns;

    short[] data = [];
    float[] scales = [];
    int[] pageOf = [], stampOf = [];
    int edits = -1; // the table's Edits when the columns were last made current

    public DigestMatrix(int headDim)
    {
        HeadDim = headDim;
        // A score sums 2·headDim products of two entries of at most Levels each: keep it inside int32.
        Levels = (int)Math.Min(short.MaxValue, Math.Floor(Math.Sqrt(int.MaxValue / (2.0 * headDim))));
    }

    public int HeadDim { get; }
    /// <summary>Largest magnitude of a quantised entry, on both sides of the product: 2896 for head dim 128.</summary>
    public int Levels { get; }
    /// <summary>Columns there is room for (a multiple of <see cref="PanelColumns"/>).</summary>
    public int Capacity { get; private set; }
    /// <summary>Columns that are current (after the last <see cref="Update"/>).</summary>
    public int Columns { get; private set; }
    public short[] Data => data;
    /// <summary>Per column, the step s_i of its entries.</summary>
    public float[] Scales => scales;

    /// <summary>Index in <see cref="Data"/> of entry <paramref name="entry"/> of column <paramref name="column"/>.</summary>
    public int Offset(int column, int entry) => column / PanelColumns * (2 * HeadDim * PanelColumns) + entry / 2 * (2 * PanelColumns) + column % PanelColumns * 2 + (entry & 1);

    /// <summary>Makes columns [0, <paramref name="end"/>) the current digests of the table's first pages.</summary>
    public void Update(PagedKvStore store, PageTable table, int end)
    {
        if (end > Capacity) Grow(Math.Max(end, 2 * Capacity));
        int d = HeadDim;
        // Only appends since the last update: earlier columns still hold the same pages with the same keys.
        int first = table.Edits == edits ? Math.Max(0, Math.Min(Columns, end) - 1) : 0;
        for (int i = first; i < end; i++)
        {
            int page = table[i], stamp = store.DigestStamp(page);
            if (i < Columns && pageOf[i] == page && stampOf[i] == stamp) continue;
            store.Digest(page, out var centre, out var radius);
            float max = Math.Max(MathF.Abs(TensorPrimitives.MaxMagnitude(centre)), MathF.Abs(TensorPrimitives.MaxMagnitude(radius)));
            float inverse = max > 0 ? Levels / max : 0;
            scales[i] = max > 0 ? max / Levels : 0;
            for (int e = 0; e < 2 * d; e++)
                data[Offset(i, e)] = (short)MathF.Round((e < d ? centre[e] : radius[e - d]) * inverse);
            pageOf[i] = page;
            stampOf[i] = stamp;
        }
        Columns = end;
        edits = table.Edits;
    }

    void Grow(int capacity)
    {
        capacity = Math.Max(capacity, 64) + PanelColumns - 1 & ~(PanelColumns - 1);
        var grown = new short[2 * HeadDim * capacity];
        Array.Copy(data, grown, data.Length); // panels are contiguous: the used ones keep their place
        data = grown;
        Array.Resize(ref scales, capacity);
        Array.Resize(ref pageOf, capacity);
        Array.Resize(ref stampOf, capacity);
        Capacity = capacity;
    }
}
