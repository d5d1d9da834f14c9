using VidKV.Cache;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Engine;

/// <summary>
/// DuoAttention's training-free proxy for which heads retrieve (ALGORITHMS.md): decode calibration text with the full
/// cache and, at every step where the two differ, compare each KV head's attention output with what it would be if
/// that head kept only sinks + recent tokens (a streaming head). The score of a (layer, KV head) is the mean relative
/// output error ‖o_stream − o‖ / ‖o‖ over its query heads and those steps: heads that lose the most by streaming
/// are the retrieval heads. Heads are judged one at a time on the full run, so the scores do not depend on each other.
/// </summary>
internal static class HeadCalibration
{
    /// <returns>[layers, kvHeads] scores, higher = more retrieval</returns>
    public static float[,] Run(DecoderModel model, string text, int contextLength, int sinks = 64, int recent = 256, int maxChunks = 0,
        Action<string>? progress = null)
    {
        if (contextLength <= sinks + recent)
            throw new ArgumentOutOfRangeException(nameof(contextLength), $"context length {contextLength} must exceed sinks + recent ({sinks + recent}), or streaming equals full");
        if (text.EndsWith('\n')) text = text[..^1];
        var tokens = model.Tokenizer.Encode(text, addSpecial: true, parseSpecial: false);
        int chunks = tokens.Count / contextLength;
        if (chunks == 0) throw new ArgumentException($"the text has {tokens.Count} tokens; -c {contextLength} needs at least {contextLength}");
        if (maxChunks > 0) chunks = Math.Min(chunks, maxChunks);
        var c = model.Config;
        var sums = new double[c.LayerCount, c.KvHeadCount];
        var counts = new long[c.LayerCount, c.KvHeadCount];
        var recall = new List<double>();
        var error = new List<double>();
        var logits = new float[c.VocabSize];
        for (int n = 0; n < chunks; n++)
        {
            progress?.Invoke($"chunk {n + 1} of {chunks}");
            var chunk = tokens.Skip(n * contextLength).Take(contextLength).ToArray();
            if (model.Vocabulary.AddBos && model.Vocabulary.BosId >= 0) chunk[0] = model.Vocabulary.BosId;
            var cache = new KvCacheConfig { PageSize = 16, Type = GgmlType.F16 }.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim);
            using var state = model.CreateState(cache);
            cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> read) =>
            {
                int position = step.Position;
                if (position < sinks + recent) return; // streaming keeps everything yet
                error.Clear();
                AttentionComparison.Compare(cache.Store, step.Table, step.LastQueries, step.Group, step.Scale,
                    p => p < sinks || p > position - recent, recall, error);
                sums[step.Layer, step.Head] += error.Sum();
                counts[step.Layer, step.Head] += error.Count;
            };
            for (int t = 0; t < chunk.Length; t++) model.Forward(state, chunk.AsSpan(t, 1), logits);
        }
        var scores = new float[c.LayerCount, c.KvHeadCount];
        for (int l = 0; l < c.LayerCount; l++)
            for (int h = 0; h < c.KvHeadCount; h++) scores[l, h] = counts[l, h] > 0 ? (float)(sums[l, h] / counts[l, h]) : 0;
        return scores;
    }
}
