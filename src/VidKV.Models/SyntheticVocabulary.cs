using VidKV.Formats;
using VidKV.Text;

namespace VidKV.Models;

/// <summary>
/// A made-up byte-level BPE vocabulary (Qwen2 pre-tokeniser) of any size for random-weight models: the 256 byte
/// symbols, then every string over " etaoinshrdlucmfwypvbgk" (space as Ġ) in order of length, each reachable by
/// merging its prefix with its last character, then ChatML's special tokens at the end. Any text tokenises.
/// </summary>
internal static class SyntheticVocabulary
{
    const string Alphabet = " etaoinshrdlucmfwypvbgk";
    public static readonly string[] SpecialTokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

    public const string ChatMlTemplate =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    public static void AddTo(GgufWriter writer, int vocabSize)
    {
        if (vocabSize < 256 + SpecialTokens.Length) throw new ArgumentException($"vocabulary of {vocabSize} is too small for a byte-level BPE");
        var tokens = new List<string>(vocabSize);
        var merges = new List<string>();
        for (int b = 0; b < 256; b++) tokens.Add(ByteLevelBpeTokenizer.ByteSymbol((byte)b).ToString());
        int regular = vocabSize - SpecialTokens.Length;
        var frontier = Alphabet.Select(c => ByteLevelBpeTokenizer.ByteSymbol((byte)c).ToString()).ToList();
        while (tokens.Count < regular)
        {
            var next = new List<string>();
            foreach (string prefix in frontier)
            {
                foreach (char c in Alphabet.AsSpan(1)) // a space only ever starts a word
                {
                    if (tokens.Count == regular) break;
                    tokens.Add(prefix + c);
                    merges.Add(prefix + " " + c);
                    next.Add(prefix + c);
                }
            }
            frontier = next;
        }
        tokens.AddRange(SpecialTokens);
        var types = tokens.Select((t, i) => i >= regular ? (int)TokenType.Control : (int)TokenType.Normal).ToArray();

        writer.Add("tokenizer.ggml.model", "gpt2");
        writer.Add("tokenizer.ggml.pre", "qwen2");
        writer.Add("tokenizer.ggml.tokens", GgufValue.Of(tokens.ToArray()));
        writer.Add("tokenizer.ggml.token_type", GgufValue.Of(types));
        writer.Add("tokenizer.ggml.merges", GgufValue.Of(merges.ToArray()));
        writer.Add("tokenizer.ggml.bos_token_id", (uint)regular);
        writer.Add("tokenizer.ggml.eos_token_id", (uint)regular);
        writer.Add("tokenizer.ggml.padding_token_id", (uint)regular);
        writer.Add("tokenizer.ggml.add_bos_token", false);
        writer.Add("tokenizer.chat_template", ChatMlTemplate);
    }
}
