using System.Text;
using Microsoft.Extensions.AI;
using StbImageWriteSharp;
using VidKV.Cache;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;
using VidKV.Text;
using VidKV.Video;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using TurnMessage = VidKV.Text.ChatMessage;

namespace VidKV.Tests;

/// <summary>
/// <see cref="VidKVChatClient"/>, Microsoft.Extensions.AI's <see cref="IChatClient"/> over the engine: on stories260K the
/// greedy answer, usage and finish reason are the generator's for the same chat-templated prompt, whole and streamed;
/// a cancelled or abandoned stream gives its pages back; a conversation id keeps a session that later calls only add
/// their turn to (and whose next answer is the generator's over the whole conversation's tokens); on a tiny random
/// Idefics3 pair an image and a video as <see cref="DataContent"/> are answered as the session path answers them; bad
/// content fails with an exception naming it, before anything is read.
/// </summary>
public class ChatClientTests(TinyVisionPair pair) : IClassFixture<TinyVisionPair>
{
    static readonly EngineOptions Exact = new() { Kv = new KvCacheConfig { Default = "full", PageSize = 16, Type = GgmlType.F32 }, ContextLength = 4096 };
    static readonly ChatOptions Greedy24 = new() { Temperature = 0, MaxOutputTokens = 24 };

    /// <summary>Greedy generation (the generator, no engine) from <paramref name="ids"/>: text, tokens without a final end-of-generation token, tokens generated, whether it stopped on one.</summary>
    static (string Text, List<int> Tokens, int Generated, bool Stopped) Generate(DecoderModel model, IReadOnlyList<int> ids, int maxTokens)
    {
        using var state = model.CreateState(4096, GgmlType.F32, GgmlType.F32);
        var bytes = new List<byte>();
        var tokens = new List<int>();
        int count = 0;
        foreach (var token in Generator.Generate(model, state, ids, maxTokens, new Sampler(SamplingOptions.Greedy)))
        {
            count++;
            if (token.IsEndOfGeneration) return (Encoding.UTF8.GetString(bytes.ToArray()), tokens, count, true);
            bytes.AddRange(token.Piece);
            tokens.Add(token.Id);
        }
        return (Encoding.UTF8.GetString(bytes.ToArray()), tokens, count, false);
    }

    static ChatFormat Format(DecoderModel model) => ChatTemplate.Detect(model.Vocabulary.ChatTemplate);

    static List<int> Encode(DecoderModel model, string text, bool first) => [.. model.Tokenizer.Encode(text, addSpecial: first, parseSpecial: true)];

    static byte[] Png(int width, int height, int seed) => ServerTests.Png(width, height, seed);

    /// <summary>The session path: text, then the image or video, then the question, greedy; its answer and the rows it read.</summary>
    async Task<(string Text, int PromptRows)> SessionAnswerAsync(string before, Func<Session, Task> appendMedium, string question, int maxTokens)
    {
        await using var engine = new InferenceEngine(pair.Text, Exact, pair.Vision);
        await using var session = engine.CreateSession();
        await session.AppendAsync(before);
        await appendMedium(session);
        var usage = new AskUsage();
        var text = new StringBuilder();
        await foreach (var piece in session.AskAsync(question, new AskOptions { MaxTokens = maxTokens, Usage = usage })) text.Append(piece);
        return (text.ToString(), usage.PromptTokens);
    }

    [Fact]
    public async Task AnswerEqualsGreedyGeneration()
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        await using var engine = new InferenceEngine(model, Exact);
        await using var client = new VidKVChatClient(engine);
        string prompt = ChatTemplate.Apply(Format(model), [new TurnMessage("system", "You tell stories."), new TurnMessage("user", "Once upon a time")]);
        var expected = Generate(model, Encode(model, prompt, first: true), 24);
        Assert.True(expected.Text.Length > 20, $"the reference answer '{expected.Text}' is too short to compare");

        var response = await client.GetResponseAsync([new(ChatRole.System, "You tell stories."), new(ChatRole.User, "Once upon a time")], Greedy24);
        Assert.Equal(expected.Text, response.Text);
        var message = Assert.Single(response.Messages);
        Assert.Equal(ChatRole.Assistant, message.Role);
        Assert.Equal(expected.Stopped ? ChatFinishReason.Stop : ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(Encode(model, prompt, first: true).Count, response.Usage!.InputTokenCount);
        Assert.Equal(expected.Generated, response.Usage.OutputTokenCount);
        Assert.Equal(response.Usage.InputTokenCount + response.Usage.OutputTokenCount, response.Usage.TotalTokenCount);
        Assert.Null(response.ConversationId);
        Assert.Equal("stories260K", response.ModelId);
        Assert.StartsWith("chatcmpl-", response.ResponseId);
        Assert.Equal(0, engine.Memory.Pages);

        // Instructions are a system message before the call's messages: the same prompt as above.
        var instructed = await client.GetResponseAsync([new(ChatRole.User, "Once upon a time")], new ChatOptions { Temperature = 0, MaxOutputTokens = 24, Instructions = "You tell stories." });
        Assert.Equal(expected.Text, instructed.Text);

        // A limit below the answer's length ends it there, with finish reason length.
        var cut = await client.GetResponseAsync([new(ChatRole.System, "You tell stories."), new(ChatRole.User, "Once upon a time")], new ChatOptions { Temperature = 0, MaxOutputTokens = 5 });
        Assert.Equal(ChatFinishReason.Length, cut.FinishReason);
        Assert.Equal(5, cut.Usage!.OutputTokenCount);
        Assert.StartsWith(cut.Text, expected.Text);
    }

    [Fact]
    public async Task StreamedPiecesAddUpToTheAnswer()
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        await using var engine = new InferenceEngine(model, Exact);
        await using var client = new VidKVChatClient(engine);
        var expected = Generate(model, Encode(model, ChatTemplate.Apply(Format(model), [new TurnMessage("user", "Lily and Ben went to the park.")]), first: true), 40);

        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in client.GetStreamingResponseAsync([new(ChatRole.User, "Lily and Ben went to the park.")], new ChatOptions { Temperature = 0, MaxOutputTokens = 40 }))
            updates.Add(update);
        var textUpdates = updates.Where(u => u.Contents.OfType<TextContent>().Any()).ToList();
        Assert.True(textUpdates.Count > 3, $"{textUpdates.Count} text updates: not streamed piece by piece");
        Assert.Equal(expected.Text, string.Concat(textUpdates.Select(u => u.Text)));
        Assert.All(updates, u => Assert.Equal(ChatRole.Assistant, u.Role));
        Assert.Single(updates.Select(u => u.ResponseId).Distinct());
        var last = updates[^1];
        Assert.Equal(expected.Stopped ? ChatFinishReason.Stop : ChatFinishReason.Length, last.FinishReason);
        var usage = Assert.Single(last.Contents.OfType<UsageContent>()).Details;
        Assert.Equal(expected.Generated, usage.OutputTokenCount);

        var merged = updates.ToChatResponse();
        Assert.Equal(expected.Text, merged.Text);
        Assert.Equal(expected.Generated, merged.Usage!.OutputTokenCount);
        Assert.Equal(last.FinishReason, merged.FinishReason);
    }

    [Fact]
    public async Task CancelledOrAbandonedStreamGivesItsPagesBack()
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        await using var engine = new InferenceEngine(model, Exact);
        await using var client = new VidKVChatClient(engine);
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 200 };
        using var cancel = new CancellationTokenSource();
        int pieces = 0, pagesWhileAnswering = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var update in client.GetStreamingResponseAsync([new(ChatRole.User, "Once upon a time")], options, cancel.Token))
            {
                pagesWhileAnswering = Math.Max(pagesWhileAnswering, engine.Memory.Pages);
                if (++pieces == 3) cancel.Cancel();
            }
        });
        Assert.True(pagesWhileAnswering > 0, "no pages were held while answering");
        Assert.Equal(0, engine.Memory.Pages);
        Assert.Equal(0, engine.Memory.Sequences);

        // Leaving the loop early stops the answer the same way.
        await foreach (var update in client.GetStreamingResponseAsync([new(ChatRole.User, "Once upon a time")], options))
            break;
        Assert.Equal(0, engine.Memory.Pages);

        // A token cancelled before the call reads nothing.
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.GetResponseAsync([new(ChatRole.User, "Once upon a time")], options, cancel.Token));
        Assert.Equal(0, engine.Memory.Pages);
    }

    /// <summary>
    /// A conversation id keeps the session: the second call reads only its own turn (the usage's cached count is the
    /// session's rows, which are the first turn's prompt, answer and end), and its answer is the generator's over the
    /// whole conversation's tokens. The least recently used conversation goes past the limit; disposing frees the rest.
    /// </summary>
    [Fact]
    public async Task ConversationKeepsItsSession()
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        await using var engine = new InferenceEngine(model, Exact);
        var client = new VidKVChatClient(engine, new VidKVChatClientOptions { MaxConversations = 2 });
        var format = Format(model);
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 16, ConversationId = "story" };
        string end = ChatTemplate.Apply(format, [new TurnMessage("assistant", "")], addGenerationPrompt: false)[ChatTemplate.Apply(format, []).Length..];

        var firstIds = Encode(model, ChatTemplate.Apply(format, [new TurnMessage("user", "Once upon a time")]), first: true);
        var firstExpected = Generate(model, firstIds, 16);
        var first = await client.GetResponseAsync([new(ChatRole.User, "Once upon a time")], options);
        Assert.Equal(firstExpected.Text, first.Text);
        Assert.Equal("story", first.ConversationId);
        Assert.Equal(0, first.Usage!.CachedInputTokenCount);
        var session = client.ConversationSession("story");
        Assert.NotNull(session);
        var afterFirst = firstIds.Concat(firstExpected.Tokens).Concat(Encode(model, end, first: false)).ToList();
        Assert.Equal(afterFirst.Count, session.Length);

        string second = ChatTemplate.Apply(format, [new TurnMessage("user", "Then a dog came.")]);
        var secondIds = Encode(model, second, first: false);
        var conversationIds = afterFirst.Concat(secondIds).ToList();
        var secondExpected = Generate(model, conversationIds, 16);
        Assert.True(secondExpected.Text.Length > 10, $"the reference answer '{secondExpected.Text}' is too short to compare");
        var streamed = new List<ChatResponseUpdate>();
        await foreach (var update in client.GetStreamingResponseAsync([new(ChatRole.User, "Then a dog came.")], options)) streamed.Add(update);
        var reply = streamed.ToChatResponse();
        Assert.Equal(secondExpected.Text, reply.Text);
        Assert.Equal("story", reply.ConversationId);
        Assert.Equal(afterFirst.Count, reply.Usage!.CachedInputTokenCount);
        Assert.Equal(secondIds.Count, reply.Usage.InputTokenCount - reply.Usage.CachedInputTokenCount);
        Assert.Equal(conversationIds.Count, reply.Usage.InputTokenCount);
        Assert.Same(session, client.ConversationSession("story"));
        Assert.Equal(conversationIds.Count + secondExpected.Tokens.Count + Encode(model, end, first: false).Count, session.Length);

        // Without the id, the same message is a conversation of its own (its session goes with the call).
        var alone = await client.GetResponseAsync([new(ChatRole.User, "Then a dog came.")], Greedy24);
        Assert.Equal(Encode(model, second, first: true).Count, alone.Usage!.InputTokenCount);
        Assert.Null(alone.Usage.CachedInputTokenCount);
        Assert.Equal(1, client.ConversationCount);

        // Two more conversations: the limit is two, so "story", used least recently, goes (and its pages with it).
        int pagesOfStory = engine.Memory.Pages;
        Assert.True(pagesOfStory > 0);
        await client.GetResponseAsync([new(ChatRole.User, "Hi")], new ChatOptions { Temperature = 0, MaxOutputTokens = 4, ConversationId = "a" });
        await client.GetResponseAsync([new(ChatRole.User, "Hi")], new ChatOptions { Temperature = 0, MaxOutputTokens = 4, ConversationId = "b" });
        Assert.Equal(2, client.ConversationCount);
        Assert.Null(client.ConversationSession("story"));
        Assert.NotNull(client.ConversationSession("a"));
        Assert.Equal(2, engine.Memory.Sequences);

        await client.DisposeAsync();
        Assert.Equal(0, client.ConversationCount);
        Assert.Equal(0, engine.Memory.Pages);
        Assert.Equal(0, engine.Memory.Sequences);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => client.GetResponseAsync([new(ChatRole.User, "Hi")], options));
    }

    /// <summary>A conversation whose answer is cancelled keeps its messages and what was answered, closed, so it can go on.</summary>
    [Fact]
    public async Task CancelledAnswerClosesTheTurn()
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        await using var engine = new InferenceEngine(model, Exact);
        await using var client = new VidKVChatClient(engine);
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 200, ConversationId = "c" };
        using var cancel = new CancellationTokenSource();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            int pieces = 0;
            await foreach (var update in client.GetStreamingResponseAsync([new(ChatRole.User, "Once upon a time")], options, cancel.Token))
                if (++pieces == 2) cancel.Cancel();
        });
        var session = client.ConversationSession("c");
        Assert.NotNull(session);
        var format = Format(model);
        int question = Encode(model, ChatTemplate.Apply(format, [new TurnMessage("user", "Once upon a time")]), first: true).Count;
        int end = Encode(model, ChatAssistantEnd(format), first: false).Count;
        Assert.InRange(session.Length, question + 2 + end, question + 199 + end);

        int before = session.Length;
        var next = await client.GetResponseAsync([new(ChatRole.User, "And then?")], new ChatOptions { Temperature = 0, MaxOutputTokens = 4, ConversationId = "c" });
        Assert.Equal(before, next.Usage!.CachedInputTokenCount);
        Assert.Equal(before + Encode(model, ChatTemplate.Apply(format, [new TurnMessage("user", "And then?")]), first: false).Count, next.Usage.InputTokenCount);
        Assert.Same(session, client.ConversationSession("c"));
    }

    static string ChatAssistantEnd(ChatFormat format) =>
        ChatTemplate.Apply(format, [new TurnMessage("assistant", "")], addGenerationPrompt: false)[ChatTemplate.Apply(format, []).Length..];

    /// <summary>An image as <see cref="DataContent"/> (and as a file: URI) is answered as the session answers the same text and image.</summary>
    [Fact]
    public async Task ImageAsDataContent()
    {
        byte[] png = Png(70, 50, 3);
        var image = ImageReader.Decode(png, "test image");
        string templated = ChatTemplate.Apply(Format(pair.Text), [new TurnMessage("user", "Look: " + MediaPrompt.Marker)]);
        string[] parts = templated.Split(MediaPrompt.Marker);
        var expected = await SessionAnswerAsync(parts[0], s => s.AppendImageAsync(image), parts[1], 12);
        Assert.NotEmpty(expected.Text);
        Assert.Equal(MediaPrompt.Build(pair.Text, pair.Vision, templated, [image]).Count, expected.PromptRows);

        await using var engine = new InferenceEngine(pair.Text, Exact, pair.Vision);
        await using var client = new VidKVChatClient(engine);
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 12 };
        var response = await client.GetResponseAsync([new(ChatRole.User, [new TextContent("Look: "), new DataContent(png, "image/png")])], options);
        Assert.Equal(expected.Text, response.Text);
        Assert.Equal(expected.PromptRows, response.Usage!.InputTokenCount);
        Assert.Equal(0, engine.Memory.Pages);

        using var folder = new TempDirectory();
        File.WriteAllBytes(folder.File("look.png"), png);
        var fromFile = await client.GetResponseAsync([new(ChatRole.User, [new TextContent("Look: "), new UriContent(new Uri(folder.File("look.png")), "image/png")])], options);
        Assert.Equal(expected.Text, fromFile.Text);
    }

    /// <summary>A video as <see cref="DataContent"/> goes in through the video path at the client's fps, as the session reads the same file.</summary>
    [Fact]
    public async Task VideoAsDataContent()
    {
        using var folder = new TempDirectory();
        string clip = folder.File("clip.mp4");
        GeneratedVideos.Ffmpeg($"-f lavfi -i testsrc2=size=64x64:rate=4:duration=2 -c:v libx264 -preset ultrafast -g 4 -pix_fmt yuv420p -y {clip}");
        string templated = ChatTemplate.Apply(Format(pair.Text), [new TurnMessage("user", "Watch: " + MediaPrompt.Marker + " What happens?")]);
        string[] parts = templated.Split(MediaPrompt.Marker);
        var sampling = new FrameSampling { Fps = 1 };
        var expected = await SessionAnswerAsync(parts[0], s => s.AppendVideoAsync(new FfmpegSource(clip, sampling).ReadAsync()), parts[1], 12);
        Assert.NotEmpty(expected.Text);
        int textRows = Encode(pair.Text, templated.Replace(MediaPrompt.Marker, ""), first: true).Count;
        Assert.True(expected.PromptRows > textRows + 2, $"{expected.PromptRows} prompt rows, {textRows} of them text: the frames' rows are missing");

        await using var engine = new InferenceEngine(pair.Text, Exact, pair.Vision);
        await using var client = new VidKVChatClient(engine, new VidKVChatClientOptions { VideoFps = 1 });
        var response = await client.GetResponseAsync(
            [new(ChatRole.User, [new TextContent("Watch: "), new DataContent(File.ReadAllBytes(clip), "video/mp4"), new TextContent(" What happens?")])],
            new ChatOptions { Temperature = 0, MaxOutputTokens = 12 });
        Assert.Equal(expected.Text, response.Text);
        Assert.Equal(expected.PromptRows, response.Usage!.InputTokenCount);
        Assert.Equal(0, engine.Memory.Pages);

        // At 2 frames per second the video brings more rows.
        await using var denser = new VidKVChatClient(engine, new VidKVChatClientOptions { VideoFps = 2 });
        var more = await denser.GetResponseAsync([new(ChatRole.User, [new TextContent("Watch: "), new UriContent(new Uri(clip), "video/mp4"), new TextContent(" What happens?")])],
            new ChatOptions { Temperature = 0, MaxOutputTokens = 1 });
        Assert.True(more.Usage!.InputTokenCount > expected.PromptRows, $"{more.Usage.InputTokenCount} rows at 2 fps, {expected.PromptRows} at 1");
    }

    /// <summary>Bad content fails before anything is read, naming the message and content; the client goes on answering.</summary>
    [Fact]
    public async Task BadContentNamesItsPlace()
    {
        await using var engine = new InferenceEngine(pair.Text, Exact, pair.Vision);
        await using var client = new VidKVChatClient(engine);
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 4, ConversationId = "kept" };
        async Task Refused<T>(AIContent content, string says) where T : Exception
        {
            var e = await Assert.ThrowsAsync<T>(() => client.GetResponseAsync(
                [new(ChatRole.System, "Be brief."), new(ChatRole.User, [new TextContent("Look: "), content])], options));
            Assert.StartsWith("messages[1].Contents[1]: ", e.Message);
            Assert.DoesNotContain("vidkv-chat-", e.Message); // not the temporary file's name
            Assert.Contains(says, e.Message);
        }

        await Refused<ArgumentException>(new DataContent(Encoding.ASCII.GetBytes("not a picture at all"), "image/png"), "PNG");
        await Refused<ArgumentException>(new DataContent(Png(8, 8, 1)[..40], "image/png"), "messages[1].Contents[1]");
        await Refused<ArgumentException>(new DataContent(Png(8, 8, 1), "image/webp"), "image/webp");
        await Refused<ArgumentException>(new DataContent(new byte[] { 1, 2, 3 }, "application/pdf"), "application/pdf");
        await Refused<ArgumentException>(new DataContent(Encoding.ASCII.GetBytes("no video here, only words"), "video/mp4"), "not a readable video");
        var missing = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(
            [new(ChatRole.User, [new UriContent(new Uri("file:///nonexistent/clip.mp4"), "video/mp4")])], options));
        Assert.StartsWith("messages[0].Contents[0]: not a readable video: ", missing.Message);
        await Refused<ArgumentException>(new UriContent(new Uri("https://example.com/cat.png"), "image/png"), "file: URIs");
        await Refused<ArgumentException>(new UriContent(new Uri("file:///nonexistent/cat.png"), "image/png"), "cannot be read");
        await Refused<ArgumentException>(new FunctionCallContent("call", "f"), "FunctionCallContent");
        Assert.Equal(0, client.ConversationCount);
        Assert.Equal(0, engine.Memory.Pages);
        Assert.Empty(Directory.GetFiles(Path.GetTempPath(), "vidkv-chat-*"));

        var toolRole = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([new(ChatRole.Tool, "42")], options));
        Assert.Contains("messages[0]", toolRole.Message);
        var assistantImage = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([new(ChatRole.Assistant, [new DataContent(Png(8, 8, 1), "image/png")])], options));
        Assert.Contains("user messages", assistantImage.Message);
        await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([], options));
        await Assert.ThrowsAsync<NotSupportedException>(() => client.GetResponseAsync([new(ChatRole.User, "Hi")], new ChatOptions { StopSequences = ["."] }));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => client.GetResponseAsync([new(ChatRole.User, "Hi")], new ChatOptions { MaxOutputTokens = 0 }));

        // A text-only engine says it reads no images.
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        await using var textEngine = new InferenceEngine(model, Exact);
        await using var textClient = new VidKVChatClient(textEngine);
        var noVision = await Assert.ThrowsAsync<ArgumentException>(() => textClient.GetResponseAsync([new(ChatRole.User, [new DataContent(Png(8, 8, 1), "image/png")])]));
        Assert.Contains("messages[0].Contents[0]", noVision.Message);
        Assert.Contains("mmproj", noVision.Message);

        var fine = await client.GetResponseAsync([new(ChatRole.User, [new TextContent("Look: "), new DataContent(Png(40, 30, 2), "image/png")])], options);
        Assert.Equal("kept", fine.ConversationId);
        Assert.Equal(1, client.ConversationCount);
    }

    [Fact]
    public async Task ServicesAndMetadata()
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        await using var engine = new InferenceEngine(model, Exact);
        await using var client = new VidKVChatClient(engine);
        IChatClient chat = client;
        var metadata = chat.GetService<ChatClientMetadata>();
        Assert.NotNull(metadata);
        Assert.Equal("vidkv", metadata.ProviderName);
        Assert.Equal("stories260K", metadata.DefaultModelId);
        Assert.Same(engine, chat.GetService<InferenceEngine>());
        Assert.Same(model, chat.GetService<DecoderModel>());
        Assert.Same(client, chat.GetService<IChatClient>());
        Assert.Null(chat.GetService<InferenceEngine>("key"));
        Assert.Null(chat.GetService<string>());
        await using var named = new VidKVChatClient(engine, new VidKVChatClientOptions { ModelId = "tiny" });
        Assert.Equal("tiny", named.Metadata.DefaultModelId);
        Assert.Throws<ArgumentException>(() => new VidKVChatClient(engine, new VidKVChatClientOptions { VideoFps = 0 }));
    }
}
