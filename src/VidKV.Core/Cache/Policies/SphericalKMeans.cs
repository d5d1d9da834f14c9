using System.Numerics.Tensors;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>
/// Spherical k-means (Dhillon and Modha, 2001), as ClusterKV clusters keys by cosine: keys are normalised once, centres
/// start at evenly spaced keys (key ⌊c·n/k⌋), and each iteration assigns every key to the centre of highest cosine
/// (<see cref="NearestCentre"/>: a keys × centres integer product, the keys' panels split between the worker pool's
/// threads) and re-centres each cluster on the normalised sum of its members' unit vectors (an empty cluster keeps its
/// centre), until no label changes or the iterations run out. Sums are taken per cluster in key order, with each
/// thread summing its own clusters, so the result is the same for any thread count and instruction set. One object
/// keeps its buffers between runs; it is not thread-safe.
/// </summary>
public sealed unsafe class SphericalKMeans
{
    /// <summary>
    /// Multiply-adds of one assignment pass below which the k-means stays on the calling thread: a pool job costs
    /// microseconds to start and join (milliseconds on a busy machine), and a window of generated keys is tiny.
    /// </summary>
    public const long ParallelWork = 1 << 22;

    float[] unit = [];
    short[] packedKeys = [];
    int[] packedCentres = [], labels = [], changes = [];

    /// <summary>Iterations the last <see cref="Run"/> took (it stops early once no label changes).</summary>
    public int IterationsRun { get; private set; }

    /// <summary>
    /// Clusters <paramref name="keys"/> [<paramref name="keyCount"/>, <paramref name="dimension"/>] into
    /// <paramref name="clusterCount"/> clusters: their labels, unit centres, raw-key sums and sizes. Runs on
    /// <paramref name="pool"/> (null, or less than <see cref="ParallelWork"/> per pass: on the calling thread).
    /// </summary>
    /// <param name="assignment">[keyCount] the cluster of each key</param>
    /// <param name="centres">[clusterCount, dimension] unit centres (for assigning later keys)</param>
    /// <param name="sums">[clusterCount, dimension] sums of the members' raw keys (their mean is what attention scores)</param>
    /// <param name="sizes">[clusterCount] members per cluster</param>
    public void Run(ReadOnlySpan<float> keys, int keyCount, int dimension, int clusterCount, int iterations, Span<int> assignment,
        Span<float> centres, Span<float> sums, Span<int> sizes, WorkerPool? pool)
    {
        int n = keyCount, d = dimension, k = clusterCount;
        if (n < 1 || d < 1 || k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(clusterCount), $"need 1 ≤ clusters ≤ keys, not {k} clusters of {n} keys");
        if (keys.Length < n * d || assignment.Length < n || centres.Length < k * d || sums.Length < k * d || sizes.Length < k)
            throw new ArgumentException("keys, assignment, centres, sums or sizes too short");
        if ((long)n * k * d < ParallelWork) pool = null;
        Prepare(n, d, k, pool);
        int threads = pool?.ThreadCount ?? 1;
        fixed (float* raw = keys, unitKeys = unit, centre = centres, sum = sums)
        fixed (int* label = labels, assigned = assignment, size = sizes, packed = packedCentres, changed = changes)
        fixed (short* packedKey = packedKeys)
        {
            var job = new Job
            {
                Raw = raw, Unit = unitKeys, Centres = centre, Sums = sum, Labels = label, Assignment = assigned, Sizes = size,
                PackedCentres = packed, PackedKeys = packedKey, Changes = changed, KeyCount = n, Dimension = d, ClusterCount = k,
            };
            Execute(pool, &Normalize, &job);
            for (int c = 0; c < k; c++) new ReadOnlySpan<float>(unitKeys + (long)c * n / k * d, d).CopyTo(centres.Slice(c * d, d));
            NearestCentre.PackCentres(centres, k, d, packedCentres);
            IterationsRun = 0;
            for (int it = 0; it < iterations; it++)
            {
                IterationsRun++;
                job.First = it == 0;
                Execute(pool, &AssignKeys, &job);
                int total = 0;
                for (int t = 0; t < threads; t++) total += changes[t];
                if (total == 0 && it > 0) break;
                Execute(pool, &Recentre, &job);
            }
            job.SumRaw = true;
            Execute(pool, &Recentre, &job);
        }
    }

    /// <summary>
    /// Labels [<paramref name="keyCount"/>] of the nearest of <paramref name="centreCount"/> unit centres (by cosine, as
    /// <see cref="Run"/> assigns) for each of <paramref name="keys"/>, on the calling thread: ClusterKV's incremental
    /// assignment of keys that arrive between clusterings.
    /// </summary>
    public void Nearest(ReadOnlySpan<float> keys, int keyCount, int dimension, ReadOnlySpan<float> centres, int centreCount, Span<int> assignment)
    {
        int n = keyCount, d = dimension;
        if (n == 0) return;
        Prepare(n, d, centreCount, null);
        NearestCentre.PackCentres(centres, centreCount, d, packedCentres);
        fixed (float* raw = keys, unitKeys = unit)
        fixed (int* label = labels, packed = packedCentres)
        fixed (short* packedKey = packedKeys)
        {
            var job = new Job { Raw = raw, Unit = unitKeys, PackedKeys = packedKey, KeyCount = n, Dimension = d };
            Normalize(&job, 0, 1);
            NearestCentre.Assign(packedKey, NearestCentre.Pairs(d), 0, NearestCentre.Panels(n), packed, centreCount, label);
        }
        labels.AsSpan(0, n).CopyTo(assignment);
    }

    void Prepare(int n, int d, int k, WorkerPool? pool)
    {
        if (unit.Length < n * d) unit = new float[n * d];
        if (packedKeys.Length < NearestCentre.PackedKeyLength(n, d)) packedKeys = new short[NearestCentre.PackedKeyLength(n, d)];
        if (packedCentres.Length < k * NearestCentre.Pairs(d)) packedCentres = new int[k * NearestCentre.Pairs(d)];
        if (labels.Length < NearestCentre.Panels(n) * NearestCentre.PanelKeys) labels = new int[NearestCentre.Panels(n) * NearestCentre.PanelKeys];
        if (changes.Length < (pool?.ThreadCount ?? 1)) changes = new int[pool?.ThreadCount ?? 1];
    }

    struct Job
    {
        public float* Raw, Unit, Centres, Sums;
        public int* Labels, Assignment, Sizes, PackedCentres, Changes;
        public short* PackedKeys;
        public int KeyCount, Dimension, ClusterCount;
        public bool First, SumRaw;
    }

    static void Execute(WorkerPool? pool, delegate*<void*, int, int, void> function, Job* job)
    {
        if (pool == null || pool.ThreadCount == 1) function(job, 0, 1);
        else pool.Run(function, job);
    }

    /// <summary>Unit keys and their packed panels, for this thread's panels.</summary>
    static void Normalize(void* context, int thread, int threads)
    {
        ref var job = ref *(Job*)context;
        int n = job.KeyCount, d = job.Dimension;
        var (first, end) = WorkerPool.Split(NearestCentre.Panels(n), thread, threads);
        for (int i = first * NearestCentre.PanelKeys; i < Math.Min(n, end * NearestCentre.PanelKeys); i++)
        {
            var row = new Span<float>(job.Unit + (long)i * d, d);
            new ReadOnlySpan<float>(job.Raw + (long)i * d, d).CopyTo(row);
            float norm = TensorPrimitives.Norm(row);
            if (norm > 0) TensorPrimitives.Divide(row, norm, row);
        }
        NearestCentre.PackKeys(new ReadOnlySpan<float>(job.Unit, n * d), n, d, first, end,
            new Span<short>(job.PackedKeys, NearestCentre.PackedKeyLength(n, d)));
    }

    /// <summary>Labels for this thread's panels, and how many changed.</summary>
    static void AssignKeys(void* context, int thread, int threads)
    {
        ref var job = ref *(Job*)context;
        int n = job.KeyCount;
        var (first, end) = WorkerPool.Split(NearestCentre.Panels(n), thread, threads);
        NearestCentre.Assign(job.PackedKeys, NearestCentre.Pairs(job.Dimension), first, end, job.PackedCentres, job.ClusterCount, job.Labels);
        int changed = 0;
        for (int i = first * NearestCentre.PanelKeys; i < Math.Min(n, end * NearestCentre.PanelKeys); i++)
        {
            if (job.First || job.Assignment[i] != job.Labels[i]) changed++;
            job.Assignment[i] = job.Labels[i];
        }
        job.Changes[thread] = changed;
    }

    /// <summary>
    /// For this thread's clusters: sums and sizes of their members (in key order), and then either the new unit centres
    /// (packed for the next assignment) or, on the last pass, the raw-key sums.
    /// </summary>
    static void Recentre(void* context, int thread, int threads)
    {
        ref var job = ref *(Job*)context;
        int n = job.KeyCount, d = job.Dimension;
        var (first, end) = WorkerPool.Split(job.ClusterCount, thread, threads);
        if (first == end) return;
        float* source = job.SumRaw ? job.Raw : job.Unit;
        new Span<float>(job.Sums + (long)first * d, (end - first) * d).Clear();
        new Span<int>(job.Sizes + first, end - first).Clear();
        for (int i = 0; i < n; i++)
        {
            int c = job.Assignment[i];
            if (c < first || c >= end) continue;
            var sum = new Span<float>(job.Sums + (long)c * d, d);
            TensorPrimitives.Add(sum, new ReadOnlySpan<float>(source + (long)i * d, d), sum);
            job.Sizes[c]++;
        }
        if (job.SumRaw) return;
        for (int c = first; c < end; c++)
        {
            if (job.Sizes[c] == 0) continue; // an empty cluster keeps its centre
            var centre = new Span<float>(job.Centres + (long)c * d, d);
            new ReadOnlySpan<float>(job.Sums + (long)c * d, d).CopyTo(centre);
            float norm = TensorPrimitives.Norm(centre);
            if (norm > 0) TensorPrimitives.Divide(centre, norm, centre);
        }
        int pairs = NearestCentre.Pairs(d);
        NearestCentre.PackCentres(new ReadOnlySpan<float>(job.Centres + (long)first * d, (end - first) * d), end - first, d,
            new Span<int>(job.PackedCentres + (long)first * pairs, (end - first) * pairs));
    }
}
