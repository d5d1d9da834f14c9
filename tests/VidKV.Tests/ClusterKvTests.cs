using System.Numerics.Tensors;
using VidKV.Cache;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// The k-means assignment kernel (<see cref="NearestCentre"/>) against its scalar reference on random unit vectors of
/// odd sizes. CI runs this class again with AVX-512 and AVX2 switched off (its name matches the kernel-test filter),
/// so the 512-bit, 256-bit and scalar paths all run; they compute the same integers, so their labels are the same.
/// </summary>
public class NearestCentreKernelTests
{
    internal static float[] UnitRows(Random rng, int rows, int d)
    {
        var x = new float[rows * d];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * d, d);
            TensorPrimitives.Divide(row, TensorPrimitives.Norm(row), row);
        }
        return x;
    }

    static unsafe int[] Assign(float[] keys, int n, float[] centres, int k, int d)
    {
        var packedKeys = new short[NearestCentre.PackedKeyLength(n, d)];
        var packedCentres = new int[k * NearestCentre.Pairs(d)];
        var labels = new int[NearestCentre.Panels(n) * NearestCentre.PanelKeys];
        NearestCentre.PackKeys(keys, n, d, 0, NearestCentre.Panels(n), packedKeys);
        NearestCentre.PackCentres(centres, k, d, packedCentres);
        fixed (short* pk = packedKeys)
        fixed (int* pc = packedCentres, pl = labels)
            NearestCentre.Assign(pk, NearestCentre.Pairs(d), 0, NearestCentre.Panels(n), pc, k, pl);
        return labels[..n];
    }

    static double Dot(float[] a, int i, float[] b, int j, int d)
    {
        double sum = 0;
        for (int e = 0; e < d; e++) sum += (double)a[i * d + e] * b[j * d + e];
        return sum;
    }

    /// <summary>
    /// Every key's label scores within the quantisation bound (twice √d/Levels + d/(4·Levels²)) of the reference's best,
    /// and nearly every label is the reference's: only near-ties may differ.
    /// </summary>
    [Theory]
    [InlineData(24, 37, 5)]
    [InlineData(24, 1000, 33)]
    [InlineData(40, 37, 33)]
    [InlineData(40, 1000, 5)]
    [InlineData(64, 37, 5)]
    [InlineData(64, 1000, 33)]
    [InlineData(7, 1000, 33)]
    [InlineData(64, 1, 1)]
    [InlineData(64, 16, 9)]
    public void LabelsMatchTheScalarReference(int d, int n, int k)
    {
        var rng = new Random(d * 1000 + n + k);
        float[] keys = UnitRows(rng, n, d), centres = UnitRows(rng, k, d);
        var want = new int[n];
        NearestCentre.AssignReference(keys, n, centres, k, d, want);
        var got = Assign(keys, n, centres, k, d);
        double bound = 2 * (Math.Sqrt(d) / NearestCentre.Levels + d / (4.0 * NearestCentre.Levels * NearestCentre.Levels));
        int differ = 0;
        for (int i = 0; i < n; i++)
        {
            Assert.InRange(got[i], 0, k - 1);
            if (got[i] == want[i]) continue;
            differ++;
            double best = Dot(keys, i, centres, want[i], d), mine = Dot(keys, i, centres, got[i], d);
            Assert.True(mine >= best - bound, $"d={d} n={n} k={k} key {i}: label {got[i]} scores {mine:R}, the reference's {want[i]} {best:R}");
        }
        Assert.True(differ <= n / 100, $"{differ} of {n} labels differ from the reference");
    }

    /// <summary>Equal centres score equally: the first of them wins, as in the reference, whatever the block it falls in.</summary>
    [Fact]
    public void TiesGoToTheFirstCentre()
    {
        var rng = new Random(7);
        const int d = 40, n = 1000, k = 33;
        float[] keys = UnitRows(rng, n, d), distinct = UnitRows(rng, 5, d), centres = new float[k * d];
        for (int c = 0; c < k; c++) distinct.AsSpan(c % 5 * d, d).CopyTo(centres.AsSpan(c * d));
        var want = new int[n];
        NearestCentre.AssignReference(keys, n, centres, k, d, want);
        var got = Assign(keys, n, centres, k, d);
        Assert.All(got, label => Assert.InRange(label, 0, 4));
        Assert.True(want.Zip(got).Count(p => p.First != p.Second) <= n / 100);
    }
}

/// <summary>Spherical k-means and the ClusterKV policy built on it.</summary>
public class ClusterKvTests
{
    /// <summary>
    /// The plain k-means of <see cref="SphericalKMeans"/> in f64 (the scalar reference): centres at evenly spaced keys,
    /// assign by the largest dot product, re-centre on the normalised sum of members' unit vectors, stop when nothing changes.
    /// </summary>
    static int[] ReferenceKMeans(float[] keys, int n, int d, int k, int iterations)
    {
        var unit = new double[n * d];
        for (int i = 0; i < n; i++)
        {
            double norm = 0;
            for (int e = 0; e < d; e++) norm += (double)keys[i * d + e] * keys[i * d + e];
            for (int e = 0; e < d; e++) unit[i * d + e] = keys[i * d + e] / Math.Sqrt(norm);
        }
        var centres = new double[k * d];
        for (int c = 0; c < k; c++) Array.Copy(unit, (long)c * n / k * d, centres, c * d, d);
        var labels = new int[n];
        for (int it = 0; it < iterations; it++)
        {
            bool changed = it == 0;
            for (int i = 0; i < n; i++)
            {
                int best = 0;
                double bestScore = double.NegativeInfinity;
                for (int c = 0; c < k; c++)
                {
                    double s = 0;
                    for (int e = 0; e < d; e++) s += unit[i * d + e] * centres[c * d + e];
                    if (s > bestScore) { bestScore = s; best = c; }
                }
                changed |= labels[i] != best;
                labels[i] = best;
            }
            if (!changed) break;
            for (int c = 0; c < k; c++)
            {
                var sum = new double[d];
                int size = 0;
                for (int i = 0; i < n; i++)
                    if (labels[i] == c) { size++; for (int e = 0; e < d; e++) sum[e] += unit[i * d + e]; }
                if (size == 0) continue;
                double norm = Math.Sqrt(sum.Sum(v => v * v));
                for (int e = 0; e < d; e++) centres[c * d + e] = sum[e] / norm;
            }
        }
        return labels;
    }

    /// <summary>Keys around <paramref name="groups"/> well-separated directions (so no key is near a tie), scaled like raw keys.</summary>
    static float[] GroupedKeys(Random rng, int n, int d, int groups)
    {
        var directions = NearestCentreKernelTests.UnitRows(rng, groups, d);
        var keys = new float[n * d];
        for (int i = 0; i < n; i++)
        {
            int g = rng.Next(groups);
            float scale = (float)(0.5 + 3 * rng.NextDouble());
            for (int e = 0; e < d; e++) keys[i * d + e] = scale * (directions[g * d + e] + 0.05f * (float)(rng.NextDouble() * 2 - 1));
        }
        return keys;
    }

    /// <summary>
    /// On grouped keys, the k-means labels equal the f64 reference's; the sums are the members' raw keys and the sizes
    /// their counts; and one thread or two give the same bits (sums are taken per cluster in key order).
    /// </summary>
    [Theory]
    [InlineData(1000, 64, 33)]
    [InlineData(37, 24, 5)]
    [InlineData(1000, 40, 5)]
    public void KMeansMatchesTheReferenceAndIgnoresThreadCount(int n, int d, int k)
    {
        var rng = new Random(n + d + k);
        var keys = GroupedKeys(rng, n, d, k);
        var want = ReferenceKMeans(keys, n, d, k, 20);
        var results = new List<(int[] Labels, float[] Centres, float[] Sums, int[] Sizes)>();
        foreach (int threads in new[] { 1, 2 })
        {
            using var pool = new WorkerPool(threads);
            var (labels, centres, sums, sizes) = (new int[n], new float[k * d], new float[k * d], new int[k]);
            new SphericalKMeans().Run(keys, n, d, k, 20, labels, centres, sums, sizes, pool);
            results.Add((labels, centres, sums, sizes));
        }
        var (got, unit, raw, count) = results[0];
        Assert.Equal(want, got);
        Assert.Equal(got, results[1].Labels);
        Assert.Equal(unit, results[1].Centres);
        Assert.Equal(raw, results[1].Sums);
        for (int c = 0; c < k; c++)
        {
            Assert.Equal(got.Count(l => l == c), count[c]);
            for (int e = 0; e < d; e++)
            {
                double sum = Enumerable.Range(0, n).Where(i => got[i] == c).Sum(i => (double)keys[i * d + e]);
                Assert.True(Math.Abs(raw[c * d + e] - sum) <= 1e-4 * Math.Max(1, Math.Abs(sum)), $"cluster {c} entry {e}: sum {raw[c * d + e]}, want {sum}");
            }
            if (count[c] > 0) Assert.Equal(1f, TensorPrimitives.Norm(unit.AsSpan(c * d, d)), 5);
        }
    }

    /// <summary>
    /// Clusterings run together (a layer's heads, each pass one pool job over all of them) give the bits each gives
    /// alone on one thread, though they converge after different numbers of iterations.
    /// </summary>
    [Fact]
    public void ClusteringsTogetherEqualEachAlone()
    {
        var rng = new Random(11);
        const int d = 40;
        (int N, int K)[] shapes = [(1000, 33), (37, 5), (500, 17), (2000, 64)];
        var keys = shapes.Select(s => GroupedKeys(rng, s.N, d, s.K + 3)).ToArray();
        (int[] Labels, float[] Centres, float[] Sums, int[] Sizes) Outputs(int i) => (new int[shapes[i].N], new float[shapes[i].K * d], new float[shapes[i].K * d], new int[shapes[i].K]);
        var alone = Enumerable.Range(0, shapes.Length).Select(Outputs).ToArray();
        var together = Enumerable.Range(0, shapes.Length).Select(Outputs).ToArray();
        var iterations = new int[shapes.Length];
        for (int i = 0; i < shapes.Length; i++)
        {
            var solver = new SphericalKMeans();
            solver.Run(keys[i], shapes[i].N, d, shapes[i].K, 20, alone[i].Labels, alone[i].Centres, alone[i].Sums, alone[i].Sizes, pool: null);
            iterations[i] = solver.IterationsRun;
        }
        using var pool = new WorkerPool(2);
        var problems = Enumerable.Range(0, shapes.Length).Select(i => new SphericalKMeans.Problem(new SphericalKMeans(), keys[i], shapes[i].N, shapes[i].K,
            together[i].Labels, together[i].Centres, together[i].Sums, together[i].Sizes)).ToArray();
        SphericalKMeans.RunTogether(problems, d, 20, pool);
        for (int i = 0; i < shapes.Length; i++)
        {
            Assert.Equal(alone[i].Labels, together[i].Labels);
            Assert.Equal(alone[i].Centres, together[i].Centres);
            Assert.Equal(alone[i].Sums, together[i].Sums);
            Assert.Equal(alone[i].Sizes, together[i].Sizes);
            Assert.Equal(iterations[i], problems[i].Solver.IterationsRun);
        }
        Assert.True(iterations.Distinct().Count() > 1, $"the clusterings should converge after different iterations: {string.Join(", ", iterations)}");
    }

    /// <summary>
    /// Passes that compare keys with the moved centres only give exactly the labels, centres and sums of full passes, on
    /// keys with many near-ties (uniform directions, slow to converge) and on grouped ones, one thread or two.
    /// </summary>
    [Theory]
    [InlineData(3000, 64, 100, false, 2)]
    [InlineData(1000, 40, 33, true, 2)]
    [InlineData(4099, 24, 200, false, 1)]
    public void PrunedPassesEqualFullPasses(int n, int d, int k, bool grouped, int threads)
    {
        var rng = new Random(n + k);
        var keys = grouped ? GroupedKeys(rng, n, d, k) : NearestCentreKernelTests.UnitRows(rng, n, d);
        (int[] Labels, float[] Centres, float[] Sums, int[] Sizes, int Iterations, int Pruned) Cluster(bool prune)
        {
            bool was = SphericalKMeans.Prune;
            SphericalKMeans.Prune = prune;
            try
            {
                using var pool = new WorkerPool(threads);
                var (labels, centres, sums, sizes) = (new int[n], new float[k * d], new float[k * d], new int[k]);
                var solver = new SphericalKMeans();
                solver.Run(keys, n, d, k, 20, labels, centres, sums, sizes, pool);
                return (labels, centres, sums, sizes, solver.IterationsRun, solver.PrunedPasses);
            }
            finally { SphericalKMeans.Prune = was; }
        }
        var full = Cluster(false);
        var pruned = Cluster(true);
        Assert.Equal(full.Labels, pruned.Labels);
        Assert.Equal(full.Centres, pruned.Centres);
        Assert.Equal(full.Sums, pruned.Sums);
        Assert.Equal(full.Sizes, pruned.Sizes);
        Assert.Equal(full.Iterations, pruned.Iterations);
        Assert.Equal(0, full.Pruned);
        Assert.True(pruned.Pruned > 0, $"no pass of {pruned.Iterations} was pruned");
    }

    /// <summary>Incremental assignment labels each key with its nearest centre, as a one-iteration assignment would.</summary>
    [Fact]
    public void NearestLabelsEachKeyWithItsClosestCentre()
    {
        var rng = new Random(3);
        const int d = 24, n = 300, k = 17;
        var keys = GroupedKeys(rng, n, d, 40);
        var centres = NearestCentreKernelTests.UnitRows(rng, k, d);
        var got = new int[n];
        new SphericalKMeans().Nearest(keys, n, d, centres, k, got);
        var unit = (float[])keys.Clone();
        for (int i = 0; i < n; i++) TensorPrimitives.Divide(unit.AsSpan(i * d, d), TensorPrimitives.Norm(unit.AsSpan(i * d, d)), unit.AsSpan(i * d, d));
        var want = new int[n];
        NearestCentre.AssignReference(unit, n, centres, k, d, want);
        Assert.True(want.Zip(got).Count(p => p.First != p.Second) <= n / 100);
    }

    static DecoderModel Stories() => ModelLoader.Load(TestData.Model("stories260K"));

    static int[] StoryTokens(DecoderModel model, int count) =>
        model.Tokenizer.Encode(File.ReadAllText(TestData.File_("text/story_eval.txt")), addSpecial: true, parseSpecial: false).Take(count).ToArray();

    static (PagedKvCache Cache, ClusterKvPolicy Policy) ClusterCache(DecoderModel model, int budget)
    {
        var c = model.Config;
        var cache = new KvCacheConfig { Default = "clusterkv", Budget = budget, PageSize = 16, Type = GgmlType.F32 }.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim);
        return (cache, Assert.IsType<ClusterKvPolicy>(cache.Policies[0, 0]));
    }

    /// <summary>
    /// Batches cluster on ingest: the first clustering when the context reaches the budget, then every batch joins the
    /// clusters and all is clustered afresh when the keys have doubled (budget 64, batches of 32: 48 keys at 64
    /// tokens, 112 at 128, 240 at 256). Decode steps short of a window, and rewinds to the clustered length, cluster
    /// nothing more; a step still reads exactly the budget.
    /// </summary>
    [Fact]
    public void BatchesClusterOnIngestAndDecodeDoesNot()
    {
        using var model = Stories();
        var tokens = StoryTokens(model, 300);
        var (cache, policy) = ClusterCache(model, 64);
        int heads = model.Config.LayerCount * model.Config.KvHeadCount;
        using var state = model.CreateState(cache);
        var logits = new float[model.Config.VocabSize];
        var prepared = new List<int>();
        for (int start = 0; start < 256; start += 32)
        {
            model.Forward(state, tokens.AsSpan(start, 32), logits);
            if (policy.Work.LastPrepareKeys is int keys && (prepared.Count == 0 || prepared[^1] != keys)) prepared.Add(keys);
            Assert.Equal(start + 32 >= 64 ? heads : 0, policy.Work.LastPrepareHeads);
        }
        Assert.Equal([48, 112, 240], prepared.Where(k => k > 0));
        var work = policy.Work;
        Assert.True(work.AppendTicks > 0, "batches between clusterings are assigned to clusters");
        int reads = 0;
        cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> read) =>
        {
            int rows = 0;
            foreach (var view in read) rows += view.Mask == KvPageView.AllRows ? view.Count : System.Numerics.BitOperations.PopCount(view.Mask);
            Assert.Equal(64, rows);
            reads++;
        };
        for (int round = 0; round < 2; round++)
        {
            for (int t = 256; t < 256 + policy.Window - 1; t++) model.Forward(state, tokens.AsSpan(t, 1), logits);
            cache.Truncate(256);
        }
        Assert.Equal(2 * (policy.Window - 1) * heads, reads);
        Assert.Equal(work, policy.Work);
    }

    /// <summary>
    /// Generated tokens gather until a window, then become new clusters (appended work); a rewind into the clustered
    /// part drops the members past the end and keeps reading exactly the budget, of positions that exist.
    /// </summary>
    [Fact]
    public void WindowsClusterAndRewindsDropWhatIsGone()
    {
        using var model = Stories();
        var tokens = StoryTokens(model, 400);
        var (cache, policy) = ClusterCache(model, 64);
        using var state = model.CreateState(cache);
        var logits = new float[model.Config.VocabSize];
        for (int t = 0; t < 200; t++) model.Forward(state, tokens.AsSpan(t, 1), logits);
        var work = policy.Work;
        Assert.Equal(48, work.LastPrepareKeys); // one clustering at the budget, then windows
        Assert.True(work.AppendTicks > 0, $"windows of {policy.Window} generated tokens are clustered");
        cache.Truncate(150);
        int end = 150;
        cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> read) =>
        {
            var positions = new List<int>();
            foreach (var view in read)
                unsafe
                {
                    for (int j = 0; j < view.Count; j++)
                        if (view.Mask == KvPageView.AllRows || (view.Mask >> j & 1) != 0) positions.Add(view.Positions[j]);
                }
            Assert.Equal(64, positions.Count);
            Assert.All(positions, p => Assert.InRange(p, 0, end));
        };
        for (int t = 150; t < 180; t++, end++) model.Forward(state, tokens.AsSpan(t, 1), logits);
    }
}
