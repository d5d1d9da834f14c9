using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;
using VidKV.Text;

namespace VidKV.Tests;

/// <summary>Proactive commenting (VideoLLM-online) on a model whose silence probability its weights force.</summary>
public class ProactiveTests
{
    const int Width = 8, Vocab = 300;

    /// <summary>
    /// A one-layer Llama whose blocks add nothing (attention output and FFN down projections are zero), so the last
    /// row's logits are the output head applied to its normalised input: the output row of the silence token is
    /// 12·e₀ and every other row zero, so p(silence) = e^{12x̂₀} / (e^{12x̂₀} + V − 1) for the row's normalised first
    /// feature x̂₀ — a frame row with a large first feature keeps the model silent, a negative one makes it speak.
    /// </summary>
    static string ForcedModel(TempDirectory dir, out int silence)
    {
        string path = dir.File("forced.gguf");
        var w = new GgufWriter();
        w.Add("general.architecture", "llama");
        w.Add("general.name", "forced silence");
        w.Add("llama.block_count", 1u);
        w.Add("llama.context_length", 512u);
        w.Add("llama.embedding_length", (uint)Width);
        w.Add("llama.feed_forward_length", (uint)Width);
        w.Add("llama.attention.head_count", 2u);
        w.Add("llama.attention.head_count_kv", 2u);
        w.Add("llama.attention.layer_norm_rms_epsilon", 1e-5f);
        SyntheticVocabulary.AddTo(w, Vocab);
        Vocabulary vocabulary;
        using (var metadata = GgufOf(w, dir)) vocabulary = Vocabulary.FromGguf(metadata);
        silence = Tokenizer.Create(vocabulary).Encode(",", addSpecial: false, parseSpecial: true).Single();
        var random = new Random(3);
        float[] Values(int n, Func<int, float> f) => Enumerable.Range(0, n).Select(f).ToArray();
        w.AddTensor("token_embd.weight", GgmlType.F32, [Width, Vocab], Values(Width * Vocab, _ => (float)(random.NextDouble() - 0.5)));
        int silent = silence;
        w.AddTensor("output.weight", GgmlType.F32, [Width, Vocab], Values(Width * Vocab, i => i / Width == silent && i % Width == 0 ? 12f : 0f));
        w.AddTensor("output_norm.weight", GgmlType.F32, [Width], Values(Width, _ => 1f));
        w.AddTensor("blk.0.attn_norm.weight", GgmlType.F32, [Width], Values(Width, _ => 1f));
        w.AddTensor("blk.0.ffn_norm.weight", GgmlType.F32, [Width], Values(Width, _ => 1f));
        foreach (var name in new[] { "attn_q", "attn_k", "attn_v" })
            w.AddTensor($"blk.0.{name}.weight", GgmlType.F32, [Width, Width], Values(Width * Width, _ => (float)(random.NextDouble() - 0.5)));
        w.AddTensor("blk.0.attn_output.weight", GgmlType.F32, [Width, Width], new float[Width * Width]);
        w.AddTensor("blk.0.ffn_gate.weight", GgmlType.F32, [Width, Width], Values(Width * Width, _ => (float)(random.NextDouble() - 0.5)));
        w.AddTensor("blk.0.ffn_up.weight", GgmlType.F32, [Width, Width], Values(Width * Width, _ => (float)(random.NextDouble() - 0.5)));
        w.AddTensor("blk.0.ffn_down.weight", GgmlType.F32, [Width, Width], new float[Width * Width]);
        w.Write(path);
        return path;
    }

    /// <summary>The vocabulary alone, read back from a file of the writer's metadata (no tensors yet).</summary>
    static GgufFile GgufOf(GgufWriter w, TempDirectory dir)
    {
        string path = dir.File("vocab-only.gguf");
        w.Write(path);
        return GgufFile.Open(path);
    }

    /// <summary>Frames whose rows force p(silence) high or low: the comment comes exactly after the low ones.</summary>
    [Fact]
    public async Task CommentsExactlyWhereSilenceFallsBelowTheThreshold()
    {
        using var dir = new TempDirectory();
        string path = ForcedModel(dir, out int silence);
        using var model = ModelLoader.Load(path);
        bool[] speak = [false, true, false, false, true, true, false];
        var options = new ProactiveOptions { MaxTokens = 3 };
        await using var engine = new InferenceEngine(model, new EngineOptions { ContextLength = 512 });
        await using var session = engine.CreateSession();
        session.KeepLogits = true;
        await session.AppendAsync("[");
        var fired = new List<int>();
        for (int f = 0; f < speak.Length; f++)
        {
            // Three rows per frame; the last decides: first feature +3 (p(silence) ≈ 1) or −3 (≈ 0), the rest 0.5.
            var rows = new float[3 * Width];
            for (int i = 0; i < rows.Length; i++) rows[i] = 0.5f;
            rows[2 * Width] = speak[f] ? -3f : 3f;
            await session.AppendEmbeddingsAsync(rows, frameId: f);
            var comment = await session.CommentAfterAppendAsync(options, silence, f, TimeSpan.FromSeconds(f), CancellationToken.None);
            if (comment == null) continue;
            fired.Add(f);
            Assert.Equal(TimeSpan.FromSeconds(f), comment.Timestamp);
            Assert.True(comment.SilenceProbability < options.Threshold, $"frame {f}: p(silence) {comment.SilenceProbability}");
            Assert.NotEmpty(comment.Text);
        }
        Assert.Equal(Enumerable.Range(0, speak.Length).Where(f => speak[f]), fired);
    }

    /// <summary>The threshold decides: the same frame speaks under a threshold above its p(silence) and not below it.</summary>
    [Fact]
    public async Task ThresholdIsTheBoundary()
    {
        using var dir = new TempDirectory();
        string path = ForcedModel(dir, out int silence);
        using var model = ModelLoader.Load(path);
        await using var engine = new InferenceEngine(model, new EngineOptions { ContextLength = 512 });
        await using var session = engine.CreateSession();
        session.KeepLogits = true;
        var rows = new float[Width];
        for (int i = 1; i < Width; i++) rows[i] = 1f;
        rows[0] = 0.45f; // x̂₀ = 0.45 / √((0.45² + 7) / 8) ≈ 0.475, so 12·x̂₀ ≈ ln(V − 1): p(silence) near ½
        await session.AppendEmbeddingsAsync(rows, frameId: 0);
        var logits = session.LastLogits!;
        double max = logits.Max(), p = Math.Exp(logits[silence] - max) / logits.Sum(l => Math.Exp(l - max));
        Assert.InRange(p, 0.05, 0.95);
        Assert.Null(await session.CommentAfterAppendAsync(new ProactiveOptions { Threshold = (float)p * 0.9f, MaxTokens = 1 }, silence, 0, default, CancellationToken.None));
        Assert.NotNull(await session.CommentAfterAppendAsync(new ProactiveOptions { Threshold = (float)Math.Min(1, p * 1.1), MaxTokens = 1 }, silence, 0, default, CancellationToken.None));
    }
}
