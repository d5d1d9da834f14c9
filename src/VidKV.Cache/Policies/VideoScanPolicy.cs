using System.Numerics.Tensors;

namespace VidKV.Cache;

/// <summary>
/// VideoScan's carrier mode (Li et al., "VideoScan: Enabling Efficient Streaming Video Understanding via Frame-level
/// Semantic Carriers", 2025). The paper appends one carrier token per frame, whose input embedding is the mean of
/// the frame's visual embeddings, and once the frame is prefilled keeps only the carrier's KV (optionally also the
/// frame's 16 most-attended visual tokens); the model is trained for it. What this policy keeps, per KV head, once a
/// frame is finished (a row of another frame or a text row follows it):
/// <list type="bullet">
/// <item>the carrier: the frame's last stored row, at its own position, with key and value overwritten by the mean of
/// the frame's stored keys and values (<c>mean</c> on, the default). The KV cache cannot run the model on a mean
/// embedding, so the mean of the frame's (rotated) keys and values is the closest stand-in a model not trained for
/// VideoScan gets: one row whose attention logit is the frame's mean logit and whose value the frame's mean value.
/// The last position is where the paper's carrier sits (after the frame's tokens), so order and positions stay
/// causal. With <c>mean</c> off the last row is kept as it is: for a model trained for VideoScan, whose session
/// appends the real carrier token as each frame's last row.</item>
/// <item>the <see cref="Attended"/> other rows of the frame that the frame's last row attends to most (its query's
/// softmax over the frame, summed over the KV head's query group): the paper's option. Without that query (a policy
/// attached after the frame was appended, e.g. on a fork) only the carrier stays.</item>
/// </list>
/// Every other row of the frame is evicted, so a finished frame holds exactly 1 + min(attended, rows − 1) rows. The
/// open frame (still being appended) and text rows are never touched. Nothing happens before a frame is finished:
/// the frame's own rows attend to each other in full while it is appended, as in the paper.
/// </summary>
internal sealed class VideoScanPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("videoscan",
        "VideoScan (Li et al., 2025), carrier mode: a finished frame keeps one carrier row (its last, holding the mean key and value of the frame) and its most-attended rows",
        [
            KvPolicyOption.Int("attended", 0, "rows of a finished frame most attended by its last row that stay beside the carrier"),
            KvPolicyOption.Switch("mean", "write the mean of the frame's keys and values into the carrier (auto: on; off keeps the last row as it is, a trained model's carrier token)"),
        ],
        a => new VideoScanPolicy(a.Int("attended"), a.Switch("mean"))) { Example = "attended=3,mean=0" };

    readonly FrameRows rows = new(), appended = new();
    FrameTracker[] trackers = [];
    // Per (layer, KV head): the query of the latest video row ([group, headDim]) and its position (−1: none).
    float[][] lastQuery = [];
    int[] lastQueryPosition = [];
    float[] meanKey = [], meanValue = [], scores = [], logits = [], scratch = [];
    int[] order = [], evict = [];

    public VideoScanPolicy(int attended = 0, bool? mean = null)
    {
        Attended = attended >= 0 ? attended : throw new ArgumentOutOfRangeException(nameof(attended), $"attended must be at least 0, not {attended}");
        Mean = mean;
    }

    /// <summary>Rows most attended by the frame's last row kept beside the carrier.</summary>
    public int Attended { get; }
    /// <summary>Whether the carrier's key and value become the frame's means; null (auto) is on.</summary>
    public bool? Mean { get; }
    public override string Name => $"videoscan:attended={Attended}" + Mean switch { true => ",mean=1", false => ",mean=0", _ => "" };
    public override bool ConcurrentSelect => true;

    /// <summary>Rows a finished frame of <paramref name="rows"/> stored rows keeps.</summary>
    public int Kept(int rows) => Math.Min(rows, 1 + Attended);

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        int heads = sequence.Store.HeadSlots;
        trackers = new FrameTracker[heads];
        for (int i = 0; i < heads; i++) trackers[i] = new FrameTracker();
        lastQuery = new float[heads][];
        lastQueryPosition = new int[heads];
        lastQueryPosition.AsSpan().Fill(-1);
    }

    public override void OnAppended(in KvStep step)
    {
        int head = HeadIndex(step.Layer, step.Head), row = step.Group * Store.HeadDim;
        var tracker = trackers[head];
        appended.Gather(Store, step.Table, step.Position, int.MaxValue);
        for (int i = 0; i < appended.Count; i++)
        {
            int position = appended.Positions[i], frame = appended.Frames[i];
            if (tracker.Add(position, frame, out var finished)) Reduce(step, head, finished);
            if (frame < 0) continue;
            // The latest video row's query: when the next row finishes this frame, it is the frame's last row's.
            var query = lastQuery[head] ??= new float[row];
            step.Queries.Slice((position - step.Position) * row, row).CopyTo(query);
            lastQueryPosition[head] = position;
        }
    }

    void Reduce(in KvStep step, int head, FrameSpan frame)
    {
        int d = Store.HeadDim;
        var table = step.Table;
        rows.Gather(Store, table, frame.First, frame.Last, withKeys: true, withValues: Mean != false);
        int n = rows.Count;
        if (n <= 1) return;
        int carrier = rows.Positions[n - 1];
        if (Mean != false)
        {
            if (meanKey.Length < d) { meanKey = new float[d]; meanValue = new float[d]; }
            MeanRows(rows.Keys(d), n, meanKey.AsSpan(0, d));
            MeanRows(rows.Values(d), n, meanValue.AsSpan(0, d));
        }
        // Which rows stay beside the carrier: the most attended by the frame's last row (its query, if this policy saw it).
        if (evict.Length < n) { evict = new int[n]; order = new int[n]; scores = new float[n]; logits = new float[n]; scratch = new float[n]; }
        int others = n - 1, extra = Math.Min(Attended, others), picked = 0;
        if (extra > 0 && lastQueryPosition[head] == carrier)
        {
            var s = scores.AsSpan(0, others);
            s.Clear();
            var q = lastQuery[head];
            var k = rows.Keys(d);
            for (int h = 0; h < step.Group; h++)
            {
                var l = logits.AsSpan(0, others);
                for (int i = 0; i < others; i++) l[i] = step.Scale * TensorPrimitives.Dot(q.AsSpan(h * d, d), k.Slice(i * d, d));
                float max = TensorPrimitives.Max(l);
                TensorPrimitives.Subtract(l, max, l);
                TensorPrimitives.Exp(l, l);
                TensorPrimitives.MultiplyAdd(l, 1f / TensorPrimitives.Sum(l), s, s);
            }
            picked = PageScoring.TopK(s, extra, order, scratch); // ascending indices
        }
        // Evict every row but the carrier and the picked ones (both lists ascending).
        int count = 0;
        for (int i = 0, p = 0; i < others; i++)
        {
            if (p < picked && order[p] == i) { p++; continue; }
            evict[count++] = rows.Positions[i];
        }
        if (Mean != false && FrameRows.Locate(Store, table, carrier, out int index, out int at))
            Store.WriteRow(table, index, at, meanKey.AsSpan(0, d), meanValue.AsSpan(0, d));
        FrameRows.Evict(Store, table, evict.AsSpan(0, count));
    }

    static void MeanRows(ReadOnlySpan<float> rows, int n, Span<float> mean)
    {
        int d = mean.Length;
        mean.Clear();
        for (int i = 0; i < n; i++) TensorPrimitives.Add(mean, rows.Slice(i * d, d), mean);
        TensorPrimitives.Divide(mean, n, mean);
    }

    public override void OnTruncated(int length)
    {
        foreach (var tracker in trackers) tracker.Truncate(length);
        for (int i = 0; i < lastQueryPosition.Length; i++) if (lastQueryPosition[i] >= length) lastQueryPosition[i] = -1;
    }
}
