using System.Text;
using VidKV.Formats;
using VidKV.Text;

namespace VidKV.Tests;

public class TokenizerTests
{
    static Tokenizer Load(string path)
    {
        using var file = GgufFile.Open(path);
        return Tokenizer.Create(Vocabulary.FromGguf(file));
    }

    /// <summary>llama.cpp's test-tokenizer-0 files: strings separated by "\n__ggml_vocab_test__\n", expected ids per line (no BOS, no special parsing).</summary>
    [Theory]
    [InlineData("vocab/ggml-vocab-gpt-2.gguf")]
    [InlineData("vocab/qwen2-vocab.gguf")]
    public void VocabularyGoldenFiles(string vocab)
    {
        var tokenizer = Load(TestData.File_(vocab));
        string input = File.ReadAllText(TestData.File_(vocab + ".inp"), Encoding.UTF8);
        string[] cases = input.Split("\n__ggml_vocab_test__\n");
        string[] expected = File.ReadAllLines(TestData.File_(vocab + ".out"));
        Assert.Equal(expected.Length, cases.Length - 1);
        var failures = new List<string>();
        for (int i = 0; i < expected.Length; i++)
        {
            string want = expected[i].Trim();
            string got = string.Join(" ", tokenizer.Encode(cases[i], addSpecial: false, parseSpecial: false));
            if (want != got) failures.Add($"case {i} {Escape(cases[i])}: expected [{want}] got [{got}]");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Theory]
    [InlineData("stories260K", "models/stories260K.gguf")]
    [InlineData("qwen2-vocab", "vocab/qwen2-vocab.gguf")]
    [InlineData("tiny-qwen2-random", "models/tiny-qwen2-random.gguf")]
    public void ReferenceTokenizeCases(string name, string path)
    {
        var tokenizer = Load(TestData.File_(path));
        var json = TestData.Json($"reference/{name}.tokenize.json");
        var failures = new List<string>();
        int count = 0;
        foreach (var c in json.GetProperty("cases").EnumerateArray())
        {
            string text = Encoding.UTF8.GetString(TestData.Hex(c.GetProperty("utf8_hex").GetString()!));
            Check("ids", tokenizer.Encode(text, addSpecial: true, parseSpecial: true));
            Check("ids_no_bos", tokenizer.Encode(text, addSpecial: false, parseSpecial: true));
            Check("ids_no_bos_no_parse_special", tokenizer.Encode(text, addSpecial: false, parseSpecial: false));
            count++;

            void Check(string field, List<int> got)
            {
                int[] want = TestData.Ints(c.GetProperty(field));
                if (!want.SequenceEqual(got)) failures.Add($"{Escape(text)} {field}: expected [{string.Join(",", want)}] got [{string.Join(",", got)}]");
            }
        }
        Assert.True(count >= 20, $"only {count} cases read");
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Theory]
    [InlineData("models/stories260K.gguf")]
    [InlineData("vocab/qwen2-vocab.gguf")]
    public void DecodeRestoresExactBytes(string path)
    {
        var tokenizer = Load(TestData.File_(path));
        foreach (string text in new[] { "Hello world", " leading space", "café 日本語 😀", "tabs\tand\nnewlines\n\n", "x" })
        {
            var ids = tokenizer.Encode(text, addSpecial: false, parseSpecial: false);
            string decoded = tokenizer.Decode(ids);
            // SentencePiece adds one leading space (the ▁ prefix); llama.cpp's pieces keep it.
            string expected = tokenizer.Vocabulary.Kind == VocabularyKind.SentencePiece ? " " + text : text;
            Assert.Equal(expected, decoded);
        }
    }

    static string Escape(string s) => System.Text.Json.JsonSerializer.Serialize(s);
}
