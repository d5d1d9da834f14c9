using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using OpenAI;
using OpenAI.Chat;
using StbImageWriteSharp;
using VidKV.Cache;
using VidKV.Cli;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Server;
using VidKV.Tensors;
using VidKV.Text;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using TurnMessage = VidKV.Text.ChatMessage;

namespace VidKV.Tests;

/// <summary>A tiny random Idefics3-shaped text + mmproj pair, written once for the server tests that send images.</summary>
public sealed class TinyVisionPair() : VideoSessionTests.Pair("tiny-idefics3");

/// <summary>
/// <c>vidkv serve</c>'s HTTP API on a real Kestrel bound to 127.0.0.1 (port 0), with stories260K for text and a tiny
/// random VLM pair for images: health and models; chat completions whole and streamed, whose greedy text is the
/// generator's for the same chat-templated prompt; images as data URLs and files under the media root; every kind of
/// bad input answered with OpenAI's error body and the right status, the server serving on; a client that leaves
/// mid-stream stops its answer and gives its pages back; the official OpenAI client and Microsoft.Extensions.AI over it.
/// </summary>
public class ServerTests(TinyVisionPair pair) : IClassFixture<TinyVisionPair>
{
    internal static readonly EngineOptions Exact = new() { Kv = new KvCacheConfig { Default = "full", PageSize = 16, Type = GgmlType.F32 }, ContextLength = 4096 };

    /// <summary>An engine and a server over it, with an HTTP client pointed at it.</summary>
    internal sealed class Served : IAsyncDisposable
    {
        readonly DecoderModel? ownedModel;

        readonly StringWriter log;
        readonly TextWriter syncLog;

        Served(DecoderModel model, DecoderModel? owned, InferenceEngine engine, InferenceServer server, StringWriter log, TextWriter syncLog)
        {
            Model = model;
            ownedModel = owned;
            Engine = engine;
            Server = server;
            this.log = log;
            this.syncLog = syncLog;
            Http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(2) };
        }

        public DecoderModel Model { get; }
        public InferenceEngine Engine { get; }
        public InferenceServer Server { get; }
        public HttpClient Http { get; }
        /// <summary>What the server logged so far (its writer is synchronised on itself, as <see cref="TextWriter.Synchronized"/> writes).</summary>
        public string Log
        {
            get { lock (syncLog) return log.ToString(); }
        }

        public static async Task<Served> StartAsync(ServerOptions? options = null, EngineOptions? engineOptions = null, TinyVisionPair? vision = null)
        {
            var owned = vision == null ? ModelLoader.Load(TestData.Model("stories260K")) : null;
            var model = vision?.Text ?? owned!;
            var engine = new InferenceEngine(model, engineOptions ?? Exact, vision?.Vision);
            var log = new StringWriter();
            var syncLog = TextWriter.Synchronized(log);
            var server = await InferenceServer.StartAsync(engine, (options ?? new ServerOptions()) with { Port = 0, Log = syncLog });
            return new Served(model, owned, engine, server, log, syncLog);
        }

        public Task<HttpResponseMessage> PostAsync(string json, string? key = null)
        {
            var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = new StringContent(json, Encoding.UTF8, "application/json") };
            if (key != null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
            return Http.SendAsync(request);
        }

        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            await Server.DisposeAsync();
            await Engine.DisposeAsync();
            ownedModel?.Dispose();
        }
    }

    static string Chat(object messages, int maxTokens = 24, bool stream = false, bool includeUsage = false, bool ignoreEos = false) =>
        JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["model"] = "any",
            ["messages"] = messages,
            ["max_tokens"] = maxTokens,
            ["temperature"] = 0,
            ["stream"] = stream,
            ["stream_options"] = includeUsage ? new Dictionary<string, bool> { ["include_usage"] = true } : null,
            ["ignore_eos"] = ignoreEos,
        });

    static object[] UserText(string user, string? system = null) => system == null
        ? [new { role = "user", content = user }]
        : [new { role = "system", content = system }, new { role = "user", content = user }];

    /// <summary>A user message of a text part and an image part.</summary>
    static object[] WithImage(string text, string url) =>
        [new { role = "user", content = new object[] { new { type = "text", text }, new { type = "image_url", image_url = new { url } } } }];

    /// <summary>What greedy generation gives for the chat-templated <paramref name="turns"/> (the generator, no engine): text, prompt and completion tokens, whether it stopped on end-of-generation.</summary>
    static (string Text, int PromptTokens, int CompletionTokens, bool Stopped) Greedy(DecoderModel model, TurnMessage[] turns, int maxTokens)
    {
        string prompt = ChatTemplate.Apply(ChatTemplate.Detect(model.Vocabulary.ChatTemplate), turns);
        var ids = model.Tokenizer.Encode(prompt, addSpecial: true, parseSpecial: true);
        using var state = model.CreateState(4096, GgmlType.F32, GgmlType.F32);
        var bytes = new List<byte>();
        int count = 0;
        foreach (var token in Generator.Generate(model, state, ids, maxTokens, new Sampler(SamplingOptions.Greedy)))
        {
            count++;
            if (token.IsEndOfGeneration) return (Encoding.UTF8.GetString(bytes.ToArray()), ids.Count, count, true);
            bytes.AddRange(token.Piece);
        }
        return (Encoding.UTF8.GetString(bytes.ToArray()), ids.Count, count, false);
    }

    internal static async Task<JsonElement> Json(HttpResponseMessage response, HttpStatusCode expected)
    {
        string body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == expected, $"expected {(int)expected}, got {(int)response.StatusCode}: {body}");
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        return JsonDocument.Parse(body).RootElement;
    }

    /// <summary>OpenAI's error body with <paramref name="status"/>; returns it for more checks.</summary>
    internal static async Task<JsonElement> Error(HttpResponseMessage response, HttpStatusCode status, string? param = null, string? code = null, string? says = null)
    {
        var error = (await Json(response, status)).GetProperty("error");
        Assert.False(string.IsNullOrWhiteSpace(error.GetProperty("message").GetString()));
        Assert.False(string.IsNullOrWhiteSpace(error.GetProperty("type").GetString()));
        Assert.True(error.TryGetProperty("param", out var p) && error.TryGetProperty("code", out _), error.ToString());
        if (param != null) Assert.Equal(param, p.GetString());
        if (code != null) Assert.Equal(code, error.GetProperty("code").GetString());
        if (says != null) Assert.Contains(says, error.GetProperty("message").GetString());
        return error;
    }

    /// <summary>The <c>data:</c> payloads of a server-sent event stream, in order, up to and including <c>[DONE]</c>.</summary>
    internal static async Task<List<string>> Events(HttpResponseMessage response)
    {
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var events = new List<string>();
        while (await reader.ReadLineAsync() is { } line)
        {
            if (line.Length == 0) continue;
            Assert.StartsWith("data: ", line);
            events.Add(line["data: ".Length..]);
        }
        return events;
    }

    internal static byte[] Png(int width, int height, int seed)
    {
        var pixels = new byte[3 * width * height];
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                int i = 3 * (y * width + x);
                pixels[i] = (byte)(4 * x + 37 * seed);
                pixels[i + 1] = (byte)(5 * y + 11 * seed);
                pixels[i + 2] = (byte)(3 * ((x + seed) ^ y));
            }
        using var stream = new MemoryStream();
        new ImageWriter().WritePng(pixels, width, height, ColorComponents.RedGreenBlue, stream);
        return stream.ToArray();
    }

    internal static string DataUrl(byte[] png) => "data:image/png;base64," + Convert.ToBase64String(png);

    /// <summary>Polls <paramref name="condition"/> (a deadline for a hung server, not a timing assert).</summary>
    internal static async Task Eventually(Func<bool> condition, string what)
    {
        for (int i = 0; i < 600 && !condition(); i++) await Task.Delay(100);
        Assert.True(condition(), $"still not true after a minute: {what}");
    }

    [Fact]
    public async Task HealthAndModels()
    {
        await using var served = await Served.StartAsync();
        Assert.Equal("127.0.0.1", served.Server.Address.Host);
        Assert.NotEqual(0, served.Server.Address.Port);
        var health = await Json(await served.Http.GetAsync("health"), HttpStatusCode.OK);
        Assert.Equal("ok", health.GetProperty("status").GetString());
        var models = await Json(await served.Http.GetAsync("v1/models"), HttpStatusCode.OK);
        Assert.Equal("list", models.GetProperty("object").GetString());
        var entry = Assert.Single(models.GetProperty("data").EnumerateArray().ToArray());
        Assert.Equal("stories260K", entry.GetProperty("id").GetString());
        Assert.Equal("model", entry.GetProperty("object").GetString());
        Assert.True(entry.GetProperty("created").GetInt64() > 1_600_000_000);
    }

    /// <summary>A whole completion: greedy text, finish reason and usage as the generator gives them for the same templated prompt.</summary>
    [Fact]
    public async Task CompletionEqualsGreedyGeneration()
    {
        await using var served = await Served.StartAsync();
        var expected = Greedy(served.Model, [new("system", "You tell stories."), new("user", "Once upon a time")], 24);
        Assert.True(expected.Text.Length > 20, $"the reference answer '{expected.Text}' is too short to compare");

        var body = await Json(await served.PostAsync(Chat(UserText("Once upon a time", system: "You tell stories."))), HttpStatusCode.OK);
        Assert.Equal("chat.completion", body.GetProperty("object").GetString());
        Assert.StartsWith("chatcmpl-", body.GetProperty("id").GetString());
        Assert.Equal("stories260K", body.GetProperty("model").GetString());
        var choice = Assert.Single(body.GetProperty("choices").EnumerateArray().ToArray());
        Assert.Equal("assistant", choice.GetProperty("message").GetProperty("role").GetString());
        Assert.Equal(expected.Text, choice.GetProperty("message").GetProperty("content").GetString());
        Assert.Equal(expected.Stopped ? "stop" : "length", choice.GetProperty("finish_reason").GetString());
        var usage = body.GetProperty("usage");
        Assert.Equal(expected.PromptTokens, usage.GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(expected.CompletionTokens, usage.GetProperty("completion_tokens").GetInt32());
        Assert.Equal(expected.PromptTokens + expected.CompletionTokens, usage.GetProperty("total_tokens").GetInt32());
    }

    /// <summary>A streamed completion: a role chunk, content chunks that add up to the greedy text, a finish chunk, the usage chunk asked for, [DONE].</summary>
    [Fact]
    public async Task StreamedCompletionEqualsGreedyGeneration()
    {
        await using var served = await Served.StartAsync();
        var expected = Greedy(served.Model, [new("user", "Lily and Ben went to the park.")], 40);
        using var response = await served.Http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent(Chat(UserText("Lily and Ben went to the park."), maxTokens: 40, stream: true, includeUsage: true), Encoding.UTF8, "application/json"),
        }, HttpCompletionOption.ResponseHeadersRead);
        var events = await Events(response);
        Assert.Equal("[DONE]", events[^1]);
        var chunks = events.SkipLast(1).Select(e => JsonDocument.Parse(e).RootElement).ToArray();
        Assert.All(chunks, c => Assert.Equal("chat.completion.chunk", c.GetProperty("object").GetString()));
        Assert.Single(chunks.Select(c => c.GetProperty("id").GetString()).Distinct());
        Assert.Equal("assistant", chunks[0].GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString());
        var usageChunk = chunks[^1];
        Assert.Empty(usageChunk.GetProperty("choices").EnumerateArray());
        var finish = chunks[^2].GetProperty("choices")[0];
        Assert.Equal(expected.Stopped ? "stop" : "length", finish.GetProperty("finish_reason").GetString());
        var content = chunks[1..^2].Select(c => c.GetProperty("choices")[0]).ToArray();
        Assert.True(content.Length > 3, $"{content.Length} content chunks: not streamed piece by piece");
        Assert.All(content, c => Assert.Equal(JsonValueKind.Null, c.GetProperty("finish_reason").ValueKind));
        Assert.Equal(expected.Text, string.Concat(content.Select(c => c.GetProperty("delta").GetProperty("content").GetString())));
        Assert.Equal(expected.PromptTokens, usageChunk.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(expected.CompletionTokens, usageChunk.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    /// <summary>
    /// An image as a data URL goes in where its part stands, laid out as mtmd lays it out: the prompt's token count is
    /// <see cref="MediaPrompt"/>'s for the templated text with the image, and the greedy answer is the session's for the
    /// same text and image; every page is back in the pool after each request.
    /// </summary>
    [Fact]
    public async Task ImageAsDataUrl()
    {
        await using var served = await Served.StartAsync(vision: pair);
        byte[] png = Png(70, 50, 3);
        var image = ImageReader.Decode(png, "test image");
        string templated = ChatTemplate.Apply(ChatTemplate.Detect(pair.Text.Vocabulary.ChatTemplate), [new TurnMessage("user", "Look: " + MediaPrompt.Marker)]);
        int promptRows = MediaPrompt.Build(pair.Text, pair.Vision, templated, [image]).Count;

        string[] parts = templated.Split(MediaPrompt.Marker);
        string expected;
        await using (var engine = new InferenceEngine(pair.Text, Exact, pair.Vision))
        await using (var session = engine.CreateSession())
        {
            await session.AppendAsync(parts[0]);
            await session.AppendImageAsync(image);
            var text = new StringBuilder();
            await foreach (var piece in session.AskAsync(parts[1], new AskOptions { MaxTokens = 12 })) text.Append(piece);
            expected = text.ToString();
        }
        Assert.NotEmpty(expected);

        var body = await Json(await served.PostAsync(Chat(WithImage("Look: ", DataUrl(png)), maxTokens: 12)), HttpStatusCode.OK);
        Assert.Equal(expected, body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
        Assert.Equal(promptRows, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        int textRows = pair.Text.Tokenizer.Encode(templated.Replace(MediaPrompt.Marker, ""), addSpecial: true, parseSpecial: true).Count;
        Assert.True(promptRows > textRows, $"{promptRows} prompt rows, {textRows} of them text: the image's rows are missing");

        var other = await Json(await served.PostAsync(Chat(WithImage("Look: ", DataUrl(Png(70, 50, 200))), maxTokens: 12)), HttpStatusCode.OK);
        Assert.Equal(promptRows, other.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(0, served.Engine.Memory.Pages);
    }

    [Fact]
    public async Task MalformedJsonAndBadFieldsAre400()
    {
        await using var served = await Served.StartAsync();
        var error = await Error(await served.PostAsync("{\"messages\": [{\"role\": \"user\", "), HttpStatusCode.BadRequest, code: "invalid_json", says: "malformed JSON");
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
        await Error(await served.PostAsync(""), HttpStatusCode.BadRequest, code: "invalid_json");
        await Error(await served.PostAsync("null"), HttpStatusCode.BadRequest, says: "JSON object");
        await Error(await served.PostAsync("""{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}"""), HttpStatusCode.BadRequest, "max_tokens", "invalid_json", "integer");
        await Error(await served.PostAsync("""{"messages": [{"role": "user", "content": 5}]}"""), HttpStatusCode.BadRequest, "messages[0].content", "invalid_json", "string or an array");
        await Error(await served.PostAsync("""{"model": "x"}"""), HttpStatusCode.BadRequest, "messages");
        await Error(await served.PostAsync("""{"messages": [{"role": "tool", "content": "hi"}]}"""), HttpStatusCode.BadRequest, "messages[0].role", says: "'tool'");
        await Error(await served.PostAsync("""{"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}"""), HttpStatusCode.BadRequest, "messages[0].content[0].type");
        await Error(await served.PostAsync("""{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}"""), HttpStatusCode.BadRequest, "temperature");
        await Error(await served.PostAsync("""{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}"""), HttpStatusCode.BadRequest, "max_completion_tokens");
        await Error(await served.PostAsync("""{"messages": [{"role": "user", "content": "hi"}], "n": 2}"""), HttpStatusCode.BadRequest, "n");
        await Error(await served.PostAsync("""{"messages": [{"role": "user", "content": "hi"}], "stop": ["\n"]}"""), HttpStatusCode.BadRequest, "stop");
        // A text model refuses images, saying so.
        await Error(await served.PostAsync(Chat(WithImage("Look: ", DataUrl(Png(8, 8, 1))))), HttpStatusCode.BadRequest, "messages[0].content[1]", "model_not_multimodal");
        // The server goes on.
        await Json(await served.PostAsync(Chat(UserText("Once upon a time"), maxTokens: 4)), HttpStatusCode.OK);
    }

    /// <summary>
    /// A prompt that does not fit the context is a 400 saying so; an answer that would run past it stops at the
    /// context's end with finish_reason length (prompt plus answer fill the context exactly).
    /// </summary>
    [Fact]
    public async Task ContextLimits()
    {
        await using var served = await Served.StartAsync(engineOptions: Exact with { ContextLength = 64 });
        await Error(await served.PostAsync(Chat(UserText(string.Join(' ', Enumerable.Repeat("Once upon a time", 30))))), HttpStatusCode.BadRequest,
            "messages", "context_length_exceeded", "context of 64");
        var body = await Json(await served.PostAsync(Chat(UserText("Once upon a time"), maxTokens: 1000)), HttpStatusCode.OK);
        var usage = body.GetProperty("usage");
        Assert.Equal("length", body.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal(64, usage.GetProperty("total_tokens").GetInt32());
        Assert.Equal(0, served.Engine.Memory.Pages);
    }

    [Fact]
    public async Task OversizeBodyIs413()
    {
        await using var served = await Served.StartAsync(new ServerOptions { MaxBodyBytes = 4096 });
        string big = Chat(UserText(new string('a', 8000)));
        await Error(await served.PostAsync(big), HttpStatusCode.RequestEntityTooLarge, code: "request_too_large", says: "4096 bytes");
        await Json(await served.PostAsync(Chat(UserText("Once upon a time"), maxTokens: 4)), HttpStatusCode.OK);
    }

    [Fact]
    public async Task ApiKeyIsRequiredWhenSet()
    {
        await using var served = await Served.StartAsync(new ServerOptions { ApiKey = "sekret-key" });
        string chat = Chat(UserText("Once upon a time"), maxTokens: 4);
        var missing = await served.PostAsync(chat);
        await Error(missing, HttpStatusCode.Unauthorized, code: "invalid_api_key", says: "missing API key");
        Assert.Equal("Bearer", missing.Headers.WwwAuthenticate.Single().Scheme);
        await Error(await served.PostAsync(chat, "sekret-kez"), HttpStatusCode.Unauthorized, code: "invalid_api_key", says: "invalid API key");
        await Error(await served.PostAsync(chat, "sekret-key-and-more"), HttpStatusCode.Unauthorized, code: "invalid_api_key");
        await Error(await served.Http.GetAsync("v1/models"), HttpStatusCode.Unauthorized);
        await Json(await served.Http.GetAsync("health"), HttpStatusCode.OK); // health checks need no key
        await Json(await served.PostAsync(chat, "sekret-key"), HttpStatusCode.OK);
    }

    /// <summary>
    /// Files under the media root are read; paths that leave it — absolute, with <c>..</c>, through a symbolic link to a
    /// file or to a folder — are refused before anything is read; http(s) and other schemes are refused for now; and a
    /// server without a media root reads no files at all.
    /// </summary>
    [Fact]
    public async Task MediaRootConfinesImageFiles()
    {
        using var dir = new TempDirectory();
        string root = Directory.CreateDirectory(dir.File("media")).FullName;
        byte[] png = Png(40, 30, 5);
        File.WriteAllBytes(Path.Combine(root, "inside.png"), png);
        File.WriteAllBytes(dir.File("outside.png"), png);
        File.CreateSymbolicLink(Path.Combine(root, "link.png"), dir.File("outside.png"));
        Directory.CreateSymbolicLink(Path.Combine(root, "up"), dir.Path);
        File.CreateSymbolicLink(Path.Combine(root, "inner-link.png"), "inside.png"); // a link that stays inside is fine

        await using var served = await Served.StartAsync(new ServerOptions { MediaRoot = root }, vision: pair);
        const string param = "messages[0].content[1].image_url.url";
        await Json(await served.PostAsync(Chat(WithImage("Look: ", "inside.png"), maxTokens: 2)), HttpStatusCode.OK);
        await Json(await served.PostAsync(Chat(WithImage("Look: ", new Uri(Path.Combine(root, "inside.png")).AbsoluteUri), maxTokens: 2)), HttpStatusCode.OK);
        await Json(await served.PostAsync(Chat(WithImage("Look: ", "inner-link.png"), maxTokens: 2)), HttpStatusCode.OK);
        foreach (string outside in new[] { dir.File("outside.png"), new Uri(dir.File("outside.png")).AbsoluteUri, "../outside.png", "/etc/passwd" })
            await Error(await served.PostAsync(Chat(WithImage("Look: ", outside))), HttpStatusCode.BadRequest, param, "outside_media_root", "outside the media root");
        foreach (string linked in new[] { "link.png", "up/outside.png", Path.Combine(root, "up", "media", "..", "outside.png") })
            await Error(await served.PostAsync(Chat(WithImage("Look: ", linked))), HttpStatusCode.BadRequest, param, "outside_media_root");
        await Error(await served.PostAsync(Chat(WithImage("Look: ", "missing.png"))), HttpStatusCode.BadRequest, param, says: "no such file");
        await Error(await served.PostAsync(Chat(WithImage("Look: ", "http://127.0.0.1:9/x.png"))), HttpStatusCode.BadRequest, param, says: "not supported yet");
        await Error(await served.PostAsync(Chat(WithImage("Look: ", "ftp://host/x.png"))), HttpStatusCode.BadRequest, param, says: "scheme");

        await using var noRoot = await Served.StartAsync(vision: pair);
        await Error(await noRoot.PostAsync(Chat(WithImage("Look: ", Path.Combine(root, "inside.png")))), HttpStatusCode.BadRequest, param, says: "--media-root");
    }

    [Fact]
    public async Task CorruptImagesAre400()
    {
        await using var served = await Served.StartAsync(vision: pair);
        const string param = "messages[0].content[1].image_url.url";
        byte[] png = Png(40, 30, 5);
        byte[] cut = png[..(png.Length / 2)];
        byte[] garbage = [.. png[..16], .. Enumerable.Range(0, 200).Select(i => (byte)(i * 7))];
        foreach (var bad in new[] { cut, garbage, "not an image at all"u8.ToArray() })
            await Error(await served.PostAsync(Chat(WithImage("Look: ", DataUrl(bad)))), HttpStatusCode.BadRequest, param, "invalid_image");
        await Error(await served.PostAsync(Chat(WithImage("Look: ", "data:image/png;base64,@@@@"))), HttpStatusCode.BadRequest, param, says: "base64");
        await Error(await served.PostAsync(Chat(WithImage("Look: ", "data:text/plain;base64,aGk="))), HttpStatusCode.BadRequest, param, says: "not an image type");
        await Json(await served.PostAsync(Chat(WithImage("Look: ", DataUrl(png)), maxTokens: 2)), HttpStatusCode.OK);
        Assert.Equal(0, served.Engine.Memory.Pages);
    }

    /// <summary>
    /// A client that leaves mid-stream stops its answer (ignore_eos and a huge max_tokens: only the disconnect can end
    /// it): the session's and the answer's pages go back to the pool, and the server answers the next request as before.
    /// </summary>
    [Fact]
    public async Task DisconnectMidStreamStopsTheAnswerAndFreesItsPages()
    {
        await using var served = await Served.StartAsync(engineOptions: Exact with { ContextLength = 1 << 20 });
        var before = Greedy(served.Model, [new("user", "Once upon a time")], 16);
        using (var cancel = new CancellationTokenSource())
        {
            var response = await served.Http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
            {
                Content = new StringContent(Chat(UserText("Tell me a very long story."), maxTokens: 1_000_000, stream: true, ignoreEos: true), Encoding.UTF8, "application/json"),
            }, HttpCompletionOption.ResponseHeadersRead, cancel.Token);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel.Token));
            int contentEvents = 0;
            while (contentEvents < 5 && await reader.ReadLineAsync(cancel.Token) is { } line)
                if (line.Contains("\"content\":\"", StringComparison.Ordinal) && !line.Contains("\"content\":\"\"", StringComparison.Ordinal)) contentEvents++;
            Assert.Equal(5, contentEvents);
            Assert.Equal(1, served.Server.ActiveRequests);
            Assert.True(served.Engine.Memory.Pages > 0);
            cancel.Cancel();
            response.Dispose();
        }
        await Eventually(() => served.Server.ActiveRequests == 0 && served.Engine.Memory.Pages == 0 && served.Engine.Memory.Sequences == 0
            && served.Log.Contains("the client went away", StringComparison.Ordinal), "the abandoned answer still holds its request slot or KV pages");

        var body = await Json(await served.PostAsync(Chat(UserText("Once upon a time"), maxTokens: 16)), HttpStatusCode.OK);
        Assert.Equal(before.Text, body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
    }

    /// <summary>With every session busy a request is refused at once with 429; once one ends, requests are served again.</summary>
    [Fact]
    public async Task AtCapacityIs429()
    {
        await using var served = await Served.StartAsync(new ServerOptions { MaxSessions = 1 }, engineOptions: Exact with { ContextLength = 1 << 20 });
        using var cancel = new CancellationTokenSource();
        var response = await served.Http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = new StringContent(Chat(UserText("Tell me a very long story."), maxTokens: 1_000_000, stream: true, ignoreEos: true), Encoding.UTF8, "application/json"),
        }, HttpCompletionOption.ResponseHeadersRead, cancel.Token);
        var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel.Token));
        Assert.NotNull(await reader.ReadLineAsync(cancel.Token));
        await Error(await served.PostAsync(Chat(UserText("Once upon a time"), maxTokens: 4)), HttpStatusCode.TooManyRequests, code: "too_many_sessions", says: "max-sessions");
        cancel.Cancel();
        response.Dispose();
        await Eventually(() => served.Server.ActiveRequests == 0, "the abandoned request still holds its slot");
        await Json(await served.PostAsync(Chat(UserText("Once upon a time"), maxTokens: 4)), HttpStatusCode.OK);
    }

    [Fact]
    public async Task UnknownRouteIs404AndWrongMethod405()
    {
        await using var served = await Served.StartAsync();
        await Error(await served.Http.GetAsync("v1/completions/nothing"), HttpStatusCode.NotFound, code: "not_found", says: "/v1/completions/nothing");
        await Error(await served.Http.GetAsync("favicon.ico"), HttpStatusCode.NotFound);
        var wrongMethod = await served.Http.GetAsync("v1/chat/completions");
        await Error(wrongMethod, HttpStatusCode.MethodNotAllowed, says: "POST");
        Assert.Contains("POST", wrongMethod.Content.Headers.Allow);
    }

    static ChatClient OpenAiClient(Served served) =>
        new(served.Server.ModelId, new ApiKeyCredential("no-key-needed"), new OpenAIClientOptions { Endpoint = new Uri(served.Server.Address, "v1") });

    /// <summary>The official OpenAI .NET client completes and streams a chat with the greedy text.</summary>
    [Fact]
    public async Task OpenAiClientCompletesAndStreams()
    {
        await using var served = await Served.StartAsync();
        var expected = Greedy(served.Model, [new("user", "Once upon a time")], 20);
        var client = OpenAiClient(served);
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 20 };
        OpenAI.Chat.ChatCompletion completion = await client.CompleteChatAsync([new UserChatMessage("Once upon a time")], options);
        Assert.Equal(expected.Text, completion.Content[0].Text);
        Assert.Equal(expected.Stopped ? OpenAI.Chat.ChatFinishReason.Stop : OpenAI.Chat.ChatFinishReason.Length, completion.FinishReason);
        Assert.Equal(expected.CompletionTokens, completion.Usage.OutputTokenCount);
        Assert.Equal(expected.PromptTokens, completion.Usage.InputTokenCount);

        var streamed = new StringBuilder();
        ChatTokenUsage? usage = null;
        OpenAI.Chat.ChatFinishReason? finish = null;
        await foreach (var update in client.CompleteChatStreamingAsync([new UserChatMessage("Once upon a time")], options))
        {
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            usage ??= update.Usage;
            finish ??= update.FinishReason;
        }
        Assert.Equal(expected.Text, streamed.ToString());
        Assert.Equal(expected.Stopped ? OpenAI.Chat.ChatFinishReason.Stop : OpenAI.Chat.ChatFinishReason.Length, finish);
        Assert.Equal(expected.CompletionTokens, usage?.OutputTokenCount);
    }

    /// <summary>The OpenAI client and Microsoft.Extensions.AI's IChatClient over it send an image and get the answer the raw API gives.</summary>
    [Fact]
    public async Task OpenAiAndExtensionsAiClientsSendImages()
    {
        await using var served = await Served.StartAsync(vision: pair);
        byte[] png = Png(60, 44, 9);
        var raw = await Json(await served.PostAsync(Chat(WithImage("What is this? ", DataUrl(png)), maxTokens: 10)), HttpStatusCode.OK);
        string expected = raw.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        int promptTokens = raw.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        Assert.NotEmpty(expected);

        var client = OpenAiClient(served);
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 10 };
        var message = new UserChatMessage(ChatMessageContentPart.CreateTextPart("What is this? "), ChatMessageContentPart.CreateImagePart(BinaryData.FromBytes(png), "image/png"));
        OpenAI.Chat.ChatCompletion completion = await client.CompleteChatAsync([message], options);
        Assert.Equal(expected, completion.Content[0].Text);
        Assert.Equal(promptTokens, completion.Usage.InputTokenCount);

        IChatClient chat = client.AsIChatClient();
        var aiMessage = new AiChatMessage(ChatRole.User, [new TextContent("What is this? "), new DataContent(png, "image/png")]);
        var aiOptions = new ChatOptions { Temperature = 0, MaxOutputTokens = 10 };
        var response = await chat.GetResponseAsync([aiMessage], aiOptions);
        Assert.Equal(expected, response.Text);
        Assert.Equal((long)promptTokens, response.Usage?.InputTokenCount);
        var streamed = new StringBuilder();
        await foreach (var update in chat.GetStreamingResponseAsync([aiMessage], aiOptions)) streamed.Append(update.Text);
        Assert.Equal(expected, streamed.ToString());

        var text = await chat.GetResponseAsync("Once upon a time", new ChatOptions { Temperature = 0, MaxOutputTokens = 8 });
        Assert.Equal(Greedy(pair.Text, [new("user", "Once upon a time")], 8).Text, text.Text);
    }

    /// <summary>Symbolic links resolve as realpath does: chains, relative targets, <c>..</c> in a target after a link, loops reported.</summary>
    [Fact]
    public void PathsResolveThroughLinks()
    {
        using var dir = new TempDirectory();
        string real = Directory.CreateTempSubdirectory("vidkv-real-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(real, "a", "b"));
            Directory.CreateSymbolicLink(dir.File("to-b"), Path.Combine(real, "a", "b"));
            File.CreateSymbolicLink(dir.File("chain"), "to-b");
            Assert.Equal(Path.Combine(real, "a", "b"), MediaFiles.Resolve(dir.File("chain")));
            Assert.Equal(Path.Combine(real, "a", "b", "x.png"), MediaFiles.Resolve(Path.Combine(dir.File("chain"), "x.png"))); // need not exist
            File.CreateSymbolicLink(dir.File("sibling"), "to-b/../c"); // ".." after a link: from the link's target, as the kernel does
            Assert.Equal(Path.Combine(real, "a", "c"), MediaFiles.Resolve(dir.File("sibling")));
            File.CreateSymbolicLink(dir.File("loop1"), dir.File("loop2"));
            File.CreateSymbolicLink(dir.File("loop2"), dir.File("loop1"));
            Assert.Throws<IOException>(() => MediaFiles.Resolve(dir.File("loop1")));
        }
        finally
        {
            Directory.Delete(real, recursive: true);
        }
    }

    public static TheoryData<string[], string> BadServeOptions => new()
    {
        { ["serve", "-m", "missing.gguf"], "missing.gguf" },
        { ["serve", "-m", "MODEL", "--port", "70000"], "port 70000" },
        { ["serve", "-m", "MODEL", "--host", "not-an-address"], "--host 'not-an-address'" },
        { ["serve", "-m", "MODEL", "--media-root", "/no/such/folder"], "/no/such/folder" },
        { ["serve", "-m", "MODEL", "--max-sessions", "0"], "max sessions" },
        { ["serve", "-m", "MODEL", "--max-body", "0"], "--max-body" },
        { ["serve", "-m", "MODEL", "--max-upload", "-1"], "--max-upload" },
        { ["serve", "--mmproj", "projector.gguf"], "--mmproj needs -m" },
    };

    [Theory]
    [MemberData(nameof(BadServeOptions))]
    public void BadServeOptionsAreOneLineAndExitCode2(string[] args, string problem)
    {
        args = args.Select(a => a == "MODEL" ? TestData.Model("stories260K") : a).ToArray();
        var stderr = new StringWriter();
        Assert.Equal(CliRunner.BadInput, CliRunner.Run(CliApp.BuildRoot(), args, stderr, new StringWriter()));
        string[] lines = stderr.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        string error = Assert.Single(lines);
        Assert.StartsWith("vidkv: error:", error);
        Assert.Contains(problem, error);
    }

    [Fact]
    public void ServeHelpListsItsOptions()
    {
        var stdout = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["serve", "--help"], new StringWriter(), stdout));
        foreach (string option in new[] { "--model", "--mmproj", "--host", "--port", "--api-key", "--media-root", "--max-sessions", "--max-body", "--max-upload", "--ctx-size", "--n-predict" })
            Assert.Contains(option, stdout.ToString());
    }
}
