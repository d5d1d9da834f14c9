using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>
/// Spherical k-means (Dhillon and Modha, 2001), as ClusterKV clusters keys by cosine: keys are normalised once, centres
/// start at evenly spaced keys (key ⌊c·n/k⌋), and each iteration assigns every key to the centre of highest cosine
/// (<see cref="NearestCentre"/>: a keys × centres integer product) and re-centres each cluster on the normalised sum of
/// its members' unit vectors (an empty cluster keeps its centre), until no label changes or the iterations run out.
/// <para>
/// Several clusterings (the KV heads of a layer) can run in lockstep (<see cref="RunTogether"/>): each pass is one
/// worker-pool job over all their keys' panels (or all their clusters), so the threads share the work evenly however
/// the heads converge, and a head that has converged drops out. Sums are taken per cluster in key order, each thread
/// summing its own clusters, so the result is the same for any thread count, grouping and instruction set. One object
/// keeps one clustering's buffers between runs; it is not thread-safe.
/// </para>
/// <para>
/// After the first pass only the centres that moved can change a label (Lloyd's algorithm without the waste; the
/// integer scores of a centre whose quantised vector is unchanged are unchanged): a key whose own centre stayed put
/// keeps it unless a moved centre now scores at least as high (ties to the lower index), so it is compared with the
/// moved centres only; a key whose own centre moved is compared with all. Late passes, where a few dozen of 400
/// centres move, cost a fraction of a full one; the labels are exactly those of full passes.
/// </para>
/// </summary>
internal sealed unsafe class SphericalKMeans
{
    /// <summary>
    /// Multiply-adds of one assignment pass below which the k-means stays on the calling thread: a pool job costs
    /// microseconds to start and join (milliseconds on a busy machine), and a window of generated keys is tiny.
    /// </summary>
    public const long ParallelWork = 1 << 22;

    float[] unit = [];
    short[] packedKeys = [], packedActive = [];
    int[] packedCentres = [], labels = [], scores = [], movedList = [], packedMoved = [], movedLabels = [], movedScores = [];
    int[] activeKeys = [], activeLabels = [], activeScores = [];
    byte[] moved = [];

    /// <summary>Whether passes after the first compare keys with the moved centres only (false: every pass is full; for tests).</summary>
    internal static bool Prune = true;

    /// <summary>Iterations the last run took (it stops early once no label changes).</summary>
    public int IterationsRun { get; private set; }

    /// <summary>Passes that compared keys with the moved centres only, over all runs.</summary>
    public int PrunedPasses { get; private set; }

    /// <summary>
    /// One clustering of <see cref="RunTogether"/>: <paramref name="Keys"/> [KeyCount, dimension] into ClusterCount
    /// clusters, with <paramref name="Solver"/>'s buffers. Outputs: <paramref name="Assignment"/> [KeyCount], the cluster
    /// of each key; <paramref name="Centres"/> [ClusterCount, dimension], unit centres (for assigning later keys);
    /// <paramref name="Sums"/> [ClusterCount, dimension], sums of the members' raw keys (their mean is what attention
    /// scores); <paramref name="Sizes"/> [ClusterCount], members per cluster.
    /// </summary>
    public readonly record struct Problem(SphericalKMeans Solver, ReadOnlyMemory<float> Keys, int KeyCount, int ClusterCount,
        Memory<int> Assignment, Memory<float> Centres, Memory<float> Sums, Memory<int> Sizes);

    /// <summary>
    /// Clusters <paramref name="keys"/> [<paramref name="keyCount"/>, <paramref name="dimension"/>] into
    /// <paramref name="clusterCount"/> clusters (see <see cref="Problem"/> for the outputs). Runs on
    /// <paramref name="pool"/> (null, or less than <see cref="ParallelWork"/> per pass: on the calling thread).
    /// </summary>
    public void Run(ReadOnlyMemory<float> keys, int keyCount, int dimension, int clusterCount, int iterations, Memory<int> assignment,
        Memory<float> centres, Memory<float> sums, Memory<int> sizes, WorkerPool? pool) =>
        RunTogether([new Problem(this, keys, keyCount, clusterCount, assignment, centres, sums, sizes)], dimension, iterations, pool);

    /// <summary>
    /// Runs the clusterings of <paramref name="problems"/> (each with its own solver) in lockstep on
    /// <paramref name="pool"/>: the same results as one <see cref="Run"/> each, with every pass split between the threads.
    /// </summary>
    public static void RunTogether(ReadOnlySpan<Problem> problems, int dimension, int iterations, WorkerPool? pool)
    {
        int count = problems.Length, d = dimension;
        if (count == 0) return;
        long work = 0;
        foreach (var p in problems)
        {
            int n = p.KeyCount, k = p.ClusterCount;
            if (n < 1 || d < 1 || k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(problems), $"need 1 ≤ clusters ≤ keys, not {k} clusters of {n} keys");
            if (p.Keys.Length < n * d || p.Assignment.Length < n || p.Centres.Length < k * d || p.Sums.Length < k * d || p.Sizes.Length < k)
                throw new ArgumentException("keys, assignment, centres, sums or sizes too short", nameof(problems));
            work += (long)n * k * d;
        }
        if (work < ParallelWork) pool = null;
        int threads = pool?.ThreadCount ?? 1;
        var pins = new List<MemoryHandle>();
        var states = new State[count];
        var changes = new int[threads * count];
        void* Pin<T>(Memory<T> memory)
        {
            var handle = memory.Pin();
            pins.Add(handle);
            return handle.Pointer;
        }
        try
        {
            for (int i = 0; i < count; i++)
            {
                var p = problems[i];
                var s = p.Solver;
                int n = p.KeyCount, k = p.ClusterCount;
                s.Prepare(n, d, k);
                s.PreparePruning(n, d, k);
                states[i] = new State
                {
                    Raw = (float*)Pin(MemoryMarshal.AsMemory(p.Keys)), Assignment = (int*)Pin(p.Assignment), Centres = (float*)Pin(p.Centres),
                    Sums = (float*)Pin(p.Sums), Sizes = (int*)Pin(p.Sizes), Unit = (float*)Pin<float>(s.unit), PackedKeys = (short*)Pin<short>(s.packedKeys),
                    PackedCentres = (int*)Pin<int>(s.packedCentres), Labels = (int*)Pin<int>(s.labels), Scores = (int*)Pin<int>(s.scores),
                    Moved = (byte*)Pin<byte>(s.moved), MovedList = (int*)Pin<int>(s.movedList), PackedMoved = (int*)Pin<int>(s.packedMoved),
                    MovedLabels = (int*)Pin<int>(s.movedLabels), MovedScores = (int*)Pin<int>(s.movedScores), PackedActive = (short*)Pin<short>(s.packedActive),
                    ActiveKeys = (int*)Pin<int>(s.activeKeys), ActiveLabels = (int*)Pin<int>(s.activeLabels), ActiveScores = (int*)Pin<int>(s.activeScores),
                    KeyCount = n, ClusterCount = k, Active = true,
                };
            }
            fixed (State* state = states)
            fixed (int* changed = changes)
            {
                var job = new Job { Problems = state, Count = count, Dimension = d, Changes = changed };
                Execute(pool, &Normalize, &job);
                for (int i = 0; i < count; i++)
                {
                    ref var s = ref state[i];
                    int n = s.KeyCount, k = s.ClusterCount;
                    for (int c = 0; c < k; c++) Buffer.MemoryCopy(s.Unit + (long)c * n / k * d, s.Centres + (long)c * d, d * 4, d * 4);
                    NearestCentre.PackCentres(new ReadOnlySpan<float>(s.Centres, k * d), k, d, new Span<int>(s.PackedCentres, k * NearestCentre.Pairs(d)));
                }
                for (int it = 0; it < iterations; it++)
                {
                    job.First = it == 0;
                    for (int i = 0; i < count; i++)
                    {
                        if (!state[i].Active) continue;
                        PlanPass(state + i, d, pruneAllowed: it > 0 && Prune);
                        if (state[i].Pruned) problems[i].Solver.PrunedPasses++;
                    }
                    Execute(pool, &AssignKeys, &job);
                    bool any = false;
                    for (int i = 0; i < count; i++)
                    {
                        if (!state[i].Active) continue;
                        problems[i].Solver.IterationsRun = it + 1;
                        int total = 0;
                        for (int t = 0; t < threads; t++) total += changed[t * count + i];
                        if (total == 0 && it > 0) state[i].Active = false; // converged: its centres stay
                        any |= state[i].Active;
                    }
                    if (!any) break;
                    Execute(pool, &Recentre, &job);
                }
                for (int i = 0; i < count; i++) state[i].Active = true;
                job.SumRaw = true;
                Execute(pool, &Recentre, &job);
            }
        }
        finally
        {
            foreach (var pin in pins) pin.Dispose();
        }
    }

    /// <summary>
    /// Labels [<paramref name="keyCount"/>] of the nearest of <paramref name="centreCount"/> unit centres (by cosine, as
    /// the clustering assigns) for each of <paramref name="keys"/>, on the calling thread: ClusterKV's incremental
    /// assignment of keys that arrive between clusterings.
    /// </summary>
    public void Nearest(ReadOnlySpan<float> keys, int keyCount, int dimension, ReadOnlySpan<float> centres, int centreCount, Span<int> assignment)
    {
        int n = keyCount, d = dimension;
        if (n == 0) return;
        Prepare(n, d, centreCount);
        NearestCentre.PackCentres(centres, centreCount, d, packedCentres);
        fixed (float* raw = keys, unitKeys = unit)
        fixed (int* label = labels, packed = packedCentres)
        fixed (short* packedKey = packedKeys)
        {
            var state = new State { Raw = raw, Unit = unitKeys, PackedKeys = packedKey, KeyCount = n, Active = true };
            var job = new Job { Problems = &state, Count = 1, Dimension = d };
            Normalize(&job, 0, 1);
            NearestCentre.Assign(packedKey, NearestCentre.Pairs(d), 0, NearestCentre.Panels(n), packed, centreCount, label);
        }
        labels.AsSpan(0, n).CopyTo(assignment);
    }

    void Prepare(int n, int d, int k)
    {
        int pairs = NearestCentre.Pairs(d), lanes = NearestCentre.Panels(n) * NearestCentre.PanelKeys;
        if (unit.Length < n * d) unit = new float[n * d];
        if (packedKeys.Length < NearestCentre.PackedKeyLength(n, d)) packedKeys = new short[NearestCentre.PackedKeyLength(n, d)];
        if (packedCentres.Length < k * pairs) packedCentres = new int[k * pairs];
        if (labels.Length < lanes) labels = new int[lanes];
    }

    /// <summary>The buffers of the pruned passes (see the class summary).</summary>
    void PreparePruning(int n, int d, int k)
    {
        int pairs = NearestCentre.Pairs(d), lanes = NearestCentre.Panels(n) * NearestCentre.PanelKeys;
        if (scores.Length < lanes) scores = new int[lanes];
        if (movedLabels.Length < lanes) { movedLabels = new int[lanes]; movedScores = new int[lanes]; activeLabels = new int[lanes]; activeScores = new int[lanes]; activeKeys = new int[lanes]; }
        if (packedActive.Length < NearestCentre.PackedKeyLength(n, d)) packedActive = new short[NearestCentre.PackedKeyLength(n, d)];
        if (moved.Length < k) { moved = new byte[k]; movedList = new int[k]; }
        if (packedMoved.Length < k * pairs) packedMoved = new int[k * pairs];
    }

    /// <summary>One clustering's pinned buffers, and whether it still iterates.</summary>
    struct State
    {
        public float* Raw, Unit, Centres, Sums;
        public int* Labels, Assignment, Sizes, PackedCentres; // labels: a full pass's output, a pruned pass's flags
        public short* PackedKeys;
        public int* Scores;                  // [lanes] each key's best score
        public byte* Moved;                  // [k] whether centre c changed in the last re-centring
        public int* MovedList, PackedMoved;  // the moved centres, ascending, and their packed pairs
        public int* MovedLabels, MovedScores; // [lanes] per key: the best moved centre (its place in the list) and score
        public short* PackedActive;          // keys whose own centre moved, packed again
        public int* ActiveKeys, ActiveLabels, ActiveScores;
        public int KeyCount, ClusterCount, MovedCount, ActiveCount;
        public bool Active, Pruned;
    }

    struct Job
    {
        public State* Problems;
        public int* Changes; // [thread, problem]
        public int Count, Dimension;
        public bool First, SumRaw;
    }

    static void Execute(WorkerPool? pool, delegate*<void*, int, int, void> function, Job* job)
    {
        if (pool == null || pool.ThreadCount == 1) function(job, 0, 1);
        else pool.Run(function, job);
    }

    /// <summary>
    /// This thread's share of the units (panels or clusters, by <paramref name="units"/>) of the active problems laid
    /// end to end: calls <paramref name="body"/>(problem, its index, first, end, job, thread) for each problem it overlaps.
    /// </summary>
    static void ForShare(Job* job, int thread, int threads, delegate*<State*, int, int, int, Job*, int, void> body, delegate*<State*, int, int> units)
    {
        int total = 0;
        for (int i = 0; i < job->Count; i++) if (job->Problems[i].Active) total += units(job->Problems + i, job->Dimension);
        var (first, end) = WorkerPool.Split(total, thread, threads);
        for (int i = 0, offset = 0; i < job->Count && offset < end; i++)
        {
            var problem = job->Problems + i;
            if (!problem->Active) continue;
            int size = units(problem, job->Dimension), from = Math.Max(first, offset) - offset, to = Math.Min(end, offset + size) - offset;
            if (from < to) body(problem, i, from, to, job, thread);
            offset += size;
        }
    }

    static int Panels(State* problem, int dimension) => NearestCentre.Panels(problem->KeyCount);
    static int AssignUnits(State* problem, int dimension) =>
        NearestCentre.Panels(problem->KeyCount) + (problem->Pruned ? NearestCentre.Panels(problem->ActiveCount) : 0);
    static int Clusters(State* problem, int dimension) => problem->ClusterCount;

    static void Normalize(void* context, int thread, int threads) => ForShare((Job*)context, thread, threads, &NormalizePanels, &Panels);
    static void AssignKeys(void* context, int thread, int threads)
    {
        var job = (Job*)context;
        new Span<int>(job->Changes + thread * job->Count, job->Count).Clear();
        ForShare(job, thread, threads, &AssignPanels, &AssignUnits);
    }
    static void Recentre(void* context, int thread, int threads) => ForShare((Job*)context, thread, threads, &RecentreClusters, &Clusters);

    /// <summary>Unit keys and their packed panels, for panels [first, end).</summary>
    static void NormalizePanels(State* s, int index, int first, int end, Job* job, int thread)
    {
        int n = s->KeyCount, d = job->Dimension;
        for (int i = first * NearestCentre.PanelKeys; i < Math.Min(n, end * NearestCentre.PanelKeys); i++)
        {
            var row = new Span<float>(s->Unit + (long)i * d, d);
            new ReadOnlySpan<float>(s->Raw + (long)i * d, d).CopyTo(row);
            float norm = TensorPrimitives.Norm(row);
            if (norm > 0) TensorPrimitives.Divide(row, norm, row);
        }
        NearestCentre.PackKeys(new ReadOnlySpan<float>(s->Unit, n * d), n, d, first, end, new Span<short>(s->PackedKeys, NearestCentre.PackedKeyLength(n, d)));
    }

    /// <summary>
    /// Labels for units [first, end), and how many changed: a full pass takes every key's panel against all centres; a
    /// pruned one takes each panel against the moved centres (keys whose own centre stayed put), then the panels of
    /// keys whose own centre moved against all centres.
    /// </summary>
    static void AssignPanels(State* s, int index, int first, int end, Job* job, int thread)
    {
        int n = s->KeyCount, k = s->ClusterCount, pairs = NearestCentre.Pairs(job->Dimension), panels = NearestCentre.Panels(n), changed = 0;
        if (!s->Pruned)
        {
            NearestCentre.Assign(s->PackedKeys, pairs, first, end, s->PackedCentres, k, s->Labels, s->Scores);
            for (int i = first * NearestCentre.PanelKeys; i < Math.Min(n, end * NearestCentre.PanelKeys); i++)
            {
                if (job->First || s->Assignment[i] != s->Labels[i]) changed++;
                s->Assignment[i] = s->Labels[i];
            }
        }
        else
        {
            int last = Math.Min(end, panels);
            if (first < last && s->MovedCount > 0)
            {
                NearestCentre.Assign(s->PackedKeys, pairs, first, last, s->PackedMoved, s->MovedCount, s->MovedLabels, s->MovedScores);
                for (int i = first * NearestCentre.PanelKeys; i < Math.Min(n, last * NearestCentre.PanelKeys); i++)
                {
                    if (s->Labels[i] != 0) continue; // its centre moved: compared with all centres below (perhaps already, by another thread)
                    int own = s->Assignment[i];
                    // The unmoved centres score as before, none above the key's own (and none equal to it with a lower index).
                    int score = s->MovedScores[i], centre = s->MovedList[s->MovedLabels[i]];
                    if (score > s->Scores[i] || score == s->Scores[i] && centre < own)
                    {
                        s->Assignment[i] = centre;
                        s->Scores[i] = score;
                        changed++;
                    }
                }
            }
            int from = Math.Max(first, panels) - panels, to = end - panels;
            if (from < to)
            {
                NearestCentre.Assign(s->PackedActive, pairs, from, to, s->PackedCentres, k, s->ActiveLabels, s->ActiveScores);
                for (int a = from * NearestCentre.PanelKeys; a < Math.Min(s->ActiveCount, to * NearestCentre.PanelKeys); a++)
                {
                    int i = s->ActiveKeys[a];
                    if (s->Assignment[i] != s->ActiveLabels[a]) changed++;
                    s->Assignment[i] = s->ActiveLabels[a];
                    s->Scores[i] = s->ActiveScores[a];
                }
            }
        }
        job->Changes[thread * job->Count + index] = changed; // a thread's share covers a problem in one piece
    }

    /// <summary>
    /// Chooses the next pass of a clustering: pruned when comparing every key with the moved centres and the keys whose
    /// centre moved with all costs less than three quarters of a full pass; then lists the moved centres and packs
    /// those keys again.
    /// </summary>
    static void PlanPass(State* s, int dimension, bool pruneAllowed)
    {
        int n = s->KeyCount, k = s->ClusterCount, pairs = NearestCentre.Pairs(dimension);
        s->Pruned = false;
        if (!pruneAllowed) return;
        int movedCount = 0, active = 0;
        for (int c = 0; c < k; c++) if (s->Moved[c] != 0) s->MovedList[movedCount++] = c;
        for (int i = 0; i < n; i++) if (s->Moved[s->Assignment[i]] != 0) active++;
        if (4 * ((long)n * movedCount + (long)active * k) >= 3L * n * k) return;
        s->Pruned = true;
        s->MovedCount = movedCount;
        s->ActiveCount = active;
        for (int m = 0; m < movedCount; m++)
            Buffer.MemoryCopy(s->PackedCentres + (long)s->MovedList[m] * pairs, s->PackedMoved + (long)m * pairs, pairs * 4, pairs * 4);
        // Each key's column of a panel ([pair][16 lanes] int32) moves to its place among the active keys.
        const int lanes = NearestCentre.PanelKeys;
        int* source = (int*)s->PackedKeys, target = (int*)s->PackedActive;
        new Span<int>(target, NearestCentre.Panels(active) * pairs * lanes).Clear();
        for (int i = 0, a = 0; i < n; i++)
        {
            s->Labels[i] = s->Moved[s->Assignment[i]]; // the pass's flag of keys whose centre moved (labels are unused in it)
            if (s->Labels[i] == 0) continue;
            int* from = source + (long)(i / lanes) * pairs * lanes + i % lanes, to = target + (long)(a / lanes) * pairs * lanes + a % lanes;
            for (int p = 0; p < pairs; p++) to[p * lanes] = from[p * lanes];
            s->ActiveKeys[a++] = i;
        }
    }

    /// <summary>
    /// For clusters [first, end): sums and sizes of their members (in key order), and then either the new unit centres
    /// (packed for the next assignment) or, on the last pass, the raw-key sums.
    /// </summary>
    static void RecentreClusters(State* s, int index, int first, int end, Job* job, int thread)
    {
        int n = s->KeyCount, d = job->Dimension;
        float* source = job->SumRaw ? s->Raw : s->Unit;
        new Span<float>(s->Sums + (long)first * d, (end - first) * d).Clear();
        new Span<int>(s->Sizes + first, end - first).Clear();
        for (int i = 0; i < n; i++)
        {
            int c = s->Assignment[i];
            if (c < first || c >= end) continue;
            float* sum = s->Sums + (long)c * d, row = source + (long)i * d;
            int e = 0;
            if (Vector512.IsHardwareAccelerated)
                for (; e + 16 <= d; e += 16) (Vector512.Load(sum + e) + Vector512.Load(row + e)).Store(sum + e);
            for (; e < d; e++) sum[e] += row[e];
            s->Sizes[c]++;
        }
        if (job->SumRaw) return;
        for (int c = first; c < end; c++)
        {
            if (s->Sizes[c] == 0) continue; // an empty cluster keeps its centre
            var centre = new Span<float>(s->Centres + (long)c * d, d);
            new ReadOnlySpan<float>(s->Sums + (long)c * d, d).CopyTo(centre);
            float norm = TensorPrimitives.Norm(centre);
            if (norm > 0) TensorPrimitives.Divide(centre, norm, centre);
        }
        int pairs = NearestCentre.Pairs(d);
        Span<int> packed = stackalloc int[pairs];
        for (int c = first; c < end; c++)
        {
            NearestCentre.PackCentres(new ReadOnlySpan<float>(s->Centres + (long)c * d, d), 1, d, packed);
            var current = new Span<int>(s->PackedCentres + (long)c * pairs, pairs);
            s->Moved[c] = (byte)(packed.SequenceEqual(current) ? 0 : 1);
            packed.CopyTo(current);
        }
    }
}
