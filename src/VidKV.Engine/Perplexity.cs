using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Engine;

/// <summary>Result of <see cref="Perplexity.Evaluate"/>: final perplexity, its ± and the running value after each chunk.</summary>
internal sealed record PerplexityResult(int ContextLength, int ChunkCount, int ScoredTokensPerChunk, int TokenCount,
    double Value, double PlusMinus, double[] RunningAfterChunk);

/// <summary>
/// Perplexity exactly as llama-perplexity computes it: drop one trailing newline, tokenise once (BOS per vocabulary,
/// no special parsing), cut into floor(n / ctx) chunks, replace each chunk's first token by BOS when the vocabulary
/// adds BOS, decode each chunk from an empty cache, and score only the second half: predictions of tokens
/// ctx/2+1 .. ctx−1. NLL accumulates in f64.
/// </summary>
internal static class Perplexity
{
    public static PerplexityResult Evaluate(DecoderModel model, string text, int contextLength, int batchSize = Generator.DefaultBatchSize,
        Action<int, double>? onChunk = null, GgmlType cacheType = GgmlType.F16, CancellationToken cancellation = default)
    {
        if (contextLength < 4) throw new ArgumentOutOfRangeException(nameof(contextLength), "context length must be at least 4");
        if (text.EndsWith('\n')) text = text[..^1];
        var tokens = model.Tokenizer.Encode(text, addSpecial: true, parseSpecial: false);
        int chunks = tokens.Count / contextLength;
        if (chunks == 0)
            throw new ArgumentException($"the text has {tokens.Count} tokens; perplexity at -c {contextLength} needs at least {contextLength}");

        int vocab = model.Config.VocabSize, first = contextLength / 2;
        using var state = model.CreateState(contextLength, cacheType, cacheType);
        var logits = new float[Math.Min(batchSize, contextLength) * vocab];
        var chunk = new int[contextLength];
        var running = new double[chunks];
        double nll = 0, nll2 = 0;
        long count = 0;
        for (int c = 0; c < chunks; c++)
        {
            cancellation.ThrowIfCancellationRequested();
            tokens.CopyTo(c * contextLength, chunk, 0, contextLength);
            if (model.Vocabulary.AddBos && model.Vocabulary.BosId >= 0) chunk[0] = model.Vocabulary.BosId;
            state.Cache.Clear();
            for (int start = 0; start < contextLength; start += batchSize)
            {
                int n = Math.Min(batchSize, contextLength - start);
                model.Forward(state, chunk.AsSpan(start, n), logits, allLogits: true);
                for (int i = 0; i < n; i++)
                {
                    int position = start + i;
                    if (position < first || position >= contextLength - 1) continue;
                    double value = NegativeLogLikelihood(logits.AsSpan(i * vocab, vocab), chunk[position + 1]);
                    nll += value;
                    nll2 += value * value;
                    count++;
                }
            }
            running[c] = Math.Exp(nll / count);
            onChunk?.Invoke(c, running[c]);
        }
        double mean = nll / count, variance = nll2 / count - mean * mean;
        double ppl = Math.Exp(mean);
        double plusMinus = variance > 0 ? Math.Sqrt(variance / (count - 1)) * ppl : 0;
        return new PerplexityResult(contextLength, chunks, contextLength - 1 - first, tokens.Count, ppl, plusMinus, running);
    }

    /// <summary>−log softmax(logits)[target], in f64.</summary>
    public static double NegativeLogLikelihood(ReadOnlySpan<float> logits, int target)
    {
        float max = System.Numerics.Tensors.TensorPrimitives.Max(logits);
        double sum = 0;
        foreach (float l in logits) sum += Math.Exp(l - max);
        return -(logits[target] - max - Math.Log(sum));
    }
}
