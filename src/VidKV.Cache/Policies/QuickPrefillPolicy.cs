using System.Numerics.Tensors;

namespace VidKV.Cache;

/// <summary>
/// QuickPrefill, the KV pruning of QuickVideo (Schneider et al., "QuickVideo: Real-Time Long Video Understanding with
/// System Algorithm Co-Design", 2025), after Devoto et al.'s key-norm rule (EMNLP 2024): video is prefilled in groups
/// of <see cref="Group"/> frames (16 in the paper); once a group's frames are all finished, of its n video rows the
/// ⌈<see cref="Ratio"/> · n⌉ (ρ = 0.5 in the paper) whose keys have the smallest L2 norm, averaged over the layer's KV
/// heads, stay in every head of the layer — one selection shared by the heads, as the paper's — and the rest are
/// evicted (a small key norm marks the keys attention concentrates on; value norm scores much worse). Frames come
/// from the store's frame ids: a group counts finished frames (a frame ends when a row of another frame or a text row
/// follows it), so a frame split over steps and text between frames change nothing. Text rows are never touched, and
/// a group not yet complete (the latest frames of a stream) is kept whole until it is. The selection is made once per
/// (layer, step), at the first of the layer's heads this policy serves, from the keys of every head of the layer;
/// heads served by another policy instance make their own. Unlike <c>keynorm</c> (per appended chunk), the unit is the
/// paper's group of frames, however the frames were batched.
/// </summary>
internal sealed class QuickPrefillPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("quickprefill",
        "QuickPrefill (QuickVideo, Schneider et al., 2025): per group of frames keep the share of its video tokens with the smallest key norm, one selection for the layer's heads",
        [
            KvPolicyOption.Float("ratio", 0.5f, "share of each group's video tokens kept"),
            KvPolicyOption.Int("group", 16, "frames per group"),
        ],
        a => new QuickPrefillPolicy(a.Float("ratio"), a.Int("group"))) { Example = "ratio=0.3125001,group=4" };

    readonly FrameRows rows = new(), appended = new();
    // Per layer: the frames seen, the first positions of the finished frames of the group being filled, and the
    // positions this (layer, step)'s heads evict (ascending).
    FrameTracker[] trackers = [];
    List<int>[] groupFrames = [];
    long[] decidedStep = [];
    List<int>[] dropped = [];
    float[] norms = [], meanNorms = [], scratch = [];
    int[] counts = [], offsets = [], picked = [];

    public QuickPrefillPolicy(float ratio = 0.5f, int group = 16)
    {
        Ratio = ratio is > 0 and <= 1 ? ratio : throw new ArgumentOutOfRangeException(nameof(ratio), $"ratio must be in (0, 1], not {ratio}");
        Group = group >= 1 ? group : throw new ArgumentOutOfRangeException(nameof(group), $"group must be at least 1 frame, not {group}");
    }

    /// <summary>Share of each group's video rows kept.</summary>
    public float Ratio { get; }
    /// <summary>Frames per group.</summary>
    public int Group { get; }
    public override string Name => FormattableString.Invariant($"quickprefill:ratio={Ratio},group={Group}");
    public override bool ConcurrentSelect => true;

    /// <summary>Rows a group of <paramref name="n"/> video rows keeps.</summary>
    public int Kept(int n) => (int)Math.Ceiling(Ratio * n - 1e-6);

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        int layers = sequence.Store.LayerCount;
        trackers = new FrameTracker[layers];
        for (int l = 0; l < layers; l++) trackers[l] = new FrameTracker();
        groupFrames = new List<int>[layers];
        for (int l = 0; l < layers; l++) groupFrames[l] = [];
        decidedStep = new long[layers];
        decidedStep.AsSpan().Fill(-1);
        dropped = new List<int>[layers];
        for (int l = 0; l < layers; l++) dropped[l] = [];
    }

    public override void OnAppended(in KvStep step)
    {
        int layer = step.Layer;
        if (decidedStep[layer] != step.StepIndex)
        {
            // The first head of the layer this step: follow the frames, decide every group they complete.
            decidedStep[layer] = step.StepIndex;
            dropped[layer].Clear();
            var tracker = trackers[layer];
            appended.Gather(Store, step.Table, step.Position, int.MaxValue);
            for (int i = 0; i < appended.Count; i++)
            {
                if (!tracker.Add(appended.Positions[i], appended.Frames[i], out var finished)) continue;
                var group = groupFrames[layer];
                group.Add(finished.First);
                if (group.Count < Group) continue;
                Decide(layer, group[0], finished.Last);
                group.Clear();
            }
        }
        if (dropped[layer].Count > 0) FrameRows.Evict(Store, step.Table, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(dropped[layer]));
    }

    /// <summary>Adds to the layer's dropped positions the video rows of [first, last] with the largest mean key norm over its heads.</summary>
    void Decide(int layer, int first, int last)
    {
        int span = last - first + 1, d = Store.HeadDim;
        if (norms.Length < span)
        {
            norms = new float[span]; meanNorms = new float[span]; scratch = new float[span];
            counts = new int[span]; offsets = new int[span]; picked = new int[span];
        }
        norms.AsSpan(0, span).Clear();
        counts.AsSpan(0, span).Clear();
        for (int h = 0; h < Store.KvHeadCount; h++)
        {
            rows.Gather(Store, Sequence.Table(layer, h), first, last, withKeys: true);
            var keys = rows.Keys(d);
            for (int i = 0; i < rows.Count; i++)
            {
                if (rows.Frames[i] < 0) continue; // text between frames stays
                int t = rows.Positions[i] - first;
                norms[t] += TensorPrimitives.Norm(keys.Slice(i * d, d));
                counts[t]++;
            }
        }
        // The group's video rows by offset, each with its mean norm over the heads holding it; the largest go.
        int n = 0;
        for (int t = 0; t < span; t++)
            if (counts[t] > 0) { offsets[n] = t; meanNorms[n++] = norms[t] / counts[t]; }
        int removed = PageScoring.TopK(meanNorms.AsSpan(0, n), n - Kept(n), picked, scratch);
        var list = dropped[layer];
        for (int i = 0; i < removed; i++) list.Add(first + offsets[picked[i]]); // picked ascends, and groups come in order
    }

    public override void OnTruncated(int length)
    {
        for (int l = 0; l < trackers.Length; l++)
        {
            trackers[l].Truncate(length);
            // The group keeps the frames that started before the cut.
            groupFrames[l].RemoveAll(first => first >= length);
            decidedStep[l] = -1;
        }
    }
}
