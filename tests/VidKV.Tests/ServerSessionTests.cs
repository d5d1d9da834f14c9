using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using VidKV.Cache;
using VidKV.Engine;
using VidKV.Server;
using static VidKV.Tests.ServerTests;

namespace VidKV.Tests;

/// <summary>
/// Live video sessions and video in chat completions on a real Kestrel at 127.0.0.1 (port 0), with a tiny random
/// Idefics3 pair and short clips made with ffmpeg: a push session fed over POST and over the WebSocket, a file session
/// asked while it ingests (the answer streams, ingestion goes on), its events, DELETE giving the pages back, and every
/// bad request (unknown session, corrupt frame, corrupt video, paths outside the media root, unreachable and slow
/// URLs) refused while the session and the server go on.
/// </summary>
public class ServerSessionTests(TinyVisionPair pair, ServerSessionTests.Clips clips) : IClassFixture<TinyVisionPair>, IClassFixture<ServerSessionTests.Clips>
{
    /// <summary>
    /// testsrc2 clips in a media root: 4 s at 10 fps (clip.mp4), 40 s at 5 fps (long.mp4), a file that is not a video
    /// (broken.mp4), and a symbolic link to a clip outside the root (link.mp4).
    /// </summary>
    public sealed class Clips : IDisposable
    {
        public string Root { get; } = Directory.CreateTempSubdirectory("vidkv-media-").FullName;
        public string Outside { get; } = Directory.CreateTempSubdirectory("vidkv-outside-").FullName;

        public Clips()
        {
            GeneratedVideos.Ffmpeg($"-f lavfi -i testsrc2=size=96x64:rate=10:duration=4 -c:v libx264 -preset ultrafast -g 10 -pix_fmt yuv420p -y {Path.Combine(Root, "clip.mp4")}");
            GeneratedVideos.Ffmpeg($"-f lavfi -i testsrc2=size=96x64:rate=5:duration=40 -c:v libx264 -preset ultrafast -g 10 -pix_fmt yuv420p -y {Path.Combine(Root, "long.mp4")}");
            var bytes = File.ReadAllBytes(Path.Combine(Root, "clip.mp4"));
            File.WriteAllBytes(Path.Combine(Root, "broken.mp4"), Encoding.ASCII.GetBytes("this is not a video at all, only text that ends here"));
            File.WriteAllBytes(Path.Combine(Outside, "secret.mp4"), bytes);
            File.CreateSymbolicLink(Path.Combine(Root, "link.mp4"), Path.Combine(Outside, "secret.mp4"));
            Clip = bytes;
        }

        public byte[] Clip { get; }

        public void Dispose()
        {
            Directory.Delete(Root, recursive: true);
            Directory.Delete(Outside, recursive: true);
        }
    }

    Task<Served> StartAsync(ServerOptions? options = null) =>
        Served.StartAsync((options ?? new ServerOptions()) with { MediaRoot = clips.Root, SessionKv = new KvCacheConfig { Default = "infinipotv", Budget = 64 } }, Exact, pair);

    static StringContent JsonBody(object value) => new(JsonSerializer.Serialize(value), Encoding.UTF8, "application/json");

    static async Task<JsonElement> CreateAsync(Served served, object request)
    {
        var response = await served.Http.PostAsync("v1/sessions", JsonBody(request));
        var body = await Json(response, HttpStatusCode.Created);
        Assert.Equal("session", body.GetProperty("object").GetString());
        Assert.Equal($"/v1/sessions/{body.GetProperty("id").GetString()}", response.Headers.Location?.OriginalString);
        return body;
    }

    static async Task<JsonElement> StatusAsync(Served served, string id) => await Json(await served.Http.GetAsync($"v1/sessions/{id}"), HttpStatusCode.OK);

    static async Task<JsonElement> PushAsync(Served served, string id, byte[] image, double? timestamp = null, HttpStatusCode expected = HttpStatusCode.Accepted)
    {
        var content = new ByteArrayContent(image);
        content.Headers.ContentType = new("image/png");
        string query = timestamp is double t ? $"?timestamp={t.ToString(System.Globalization.CultureInfo.InvariantCulture)}" : "";
        return await Json(await served.Http.PostAsync($"v1/sessions/{id}/frames{query}", content), expected);
    }

    /// <summary>The named events of a session's event stream, as (type, data), until the stream ends or <paramref name="until"/> says stop.</summary>
    static async Task<List<(string Type, JsonElement Data)>> ReadEventsAsync(HttpResponseMessage response, Func<string, JsonElement, bool>? until = null)
    {
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var events = new List<(string, JsonElement)>();
        string? type = null;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal)) type = line["event: ".Length..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
            {
                var data = JsonDocument.Parse(line["data: ".Length..]).RootElement;
                Assert.Equal(type, data.GetProperty("type").GetString());
                events.Add((type!, data));
                if (until?.Invoke(type!, data) == true) break;
            }
        }
        return events;
    }

    [Fact]
    public async Task PushSessionTakesFramesOverPostAndWebSocket()
    {
        await using var served = await StartAsync();
        // At 60 frames/s the sampler keeps frames 1/60 s apart: the POSTed times below pass, and so does every WebSocket
        // frame (their arrival times come ≥ 150 ms after the last), however fast or slow the machine.
        var created = await CreateAsync(served, new { source = "push", fps = 60 });
        string id = created.GetProperty("id").GetString()!;
        Assert.Equal("push", created.GetProperty("kind").GetString());
        Assert.Equal("ingesting", created.GetProperty("state").GetString());
        Assert.Equal(1, served.Server.LiveSessionCount);

        for (int k = 0; k < 3; k++)
        {
            var ack = await PushAsync(served, id, Png(64, 48, k), timestamp: 0.02 * k);
            Assert.True(ack.GetProperty("accepted").GetBoolean());
            Assert.Equal(k + 1, ack.GetProperty("frames_received").GetInt32());
        }
        await Eventually(() => StatusAsync(served, id).Result.GetProperty("frames").GetInt32() == 3, "the three POSTed frames are not in the session");
        int rowsAfterPost = (await StatusAsync(served, id)).GetProperty("rows").GetInt32();

        // The WebSocket: frames as binary messages (their times are arrival times, past 0.04 s by now), a corrupt one
        // and a text message answered with errors, and the socket goes on.
        using var socket = new ClientWebSocket();
        await socket.ConnectAsync(new Uri($"ws://{served.Server.Address.Authority}/v1/sessions/{id}/stream"), CancellationToken.None);
        async Task<JsonElement> Send(byte[] bytes, WebSocketMessageType type)
        {
            await socket.SendAsync(bytes, type, true, CancellationToken.None);
            var buffer = new byte[4096];
            var received = await socket.ReceiveAsync(buffer, CancellationToken.None);
            Assert.Equal(WebSocketMessageType.Text, received.MessageType);
            return JsonDocument.Parse(buffer.AsMemory(0, received.Count)).RootElement;
        }
        int accepted = 0;
        for (int k = 0; k < 3; k++)
        {
            await Task.Delay(150); // one frame per 1/fps interval of arrival time; not a timing assert
            var ack = await Send(Png(64, 48, 10 + k), WebSocketMessageType.Binary);
            Assert.Equal(4 + k, ack.GetProperty("frames_received").GetInt32());
            if (ack.GetProperty("accepted").GetBoolean()) accepted++;
        }
        Assert.Equal(3, accepted);
        var corrupt = await Send([1, 2, 3, 4, 5], WebSocketMessageType.Binary);
        Assert.Equal("invalid_image", corrupt.GetProperty("error").GetProperty("code").GetString());
        var text = await Send(Encoding.UTF8.GetBytes("hello"), WebSocketMessageType.Text);
        Assert.Contains("binary", text.GetProperty("error").GetProperty("message").GetString());
        await Task.Delay(150);
        Assert.True((await Send(Png(64, 48, 20), WebSocketMessageType.Binary)).GetProperty("accepted").GetBoolean());
        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "done", CancellationToken.None);

        await Eventually(() => StatusAsync(served, id).Result.GetProperty("frames").GetInt32() == 7, "the WebSocket's frames are not in the session");
        var status = await StatusAsync(served, id);
        Assert.Equal("ingesting", status.GetProperty("state").GetString());
        Assert.True(status.GetProperty("rows").GetInt32() > rowsAfterPost);
        Assert.True(status.GetProperty("last_timestamp").GetDouble() > 0.2);
        Assert.True(status.GetProperty("kv").GetProperty("hot_bytes").GetInt64() > 0);

        // A question on what was pushed: the answer reads every row of the session, then the question's.
        var answer = await Json(await served.Http.PostAsync($"v1/sessions/{id}/ask", JsonBody(new { question = "What is on screen?", max_tokens = 4, stream = false, ignore_eos = true })), HttpStatusCode.OK);
        Assert.Equal(4, answer.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.True(answer.GetProperty("usage").GetProperty("prompt_tokens").GetInt32() > status.GetProperty("rows").GetInt32());
        Assert.Equal("length", answer.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task FileSessionAnswersWhileItIngestsAndStreamsItsProgress()
    {
        await using var served = await StartAsync();
        var created = await CreateAsync(served, new { source = "clip.mp4", fps = 5 });
        string id = created.GetProperty("id").GetString()!;
        Assert.Equal("file", created.GetProperty("kind").GetString());
        var eventsResponse = await served.Http.GetAsync($"v1/sessions/{id}/events", HttpCompletionOption.ResponseHeadersRead);
        var reading = ReadEventsAsync(eventsResponse);

        // Ask as soon as a frame is in: the answer streams from a fork while the clip's 20 frames go on going in.
        await Eventually(() => StatusAsync(served, id).Result.GetProperty("frames").GetInt32() >= 1, "no frame was ingested");
        var ask = await served.Http.SendAsync(new HttpRequestMessage(HttpMethod.Post, $"v1/sessions/{id}/ask")
        {
            Content = JsonBody(new { question = "What happened?", max_tokens = 6, ignore_eos = true, stream_options = new { include_usage = true } }),
        }, HttpCompletionOption.ResponseHeadersRead);
        var pieces = await Events(ask);
        Assert.Equal("[DONE]", pieces[^1]);
        var chunks = pieces[..^1].Select(p => JsonDocument.Parse(p).RootElement).ToList();
        Assert.All(chunks, c => Assert.Equal("chat.completion.chunk", c.GetProperty("object").GetString()));
        Assert.Equal(6, chunks[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        int promptTokens = chunks[^1].GetProperty("usage").GetProperty("prompt_tokens").GetInt32();

        var events = await reading; // ends with the clip
        var status = await StatusAsync(served, id);
        Assert.Equal("ended", status.GetProperty("state").GetString());
        Assert.Equal(20, status.GetProperty("frames").GetInt32());
        Assert.True(promptTokens > 0);

        var progress = events.Where(e => e.Type == "progress").Select(e => e.Data.GetProperty("frames").GetInt32()).ToList();
        Assert.True(progress.Count >= 2, $"only {progress.Count} progress events");
        Assert.Equal(20, progress[^1]);
        Assert.True(progress.Zip(progress.Skip(1)).All(p => p.Second >= p.First), string.Join(",", progress));
        Assert.Contains(events, e => e.Type == "progress" && e.Data.GetProperty("frames").GetInt32() > 0 && e.Data.GetProperty("hot_bytes").GetInt64() > 0
            && e.Data.TryGetProperty("frames_per_second", out _));
        Assert.Equal("end", events[^1].Type);
        Assert.Equal("ended", events[^1].Data.GetProperty("state").GetString());

        // A reader that comes after the end hears where it stands and the end at once.
        var late = await ReadEventsAsync(await served.Http.GetAsync($"v1/sessions/{id}/events", HttpCompletionOption.ResponseHeadersRead));
        Assert.Equal(["progress", "end"], late.Select(e => e.Type));
        Assert.Equal(20, late[0].Data.GetProperty("frames").GetInt32());
    }

    /// <summary>
    /// A question asked once the first frames of a 200-frame clip are in reads a fork of what is there then, and
    /// ingestion goes on past it: later frames arrive after the answer, and a later question reads more.
    /// </summary>
    [Fact]
    public async Task AskWhileIngestingReadsTheClipSoFarAndIngestionGoesOn()
    {
        await using var served = await StartAsync();
        string id = (await CreateAsync(served, new { source = "long.mp4", fps = 5 })).GetProperty("id").GetString()!;
        await Eventually(() => StatusAsync(served, id).Result.GetProperty("frames").GetInt32() >= 1, "no frame was ingested");
        var first = await Json(await served.Http.PostAsync($"v1/sessions/{id}/ask", JsonBody(new { question = "Now?", max_tokens = 2, ignore_eos = true, stream = false })), HttpStatusCode.OK);
        int seen = first.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        int framesAfterAnswer = (await StatusAsync(served, id)).GetProperty("frames").GetInt32();
        Assert.True(framesAfterAnswer < 200, "the whole clip was in before the first answer: nothing shows ingestion going on");
        await Eventually(() => StatusAsync(served, id).Result.GetProperty("frames").GetInt32() > framesAfterAnswer + 2, "ingestion stopped after the question");
        var later = await Json(await served.Http.PostAsync($"v1/sessions/{id}/ask", JsonBody(new { question = "Now?", max_tokens = 2, ignore_eos = true, stream = false })), HttpStatusCode.OK);
        Assert.True(later.GetProperty("usage").GetProperty("prompt_tokens").GetInt32() > seen, "a later question read no more than the first");
        await Json(await served.Http.DeleteAsync($"v1/sessions/{id}"), HttpStatusCode.OK);
        Assert.Equal(0, served.Engine.Memory.Pages);
    }

    [Fact]
    public async Task DeleteStopsTheSessionAndGivesItsPagesBack()
    {
        await using var served = await StartAsync();
        Assert.Equal(0, served.Engine.Memory.Pages);
        string id = (await CreateAsync(served, new { source = "clip.mp4", fps = 10 })).GetProperty("id").GetString()!;
        await Eventually(() => StatusAsync(served, id).Result.GetProperty("frames").GetInt32() >= 2, "no frames were ingested");
        Assert.True(served.Engine.Memory.Pages > 0);
        var eventsResponse = await served.Http.GetAsync($"v1/sessions/{id}/events", HttpCompletionOption.ResponseHeadersRead);

        var deleted = await Json(await served.Http.DeleteAsync($"v1/sessions/{id}"), HttpStatusCode.OK);
        Assert.Equal("session.deleted", deleted.GetProperty("object").GetString());
        Assert.True(deleted.GetProperty("deleted").GetBoolean());
        Assert.Equal(0, served.Engine.Memory.Pages);
        Assert.Equal(0, served.Engine.Memory.Sequences);
        Assert.Equal(0, served.Server.LiveSessionCount);
        var events = await ReadEventsAsync(eventsResponse);
        Assert.Equal("end", events[^1].Type);
        Assert.Contains(events[^1].Data.GetProperty("state").GetString(), new[] { "stopped", "ended" });

        await Error(await served.Http.GetAsync($"v1/sessions/{id}"), HttpStatusCode.NotFound, "id", "session_not_found");
        await Error(await served.Http.DeleteAsync($"v1/sessions/{id}"), HttpStatusCode.NotFound, "id", "session_not_found");
    }

    [Fact]
    public async Task UnknownSessionIs404OnEveryRoute()
    {
        await using var served = await StartAsync();
        const string id = "sess_nope";
        await Error(await served.Http.GetAsync($"v1/sessions/{id}"), HttpStatusCode.NotFound, "id", "session_not_found", says: id);
        await Error(await served.Http.DeleteAsync($"v1/sessions/{id}"), HttpStatusCode.NotFound, "id", "session_not_found");
        await Error(await served.Http.GetAsync($"v1/sessions/{id}/events"), HttpStatusCode.NotFound, "id", "session_not_found");
        await Error(await served.Http.GetAsync($"v1/sessions/{id}/stream"), HttpStatusCode.NotFound, "id", "session_not_found");
        await Error(await served.Http.PostAsync($"v1/sessions/{id}/ask", JsonBody(new { question = "?" })), HttpStatusCode.NotFound, "id", "session_not_found");
        var frame = new ByteArrayContent(Png(8, 8, 1));
        frame.Headers.ContentType = new("image/png");
        await Error(await served.Http.PostAsync($"v1/sessions/{id}/frames", frame), HttpStatusCode.NotFound, "id", "session_not_found");
        await Json(await served.Http.GetAsync("health"), HttpStatusCode.OK);
    }

    [Fact]
    public async Task BadFramesAreRefusedAndTheSessionGoesOn()
    {
        await using var served = await StartAsync();
        string push = (await CreateAsync(served, new { source = "push", fps = 10 })).GetProperty("id").GetString()!;
        var garbage = new ByteArrayContent([0x89, 0x50, 0x4E, 0x47, 1, 2, 3]);
        garbage.Headers.ContentType = new("image/png");
        await Error(await served.Http.PostAsync($"v1/sessions/{push}/frames", garbage), HttpStatusCode.BadRequest, "body", "invalid_image");
        var wrongType = new StringContent("not a frame", Encoding.UTF8, "text/plain");
        await Error(await served.Http.PostAsync($"v1/sessions/{push}/frames", wrongType), HttpStatusCode.UnsupportedMediaType, code: "unsupported_media_type");
        await PushAsync(served, push, Png(32, 32, 1), timestamp: 5);
        // A frame before the last one's time is refused; the session keeps what it has.
        await Error(await served.Http.PostAsync($"v1/sessions/{push}/frames?timestamp=1", new ByteArrayContent(Png(32, 32, 2)) { Headers = { ContentType = new("image/png") } }),
            HttpStatusCode.BadRequest, "timestamp", says: "before the previous");
        await Error(await served.Http.PostAsync($"v1/sessions/{push}/frames?timestamp=soon", new ByteArrayContent(Png(32, 32, 2)) { Headers = { ContentType = new("image/png") } }),
            HttpStatusCode.BadRequest, "timestamp");
        await PushAsync(served, push, Png(32, 32, 3), timestamp: 6);
        await Eventually(() => StatusAsync(served, push).Result.GetProperty("frames").GetInt32() == 2, "the good frames are not in the session");
        Assert.Equal("ingesting", (await StatusAsync(served, push)).GetProperty("state").GetString());

        // A file session takes no pushed frames, over POST or the WebSocket.
        string file = (await CreateAsync(served, new { source = "clip.mp4", fps = 1, max_frames = 1 })).GetProperty("id").GetString()!;
        await Error(await served.Http.PostAsync($"v1/sessions/{file}/frames", new ByteArrayContent(Png(8, 8, 1)) { Headers = { ContentType = new("image/png") } }),
            HttpStatusCode.Conflict, code: "not_a_push_session");
        using var socket = new ClientWebSocket();
        var refused = await Assert.ThrowsAsync<WebSocketException>(() => socket.ConnectAsync(new Uri($"ws://{served.Server.Address.Authority}/v1/sessions/{file}/stream"), CancellationToken.None));
        Assert.Contains("409", refused.Message);
        await Error(await served.Http.GetAsync($"v1/sessions/{push}/stream"), HttpStatusCode.BadRequest, code: "websocket_required");
        await Eventually(() => StatusAsync(served, file).Result.GetProperty("state").GetString() == "ended", "the one-frame file session never ended");
        Assert.Equal(1, (await StatusAsync(served, file)).GetProperty("frames").GetInt32());
    }

    [Fact]
    public async Task BadSessionRequestsAre400()
    {
        await using var served = await StartAsync();
        async Task Bad(object request, string? param, string? code = null, string? says = null) =>
            await Error(await served.Http.PostAsync("v1/sessions", JsonBody(request)), HttpStatusCode.BadRequest, param, code, says);
        await Bad(new { fps = 1 }, "source");
        await Bad(new { source = "push", fps = 0 }, "fps");
        await Bad(new { source = "push", max_frames = 0 }, "max_frames");
        await Bad(new { source = "push", kv_policy = "nosuchpolicy" }, "kv_policy", says: "unknown policy");
        await Bad(new { source = "push", kv_budget = 0 }, "kv_budget");
        await Bad(new { source = "camera:/etc/passwd" }, "source");
        await Bad(new { source = "ftp://example.com/v.mp4" }, "source", says: "scheme");
        await Bad(new { source = "broken.mp4" }, "source", "invalid_video");
        await Bad(new { source = "missing.mp4" }, "source", says: "no such file");
        await Bad(new { source = "../" + Path.GetFileName(clips.Outside) + "/secret.mp4" }, "source", "outside_media_root");
        await Bad(new { source = Path.Combine(clips.Outside, "secret.mp4") }, "source", "outside_media_root");
        await Bad(new { source = "link.mp4" }, "source", "outside_media_root", "symbolic link");
        await Bad(new { source = "push", proactive = true, silence_token = "two words" }, "silence_token");
        await Error(await served.Http.PostAsync("v1/sessions", new StringContent("{\"source\": ", Encoding.UTF8, "application/json")), HttpStatusCode.BadRequest, code: "invalid_json");
        Assert.Equal(0, served.Server.LiveSessionCount);
        Assert.Equal(0, served.Engine.Memory.Sequences);

        // A text-only model watches nothing.
        await using var text = await Served.StartAsync();
        await Error(await text.Http.PostAsync("v1/sessions", JsonBody(new { source = "push" })), HttpStatusCode.BadRequest, code: "model_not_multimodal");
    }

    [Fact]
    public async Task LiveSessionsCountAgainstMaxSessions()
    {
        await using var served = await StartAsync(new ServerOptions { MaxSessions = 1 });
        string id = (await CreateAsync(served, new { source = "push" })).GetProperty("id").GetString()!;
        await Error(await served.Http.PostAsync("v1/sessions", JsonBody(new { source = "push" })), HttpStatusCode.TooManyRequests, code: "too_many_sessions");
        await Error(await served.PostAsync(ServerTestsChat("Hello")), HttpStatusCode.TooManyRequests, code: "too_many_sessions");
        await Json(await served.Http.DeleteAsync($"v1/sessions/{id}"), HttpStatusCode.OK);
        await Json(await served.PostAsync(ServerTestsChat("Hello")), HttpStatusCode.OK);
    }

    static string ServerTestsChat(string text) => JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = text } }, max_tokens = 2 });

    [Fact]
    public async Task DisconnectMidAskGivesTheForksPagesBack()
    {
        await using var served = await StartAsync();
        string id = (await CreateAsync(served, new { source = "push", fps = 10 })).GetProperty("id").GetString()!;
        for (int k = 0; k < 2; k++) await PushAsync(served, id, Png(48, 48, k), timestamp: k);
        await Eventually(() => StatusAsync(served, id).Result.GetProperty("frames").GetInt32() == 2, "the frames are not in the session");
        int pages = served.Engine.Memory.Pages;
        Assert.Equal(1, served.Engine.Memory.Sequences);
        using (var cancel = new CancellationTokenSource())
        {
            var response = await served.Http.SendAsync(new HttpRequestMessage(HttpMethod.Post, $"v1/sessions/{id}/ask")
            {
                Content = JsonBody(new { question = "Tell me everything.", max_tokens = 1_000_000, ignore_eos = true }),
            }, HttpCompletionOption.ResponseHeadersRead, cancel.Token);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel.Token));
            int content = 0;
            while (content < 5 && await reader.ReadLineAsync(cancel.Token) is { } line)
                if (line.Contains("\"content\":\"", StringComparison.Ordinal) && !line.Contains("\"content\":\"\"", StringComparison.Ordinal)) content++;
            Assert.Equal(5, content);
            Assert.Equal(2, served.Engine.Memory.Sequences); // the session and the question's fork
            cancel.Cancel();
            response.Dispose();
        }
        await Eventually(() => served.Engine.Memory.Sequences == 1 && served.Engine.Memory.Pages == pages, "the abandoned question's fork still holds pages");
        Assert.Equal("ingesting", (await StatusAsync(served, id)).GetProperty("state").GetString());
        await PushAsync(served, id, Png(48, 48, 9), timestamp: 3);
        await Eventually(() => StatusAsync(served, id).Result.GetProperty("frames").GetInt32() == 3, "the session stopped taking frames");
    }

    [Fact]
    public async Task ProactiveSessionCommentsInItsEvents()
    {
        await using var served = await StartAsync();
        // Threshold 1: p(silence) is always below it, so the model speaks after every frame.
        string id = (await CreateAsync(served, new { source = "clip.mp4", fps = 1, max_frames = 3, proactive = true, threshold = 1.0, comment_max_tokens = 3 }))
            .GetProperty("id").GetString()!;
        var events = await ReadEventsAsync(await served.Http.GetAsync($"v1/sessions/{id}/events", HttpCompletionOption.ResponseHeadersRead));
        var comments = events.Where(e => e.Type == "comment").ToList();
        Assert.True(comments.Count >= 1, string.Join(" ", events.Select(e => e.Type)));
        Assert.All(comments, c => Assert.True(c.Data.GetProperty("frame").GetInt32() >= 0 && c.Data.TryGetProperty("text", out _) && c.Data.TryGetProperty("timestamp", out _)));
        var status = await StatusAsync(served, id);
        Assert.Equal("ended", status.GetProperty("state").GetString());
        Assert.Equal(3, status.GetProperty("frames").GetInt32());
        Assert.True(status.GetProperty("proactive").GetBoolean());
    }

    static object VideoChat(object part, string text = "What happens?", object? mediaIo = null) => new Dictionary<string, object?>
    {
        ["messages"] = new[] { new { role = "user", content = new object[] { part, new { type = "text", text } } } },
        ["max_tokens"] = 2,
        ["temperature"] = 0,
        ["media_io_kwargs"] = mediaIo,
    };

    static object VideoUrl(string url) => new { type = "video_url", video_url = new { url } };

    async Task<int> PromptTokens(Served served, object request)
    {
        var body = await Json(await served.Http.PostAsync("v1/chat/completions", JsonBody(request)), HttpStatusCode.OK);
        Assert.Equal("chat.completion", body.GetProperty("object").GetString());
        return body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
    }

    /// <summary>
    /// The official OpenAI client (a file part with the video inline, as it sends any file) and Microsoft.Extensions.AI's
    /// IChatClient over it (that part as an <c>AIContent</c>'s raw representation) complete and stream a chat about a video: the answer and prompt
    /// of the raw API's <c>video_url</c> with the same data. A file part that is not an image or a video, or that names
    /// an uploaded file, is a 400 naming <c>file.file_data</c>.
    /// </summary>
    [Fact]
    public async Task OpenAiAndExtensionsAiClientsSendVideos()
    {
        await using var served = await StartAsync(new ServerOptions { MaxVideoFrames = 3 });
        string dataUrl = "data:video/mp4;base64," + Convert.ToBase64String(clips.Clip);
        var raw = await Json(await served.Http.PostAsync("v1/chat/completions", JsonBody(VideoChat(VideoUrl(dataUrl)))), HttpStatusCode.OK);
        string expected = raw.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        int promptTokens = raw.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        Assert.NotEmpty(expected);

        var client = new OpenAI.Chat.ChatClient(served.Server.ModelId, new System.ClientModel.ApiKeyCredential("no-key-needed"),
            new OpenAI.OpenAIClientOptions { Endpoint = new Uri(served.Server.Address, "v1") });
        var options = new OpenAI.Chat.ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 2 };
#pragma warning disable OPENAI001 // CreateFilePart is marked "for evaluation" in OpenAI 2.15.0: the file part it sends is OpenAI's documented shape
        var message = new OpenAI.Chat.UserChatMessage(OpenAI.Chat.ChatMessageContentPart.CreateFilePart(BinaryData.FromBytes(clips.Clip), "video/mp4", "clip.mp4"),
            OpenAI.Chat.ChatMessageContentPart.CreateTextPart("What happens?"));
#pragma warning restore OPENAI001
        var rawFile = await Json(await served.Http.PostAsync("v1/chat/completions", JsonBody(VideoChat(new { type = "file", file = new { file_data = dataUrl, filename = "clip.mp4" } }))), HttpStatusCode.OK);
        Assert.Equal(promptTokens, rawFile.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(expected, rawFile.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());
        OpenAI.Chat.ChatCompletion completion = await client.CompleteChatAsync([message], options);
        Assert.Equal(promptTokens, completion.Usage.InputTokenCount);
        Assert.Equal(expected, completion.Content[0].Text);
        var streamed = new StringBuilder();
        await foreach (var update in client.CompleteChatStreamingAsync([message], options))
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
        Assert.Equal(expected, streamed.ToString());

        Microsoft.Extensions.AI.IChatClient chat = Microsoft.Extensions.AI.OpenAIClientExtensions.AsIChatClient(client);
        // Microsoft.Extensions.AI.OpenAI 11.0.0 sends a DataContent only when it is an image, audio or a PDF (a video one
        // is dropped: the prompt had only the text's 21 tokens), so the video goes as the OpenAI part itself, through
        // RawRepresentation, the library's way to send a part it does not map.
        var aiMessage = new Microsoft.Extensions.AI.ChatMessage(Microsoft.Extensions.AI.ChatRole.User,
            [new Microsoft.Extensions.AI.AIContent { RawRepresentation = message.Content[0] }, new Microsoft.Extensions.AI.TextContent("What happens?")]);
        var aiOptions = new Microsoft.Extensions.AI.ChatOptions { Temperature = 0, MaxOutputTokens = 2 };
        var response = await chat.GetResponseAsync([aiMessage], aiOptions);
        Assert.Equal((long)promptTokens, response.Usage?.InputTokenCount);
        Assert.Equal(expected, response.Text);
        var aiStreamed = new StringBuilder();
        await foreach (var update in chat.GetStreamingResponseAsync([aiMessage], aiOptions)) aiStreamed.Append(update.Text);
        Assert.Equal(expected, aiStreamed.ToString());

        await Error(await served.Http.PostAsync("v1/chat/completions", JsonBody(VideoChat(new { type = "file", file = new { file_data = "data:application/pdf;base64,AAAA", filename = "a.pdf" } }))),
            HttpStatusCode.BadRequest, param: "messages[0].content[0].file.file_data", says: "application/pdf");
        await Error(await served.Http.PostAsync("v1/chat/completions", JsonBody(VideoChat(new { type = "file", file = new { file_id = "file-123" } }))),
            HttpStatusCode.BadRequest, param: "messages[0].content[0].file.file_data", says: "inline");
    }

    [Fact]
    public async Task VideoInChatCompletions()
    {
        await using var served = await StartAsync(new ServerOptions { MaxVideoFrames = 8 });
        string temp = Path.GetTempPath();
        int TempVideos() => Directory.GetFiles(temp, "vidkv-video-*").Length;
        int tempBefore = TempVideos();
        int textOnly = await PromptTokens(served, new { messages = new[] { new { role = "user", content = "What happens?" } }, max_tokens = 2 });

        // vLLM's video_url from the media root, at vLLM's per-request fps and num_frames: more frames, more prompt.
        int two = await PromptTokens(served, VideoChat(VideoUrl("clip.mp4"), mediaIo: new { video = new { fps = 1, num_frames = 2 } }));
        int four = await PromptTokens(served, VideoChat(VideoUrl("file://" + Path.Combine(clips.Root, "clip.mp4")), mediaIo: new { video = new { fps = 1, num_frames = 4 } }));
        Assert.True(two > textOnly, $"{two} vs {textOnly}");
        Assert.True(four > two, $"{four} vs {two}");
        // The same video as a data: URL and as llama-server's input_video (base64 data), at the same settings: the same prompt.
        var twoFrames = new { video = new { fps = 1, num_frames = 2 } };
        Assert.Equal(two, await PromptTokens(served, VideoChat(VideoUrl("data:video/mp4;base64," + Convert.ToBase64String(clips.Clip)), mediaIo: twoFrames)));
        Assert.Equal(two, await PromptTokens(served, VideoChat(new { type = "input_video", input_video = new { data = Convert.ToBase64String(clips.Clip) } }, mediaIo: twoFrames)));
        Assert.Equal(two, await PromptTokens(served, VideoChat(new { type = "input_video", input_video = new { url = "clip.mp4" } }, mediaIo: twoFrames)));
        Assert.Equal(tempBefore, TempVideos()); // the temporary copies are gone

        // Streamed, with the default sampling (1 fps, at most the server's 8 frames: the clip's 4 s give 4).
        var stream = await served.Http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = JsonBody(new Dictionary<string, object?>
            {
                ["messages"] = new[] { new { role = "user", content = new object[] { VideoUrl("clip.mp4"), new { type = "text", text = "What happens?" } } } },
                ["max_tokens"] = 2, ["stream"] = true, ["stream_options"] = new { include_usage = true },
            }),
        }, HttpCompletionOption.ResponseHeadersRead);
        var events = await Events(stream);
        Assert.Equal("[DONE]", events[^1]);
        Assert.Equal(four, JsonDocument.Parse(events[^2]).RootElement.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(0, served.Engine.Memory.Pages);

        await Error(await served.Http.PostAsync("v1/chat/completions", JsonBody(VideoChat(VideoUrl("clip.mp4"), mediaIo: new { video = new { num_frames = 9 } }))),
            HttpStatusCode.BadRequest, "media_io_kwargs.video.num_frames", says: "--max-video-frames");
        await Error(await served.Http.PostAsync("v1/chat/completions", JsonBody(VideoChat(VideoUrl("clip.mp4"), mediaIo: new { video = new { fps = 0 } }))),
            HttpStatusCode.BadRequest, "media_io_kwargs.video.fps");
    }

    [Fact]
    public async Task BadVideosInChatAre400()
    {
        await using var served = await StartAsync();
        async Task Bad(object part, string param, string? code = null, string? says = null) =>
            await Error(await served.Http.PostAsync("v1/chat/completions", JsonBody(VideoChat(part))), HttpStatusCode.BadRequest, param, code, says);
        const string at = "messages[0].content[0].video_url.url";
        await Bad(VideoUrl("broken.mp4"), at, "invalid_video");
        await Bad(VideoUrl("data:video/mp4;base64," + Convert.ToBase64String(Encoding.ASCII.GetBytes("not a video"))), at, "invalid_video");
        await Bad(new { type = "input_video", input_video = new { data = "%%% not base64 %%%" } }, "messages[0].content[0].input_video.data", says: "base64");
        await Bad(new { type = "input_video", input_video = new { } }, "messages[0].content[0].input_video");
        await Bad(new { type = "video_url" }, at);
        await Bad(VideoUrl("../" + Path.GetFileName(clips.Outside) + "/secret.mp4"), at, "outside_media_root");
        await Bad(VideoUrl("link.mp4"), at, "outside_media_root", "symbolic link");
        await Bad(VideoUrl("ftp://example.com/v.mp4"), at, says: "scheme");
        Assert.Equal(0, served.Engine.Memory.Sequences);
        await Json(await served.Http.PostAsync("v1/chat/completions", JsonBody(VideoChat(VideoUrl("clip.mp4"), mediaIo: new { video = new { num_frames = 1 } }))), HttpStatusCode.OK);
    }

    /// <summary>
    /// A video URL nothing listens on, and one whose server accepts the connection and never answers: both a clear 400
    /// within the server's fetch limit (1 s here; the client waits at most 30 s, a hang's deadline, not a timing assert).
    /// </summary>
    [Fact]
    public async Task UnreachableAndSlowVideoUrlsAre400()
    {
        await using var served = await StartAsync(new ServerOptions { FetchTimeout = TimeSpan.FromSeconds(1) });
        served.Http.Timeout = TimeSpan.FromSeconds(30);
        var closed = new TcpListener(IPAddress.Loopback, 0);
        closed.Start();
        int closedPort = ((IPEndPoint)closed.LocalEndpoint).Port;
        closed.Stop();
        const string at = "messages[0].content[0].video_url.url";
        await Error(await served.Http.PostAsync("v1/chat/completions", JsonBody(VideoChat(VideoUrl($"http://127.0.0.1:{closedPort}/clip.mp4")))),
            HttpStatusCode.BadRequest, at, "media_fetch_failed");

        using var silent = new TcpListener(IPAddress.Loopback, 0);
        silent.Start();
        var accepted = new List<TcpClient>();
        var accepting = Task.Run(async () =>
        {
            try { while (true) accepted.Add(await silent.AcceptTcpClientAsync()); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        });
        int port = ((IPEndPoint)silent.LocalEndpoint).Port;
        await Error(await served.Http.PostAsync("v1/chat/completions", JsonBody(VideoChat(VideoUrl($"http://127.0.0.1:{port}/clip.mp4")))),
            HttpStatusCode.BadRequest, at, "media_fetch_timeout", "longer than");
        silent.Stop();
        await accepting;
        foreach (var client in accepted) client.Dispose();
        Assert.Equal(0, served.Server.ActiveRequests);
        await Json(await served.Http.GetAsync("health"), HttpStatusCode.OK);
    }
}
