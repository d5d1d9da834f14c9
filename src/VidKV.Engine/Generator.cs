using System.Diagnostics;
using VidKV.Models;

namespace VidKV.Engine;

/// <summary>One generated token: its id and the exact bytes it stands for.</summary>
internal readonly record struct GeneratedToken(int Id, byte[] Piece, bool IsEndOfGeneration);

/// <summary>Timing of one generation, in llama.cpp's terms (prompt eval vs eval).</summary>
internal sealed class GenerationStats
{
    public int PromptTokens { get; set; }
    public TimeSpan PromptTime { get; set; }
    public int GeneratedTokens { get; set; }
    public TimeSpan GenerationTime { get; set; }
    public double PromptTokensPerSecond => PromptTokens / Math.Max(PromptTime.TotalSeconds, 1e-9);
    public double GeneratedTokensPerSecond => GeneratedTokens / Math.Max(GenerationTime.TotalSeconds, 1e-9);
}

/// <summary>Prefill then token-by-token decode over a <see cref="DecoderState"/>.</summary>
internal static class Generator
{
    /// <summary>Prompt tokens go through the model in batches of this many.</summary>
    public const int DefaultBatchSize = 512;

    /// <summary>
    /// Feeds <paramref name="prompt"/> and yields up to <paramref name="maxTokens"/> tokens; stops after an
    /// end-of-generation token (which is yielded with <see cref="GeneratedToken.IsEndOfGeneration"/> set).
    /// </summary>
    public static IEnumerable<GeneratedToken> Generate(DecoderModel model, DecoderState state, IReadOnlyList<int> prompt,
        int maxTokens, Sampler sampler, GenerationStats? stats = null, CancellationToken cancellation = default) =>
        Generate(model, state, [new TextChunk(prompt as int[] ?? prompt.ToArray())], maxTokens, sampler, stats, cancellation);

    /// <summary>
    /// As <see cref="Generate(DecoderModel, DecoderState, IReadOnlyList{int}, int, Sampler, GenerationStats?, CancellationToken)"/>
    /// for a prompt of text and embedding chunks (<see cref="MediaPrompt"/>); the repetition penalty sees its text tokens.
    /// </summary>
    public static IEnumerable<GeneratedToken> Generate(DecoderModel model, DecoderState state, IReadOnlyList<PromptChunk> prompt,
        int maxTokens, Sampler sampler, GenerationStats? stats = null, CancellationToken cancellation = default)
    {
        int rows = prompt.Sum(c => c.Count);
        if (rows == 0) throw new ArgumentException("the prompt has no tokens; generation needs at least one (e.g. BOS)", nameof(prompt));
        var logits = new float[model.Config.VocabSize];
        var history = prompt.OfType<TextChunk>().SelectMany(c => c.Tokens).ToList();
        var clock = Stopwatch.StartNew();
        int position = Prefill(model, state, prompt, logits, cancellation);
        if (stats != null) { stats.PromptTokens = rows; stats.PromptTime = clock.Elapsed; }
        clock.Restart();
        var single = new int[1];
        var at = new int[DecoderBatch.MaxPositionComponents];
        for (int i = 0; i < maxTokens; i++)
        {
            cancellation.ThrowIfCancellationRequested();
            int token = sampler.Sample(logits, history);
            bool end = model.Vocabulary.IsEndOfGeneration(token);
            if (stats != null) { stats.GeneratedTokens = i + 1; stats.GenerationTime = clock.Elapsed; }
            yield return new GeneratedToken(token, model.Tokenizer.TokenToPiece(token), end);
            if (end || i + 1 == maxTokens) yield break;
            history.Add(token);
            single[0] = token;
            if (model.PositionComponents == 1) model.Forward(state, single, logits);
            else
            {
                state.Batch.Clear();
                TextPosition(position++, at);
                state.Batch.AddToken(token, logits: true, position: at.AsSpan(0, model.PositionComponents));
                model.Run(state.Batch, state, logits);
            }
        }
    }

    /// <summary>
    /// Runs text and embedding chunks in batches of up to <see cref="DefaultBatchSize"/> rows at the state's next places
    /// and leaves the last row's logits in <paramref name="logits"/>.
    /// </summary>
    /// Returns the position after the prompt: its row count, or less under M-RoPE (an image grid takes max(columns, rows)).
    public static int Prefill(DecoderModel model, DecoderState state, IReadOnlyList<PromptChunk> prompt, float[] logits, CancellationToken cancellation = default)
    {
        var batch = state.Batch;
        batch.Clear();
        bool multi = model.PositionComponents > 1;
        int total = prompt.Sum(c => c.Count), done = 0, position = state.Position;
        Span<int> at = stackalloc int[DecoderBatch.MaxPositionComponents];
        foreach (var chunk in prompt)
        {
            for (int i = 0; i < chunk.Count; i++)
            {
                bool last = ++done == total;
                if (chunk is TextChunk text)
                {
                    if (multi)
                    {
                        TextPosition(position + i, at);
                        batch.AddToken(text.Tokens[i], logits: last, position: at[..model.PositionComponents]);
                    }
                    else batch.AddToken(text.Tokens[i], logits: last);
                }
                else if (chunk is EmbeddingChunk image)
                {
                    var row = image.Rows.AsSpan(i * image.Width, image.Width);
                    if (!multi) batch.AddEmbedding(row, logits: last);
                    else
                    {
                        // llama.cpp's mtmd: (t, h, w, e) = (p, p + i / columns, p + i mod columns, 0) for a grid, else all p + i.
                        bool grid = image.GridColumns > 0;
                        at[0] = grid ? position : position + i;
                        at[1] = grid ? position + i / image.GridColumns : position + i;
                        at[2] = grid ? position + i % image.GridColumns : position + i;
                        at[3] = 0;
                        batch.AddEmbedding(row, logits: last, position: at[..model.PositionComponents]);
                    }
                }
                if (batch.Count == DefaultBatchSize || last) Run();
            }
            position += chunk is EmbeddingChunk e ? e.PositionSpan : chunk.Count;
        }
        return position;

        void Run()
        {
            cancellation.ThrowIfCancellationRequested();
            model.Run(batch, state, logits);
            batch.Clear();
        }
    }

    /// <summary>A text row's M-RoPE position: p in t, h and w, 0 in the fourth component (llama.cpp's llm_graph_input_pos).</summary>
    static void TextPosition(int position, Span<int> at)
    {
        at[0] = at[1] = at[2] = position;
        at[3] = 0;
    }

    /// <summary>Runs the prompt in batches and leaves the last token's logits in <paramref name="logits"/>.</summary>
    public static void Prefill(DecoderModel model, DecoderState state, IReadOnlyList<int> prompt, float[] logits, CancellationToken cancellation = default)
    {
        int[] tokens = prompt as int[] ?? prompt.ToArray();
        for (int start = 0; start < tokens.Length; start += DefaultBatchSize)
        {
            cancellation.ThrowIfCancellationRequested();
            int count = Math.Min(DefaultBatchSize, tokens.Length - start);
            model.Forward(state, tokens.AsSpan(start, count), logits);
        }
    }
}
