using VidKV.Formats;
using VidKV.Text;

namespace VidKV.Models;

/// <summary>
/// What a model family's prompt format needs from a <see cref="SyntheticVocabulary"/>: its special tokens (control
/// tokens, one id each, so special parsing and llama.cpp's mtmd find them whole), byte-level texts mtmd looks up by piece,
/// the special ids and a chat template llama.cpp recognises.
/// </summary>
internal sealed record SyntheticVocabularyOptions
{
    /// <summary>Control tokens, appended after the regular tokens in this order.</summary>
    public required string[] SpecialTokens { get; init; }
    /// <summary>
    /// Regular tokens in byte-level form (e.g. <c>ĊĊ</c> for "\n\n") placed right after the 256 byte symbols, each
    /// reachable by merging its prefix with its last symbol (missing prefixes are added first).
    /// </summary>
    public string[] ExtraTokens { get; init; } = [];
    /// <summary>
    /// Merges (left, right), in rank order, placed right after the 256 byte symbols and before <see cref="ExtraTokens"/>;
    /// each adds the token left + right. Both sides must be byte symbols or tokens of earlier merges. A vocabulary whose
    /// words must each become one token learns these by BPE (a chain of prefixes per word, as extra tokens get, can be
    /// broken by another word's earlier merge).
    /// </summary>
    public (string Left, string Right)[] Merges { get; init; } = [];
    /// <summary>Jinja chat template stored as <c>tokenizer.chat_template</c>.</summary>
    public required string ChatTemplate { get; init; }
    /// <summary>Text of the BOS token (one of <see cref="SpecialTokens"/>).</summary>
    public required string Bos { get; init; }
    /// <summary>Text of the EOS token (one of <see cref="SpecialTokens"/>).</summary>
    public required string Eos { get; init; }
    /// <summary>Text of the padding token (one of <see cref="SpecialTokens"/>).</summary>
    public required string Padding { get; init; }

    /// <summary>The default: ChatML's three tokens, every special id on <c>&lt;|endoftext|&gt;</c>.</summary>
    public static SyntheticVocabularyOptions ChatMl { get; } = new()
    {
        SpecialTokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        ChatTemplate = SyntheticVocabulary.ChatMlTemplate,
        Bos = "<|endoftext|>",
        Eos = "<|endoftext|>",
        Padding = "<|endoftext|>",
    };
}

/// <summary>
/// A made-up byte-level BPE vocabulary (Qwen2 pre-tokeniser) of any size for random-weight models: the 256 byte
/// symbols, then any extra tokens a family needs, then every string over " etaoinshrdlucmfwypvbgk" (space as Ġ) in order
/// of length, each reachable by merging its prefix with its last character, then the special tokens at the end
/// (by default ChatML's). Any text tokenises.
/// </summary>
internal static class SyntheticVocabulary
{
    const string Alphabet = " etaoinshrdlucmfwypvbgk";

    public const string ChatMlTemplate =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    public static void AddTo(GgufWriter writer, int vocabSize, SyntheticVocabularyOptions? options = null)
    {
        options ??= SyntheticVocabularyOptions.ChatMl;
        string[] specials = options.SpecialTokens;
        if (specials.Distinct().Count() != specials.Length) throw new ArgumentException("special tokens repeat");
        var tokens = new List<string>(vocabSize);
        var merges = new List<string>();
        for (int b = 0; b < 256; b++) tokens.Add(ByteLevelBpeTokenizer.ByteSymbol((byte)b).ToString());
        var known = new HashSet<string>(tokens, StringComparer.Ordinal);
        foreach (var (left, right) in options.Merges)
        {
            if (!known.Contains(left) || !known.Contains(right)) throw new ArgumentException($"merge '{left} {right}' joins a symbol that is not yet a token");
            merges.Add(left + " " + right);
            if (known.Add(left + right)) tokens.Add(left + right);
        }
        foreach (string extra in options.ExtraTokens)
        {
            if (extra.Length == 0 || !known.Contains(extra[..1])) throw new ArgumentException($"extra token '{extra}' does not start with a byte symbol");
            for (int length = 2; length <= extra.Length; length++)
            {
                if (!known.Add(extra[..length])) continue;
                tokens.Add(extra[..length]);
                merges.Add(extra[..(length - 1)] + " " + extra[length - 1]);
            }
        }
        int regular = vocabSize - specials.Length;
        if (regular < tokens.Count + Alphabet.Length)
            throw new ArgumentException($"vocabulary of {vocabSize} is too small for a byte-level BPE with {specials.Length} special tokens");
        var frontier = Alphabet.Select(c => ByteLevelBpeTokenizer.ByteSymbol((byte)c).ToString()).ToList();
        while (tokens.Count < regular)
        {
            var next = new List<string>();
            foreach (string prefix in frontier)
            {
                foreach (char c in Alphabet.AsSpan(1)) // a space only ever starts a word
                {
                    if (tokens.Count == regular) break;
                    if (!known.Add(prefix + c)) continue;
                    tokens.Add(prefix + c);
                    merges.Add(prefix + " " + c);
                    next.Add(prefix + c);
                }
            }
            frontier = next;
        }
        tokens.AddRange(specials);
        var types = tokens.Select((t, i) => i >= regular ? (int)TokenType.Control : (int)TokenType.Normal).ToArray();
        uint Id(string text) => Array.IndexOf(specials, text) is >= 0 and int i ? (uint)(regular + i)
            : throw new ArgumentException($"special token '{text}' is not among the special tokens");

        writer.Add("tokenizer.ggml.model", "gpt2");
        writer.Add("tokenizer.ggml.pre", "qwen2");
        writer.Add("tokenizer.ggml.tokens", GgufValue.Of(tokens.ToArray()));
        writer.Add("tokenizer.ggml.token_type", GgufValue.Of(types));
        writer.Add("tokenizer.ggml.merges", GgufValue.Of(merges.ToArray()));
        writer.Add("tokenizer.ggml.bos_token_id", Id(options.Bos));
        writer.Add("tokenizer.ggml.eos_token_id", Id(options.Eos));
        writer.Add("tokenizer.ggml.padding_token_id", Id(options.Padding));
        writer.Add("tokenizer.ggml.add_bos_token", false);
        writer.Add("tokenizer.chat_template", options.ChatTemplate);
    }
}
