using VidKV.Cache;

namespace VidKV.Engine;

/// <summary>
/// Exact attention of one KV head's query heads over every row it stores, in double precision, against attention
/// restricted to a subset of the rows: the measures ALGORITHMS.md judges policies by — attention recall
/// R(S) = Σ_{i∈S} p_i and relative output error ‖o_S − o‖ / ‖o‖. For evaluation tools, not the decode path.
/// </summary>
internal static class AttentionComparison
{
    /// <summary>Appends one recall and one error per query head of <paramref name="queries"/> ([group, headDim]).</summary>
    /// <param name="keep">whether the row at an original position is in the subset</param>
    public static void Compare(PagedKvStore store, PageTable table, ReadOnlySpan<float> queries, int group, float scale, Func<int, bool> keep,
        List<double> recall, List<double> error)
    {
        int d = store.HeadDim, n = table.TokenCount;
        var keys = new float[store.PageSize * d];
        var row = new float[d];
        var values = new double[n * d];
        var kept = new bool[n];
        var dots = new double[group * n];
        int i = 0;
        foreach (int page in table.Pages)
        {
            store.ReadKeys(page, keys);
            var positions = store.Positions(page);
            for (int j = 0; j < store.Count(page); j++, i++)
            {
                kept[i] = keep(positions[j]);
                for (int h = 0; h < group; h++)
                {
                    double s = 0;
                    for (int e = 0; e < d; e++) s += (double)queries[h * d + e] * keys[j * d + e];
                    dots[h * n + i] = s * scale;
                }
                store.ReadValue(page, j, row);
                for (int e = 0; e < d; e++) values[i * d + e] = row[e];
            }
        }
        var o = new double[d];
        var oS = new double[d];
        for (int h = 0; h < group; h++)
        {
            var scores = dots.AsSpan(h * n, n);
            double max = double.NegativeInfinity, total = 0, mass = 0;
            foreach (double s in scores) max = Math.Max(max, s);
            Array.Clear(o);
            Array.Clear(oS);
            for (int j = 0; j < n; j++)
            {
                double p = Math.Exp(scores[j] - max);
                total += p;
                if (kept[j]) mass += p;
                for (int e = 0; e < d; e++)
                {
                    o[e] += p * values[j * d + e];
                    if (kept[j]) oS[e] += p * values[j * d + e];
                }
            }
            double diff = 0, norm = 0;
            for (int e = 0; e < d; e++)
            {
                double a = o[e] / total, b = mass > 0 ? oS[e] / mass : 0;
                diff += (a - b) * (a - b);
                norm += a * a;
            }
            recall.Add(mass / total);
            error.Add(norm > 0 ? Math.Sqrt(diff / norm) : 0);
        }
    }
}
