using VidKV.Engine;
using VidKV.Formats;
using VidKV.Text;

namespace VidKV.Tests;

public class SamplerTests
{
    static float[] Logits(params double[] probabilities) => probabilities.Select(p => (float)Math.Log(p)).ToArray();

    static int[] Histogram(SamplingOptions options, float[] logits, int draws)
    {
        var sampler = new Sampler(options);
        var counts = new int[logits.Length];
        for (int i = 0; i < draws; i++) counts[sampler.Sample(logits, [])]++;
        return counts;
    }

    [Fact]
    public void GreedyTakesArgmaxAndLowestIdOnTies()
    {
        var greedy = new Sampler(SamplingOptions.Greedy);
        Assert.Equal(2, greedy.Sample([0.1f, 0.5f, 0.9f, -1f], []));
        Assert.Equal(1, greedy.Sample([0.1f, 0.9f, 0.9f], []));
        Assert.Equal(0, new Sampler(new SamplingOptions { Temperature = 1, TopK = 1, Seed = 3 }).Sample([5f, 4.9f], []));
    }

    [Fact]
    public void DrawsFollowTheDistributionAndTheSeed()
    {
        var plain = new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0, Seed = 7 };
        var counts = Histogram(plain, Logits(0.5, 0.3, 0.2), 20000);
        Assert.InRange(counts[0] / 20000.0, 0.48, 0.52);
        Assert.InRange(counts[1] / 20000.0, 0.28, 0.32);
        Assert.InRange(counts[2] / 20000.0, 0.18, 0.22);
        Assert.Equal(counts, Histogram(plain, Logits(0.5, 0.3, 0.2), 20000));

        // Temperature 0.5 squares the probabilities before renormalising: 0.25 : 0.09 : 0.04.
        counts = Histogram(plain with { Temperature = 0.5f }, Logits(0.5, 0.3, 0.2), 20000);
        Assert.InRange(counts[0] / 20000.0, 0.25 / 0.38 - 0.02, 0.25 / 0.38 + 0.02);
    }

    [Fact]
    public void TopKTopPAndMinPCutTheTail()
    {
        var plain = new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0, Seed = 11 };
        float[] logits = Logits(0.5, 0.3, 0.15, 0.05);
        Assert.Equal(0, Histogram(plain with { TopK = 2 }, logits, 5000)[2..].Sum());
        Assert.Equal(0, Histogram(plain with { TopP = 0.7f }, logits, 5000)[2..].Sum());
        Assert.Equal(0, Histogram(plain with { MinP = 0.5f }, logits, 5000)[2..].Sum());
        var minP = Histogram(plain with { MinP = 0.2f }, logits, 5000);
        Assert.True(minP[2] > 0 && minP[3] == 0);
    }

    [Fact]
    public void RepetitionPenaltyDemotesSeenTokens()
    {
        var options = SamplingOptions.Greedy with { RepeatPenalty = 1.2f };
        var sampler = new Sampler(options);
        Assert.Equal(1, sampler.Sample([2.0f, 1.9f], [0]));
        Assert.Equal(0, sampler.Sample([2.0f, 1.9f], [1]));
        Assert.Equal(1, sampler.Sample([-1.0f, -1.1f], [0])); // negative logits are multiplied
    }

    [Fact]
    public void SamplingAllocatesNothingPerToken()
    {
        var sampler = new Sampler(new SamplingOptions { Seed = 1 });
        var logits = Enumerable.Range(0, 5000).Select(i => (float)Math.Sin(i)).ToArray();
        IReadOnlyList<int> history = [1, 2, 3];
        // Steady state: past the first calls, which may grow buffers, run type initialisers and queue the JIT's tier-up
        // (a full-suite run once saw 32 KB here after a single warm-up call).
        for (int i = 0; i < 200; i++) sampler.Sample(logits, history);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) sampler.Sample(logits, history);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }
}

public class ChatTemplateTests
{
    [Fact]
    public void ChatMlTokenisesLikeLlamaCpp()
    {
        using var file = GgufFile.Open(TestData.File_("vocab/qwen2-vocab.gguf"));
        var tokenizer = Tokenizer.Create(Vocabulary.FromGguf(file));
        var format = ChatTemplate.Detect(tokenizer.Vocabulary.ChatTemplate);
        Assert.Equal(ChatFormat.ChatMl, format);
        string text = ChatTemplate.Apply(format, [new ChatMessage("user", "Hi!")]);
        Assert.Equal("<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", text);
        Assert.Equal([151644, 872, 198, 13048, 0, 151645, 198, 151644, 77091, 198], tokenizer.Encode(text, addSpecial: true, parseSpecial: true));
    }

    [Fact]
    public void Llama3FormatIsDetectedFromTheTemplate()
    {
        var format = ChatTemplate.Detect("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>...");
        Assert.Equal(ChatFormat.Llama3, format);
        Assert.Equal("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            ChatTemplate.Apply(format, [new ChatMessage("system", "Be brief."), new ChatMessage("user", " Hi ")]));
    }

    /// <summary>
    /// The plain format (the built-in world model's template): only that exact template selects it (a template that
    /// merely lacks ChatML's and Llama 3's markers stays ChatML, as llama.cpp's default); questions are lines of their
    /// own, an assistant's text ends its line, no generation prompt.
    /// </summary>
    [Fact]
    public void PlainFormatIsTheBuiltInModelsTemplateOnly()
    {
        Assert.Equal(ChatFormat.Plain, ChatTemplate.Detect(ChatTemplate.PlainTemplate));
        Assert.Equal(ChatFormat.ChatMl, ChatTemplate.Detect(ChatTemplate.PlainTemplate + " "));
        Assert.Equal(ChatFormat.ChatMl, ChatTemplate.Detect("{% for m in messages %}{{ m.content }}{% endfor %}"));
        Assert.Equal("\nwhat is on the screen?\na red circle\n\nhow many objects are there?\n",
            ChatTemplate.Apply(ChatFormat.Plain, [new ChatMessage("user", "what is on the screen?"), new ChatMessage("assistant", "a red circle"), new ChatMessage("user", "how many objects are there?")]));
        Assert.Equal("\n", ChatPrompt.AssistantMessageEnd(ChatFormat.Plain));
    }
}
