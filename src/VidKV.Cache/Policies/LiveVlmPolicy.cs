using System.Numerics.Tensors;

namespace VidKV.Cache;

/// <summary>
/// LiveVLM (Ning et al., "LiveVLM: Efficient Online Video Understanding via Streaming-Oriented KV Cache and
/// Retrieval", 2025): video is encoded clip by clip, each clip attending to the compressed KV of the ones before it.
/// <para>
/// Compression, on append, per KV head: once the <see cref="Clip"/> frames of a clip are finished (a frame ends when a
/// row of another frame or a text row follows it), the clip's video rows are scored by the attention of its last
/// <see cref="Queries"/> video rows (each query's softmax over the clip's rows it can see, summed over those queries and
/// the head's query group), and of its n video rows exactly ⌈<see cref="Ratio"/> · n⌉ with the highest scores stay;
/// the rest are evicted. Text rows are never touched. (Without the clip's queries — a policy attached after the clip
/// was appended — the earliest rows stay.)
/// </para>
/// <para>
/// Retrieval, on select: a step whose last row is video (ingest) reads everything (the compressed KV of earlier clips
/// and the open clip). A step whose last row is text (a question, an answer) reads the initial and all other text
/// rows, the short-term memory — the newest <see cref="Recent"/> × clip frames whole (what is left of them) and every
/// row not indexed yet (the open frame) — and the long-term memory: the <see cref="Retrieve"/> older frames whose key
/// summary scores highest for the step's last query (scale · q·summary, softmaxed over the frames per query head and
/// averaged over the group). A frame's summary is the mean of its stored keys (the paper leaves it open), computed
/// from the store once the frame is finished and again after its clip is compressed, so a fork (a question on a live
/// stream) or a rewound policy indexes the stored frames at its next step just as they are.
/// </para>
/// Open choices: ratio 0.25, clips of 8 frames scored by their last 16 queries, one recent clip and 8 retrieved frames.
/// </summary>
internal sealed class LiveVlmPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("livevlm",
        "LiveVLM (Ning et al., 2025): each clip of frames keeps the share of its video tokens its last queries attend to most; a question reads recent clips plus the frames whose mean key matches it",
        [
            KvPolicyOption.Float("ratio", 0.25f, "share of each clip's video tokens kept"),
            KvPolicyOption.Int("clip", 8, "frames per clip"),
            KvPolicyOption.Int("queries", 16, "last video queries of a clip whose attention scores it"),
            KvPolicyOption.Int("recent", 1, "newest clips (clip frames each) a text step reads whole: the short-term memory"),
            KvPolicyOption.Int("retrieve", 8, "older frames a text step reads by summary similarity: the long-term memory"),
        ],
        a => new LiveVlmPolicy(a.Float("ratio"), a.Int("clip"), a.Int("queries"), a.Int("recent"), a.Int("retrieve")))
        { Example = "ratio=0.3125001,clip=4,queries=8,recent=2,retrieve=3" };

    /// <summary>One head's clip being filled, its latest video queries, and its index of finished frames.</summary>
    sealed class HeadState
    {
        public readonly FrameTracker Tracker = new();
        public readonly List<FrameSpan> Clip = [];
        public float[] RingQueries = [];   // [Queries, group × d]
        public int[] RingPositions = [];
        public int RingCount, RingNext;
        // Index: finished frames in position order, with their summaries ([capacity, d]).
        public int IndexedUpTo = -1;
        public int Frames;
        public int[] First = [], Last = [];
        public float[] Summaries = [];
    }

    /// <summary>Buffers of one KV head of a layer (the heads select side by side).</summary>
    sealed class Scratch
    {
        public readonly FrameRows Rows = new();
        public float[] Page = [], Sum = [], Scores = [], Logits = [], KeyScratch = [];
        public int[] Picked = [];
        public bool[] Selected = [];
    }

    readonly FrameRows appended = new();
    HeadState[] heads = [];
    Scratch[] scratches = [];
    float[] scores = [], logits = [], keyScratch = [];
    int[] picked = [], evict = [];

    public LiveVlmPolicy(float ratio = 0.25f, int clip = 8, int queries = 16, int recent = 1, int retrieve = 8)
    {
        Ratio = ratio is > 0 and <= 1 ? ratio : throw new ArgumentOutOfRangeException(nameof(ratio), $"ratio must be in (0, 1], not {ratio}");
        Clip = clip >= 1 ? clip : throw new ArgumentOutOfRangeException(nameof(clip), $"clip must be at least 1 frame, not {clip}");
        Queries = queries >= 1 ? queries : throw new ArgumentOutOfRangeException(nameof(queries), $"queries must be at least 1, not {queries}");
        Recent = recent >= 0 ? recent : throw new ArgumentOutOfRangeException(nameof(recent), $"recent must be at least 0 clips, not {recent}");
        Retrieve = retrieve >= 0 ? retrieve : throw new ArgumentOutOfRangeException(nameof(retrieve), $"retrieve must be at least 0 frames, not {retrieve}");
    }

    public float Ratio { get; }
    public int Clip { get; }
    public int Queries { get; }
    public int Recent { get; }
    public int Retrieve { get; }
    public override string Name => FormattableString.Invariant($"livevlm:ratio={Ratio},clip={Clip},queries={Queries},recent={Recent},retrieve={Retrieve}");
    /// <summary>Heads select side by side, each with its own state and scratch; not when cold pages are read through the store's one staging buffer.</summary>
    public override bool ConcurrentSelect => !(Store.HasColdTier && !Store.ReadsColdInPlace);

    /// <summary>Rows a clip of <paramref name="n"/> video rows keeps.</summary>
    public int Kept(int n) => (int)Math.Ceiling(Ratio * n - 1e-6);

    /// <summary>Frames (layer, head) has indexed (finished frames with a summary).</summary>
    public int IndexedFrames(int layer, int head) => heads[HeadIndex(layer, head)].Frames;

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        var store = sequence.Store;
        heads = new HeadState[store.HeadSlots];
        for (int i = 0; i < heads.Length; i++) heads[i] = new HeadState();
        scratches = new Scratch[store.KvHeadCount];
        for (int i = 0; i < scratches.Length; i++) scratches[i] = new Scratch();
    }

    public override void OnTruncated(int length)
    {
        foreach (var state in heads)
        {
            state.Tracker.Truncate(length);
            state.Clip.RemoveAll(frame => frame.First >= length);
            // Queries at or after the cut are the newest in the ring.
            while (state.RingCount > 0 && state.RingPositions[(state.RingNext - 1 + Queries) % Queries] >= length)
            {
                state.RingNext = (state.RingNext - 1 + Queries) % Queries;
                state.RingCount--;
            }
            state.IndexedUpTo = -1; // the index is rebuilt from what stays, at the next step
            state.Frames = 0;
        }
    }

    public override void OnAppended(in KvStep step)
    {
        var state = heads[HeadIndex(step.Layer, step.Head)];
        int row = step.Group * Store.HeadDim;
        if (state.RingQueries.Length < Queries * row) { state.RingQueries = new float[Queries * row]; state.RingPositions = new int[Queries]; }
        appended.Gather(Store, step.Table, step.Position, int.MaxValue);
        for (int i = 0; i < appended.Count; i++)
        {
            int position = appended.Positions[i], frame = appended.Frames[i];
            if (state.Tracker.Add(position, frame, out var finished))
            {
                state.Clip.Add(finished);
                if (state.Clip.Count == Clip)
                {
                    Compress(step, state);
                    state.Clip.Clear();
                }
            }
            if (frame < 0) continue;
            // The latest video queries (when the next row finishes the clip, they are the clip's last ones).
            step.Queries.Slice((position - step.Position) * row, row).CopyTo(state.RingQueries.AsSpan(state.RingNext * row, row));
            state.RingPositions[state.RingNext] = position;
            state.RingNext = (state.RingNext + 1) % Queries;
            state.RingCount = Math.Min(Queries, state.RingCount + 1);
        }
        Index(state, step.Table, int.MaxValue, scratches[step.Head]);
    }

    /// <summary>Keeps the clip's ⌈ratio · n⌉ video rows its last queries attend to most; re-summarises its indexed frames.</summary>
    void Compress(in KvStep step, HeadState state)
    {
        int d = Store.HeadDim, first = state.Clip[0].First, last = state.Clip[^1].Last;
        var rows = scratches[step.Head].Rows;
        rows.Gather(Store, step.Table, first, last, withKeys: true);
        int n = rows.Count, video = 0;
        if (scores.Length < n) { scores = new float[n]; logits = new float[n]; keyScratch = new float[n]; picked = new int[n]; evict = new int[n]; }
        // Video rows to the front (text rows of the clip are not candidates), keys with them.
        var keys = rows.Keys(d);
        var positions = rows.Positions;
        for (int i = 0; i < n; i++)
        {
            if (rows.Frames[i] < 0) continue;
            if (video != i)
            {
                positions[video] = positions[i];
                keys.Slice(i * d, d).CopyTo(keys.Slice(video * d, d));
            }
            video++;
        }
        int kept = Kept(video);
        if (kept >= video) return;
        var s = scores.AsSpan(0, video);
        s.Clear();
        for (int r = 0; r < state.RingCount; r++)
        {
            int at = (state.RingNext - state.RingCount + r + Queries) % Queries, queryPosition = state.RingPositions[at];
            if (queryPosition < first || queryPosition > last) continue;
            int visible = 0;
            while (visible < video && positions[visible] <= queryPosition) visible++;
            if (visible == 0) continue;
            for (int h = 0; h < step.Group; h++)
            {
                var q = state.RingQueries.AsSpan((at * step.Group + h) * d, d);
                var l = logits.AsSpan(0, visible);
                for (int i = 0; i < visible; i++) l[i] = step.Scale * TensorPrimitives.Dot(q, keys.Slice(i * d, d));
                float max = TensorPrimitives.Max(l);
                TensorPrimitives.Subtract(l, max, l);
                TensorPrimitives.Exp(l, l);
                TensorPrimitives.MultiplyAdd(l, 1f / TensorPrimitives.Sum(l), s[..visible], s[..visible]);
            }
        }
        int got = PageScoring.TopK(s, kept, picked, keyScratch);
        // Evict the video rows not picked (picked ascends).
        int count = 0;
        for (int i = 0, p = 0; i < video; i++)
        {
            if (p < got && picked[p] == i) { p++; continue; }
            evict[count++] = positions[i];
        }
        FrameRows.Evict(Store, step.Table, evict.AsSpan(0, count));
        // Frames of the clip already indexed are summarised again from what they kept.
        for (int f = 0; f < state.Frames; f++)
            if (state.First[f] >= first && state.Last[f] <= last) Summarise(state, f, step.Table, scratches[step.Head]);
    }

    void Summarise(HeadState state, int frame, PageTable table, Scratch scratch)
    {
        int d = Store.HeadDim;
        scratch.Rows.Gather(Store, table, state.First[frame], state.Last[frame], withKeys: true);
        var summary = state.Summaries.AsSpan(frame * d, d);
        summary.Clear();
        var keys = scratch.Rows.Keys(d);
        for (int i = 0; i < scratch.Rows.Count; i++) TensorPrimitives.Add(summary, keys.Slice(i * d, d), summary);
        if (scratch.Rows.Count > 0) TensorPrimitives.Divide(summary, scratch.Rows.Count, summary);
    }

    /// <summary>Indexes the finished frames stored after <see cref="HeadState.IndexedUpTo"/> up to <paramref name="upTo"/>: each gets its mean key.</summary>
    void Index(HeadState state, PageTable table, int upTo, Scratch scratch)
    {
        if (table.Count == 0 || state.IndexedUpTo >= Math.Min(upTo, Store.LastPosition(table[^1]))) return;
        int d = Store.HeadDim, runFrame = int.MinValue, runFirst = 0, runLast = 0, runCount = 0;
        Grow(ref scratch.Page, Store.PageSize * d);
        Grow(ref scratch.Sum, d);
        var sum = scratch.Sum.AsSpan(0, d);
        for (int index = FrameRows.FirstPageFrom(Store, table, state.IndexedUpTo + 1); index < table.Count; index++)
        {
            int page = table[index];
            var positions = Store.Positions(page);
            var frames = Store.FrameIds(page);
            bool keysRead = false;
            for (int j = 0; j < positions.Length; j++)
            {
                int position = positions[j];
                if (position <= state.IndexedUpTo) continue;
                if (position > upTo) return;
                if (frames[j] != runFrame && runCount > 0)
                {
                    // The frame before this row is finished: index it with its mean key.
                    int f = state.Frames++;
                    if (f == state.First.Length)
                    {
                        int capacity = Math.Max(64, 2 * f);
                        Array.Resize(ref state.First, capacity);
                        Array.Resize(ref state.Last, capacity);
                        Array.Resize(ref state.Summaries, capacity * d);
                    }
                    state.First[f] = runFirst;
                    state.Last[f] = runLast;
                    TensorPrimitives.Divide(sum, runCount, state.Summaries.AsSpan(f * d, d));
                    state.IndexedUpTo = runLast;
                    runCount = 0;
                }
                runFrame = frames[j];
                if (runFrame < 0) { state.IndexedUpTo = position; continue; } // text needs no index: it is always read
                if (!keysRead) { Store.ReadKeys(page, scratch.Page); keysRead = true; }
                if (runCount == 0) { sum.Clear(); runFirst = position; }
                TensorPrimitives.Add(sum, scratch.Page.AsSpan(j * d, d), sum);
                runLast = position;
                runCount++;
            }
        }
        // A video run at the end is the open frame: it is indexed once a row follows it.
    }

    public override void Select(in KvStep step, PageSelection selection)
    {
        var table = step.Table;
        var state = heads[HeadIndex(step.Layer, step.Head)];
        var scratch = scratches[step.Head];
        Index(state, table, step.Position - 1, scratch);
        int shortTerm = Math.Min(state.Frames, Recent * Clip), older = state.Frames - shortTerm;
        bool ingest = FrameRows.Locate(Store, table, step.Position + step.Count - 1, out int own, out int ownRow) && Store.FrameIds(table[own])[ownRow] >= 0;
        if (ingest || older <= Retrieve) { selection.AddAll(table.Count); return; }

        // Long-term: the older frames whose summaries score highest for the last query (softmax per query head, group mean).
        int d = Store.HeadDim;
        Grow(ref scratch.Scores, older);
        Grow(ref scratch.Logits, older);
        Grow(ref scratch.KeyScratch, older);
        Grow(ref scratch.Picked, older);
        Grow(ref scratch.Selected, state.Frames);
        var frameScores = scratch.Scores.AsSpan(0, older);
        var frameLogits = scratch.Logits.AsSpan(0, older);
        frameScores.Clear();
        for (int h = 0; h < step.Group; h++)
        {
            var q = step.LastQueries.Slice(h * d, d);
            for (int f = 0; f < older; f++) frameLogits[f] = step.Scale * TensorPrimitives.Dot(q, state.Summaries.AsSpan(f * d, d));
            float max = TensorPrimitives.Max(frameLogits);
            TensorPrimitives.Subtract(frameLogits, max, frameLogits);
            TensorPrimitives.Exp(frameLogits, frameLogits);
            TensorPrimitives.MultiplyAdd(frameLogits, 1f / TensorPrimitives.Sum(frameLogits), frameScores, frameScores);
        }
        var selected = scratch.Selected.AsSpan(0, state.Frames);
        selected.Clear();
        int taken = PageScoring.TopK(frameScores, Retrieve, scratch.Picked, scratch.KeyScratch);
        for (int i = 0; i < taken; i++) selected[scratch.Picked[i]] = true;
        selected[older..].Fill(true); // short-term

        // Rows: text, rows of selected frames, and everything not indexed (the open frame, the step's own rows).
        int frame = 0;
        for (int index = 0; index < table.Count; index++)
        {
            int page = table[index], firstPosition = Store.FirstPosition(page), lastPosition = Store.LastPosition(page);
            if (firstPosition > state.IndexedUpTo) { selection.AddRange(index, table.Count); break; }
            while (frame < state.Frames && state.Last[frame] < firstPosition) frame++;
            // A page inside one indexed frame: all of it or none (a frame's run holds no text).
            if (frame < state.Frames && state.First[frame] <= firstPosition && lastPosition <= state.Last[frame])
            {
                if (selected[frame]) selection.Add(index);
                continue;
            }
            var positions = Store.Positions(page);
            var frames = Store.FrameIds(page);
            ulong mask = 0;
            for (int j = 0, f = frame; j < positions.Length; j++)
            {
                int position = positions[j];
                while (f < state.Frames && state.Last[f] < position) f++;
                bool inFrame = f < state.Frames && state.First[f] <= position;
                if (frames[j] < 0 || position > state.IndexedUpTo || (inFrame && selected[f])) mask |= 1UL << j;
            }
            if (mask != 0) selection.Add(index, mask);
        }
    }

    /// <summary>Makes <paramref name="array"/> at least <paramref name="length"/> long, keeping its contents (runs are gathered into it piece by piece).</summary>
    static void Grow<T>(ref T[] array, int length)
    {
        if (array.Length < length) Array.Resize(ref array, Math.Max(length, 2 * array.Length));
    }
}
