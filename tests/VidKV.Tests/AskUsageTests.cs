using System.Text;
using VidKV.Cache;
using VidKV.Engine;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// What an answer reports through <see cref="AskOptions.Usage"/> (the counts an HTTP API's usage needs) and
/// <see cref="AskOptions.IgnoreEndOfGeneration"/>, against the generator on the same tokens.
/// </summary>
public class AskUsageTests
{
    static async Task<string> Answer(Session session, string question, AskOptions options)
    {
        var text = new StringBuilder();
        await foreach (var piece in session.AskAsync(question, options)) text.Append(piece);
        return text.ToString();
    }

    /// <summary>
    /// A greedy answer that ends on its own: the usage counts the prompt's tokens and every generated token (the end one
    /// included), says it ended on end-of-generation, and the text is the generator's without the end token's text. With
    /// IgnoreEndOfGeneration the same question runs on to MaxTokens and says so; a smaller MaxTokens cuts it. Asked after
    /// an append, the prompt count holds the session's rows too.
    /// </summary>
    [Fact]
    public async Task UsageCountsTheAnswerAndIgnoringTheEndRunsToTheLimit()
    {
        // llama.cpp's greedy run of this prompt on this model ends on end-of-generation after two tokens (reference/tiny-qwen2-random.greedy.json).
        using var model = ModelLoader.Load(TestData.Model("tiny-qwen2-random"));
        const string story = "The little dog was very";
        const int most = 600;
        var ids = model.Tokenizer.Encode(story, addSpecial: true, parseSpecial: true);
        var reference = new List<byte>();
        int generated = 0;
        bool stopped = false;
        using (var state = model.CreateState(2048, GgmlType.F32, GgmlType.F32))
            foreach (var token in Generator.Generate(model, state, ids, most, new Sampler(SamplingOptions.Greedy)))
            {
                generated++;
                if (stopped = token.IsEndOfGeneration) break;
                reference.AddRange(token.Piece);
            }
        Assert.True(stopped && generated > 1, $"the reference answer did not end within {most} tokens, or ended at once; pick another prompt");

        await using var engine = new InferenceEngine(model, new EngineOptions { Kv = new KvCacheConfig { PageSize = 16, Type = GgmlType.F32 } });
        await using (var session = engine.CreateSession())
        {
            var usage = new AskUsage();
            string text = await Answer(session, story, new AskOptions { MaxTokens = most, Usage = usage });
            Assert.Equal(Encoding.UTF8.GetString(reference.ToArray()), text);
            Assert.DoesNotContain(model.Vocabulary.Tokens[model.Vocabulary.EosId], text);
            Assert.Equal(ids.Count, usage.PromptTokens);
            Assert.Equal(generated, usage.CompletionTokens);
            Assert.True(usage.EndedOnEndOfGeneration);

            var onward = new AskUsage();
            string longer = await Answer(session, story, new AskOptions { MaxTokens = generated + 7, Usage = onward, IgnoreEndOfGeneration = true });
            Assert.Equal(generated + 7, onward.CompletionTokens);
            Assert.False(onward.EndedOnEndOfGeneration);
            Assert.StartsWith(text, longer);
            Assert.True(longer.Length > text.Length);

            var cut = new AskUsage();
            string shorter = await Answer(session, story, new AskOptions { MaxTokens = generated - 1, Usage = cut });
            Assert.Equal(generated - 1, cut.CompletionTokens);
            Assert.False(cut.EndedOnEndOfGeneration);
            Assert.StartsWith(shorter, text);
        }

        await using (var session = engine.CreateSession())
        {
            await session.AppendAsync(story);
            var usage = new AskUsage();
            const string question = " Why?";
            await Answer(session, question, new AskOptions { MaxTokens = 3, Usage = usage, IgnoreEndOfGeneration = true });
            Assert.Equal(ids.Count + model.Tokenizer.Encode(question, addSpecial: false, parseSpecial: true).Count, usage.PromptTokens);
            Assert.Equal(3, usage.CompletionTokens);
        }
    }
}
