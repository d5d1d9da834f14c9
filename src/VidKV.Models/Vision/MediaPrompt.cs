using System.Text;
using VidKV.Formats;
using VidKV.Text;

namespace VidKV.Models;

/// <summary>A run of prompt rows: text tokens or embedding rows from the vision projector.</summary>
public abstract record PromptChunk
{
    /// <summary>Rows (and positions) the chunk takes in the sequence.</summary>
    public abstract int Count { get; }
}

/// <summary>Text tokens.</summary>
public sealed record TextChunk(int[] Tokens) : PromptChunk
{
    /// <inheritdoc/>
    public override int Count => Tokens.Length;
}

/// <summary>
/// Embedding rows ([<see cref="Count"/>, width]) that replace an image's placeholder: one encoded entry. With
/// <see cref="GridColumns"/> &gt; 0 the rows are a grid for M-RoPE (Qwen-VL): row i sits at (t, h, w) =
/// (p, p + i / columns, p + i mod columns) and the chunk advances the position by max(columns, rows), as llama.cpp's
/// mtmd does; otherwise the rows take consecutive positions.
/// </summary>
public sealed record EmbeddingChunk(float[] Rows, int Width, int GridColumns = 0) : PromptChunk
{
    /// <inheritdoc/>
    public override int Count => Rows.Length / Width;

    /// <summary>Positions the chunk advances the sequence by.</summary>
    public int PositionSpan => GridColumns > 0 ? Math.Max(GridColumns, Count / GridColumns) : Count;
}

/// <summary>
/// A prompt with images, laid out as llama.cpp's mtmd tokenizer lays it out (tools/mtmd/mtmd.cpp <c>mtmd_tokenize</c> at
/// 3f545bec), so the same text model sees the same rows: the text is cut at each <see cref="Marker"/>, the pieces
/// tokenized with special tokens parsed and no BOS, and each marker replaced by its image's chunks in the projector
/// family's wrapper:
/// <list type="bullet">
/// <item>LLaVA (<c>mlp</c>): the entries back to back, slices then the overview, no text between them.</item>
/// <item>Qwen2-VL / Qwen2.5-VL: <c>&lt;|vision_start|&gt;</c>, the image's rows as one M-RoPE grid, <c>&lt;|vision_end|&gt;</c>.</item>
/// <item>Idefics3 / SmolVLM: per slice <c>&lt;fake_token_around_image&gt;&lt;row_r_col_c&gt;</c> then its rows, a newline token
/// after each slice row but the last; then the tokens of <c>"\n\n"</c>, <c>&lt;fake_token_around_image&gt;</c>,
/// <c>&lt;global-img&gt;</c> (looked up by their exact piece), the overview, <c>&lt;fake_token_around_image&gt;</c> (as Hugging
/// Face's Idefics3 processor writes them).</item>
/// </list>
/// The vocabulary's BOS goes first when it adds one; consecutive text merges into one chunk.
/// </summary>
public sealed class MediaPrompt
{
    /// <summary>Where an image goes in the prompt text (llama.cpp's <c>mtmd_default_marker()</c>).</summary>
    public const string Marker = "<__media__>";

    MediaPrompt(List<PromptChunk> chunks) => Chunks = chunks;

    /// <summary>The chunks in sequence order.</summary>
    public IReadOnlyList<PromptChunk> Chunks { get; }
    /// <summary>Rows of the whole prompt.</summary>
    public int Count => Chunks.Sum(c => c.Count);

    /// <summary>
    /// Tokenizes <paramref name="text"/> with the text model's tokenizer and encodes each image where its
    /// <see cref="Marker"/> stands (markers and images pair up in order; their counts must agree).
    /// </summary>
    public static MediaPrompt Build(DecoderModel text, VisionModel vision, string prompt, IReadOnlyList<RgbImage> images, bool addSpecial = true, Activations? buffers = null)
    {
        if (vision.OutputLength != text.Config.EmbeddingLength)
            throw ModelFormatException.InFile(vision.Path, $"the projector writes rows of {vision.OutputLength} floats but the text model {text.Path} takes {text.Config.EmbeddingLength}: not a pair");
        var parts = prompt.Split(Marker);
        if (parts.Length - 1 != images.Count)
            throw new ArgumentException($"the prompt has {parts.Length - 1} {Marker} markers for {images.Count} images");
        buffers ??= new Activations();
        var builder = new Builder(text.Tokenizer, vision, buffers);
        for (int i = 0; i < parts.Length; i++)
        {
            builder.AddText(parts[i]);
            if (i < images.Count) builder.AddImage(images[i]);
        }
        var chunks = builder.Chunks;
        var vocabulary = text.Vocabulary;
        if (addSpecial && vocabulary.AddBos && vocabulary.BosId >= 0)
        {
            if (chunks.Count > 0 && chunks[0] is TextChunk first) chunks[0] = new TextChunk([vocabulary.BosId, .. first.Tokens]);
            else chunks.Insert(0, new TextChunk([vocabulary.BosId]));
        }
        if (addSpecial && vocabulary.AddEos && vocabulary.EosId >= 0) builder.AddTokens([vocabulary.EosId]);
        return new MediaPrompt(chunks);
    }

    sealed class Builder(Tokenizer tokenizer, VisionModel vision, Activations buffers)
    {
        readonly Dictionary<string, int> lookups = [];

        public List<PromptChunk> Chunks { get; } = [];

        public void AddText(string text)
        {
            if (text.Length > 0) AddTokens(tokenizer.Encode(text, addSpecial: false, parseSpecial: true).ToArray());
        }

        public void AddTokens(int[] tokens)
        {
            if (tokens.Length == 0) return;
            if (Chunks.Count > 0 && Chunks[^1] is TextChunk last) Chunks[^1] = new TextChunk([.. last.Tokens, .. tokens]);
            else Chunks.Add(new TextChunk(tokens));
        }

        public void AddImage(RgbImage image)
        {
            var config = vision.Config;
            var pre = ImagePreprocessor.Preprocess(config, image);
            bool grid = config.Projector is VisionProjector.Qwen2VL or VisionProjector.Qwen25VL;
            EmbeddingChunk Encode(RgbImage entry) =>
                new(vision.EncodeEntry(entry, buffers), vision.OutputLength, grid ? vision.OutputGrid(entry.Width, entry.Height).Columns : 0);

            int slices = pre.GridColumns * pre.GridRows;
            if (grid)
            {
                AddText("<|vision_start|>");
                foreach (var entry in pre.Entries) Chunks.Add(Encode(entry));
                AddText("<|vision_end|>");
                return;
            }
            if (config.Projector != VisionProjector.Idefics3)
            {
                foreach (var entry in pre.Entries) Chunks.Add(Encode(entry));
                return;
            }
            for (int y = 0; y < pre.GridRows; y++)
            {
                for (int x = 0; x < pre.GridColumns; x++)
                {
                    AddText($"<fake_token_around_image><row_{y + 1}_col_{x + 1}>");
                    Chunks.Add(Encode(pre.Entries[y * pre.GridColumns + x]));
                }
                if (y != pre.GridRows - 1) AddTokens([Lookup("\n")]);
            }
            if (pre.HasOverview)
            {
                AddTokens([Lookup("\n\n"), Lookup("<fake_token_around_image>"), Lookup("<global-img>")]);
                Chunks.Add(Encode(pre.Entries[slices]));
                AddTokens([Lookup("<fake_token_around_image>")]);
            }
        }

        /// <summary>The first token whose piece is exactly <paramref name="piece"/> (mtmd's <c>lookup_token</c>).</summary>
        int Lookup(string piece)
        {
            if (lookups.TryGetValue(piece, out int found)) return found;
            var bytes = Encoding.UTF8.GetBytes(piece);
            var vocabulary = tokenizer.Vocabulary;
            for (int id = 0; id < vocabulary.Count; id++)
                if (tokenizer.TokenToPiece(id).AsSpan().SequenceEqual(bytes)) return lookups[piece] = id;
            throw new ArgumentException($"the text model's vocabulary has no token '{piece.Replace("\n", "\\n")}' that the {vision.Config.Projector} image layout needs");
        }
    }
}
