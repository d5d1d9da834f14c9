using VidKV.Formats;

namespace VidKV.Text;

/// <summary>Token kinds as stored in GGUF's <c>tokenizer.ggml.token_type</c>.</summary>
public enum TokenType
{
    /// <summary>No type given; decodes to nothing.</summary>
    Undefined = 0,
    /// <summary>Ordinary text piece, produced by the tokenisation algorithm.</summary>
    Normal = 1,
    /// <summary>The unknown-token placeholder (SentencePiece's &lt;unk&gt;).</summary>
    Unknown = 2,
    /// <summary>Special token such as BOS, EOS or an end-of-turn marker; its text is matched only with special parsing on.</summary>
    Control = 3,
    /// <summary>Added token whose text is always matched whole in the input and always decoded.</summary>
    UserDefined = 4,
    /// <summary>Reserved slot that is never produced; decodes to nothing.</summary>
    Unused = 5,
    /// <summary>SentencePiece byte-fallback token <c>&lt;0xNN&gt;</c>: one raw byte.</summary>
    Byte = 6,
}

/// <summary>Which tokenisation algorithm the vocabulary uses.</summary>
public enum VocabularyKind
{
    /// <summary>SentencePiece (Llama 1/2, GGUF <c>llama</c>): merges by token score, ▁ for spaces, byte fallback.</summary>
    SentencePiece,
    /// <summary>Byte-level BPE (GPT-2, Llama 3, Qwen; GGUF <c>gpt2</c>): a regex pre-tokeniser, then merges by rank.</summary>
    BytePairEncoding,
}

/// <summary>
/// A model's vocabulary: token texts, scores, types, merges and special ids, as read from GGUF metadata
/// (<c>tokenizer.ggml.*</c>) or a Hugging Face tokenizer.json. Applies llama.cpp's load-time rules: tokens that look like
/// end-of-turn / FIM markers are re-typed as control tokens and collected as end-of-generation ids.
/// </summary>
public sealed class Vocabulary
{
    // Texts llama.cpp treats as control tokens (and, for EndOfGeneration, as stop tokens) whatever the file says.
    static readonly string[] EndOfGenerationTexts =
    [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
        "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>", "</s>",
        "<|fim_pad|>", "<fim-pad>", "<PAD>", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<|file_sep|>",
    ];
    static readonly string[] ControlLookingTexts =
    [
        "<｜end▁of▁sentence｜>", "<|fim_prefix|>", "<fim-prefix>", "<｜fim▁begin｜>", "<PRE>", "<|fim_suffix|>", "<fim-suffix>",
        "<｜fim▁hole｜>", "<SUF>", "<|fim_middle|>", "<fim-middle>", "<｜fim▁end｜>", "<MID>",
    ];

    readonly Dictionary<string, int> idsByText;
    readonly Dictionary<(string, string), int> mergeRanks;
    readonly HashSet<int> endOfGeneration = [];

    /// <summary>The tokenisation algorithm; <see cref="Tokenizer.Create"/> picks the tokenizer by it.</summary>
    public VocabularyKind Kind { get; }
    /// <summary>Pre-tokeniser name for byte-level BPE (<c>gpt2</c>, <c>qwen2</c>, <c>llama-bpe</c>, ...).</summary>
    public string PreTokenizer { get; }
    /// <summary>Token text by id (SentencePiece's ▁ and byte-level BPE's mapped bytes as stored).</summary>
    public string[] Tokens { get; }
    /// <summary>Score by id: SentencePiece merges the pair whose result scores highest; zeros when the file has none.</summary>
    public float[] Scores { get; }
    /// <summary>Type by id, after the load-time re-typing of end-of-turn and FIM markers as control tokens.</summary>
    public TokenType[] Types { get; }
    /// <summary>Number of tokens (the model's vocabulary size).</summary>
    public int Count => Tokens.Length;
    /// <summary>Beginning-of-sequence id; -1 when there is none.</summary>
    public int BosId { get; }
    /// <summary>End-of-sequence id; -1 when there is none.</summary>
    public int EosId { get; }
    /// <summary>Id substituted for text with no token; -1 when there is none.</summary>
    public int UnknownId { get; }
    /// <summary>Whether encoding with special tokens starts with <see cref="BosId"/>.</summary>
    public bool AddBos { get; }
    /// <summary>Whether encoding with special tokens ends with <see cref="EosId"/>.</summary>
    public bool AddEos { get; }
    /// <summary>SentencePiece: put a space before text at the start or after a special token.</summary>
    public bool AddSpacePrefix { get; }
    /// <summary>Llama-3 style: a pre-tokenised word that is itself a token skips the merges.</summary>
    public bool IgnoreMerges { get; }
    /// <summary>Jinja chat template from the model, if any.</summary>
    public string? ChatTemplate { get; }
    /// <summary>Ids that end generation: EOS and the end-of-turn / end-of-text markers found in the vocabulary.</summary>
    public IReadOnlySet<int> EndOfGeneration => endOfGeneration;

    /// <summary>
    /// Builds a vocabulary from its parts, as the GGUF and tokenizer.json readers do; a null special id, flag or array
    /// takes the default of <paramref name="kind"/> (SentencePiece: BOS 1, EOS 2, unknown 0, add BOS, space prefix).
    /// </summary>
    /// <param name="merges">Byte-level BPE merges, "left right" in rank order.</param>
    public Vocabulary(VocabularyKind kind, string preTokenizer, string[] tokens, float[]? scores, TokenType[]? types,
        IReadOnlyList<string>? merges, int? bosId, int? eosId, int? unknownId, bool? addBos, bool? addEos,
        bool? addSpacePrefix, string? chatTemplate)
    {
        Kind = kind;
        PreTokenizer = preTokenizer;
        Tokens = tokens;
        Scores = scores ?? new float[tokens.Length];
        Types = types ?? Enumerable.Repeat(TokenType.Normal, tokens.Length).ToArray();
        if (Scores.Length != tokens.Length || Types.Length != tokens.Length)
            throw new ArgumentException($"vocabulary has {tokens.Length} tokens but {Scores.Length} scores and {Types.Length} types");
        idsByText = new Dictionary<string, int>(tokens.Length, StringComparer.Ordinal);
        for (int i = 0; i < tokens.Length; i++) idsByText[tokens[i]] = i;

        mergeRanks = [];
        if (merges != null)
        {
            for (int rank = 0; rank < merges.Count; rank++)
            {
                string merge = merges[rank];
                int space = merge.IndexOf(' ', 1);
                if (space < 0) continue;
                mergeRanks.TryAdd((merge[..space], merge[(space + 1)..]), rank);
            }
        }

        bool spm = kind == VocabularyKind.SentencePiece;
        BosId = Valid(bosId) ?? (spm ? 1 : -1);
        EosId = Valid(eosId) ?? (spm ? 2 : -1);
        UnknownId = Valid(unknownId) ?? (spm ? 0 : -1);
        AddBos = addBos ?? spm;
        AddEos = addEos ?? false;
        AddSpacePrefix = addSpacePrefix ?? spm;
        IgnoreMerges = preTokenizer == "llama-bpe";
        ChatTemplate = chatTemplate;

        foreach (string text in EndOfGenerationTexts.Concat(ControlLookingTexts))
        {
            if (!idsByText.TryGetValue(text, out int id)) continue;
            Types[id] = TokenType.Control;
            if (EndOfGenerationTexts.Contains(text)) endOfGeneration.Add(id);
        }
        if (EosId >= 0) endOfGeneration.Add(EosId);

        SpecialTokens = Enumerable.Range(0, tokens.Length)
            .Where(i => Types[i] is TokenType.Control or TokenType.UserDefined or TokenType.Unknown)
            .OrderByDescending(i => tokens[i].Length).ThenBy(i => i).ToArray();

        int? Valid(int? id) => id is int v && v >= 0 && v < tokens.Length ? v : null;
    }

    /// <summary>Control, user-defined and unknown tokens, longest text first: the ones matched in raw text before tokenising.</summary>
    public int[] SpecialTokens { get; }

    /// <summary>The id of a token by its exact text.</summary>
    public bool TryGetId(string text, out int id) => idsByText.TryGetValue(text, out id);

    /// <summary>Byte-level BPE priority of merging <paramref name="left"/> and <paramref name="right"/> (lower merges first); -1 when they do not merge.</summary>
    public int MergeRank(string left, string right) => mergeRanks.TryGetValue((left, right), out int rank) ? rank : -1;

    /// <summary>Whether generating <paramref name="id"/> ends the reply (see <see cref="EndOfGeneration"/>).</summary>
    public bool IsEndOfGeneration(int id) => endOfGeneration.Contains(id);

    /// <summary>Reads <c>tokenizer.ggml.*</c> metadata; throws <see cref="ModelFormatException"/> naming the key when it is unusable.</summary>
    internal static Vocabulary FromGguf(GgufFile file)
    {
        string model = file.Get("tokenizer.ggml.model")?.AsString()
            ?? throw ModelFormatException.InFile(file.Path, "metadata 'tokenizer.ggml.model' is missing: the file has no vocabulary");
        VocabularyKind kind = model switch
        {
            "llama" => VocabularyKind.SentencePiece,
            "gpt2" => VocabularyKind.BytePairEncoding,
            _ => throw ModelFormatException.InFile(file.Path, $"metadata 'tokenizer.ggml.model' = '{model}' is not supported (llama, gpt2)"),
        };
        string[] tokens = file.Get("tokenizer.ggml.tokens")?.AsArray().AsStrings()
            ?? throw ModelFormatException.InFile(file.Path, "metadata 'tokenizer.ggml.tokens' is missing");
        float[]? scores = file.Get("tokenizer.ggml.scores")?.AsArray().AsSingles();
        TokenType[]? types = file.Get("tokenizer.ggml.token_type")?.AsArray().AsInt32s().Select(t => (TokenType)t).ToArray();
        string[]? merges = file.Get("tokenizer.ggml.merges")?.AsArray().AsStrings();
        if (kind == VocabularyKind.BytePairEncoding && merges == null)
            throw ModelFormatException.InFile(file.Path, "metadata 'tokenizer.ggml.merges' is missing for a BPE vocabulary");
        return new Vocabulary(kind, file.Get("tokenizer.ggml.pre")?.AsString() ?? "default", tokens, scores, types, merges,
            Int("tokenizer.ggml.bos_token_id"), Int("tokenizer.ggml.eos_token_id"), Int("tokenizer.ggml.unknown_token_id"),
            Bool("tokenizer.ggml.add_bos_token"), Bool("tokenizer.ggml.add_eos_token"), Bool("tokenizer.ggml.add_space_prefix"),
            file.Get("tokenizer.chat_template")?.AsString());

        int? Int(string key) => file.Get(key) is { } v ? (int)v.AsInt64() : null;
        bool? Bool(string key) => file.Get(key)?.AsBool();
    }
}
