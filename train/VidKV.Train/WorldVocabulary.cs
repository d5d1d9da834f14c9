using VidKV.Formats;
using VidKV.Models;
using VidKV.Text;
using VidKV.World;

namespace VidKV.Train;

/// <summary>
/// The tiny VLM's vocabulary: a byte-level BPE (Qwen2's pre-tokeniser, so digits are single tokens) over the 256 byte
/// symbols, in which every word of the world (<see cref="WorldWords.Vocabulary"/>) and of the frame text ("Frame",
/// "from") is one token, with and without its leading space, and SmolVLM's special tokens (the idefics3 image markers,
/// <c>&lt;end_of_utterance&gt;</c> as end of generation) — so VidKV and llama.cpp read it as a SmolVLM2 vocabulary —
/// with <see cref="ChatTemplate.PlainTemplate"/> as its chat template (questions on lines of their own, as it learns
/// them). Any other text still tokenises (byte by byte).
/// </summary>
public static class WorldVocabulary
{
    /// <summary>Words of the frame text VidKV writes before each frame (<c>"\nFrame from mm:ss:"</c>).</summary>
    static readonly string[] FrameWords = ["Frame", "from"];

    /// <summary>The words, in byte-level form, each with and without its leading space (Ġ).</summary>
    static readonly string[] Words = [.. FrameWords.Concat(WorldWords.Vocabulary).Where(w => w.All(char.IsAsciiLetter)).SelectMany(w => new[] { w, "Ġ" + w })];

    /// <summary>The vocabulary's options for <see cref="SyntheticVocabulary"/>: SmolVLM's, with merges learnt over the words.</summary>
    internal static SyntheticVocabularyOptions Options { get; } = RandomVisionShape.SmolVlmVocabulary with { Merges = LearnMerges(Words), ChatTemplate = ChatTemplate.PlainTemplate };

    /// <summary>Tokens in the vocabulary: the byte symbols, the merged tokens, SmolVLM's extra tokens, a little filler, the special tokens.</summary>
    public static int Size { get; } = 256 + Options.Merges.Length + 8 + 32 + Options.SpecialTokens.Length;

    /// <summary>
    /// Byte-pair encoding's learning (Sennrich et al., 2016, "Neural Machine Translation of Rare Words with Subword
    /// Units"), run until every word is one symbol: each round merges the most frequent adjacent pair over the words not
    /// yet whole (ties: the pair first in ordinal order), so encoding a word with these merges in this order rebuilds it
    /// as one token.
    /// </summary>
    internal static (string Left, string Right)[] LearnMerges(IEnumerable<string> words)
    {
        var split = words.Distinct().Select(w => w.Select(c => c.ToString()).ToList()).ToList();
        var merges = new List<(string, string)>();
        while (true)
        {
            var counts = new Dictionary<(string, string), int>();
            foreach (var symbols in split)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    counts[(symbols[i], symbols[i + 1])] = counts.GetValueOrDefault((symbols[i], symbols[i + 1])) + 1;
            if (counts.Count == 0) return [.. merges];
            var best = counts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key.Item1, StringComparer.Ordinal).ThenBy(kv => kv.Key.Item2, StringComparer.Ordinal).First().Key;
            merges.Add(best);
            foreach (var symbols in split)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    if (symbols[i] == best.Item1 && symbols[i + 1] == best.Item2)
                    {
                        symbols[i] += symbols[i + 1];
                        symbols.RemoveAt(i + 1);
                    }
        }
    }

    /// <summary>The tokenizer VidKV will use for the exported model (built from the same GGUF keys).</summary>
    public static Tokenizer CreateTokenizer()
    {
        var writer = new GgufWriter();
        writer.Add("general.architecture", "llama");
        SyntheticVocabulary.AddTo(writer, Size, Options);
        string path = Path.Combine(Path.GetTempPath(), $"vidkv-world-vocab-{Environment.ProcessId}-{Guid.NewGuid():N}.gguf");
        try
        {
            writer.Write(path);
            using var file = GgufFile.Open(path);
            return Tokenizer.Create(Vocabulary.FromGguf(file));
        }
        finally
        {
            File.Delete(path);
        }
    }
}
