using System.Numerics;
using System.Numerics.Tensors;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>
/// ReSV, the token clustering and retrieval of V-Rex (Kim et al., 2025). Per layer and KV head, the store keeps a
/// SimHash of every key (<see cref="KvMetadata.SimHash"/>: sign(R·k) for a fixed Gaussian R); this policy reads its
/// low <see cref="Bits"/> bits.
/// <para>
/// Clustering, on append: once a frame is finished (a row of another frame or a text row follows it) each of its
/// tokens, in raster order, is compared by Hamming distance with the centres of the clusters of its neighbours: the
/// tokens at the same slot (position minus the frame's first) and the slots beside it (±1, and ±<see cref="Width"/>
/// when the grid width is given) in the previous frame (temporal), and the slots before it in its own frame
/// (spatial). At the nearest centre within <see cref="Threshold"/> bits it joins that cluster: the centre is the
/// running mean of the members' keys (sum and count kept; its hash is the SimHash of the mean), and the member's
/// position is listed; otherwise it starts a cluster. A static scene therefore adds no clusters after its first frame,
/// and a scene cut adds a frame's worth. The members stay where they are (in the cold tier when the store has one:
/// pages of clustered tokens are moved there), and the clusters are the index.
/// </para>
/// <para>
/// Retrieval, on select (WiCSum: a dynamic budget per layer and head instead of a fixed top-k), in two stages as the
/// paper's bit-level scoring: first the hash bits alone — per query head the Hamming distance h between the query's
/// hash and each centre's (XOR, popcount) gives the SimHash estimate scale·‖q‖·‖k̄_c‖·cos(π·h/bits) + ln n_c of the
/// cluster's logit (n_c its members), within three standard errors of the angle; a cluster whose upper end lies more
/// than 7 + ln C nats below the best lower end cannot carry attention and is dropped unscored. The survivors are then
/// scored in full precision (scale·q·k̄_c + ln n_c), softmaxed over the survivors per query head and averaged over the
/// KV head's query group; they are taken in descending mass until the cumulative mass reaches <see cref="Tau"/>, and
/// the walk exits there: members of the clusters below are never listed or fetched. The step reads the members of the
/// clusters taken, every text row, and every row not yet clustered (the open frame, the step's own rows). Members that
/// a reducer composed before this policy evicted are skipped. τ = 1 reads everything; a larger τ reads a superset of
/// a smaller one's rows (the survivors and their order do not depend on τ), so kept tokens and recall rise together.
/// (Ranking by the bit estimates alone recalled 0.37 of the attention at τ = 0.9 on the tests' generated video with
/// 32 bits; the full-precision refinement of the survivors is what makes τ mean attention mass.)
/// </para>
/// <para>
/// The index is built from the store alone (frame ids, hashes, keys), so a policy attached to a sequence that already
/// holds frames — a fork for a question — or rewound by a truncation clusters the stored frames at its next step,
/// exactly as they were clustered on append. Options the paper leaves open: bits 32 (of 16–64), threshold 4 bits,
/// τ = 0.9, neighbours along the row unless the grid width is given.
/// </para>
/// </summary>
internal sealed class ReSvPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("resv",
        "ReSV (V-Rex, Kim et al., 2025): video tokens join the SimHash-nearest cluster of their slot and neighbours in the previous frame on append; a step reads the clusters (pruned by hash bits, scored in full) whose softmax mass reaches tau",
        [
            KvPolicyOption.Int("bits", 32, "SimHash bits compared (at most the store's SimHashBits, 32 by default)"),
            KvPolicyOption.Int("threshold", 4, "largest Hamming distance from a cluster centre at which a token joins it"),
            KvPolicyOption.Float("tau", 0.9f, "cumulative softmax mass of the clusters a step reads (1 reads everything)"),
            KvPolicyOption.Int("width", 0, "frame grid width in tokens, for the neighbours above and below (0: neighbours along the row only)"),
        ],
        a => new ReSvPolicy(a.Int("bits"), a.Int("threshold"), a.Float("tau"), a.Int("width"))) { Example = "bits=16,threshold=2,tau=0.8125001,width=14" };

    /// <summary>One head's clusters and the rows it has indexed.</summary>
    sealed class HeadState
    {
        public int IndexedUpTo = -1;         // rows at positions ≤ this are clustered or text
        public int Clusters;
        public float[] Sums = [];            // [capacity, d]: sum of the members' keys
        public float[] Norms = [];           // ‖mean key‖
        public ulong[] Hashes = [];          // SimHash of the mean key
        public int[] Counts = [];
        public List<int>[] Members = [];     // positions, ascending
        public readonly List<int> Text = []; // indexed text rows: always read
        public int[] Previous = [], Current = []; // cluster of each slot of the last clustered frame, and of the one being clustered
        public int PreviousRows, PreviousFrame = -1;
    }

    /// <summary>Buffers of one KV head of a layer (the heads select side by side).</summary>
    sealed class Scratch
    {
        public float[] Page = [], Run = [], Mean = [], Mass = [], Logits = [], Widths = [], SortKeys = [];
        public bool[] Survivors = [];
        public int[] RunPositions = [], Order = [], Positions = [];
        public ulong[] RunHashes = [];
    }

    readonly float[] cosine;
    readonly float errorRadians;
    readonly ulong mask;
    HeadState[] heads = [];
    Scratch[] scratches = [];

    public ReSvPolicy(int bits = 32, int threshold = 4, float tau = 0.9f, int width = 0)
    {
        Bits = bits is >= 1 and <= 64 ? bits : throw new ArgumentOutOfRangeException(nameof(bits), $"bits must be in 1..64, not {bits}");
        Threshold = threshold >= 0 && threshold <= bits ? threshold : throw new ArgumentOutOfRangeException(nameof(threshold), $"threshold must be in [0, bits], not {threshold}");
        Tau = tau is >= 0 and <= 1 ? tau : throw new ArgumentOutOfRangeException(nameof(tau), $"tau must be in [0, 1], not {tau}");
        Width = width >= 0 ? width : throw new ArgumentOutOfRangeException(nameof(width), $"width must be at least 0, not {width}");
        mask = bits == 64 ? ulong.MaxValue : (1UL << bits) - 1;
        cosine = new float[bits + 1];
        for (int h = 0; h <= bits; h++) cosine[h] = MathF.Cos(MathF.PI * h / bits);
        // Three standard errors of the angle π·h/bits at its widest (h ~ Binomial(bits, θ/π), θ = π/2); |Δcos| ≤ |Δθ|.
        errorRadians = 3 * MathF.PI / (2 * MathF.Sqrt(bits));
    }

    public int Bits { get; }
    public int Threshold { get; }
    public float Tau { get; }
    public int Width { get; }
    public override string Name => FormattableString.Invariant($"resv:bits={Bits},threshold={Threshold},tau={Tau},width={Width}");
    public override KvMetadata Metadata => KvMetadata.SimHash;
    /// <summary>Heads select side by side, each with its own state and scratch; not when cold pages are read through the store's one staging buffer.</summary>
    public override bool ConcurrentSelect => !(Store.HasColdTier && !Store.ReadsColdInPlace);

    /// <summary>Clusters (layer, head) holds.</summary>
    public int ClusterCount(int layer, int head) => heads[HeadIndex(layer, head)].Clusters;

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        var store = sequence.Store;
        if (store.Options.SimHashBits < Bits)
            throw new KvConfigException($"policy '{Name}': bits={Bits} needs a store keeping at least {Bits} SimHash bits, it keeps {store.Options.SimHashBits}");
        heads = new HeadState[store.HeadSlots];
        for (int i = 0; i < heads.Length; i++) heads[i] = new HeadState();
        scratches = new Scratch[store.KvHeadCount];
        for (int i = 0; i < scratches.Length; i++) scratches[i] = new Scratch();
    }

    public override void OnTruncated(int length)
    {
        // The index is rebuilt from what stays, at the next step, as a fresh policy would build it.
        for (int i = 0; i < heads.Length; i++) heads[i] = new HeadState();
    }

    /// <summary>Clusters every frame the step finished; with a cold tier, pages of clustered video rows leave RAM.</summary>
    public override void OnAppended(in KvStep step)
    {
        var state = heads[HeadIndex(step.Layer, step.Head)];
        var table = step.Table;
        Index(state, table, int.MaxValue, scratches[step.Head]);
        if (!Store.HasColdTier || Store.ColdError != null) return;
        for (int i = FrameRows.FirstPageFrom(Store, table, state.IndexedUpTo + 1) - 1; i >= 0; i--)
        {
            int page = table[i];
            if (!Store.IsHot(page)) break; // moved on an earlier step, and the ones before it too
            if (Store.FrameIds(page).IndexOfAnyInRange(int.MinValue, FrameIds.None) >= 0) continue; // text (a frame's too) is read every step: it stays hot
            try { Store.MoveCold(page); }
            catch (IOException e) { Store.ColdError = e.Message; return; }
        }
    }

    public override void Select(in KvStep step, PageSelection selection)
    {
        var table = step.Table;
        var state = heads[HeadIndex(step.Layer, step.Head)];
        var scratch = scratches[step.Head];
        // Catch up on frames finished before this step (a fork's or a rewound policy's first step); this step's are clustered after it.
        Index(state, table, step.Position - 1, scratch);
        int clusters = state.Clusters;
        if (clusters == 0 || Tau >= 1) { selection.AddAll(table.Count); return; }

        // Bit level: per query head, the SimHash estimate ê_c = scale·‖q‖·‖k̄_c‖·cos(π·h/bits) + ln n_c of each
        // centre's logit, within ±w_c = 3σ·scale·‖q‖·‖k̄_c‖ (σ the estimate's standard error in radians). A cluster
        // whose upper end stays more than 7 + ln C nats below the best lower end cannot carry mass; the rest survive.
        int d = Store.HeadDim, group = step.Group;
        Grow(ref scratch.Mass, clusters);
        Grow(ref scratch.Logits, clusters);
        Grow(ref scratch.Widths, clusters);
        Grow(ref scratch.Survivors, clusters);
        var logits = scratch.Logits.AsSpan(0, clusters);
        var widths = scratch.Widths.AsSpan(0, clusters);
        var survives = scratch.Survivors.AsSpan(0, clusters);
        survives.Clear();
        var queries = step.LastQueries;
        float cut = 7 + MathF.Log(clusters);
        for (int h = 0; h < group; h++)
        {
            var q = queries.Slice(h * d, d);
            ulong hash = Store.SimHash(q) & mask;
            float scale = step.Scale * TensorPrimitives.Norm(q), bestLower = float.NegativeInfinity;
            for (int c = 0; c < clusters; c++)
            {
                float size = scale * state.Norms[c];
                logits[c] = size * cosine[BitOperations.PopCount(hash ^ state.Hashes[c])] + MathF.Log(state.Counts[c]);
                widths[c] = errorRadians * size;
                bestLower = MathF.Max(bestLower, logits[c] - widths[c]);
            }
            for (int c = 0; c < clusters; c++) survives[c] |= logits[c] + widths[c] >= bestLower - cut;
        }
        // Full precision for the survivors only: scale·q·k̄_c + ln n_c, softmaxed per query head, averaged over the group.
        Grow(ref scratch.Order, clusters);
        var order = scratch.Order.AsSpan(0, clusters);
        int candidates = 0;
        for (int c = 0; c < clusters; c++) if (survives[c]) order[candidates++] = c;
        order = order[..candidates];
        var mass = scratch.Mass.AsSpan(0, candidates);
        var exact = logits[..candidates];
        mass.Clear();
        for (int h = 0; h < group; h++)
        {
            var q = queries.Slice(h * d, d);
            for (int i = 0; i < candidates; i++)
            {
                int c = order[i];
                exact[i] = step.Scale * TensorPrimitives.Dot(q, state.Sums.AsSpan(c * d, d)) / state.Counts[c] + MathF.Log(state.Counts[c]);
            }
            float max = TensorPrimitives.Max(exact);
            TensorPrimitives.Subtract(exact, max, exact);
            TensorPrimitives.Exp(exact, exact);
            TensorPrimitives.MultiplyAdd(exact, 1f / (TensorPrimitives.Sum(exact) * group), mass, mass);
        }

        // WiCSum: survivors by descending mass until the cumulative mass reaches τ (the walk exits there); their members.
        Grow(ref scratch.SortKeys, candidates);
        var keys = scratch.SortKeys.AsSpan(0, candidates);
        for (int i = 0; i < candidates; i++) keys[i] = -mass[i];
        keys.Sort(order);
        int rows = state.Text.Count;
        float cumulative = 0;
        int taken = 0;
        while (taken < candidates && cumulative < Tau)
        {
            cumulative -= keys[taken];
            rows += state.Members[order[taken++]].Count;
        }
        Grow(ref scratch.Positions, rows);
        var positions = scratch.Positions.AsSpan(0, rows);
        state.Text.CopyTo(positions);
        int at = state.Text.Count;
        for (int i = 0; i < taken; i++)
        {
            var members = state.Members[order[i]];
            members.CopyTo(positions[at..]);
            at += members.Count;
        }
        positions.Sort();
        selection.AddPositions(Store, table, positions);

        // Rows not clustered yet: the open frame and everything after it, the step's own rows among them.
        int first = FrameRows.FirstPageFrom(Store, table, state.IndexedUpTo + 1);
        if (first < table.Count)
        {
            var boundary = Store.Positions(table[first]);
            ulong tail = 0;
            for (int j = 0; j < boundary.Length; j++) if (boundary[j] > state.IndexedUpTo) tail |= 1UL << j;
            selection.Add(first, tail == (boundary.Length == 64 ? ulong.MaxValue : (1UL << boundary.Length) - 1) ? KvPageView.AllRows : tail);
            selection.AddRange(first + 1, table.Count);
        }
    }

    /// <summary>
    /// Indexes the stored rows after <see cref="HeadState.IndexedUpTo"/> up to <paramref name="upTo"/>: runs of text
    /// are listed, each finished frame (a run followed by another row) is clustered; the last run, if video, stays open.
    /// </summary>
    void Index(HeadState state, PageTable table, int upTo, Scratch scratch)
    {
        if (table.Count == 0 || state.IndexedUpTo >= Math.Min(upTo, Store.LastPosition(table[^1]))) return;
        int d = Store.HeadDim, runFrame = int.MinValue, runCount = 0;
        Grow(ref scratch.Page, Store.PageSize * d);
        for (int index = FrameRows.FirstPageFrom(Store, table, state.IndexedUpTo + 1); index < table.Count; index++)
        {
            int page = table[index];
            var positions = Store.Positions(page);
            var frames = Store.FrameIds(page);
            var hashes = Store.SimHashes(page);
            bool keysRead = false;
            for (int j = 0; j < positions.Length; j++)
            {
                int position = positions[j];
                if (position <= state.IndexedUpTo) continue;
                if (position > upTo) return;
                if (frames[j] != runFrame && runCount > 0)
                {
                    // The run before this row is finished.
                    if (runFrame >= 0) Cluster(state, scratch, runFrame, runCount);
                    state.IndexedUpTo = scratch.RunPositions[runCount - 1];
                    runCount = 0;
                }
                runFrame = frames[j];
                if (runFrame < 0)
                {
                    state.Text.Add(position);
                    state.IndexedUpTo = position; // text needs no run to finish
                    continue;
                }
                if (!keysRead) { Store.ReadKeys(page, scratch.Page); keysRead = true; }
                Grow(ref scratch.RunPositions, runCount + 1);
                Grow(ref scratch.RunHashes, runCount + 1);
                Grow(ref scratch.Run, (runCount + 1) * d);
                scratch.RunPositions[runCount] = position;
                scratch.RunHashes[runCount] = hashes[j] & mask;
                scratch.Page.AsSpan(j * d, d).CopyTo(scratch.Run.AsSpan(runCount * d, d));
                runCount++;
            }
        }
        // A video run at the end is the open frame: it is clustered once a row follows it.
    }

    /// <summary>Clusters one finished frame's rows (scratch.Run*, raster order) against the previous frame's clusters.</summary>
    void Cluster(HeadState state, Scratch scratch, int frame, int count)
    {
        int d = Store.HeadDim;
        Grow(ref state.Current, count);
        Grow(ref scratch.Mean, d);
        // Slots relative to the frame's first stored row; the previous frame is the last one clustered (text between frames does not separate them).
        int origin = scratch.RunPositions[0];
        bool temporal = state.PreviousFrame >= 0;
        for (int i = 0; i < count; i++)
        {
            int position = scratch.RunPositions[i], slot = position - origin;
            if (slot >= state.Current.Length) Array.Resize(ref state.Current, Math.Max(slot + 1, 2 * state.Current.Length));
            ulong hash = scratch.RunHashes[i];
            int best = -1, bestDistance = int.MaxValue;
            if (temporal)
            {
                Nearest(state, state.Previous, state.PreviousRows, slot, hash, ref best, ref bestDistance);
                Nearest(state, state.Previous, state.PreviousRows, slot - 1, hash, ref best, ref bestDistance);
                Nearest(state, state.Previous, state.PreviousRows, slot + 1, hash, ref best, ref bestDistance);
                if (Width > 0)
                {
                    Nearest(state, state.Previous, state.PreviousRows, slot - Width, hash, ref best, ref bestDistance);
                    Nearest(state, state.Previous, state.PreviousRows, slot + Width, hash, ref best, ref bestDistance);
                }
            }
            // Spatial: the slots before this one in its own frame (already assigned).
            Nearest(state, state.Current, slot, slot - 1, hash, ref best, ref bestDistance);
            if (Width > 0) Nearest(state, state.Current, slot, slot - Width, hash, ref best, ref bestDistance);

            var key = scratch.Run.AsSpan(i * d, d);
            int cluster = best >= 0 && bestDistance <= Threshold ? best : NewCluster(state, d);
            var sum = state.Sums.AsSpan(cluster * d, d);
            TensorPrimitives.Add(sum, key, sum);
            int n = ++state.Counts[cluster];
            var mean = scratch.Mean.AsSpan(0, d);
            TensorPrimitives.Divide(sum, n, mean);
            state.Hashes[cluster] = n == 1 ? hash : Store.SimHash(mean) & mask;
            state.Norms[cluster] = TensorPrimitives.Norm(mean);
            state.Members[cluster].Add(position);
            state.Current[slot] = cluster + 1; // 0: no token at the slot (rows evicted before clustering)
        }
        // This frame is the previous one for the next; its slot map is reused (slots not written stay 0).
        (state.Previous, state.Current) = (state.Current, state.Previous);
        state.PreviousRows = scratch.RunPositions[count - 1] - origin + 1;
        state.PreviousFrame = frame;
        Array.Clear(state.Current);
    }

    /// <summary>The cluster of slot <paramref name="at"/> of a frame's slot map (cluster + 1; 0 none), if its centre is nearer <paramref name="hash"/> than the best so far.</summary>
    static void Nearest(HeadState state, int[] slots, int length, int at, ulong hash, ref int best, ref int bestDistance)
    {
        if (at < 0 || at >= length || at >= slots.Length || slots[at] == 0) return;
        int c = slots[at] - 1, distance = BitOperations.PopCount(hash ^ state.Hashes[c]);
        if (distance < bestDistance) { best = c; bestDistance = distance; }
    }

    static int NewCluster(HeadState state, int d)
    {
        int c = state.Clusters++;
        if (c == state.Counts.Length)
        {
            int capacity = Math.Max(64, 2 * c);
            Array.Resize(ref state.Sums, capacity * d);
            Array.Resize(ref state.Norms, capacity);
            Array.Resize(ref state.Hashes, capacity);
            Array.Resize(ref state.Counts, capacity);
            Array.Resize(ref state.Members, capacity);
        }
        state.Members[c] = [];
        return c;
    }

    /// <summary>Makes <paramref name="array"/> at least <paramref name="length"/> long, keeping its contents (runs are gathered into it piece by piece).</summary>
    static void Grow<T>(ref T[] array, int length)
    {
        if (array.Length < length) Array.Resize(ref array, Math.Max(length, 2 * array.Length));
    }
}
