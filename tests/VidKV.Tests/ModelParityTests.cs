using System.Runtime.InteropServices;
using VidKV.Models;

namespace VidKV.Tests;

/// <summary>Decoder parity with llama.cpp on the reference models (../shared/testdata).</summary>
public class ModelParityTests
{
    public static TheoryData<string> Models => new() { "stories260K", "tiny-qwen2-random", "tiny-qwen2-random-tied" };

    /// <summary>
    /// Logits of the first 16 prompt positions against llama.cpp's pure-f32 run (FA off, f32 KV): max |Δ| ≤ 1e-3 and the
    /// same top-10 ids (ties broken by lower id, as in the reference).
    /// </summary>
    [Theory]
    [MemberData(nameof(Models))]
    public void Logits16MatchLlamaCppPrecise(string name)
    {
        using var model = ModelLoader.Load(TestData.Model(name));
        var json = TestData.Json($"reference/{name}.logits16.json");
        string prompt = json.GetProperty("prompt").GetString()!;
        var tokens = model.Tokenizer.Encode(prompt);
        var top10 = json.GetProperty("prompt_logits_top10").EnumerateArray().ToArray();
        for (int i = 0; i < top10.Length; i++) Assert.Equal(top10[i].GetProperty("input_token").GetInt32(), tokens[i]);

        int vocab = json.GetProperty("n_vocab").GetInt32(), positions = json.GetProperty("n_positions").GetInt32();
        Assert.Equal(vocab, model.Config.VocabSize);
        float[] expected = MemoryMarshal.Cast<byte, float>(File.ReadAllBytes(TestData.File_($"reference/{name}.logits16.precise.f32.bin"))).ToArray();
        Assert.Equal(positions * vocab, expected.Length);

        var state = model.CreateState(512);
        var logits = new float[tokens.Count * vocab];
        model.Forward(state, tokens.ToArray(), logits, allLogits: true);

        for (int p = 0; p < positions; p++)
        {
            var want = expected.AsSpan(p * vocab, vocab);
            var got = logits.AsSpan(p * vocab, vocab);
            float maxDiff = 0;
            for (int j = 0; j < vocab; j++) maxDiff = Math.Max(maxDiff, Math.Abs(want[j] - got[j]));
            Assert.True(maxDiff <= 1e-3f, $"{name} position {p}: max |Δlogit| = {maxDiff}");
            Assert.Equal(TopK(want, 10), TopK(got, 10));
        }
    }

    internal static int[] TopK(ReadOnlySpan<float> logits, int k)
    {
        var indices = Enumerable.Range(0, logits.Length).ToArray();
        var values = logits.ToArray();
        return indices.OrderByDescending(i => values[i]).ThenBy(i => i).Take(k).ToArray();
    }
}
