using System.Numerics.Tensors;

namespace VidKV.Cache;

/// <summary>
/// InfiniPot-V (Kim et al., "InfiniPot-V: Memory-Constrained KV Cache Compression for Streaming Video
/// Understanding", 2025): a hard cap on the video KV of each head, held by compressing the oldest frames as the
/// stream goes. After each step whose video rows (frame id ≥ 0) pass <see cref="Budget"/> (the paper's threshold |M|),
/// the cache is compressed down to <see cref="Target"/> rows (its |C|): the newest frames — up to <see cref="Recent"/>
/// of them, and only while together they fit the target — stay whole as the reference; of the older video rows exactly
/// target − reference rows stay, chosen by the paper's two scores:
/// <list type="bullet">
/// <item>temporal redundancy (TaR): a row is redundant when a reference frame holds a similar key at the same spatial
/// slot (its position minus its frame's first position; the encoder's raster order). Score −max cos(k, k_ref) over
/// the reference frames; a slot no reference frame holds scores +1 (nothing repeats it).</item>
/// <item>value norm (VaN): ‖v‖, the row's spatial importance.</item>
/// </list>
/// The ⌈<see cref="Alpha"/> · kept⌉ least redundant rows stay first, then the rest of the kept rows by the largest
/// value norm (the paper combines the two; how the kept rows are split between them is open, α = 0.5 here). So a head
/// never holds more than budget video rows after a step. With target = budget (the default) it holds exactly
/// min(video rows appended, budget) and compresses at every step once full; a lower target compresses once per
/// (budget − target) rows of video, so the pass's cost — a gather and scoring of every stored row of the head — is
/// spread over several frames (the paper's design: compress to |C| when |M| is reached). A frame's own text (its timestamp and
/// delimiters, <see cref="FrameIds.TextOf"/>) counts against the cap with the frame: a kept row of a frame nothing was
/// kept of yet also costs that frame's text, and a frame that keeps no row loses its text too, so the cap holds
/// however many frames go by. Other text (prompt, questions, answers) is not counted and never evicted.
/// </summary>
internal sealed class InfiniPotVPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("infinipotv",
        "InfiniPot-V (Kim et al., 2025): a hard cap on each head's video tokens, kept by compressing older frames by temporal redundancy against the newest frames and value norm",
        [
            KvPolicyOption.Budget("video tokens kept per KV head (the hard cap)"),
            KvPolicyOption.Int("target", "budget", a => a.Int("budget"), "video tokens a compression leaves (≤ budget): lower compresses less often, by more each time"),
            KvPolicyOption.Int("recent", 4, "newest frames kept whole as the redundancy reference (while they fit the cap)"),
            KvPolicyOption.Float("alpha", 0.5f, "share of the older frames' kept tokens chosen as least redundant; the rest by value norm"),
        ],
        a => new InfiniPotVPolicy(a.Int("budget"), a.Int("recent"), a.Float("alpha"), a.Int("target"))) { Example = "budget=100,target=80,recent=2,alpha=0.3125001" };

    readonly FrameRows rows = new(), appended = new();
    // Per layer: the first position of every frame seen (ascending), for the slot of rows whose frame lost its first row.
    FrameTracker[] trackers = [];
    List<(int Position, int Frame)>[] starts = [];
    long[] trackedStep = [];
    // Per (layer, head): the position of the head's oldest video row at its last compression (0 before its first: it may
    // hold every frame; int.MaxValue for a head this policy does not run). The layer's frame starts are dropped only
    // before the oldest of these, so a head that kept an older frame than another head of its layer keeps that
    // frame's start, which its rows' slots need.
    int[,] oldestVideo = new int[0, 0];
    // Per layer: the frames its heads held at this step's compressions and how many heads added theirs; once every
    // head of the policy has, the starts of frames none holds go, so the list stays bounded by what the heads keep
    // even when one head keeps its first frame for hours.
    HashSet<int>[] heldFrames = [];
    long[] heldStep = [];
    int[] heldHeads = [];
    int[] runFirst = [], runStart = [], runEnd = [], runText = [], slot = [], candidateRow = [], candidateRun = [], picked = [], evict = [],
        textRow = [], textRun = [];
    float[] tar = [], norms = [], scratch = [];
    bool[] keep = [], charged = [];

    public InfiniPotVPolicy(int budget, int recent = 4, float alpha = 0.5f, int? target = null)
    {
        Budget = budget >= 1 ? budget : throw new ArgumentOutOfRangeException(nameof(budget), $"budget must be at least 1 token, not {budget}");
        Target = target ?? budget;
        if (Target < 1 || Target > budget) throw new ArgumentOutOfRangeException(nameof(target), $"target must be between 1 and the budget ({budget}) tokens, not {Target}");
        Recent = recent >= 0 ? recent : throw new ArgumentOutOfRangeException(nameof(recent), $"recent must be at least 0 frames, not {recent}");
        Alpha = alpha is >= 0 and <= 1 ? alpha : throw new ArgumentOutOfRangeException(nameof(alpha), $"alpha must be in [0, 1], not {alpha}");
    }

    /// <summary>Video rows a head keeps (the hard cap).</summary>
    public int Budget { get; }
    /// <summary>Video rows a head keeps after a compression (≤ <see cref="Budget"/>).</summary>
    public int Target { get; }
    /// <summary>Newest frames kept whole as the redundancy reference.</summary>
    public int Recent { get; }
    /// <summary>Share of the older frames' kept rows chosen by temporal redundancy; the rest by value norm.</summary>
    public float Alpha { get; }
    public override string Name => FormattableString.Invariant($"infinipotv:budget={Budget},{(Target != Budget ? $"target={Target}," : "")}recent={Recent},alpha={Alpha}");
    public override bool ConcurrentSelect => true;

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        int layers = sequence.Store.LayerCount;
        trackers = new FrameTracker[layers];
        starts = new List<(int, int)>[layers];
        for (int l = 0; l < layers; l++) { trackers[l] = new FrameTracker(); starts[l] = []; }
        trackedStep = new long[layers];
        trackedStep.AsSpan().Fill(-1);
        oldestVideo = new int[layers, sequence.Store.KvHeadCount];
        for (int l = 0; l < layers; l++)
            for (int h = 0; h < oldestVideo.GetLength(1); h++) oldestVideo[l, h] = int.MaxValue;
        heldFrames = new HashSet<int>[layers];
        for (int l = 0; l < layers; l++) heldFrames[l] = [];
        heldStep = new long[layers];
        heldStep.AsSpan().Fill(-1);
        heldHeads = new int[layers];
    }

    public override void OnAppended(in KvStep step)
    {
        int layer = step.Layer;
        if (trackedStep[layer] != step.StepIndex)
        {
            // Frame starts are the same in every head of the layer: note them once per step.
            trackedStep[layer] = step.StepIndex;
            appended.Gather(Store, step.Table, step.Position, int.MaxValue);
            var tracker = trackers[layer];
            for (int i = 0; i < appended.Count; i++)
            {
                int frame = appended.Frames[i];
                bool opens = frame >= 0 && frame != tracker.Frame;
                tracker.Add(appended.Positions[i], frame, out _);
                if (opens) starts[layer].Add((appended.Positions[i], frame));
            }
        }
        if (oldestVideo[layer, step.Head] == int.MaxValue) oldestVideo[layer, step.Head] = 0; // a head of this policy
        Compress(step, layer);
    }

    void Compress(in KvStep step, int layer)
    {
        var table = step.Table;
        if (table.TokenCount <= Budget) return; // fewer rows than the cap, video or not
        int d = Store.HeadDim;
        rows.Gather(Store, table, 0, int.MaxValue, withKeys: true, withValues: true);
        int n = rows.Count;
        var positions = rows.Positions;
        var frames = rows.Frames;
        Grow(n);
        // Runs of visual rows (frames), oldest first.
        int runs = 0, video = 0, lastVisual = -1;
        for (int i = 0; i < n; i++)
        {
            if (frames[i] < 0) continue;
            video++;
            lastVisual = i;
            if (runs == 0 || runEnd[runs - 1] != i || frames[i - 1] != frames[i])
            {
                runStart[runs] = i;
                runFirst[runs] = FrameStart(layer, positions[i], frames[i]);
                runText[runs] = 0;
                runs++;
            }
            runEnd[runs - 1] = i + 1;
            slot[i] = positions[i] - runFirst[runs - 1];
        }
        if (runs > 0)
        {
            oldestVideo[layer, step.Head] = positions[runStart[0]];
            int oldest = int.MaxValue, served = 0;
            for (int h = 0; h < oldestVideo.GetLength(1); h++)
            {
                oldest = Math.Min(oldest, oldestVideo[layer, h]);
                if (oldestVideo[layer, h] != int.MaxValue) served++;
            }
            ForgetStartsBefore(layer, oldest);
            var held = heldFrames[layer];
            if (heldStep[layer] != step.StepIndex) { held.Clear(); heldStep[layer] = step.StepIndex; heldHeads[layer] = 0; }
            for (int r = 0; r < runs; r++) held.Add(frames[runStart[r]]);
            if (++heldHeads[layer] == served) ForgetStartsNotHeld(layer, held);
        }
        // A frame's own text goes with its run (the run just after or before it that holds its frame); text of a frame
        // with no visual row left goes now, unless it comes after the last visual row (its frame is still arriving).
        int texts = 0, orphans = 0, previous = -1;
        for (int i = 0; i < n; i++)
        {
            if (frames[i] >= 0) continue;
            while (previous + 1 < runs && runEnd[previous + 1] <= i) previous++;
            if (!FrameIds.IsFrameText(frames[i])) continue;
            int owner = FrameIds.Owner(frames[i]);
            int run = previous + 1 < runs && frames[runStart[previous + 1]] == owner ? previous + 1
                : previous >= 0 && frames[runStart[previous]] == owner ? previous : -1;
            if (run < 0)
            {
                if (i < lastVisual) evict[orphans++] = positions[i];
                continue;
            }
            runText[run]++;
            textRow[texts] = i;
            textRun[texts++] = run;
        }
        if (video + texts <= Budget)
        {
            if (orphans > 0) FrameRows.Evict(Store, table, evict.AsSpan(0, orphans));
            return;
        }
        // The newest frames stay whole (with their text) as the reference, while they fit the target.
        int reference = 0, referenceRows = 0;
        while (reference < Math.Min(Recent, runs) && referenceRows + RunCost(runs - 1 - reference) <= Target)
            referenceRows += RunCost(runs - 1 - reference++);
        int firstReference = runs - reference, keepOld = Target - referenceRows;
        // Older visual rows: the candidates, in row order.
        var keys = rows.Keys(d);
        var values = rows.Values(d);
        int candidates = 0;
        for (int r = 0; r < firstReference; r++)
            for (int i = runStart[r]; i < runEnd[r]; i++)
            {
                var k = keys.Slice(i * d, d);
                float redundancy = float.NegativeInfinity;
                for (int f = firstReference; f < runs; f++)
                {
                    // Reference frames are whole, so the slot is usually at its offset; search when it is not.
                    int at = runStart[f] + slot[i] - slot[runStart[f]];
                    if (at < runStart[f] || at >= runEnd[f] || slot[at] != slot[i]) at = FindSlot(f, slot[i]);
                    if (at >= 0) redundancy = Math.Max(redundancy, TensorPrimitives.CosineSimilarity(k, keys.Slice(at * d, d)));
                }
                tar[candidates] = float.IsNegativeInfinity(redundancy) ? 1 : -redundancy;
                norms[candidates] = TensorPrimitives.Norm(values.Slice(i * d, d));
                candidateRow[candidates] = i;
                candidateRun[candidates++] = r;
            }
        // The least redundant first (up to ⌈α · kept⌉ rows' worth), then the largest value norms among the rest. A row
        // of a frame nothing was kept of yet also costs that frame's text, so each kept frame keeps its timestamp.
        keep.AsSpan(0, candidates).Clear();
        charged.AsSpan(0, runs).Clear();
        int used = 0;
        int byRedundancy = Math.Min(keepOld, (int)Math.Ceiling(Alpha * keepOld - 1e-6));
        int got = PageScoring.TopK(tar.AsSpan(0, candidates), byRedundancy, picked, scratch);
        for (int i = 0; i < got; i++) scratch[i] = -tar[picked[i]];
        scratch.AsSpan(0, got).Sort(picked.AsSpan(0, got));
        for (int i = 0; i < got; i++) Take(picked[i], byRedundancy);
        int rest = 0;
        for (int c = 0; c < candidates; c++)
            if (!keep[c]) { scratch[rest] = -norms[c]; picked[rest++] = c; }
        scratch.AsSpan(0, rest).Sort(picked.AsSpan(0, rest));
        for (int i = 0; i < rest && used < keepOld; i++) Take(picked[i], keepOld);
        int count = orphans;
        for (int c = 0; c < candidates; c++)
            if (!keep[c]) evict[count++] = positions[candidateRow[c]];
        for (int t = 0; t < texts; t++)
            if (textRun[t] < firstReference && !charged[textRun[t]]) evict[count++] = positions[textRow[t]];
        evict.AsSpan(0, count).Sort();
        FrameRows.Evict(Store, table, evict.AsSpan(0, count));

        int RunCost(int r) => runEnd[r] - runStart[r] + runText[r];

        void Take(int candidate, int limit)
        {
            int run = candidateRun[candidate];
            int cost = charged[run] ? 1 : 1 + runText[run];
            if (used + cost > limit) return;
            keep[candidate] = true;
            charged[run] = true;
            used += cost;
        }

        int FindSlot(int run, int wanted)
        {
            for (int i = runStart[run]; i < runEnd[run]; i++)
                if (slot[i] == wanted) return i;
            return -1;
        }
    }

    void Grow(int n)
    {
        if (runStart.Length >= n + 1) return;
        int size = Math.Max(n + 1, 2 * runStart.Length);
        runStart = new int[size]; runEnd = new int[size]; runFirst = new int[size]; runText = new int[size]; slot = new int[size];
        tar = new float[size]; norms = new float[size]; scratch = new float[size];
        candidateRow = new int[size]; candidateRun = new int[size]; picked = new int[size]; evict = new int[size];
        textRow = new int[size]; textRun = new int[size];
        keep = new bool[size]; charged = new bool[size];
    }

    /// <summary>Drops the frame starts no stored row needs any more (all but the last at or before <paramref name="position"/>), so they stay bounded.</summary>
    void ForgetStartsBefore(int layer, int position)
    {
        var list = starts[layer];
        int stale = 0;
        while (stale + 1 < list.Count && list[stale + 1].Position <= position) stale++;
        if (stale > 0) list.RemoveRange(0, stale);
    }

    /// <summary>Drops the starts of frames no head of the layer held at this step (the newest start stays: its frame may still be arriving).</summary>
    void ForgetStartsNotHeld(int layer, HashSet<int> held)
    {
        var list = starts[layer];
        int kept = 0;
        for (int i = 0; i < list.Count; i++)
            if (i == list.Count - 1 || held.Contains(list[i].Frame)) list[kept++] = list[i];
        if (kept < list.Count) list.RemoveRange(kept, list.Count - kept);
    }

    /// <summary>Frame starts the policy holds for <paramref name="layer"/> (tests: they stay bounded).</summary>
    internal int FrameStartCount(int layer) => starts[layer].Count;

    /// <summary>The first position of the frame of the row at <paramref name="position"/> (as appended), or the position itself when unknown.</summary>
    internal int FrameStart(int layer, int position, int frame)
    {
        var list = starts[layer];
        int lo = 0, hi = list.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) / 2;
            if (list[mid].Position <= position) lo = mid + 1; else hi = mid;
        }
        return lo > 0 && list[lo - 1].Frame == frame ? list[lo - 1].Position : position;
    }

    public override void OnTruncated(int length)
    {
        for (int l = 0; l < trackers.Length; l++)
        {
            trackers[l].Truncate(length);
            starts[l].RemoveAll(s => s.Position >= length);
            trackedStep[l] = -1;
            for (int h = 0; h < oldestVideo.GetLength(1); h++)
                if (oldestVideo[l, h] != int.MaxValue) oldestVideo[l, h] = Math.Min(oldestVideo[l, h], length);
        }
    }
}
