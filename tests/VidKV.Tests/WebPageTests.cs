using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using VidKV.Server;
using Xunit.Abstractions;
using static VidKV.Tests.ServerTests;

namespace VidKV.Tests;

/// <summary>
/// The server's web page and the endpoints it uses, on a real Kestrel at 127.0.0.1 with the tiny random Idefics3 pair:
/// the page and its files (content types, no API key needed, nothing loaded from elsewhere, 404 for an unknown file),
/// the media listing (never a file outside the root, through a link to a file or a folder), uploads (413 over the
/// limit, 400 for a body that is not a video, a session owning its upload and deleting it), a session's video with
/// range requests and its token; and Debian's chromium, driven headless through Playwright, using the page with an API
/// key: start the demo stream, ask a question, see the answer the engine gives and the charts move.
/// </summary>
public partial class WebPageTests(TinyVisionPair pair, WebPageTests.Media media, ITestOutputHelper output) : IClassFixture<TinyVisionPair>, IClassFixture<WebPageTests.Media>
{
    /// <summary>
    /// A media root: clip.mp4 (testsrc2, 3 s at 10 fps), sub/copy.mkv (its bytes), inner.mp4 (a link to clip.mp4),
    /// notes.txt, .hidden.mp4, link.mp4 (a link to a clip outside the root) and outdir (a link to the folder outside).
    /// </summary>
    public sealed class Media : IDisposable
    {
        public string Root { get; } = Directory.CreateTempSubdirectory("vidkv-web-media-").FullName;
        public string Outside { get; } = Directory.CreateTempSubdirectory("vidkv-web-outside-").FullName;

        public Media()
        {
            string clip = Path.Combine(Root, "clip.mp4");
            GeneratedVideos.Ffmpeg($"-f lavfi -i testsrc2=size=96x64:rate=10:duration=3 -c:v libx264 -preset ultrafast -g 10 -pix_fmt yuv420p -y {clip}");
            Clip = File.ReadAllBytes(clip);
            Directory.CreateDirectory(Path.Combine(Root, "sub"));
            File.WriteAllBytes(Path.Combine(Root, "sub", "copy.mkv"), Clip);
            File.CreateSymbolicLink(Path.Combine(Root, "inner.mp4"), clip);
            File.WriteAllText(Path.Combine(Root, "notes.txt"), "not a video");
            File.WriteAllBytes(Path.Combine(Root, ".hidden.mp4"), Clip);
            File.WriteAllBytes(Path.Combine(Outside, "secret.mp4"), Clip);
            File.CreateSymbolicLink(Path.Combine(Root, "link.mp4"), Path.Combine(Outside, "secret.mp4"));
            Directory.CreateSymbolicLink(Path.Combine(Root, "outdir"), Outside);
        }

        public byte[] Clip { get; }

        public void Dispose()
        {
            Directory.Delete(Root, recursive: true);
            Directory.Delete(Outside, recursive: true);
        }
    }

    const string Key = "web-page-key";

    Task<Served> StartAsync(ServerOptions? options = null) =>
        Served.StartAsync((options ?? new ServerOptions()) with { MediaRoot = media.Root, SessionKv = new() { Default = "infinipotv", Budget = 64 }, Demo = VidKV.Cli.ServeCommand.BuiltInDemo }, Exact, pair);

    static StringContent JsonBody(object value) => new(JsonSerializer.Serialize(value), Encoding.UTF8, "application/json");

    static HttpRequestMessage Request(HttpMethod method, string path, string? key = null, HttpContent? content = null)
    {
        var request = new HttpRequestMessage(method, path) { Content = content };
        if (key != null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return request;
    }

    static ByteArrayContent Video(byte[] bytes, string type = "video/mp4")
    {
        var content = new ByteArrayContent(bytes);
        content.Headers.ContentType = new(type);
        return content;
    }

    [GeneratedRegex("(?:src|href)=\"([^\"]+)\"")]
    private static partial Regex PageReference();

    [Fact]
    public async Task PageAndItsFilesAreServedWithTheirTypesAndNeedNoKey()
    {
        await using var served = await StartAsync(new ServerOptions { ApiKey = Key });
        var page = await served.Http.GetAsync("");
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.Equal("text/html", page.Content.Headers.ContentType?.MediaType);
        Assert.Equal("utf-8", page.Content.Headers.ContentType?.CharSet);
        Assert.Contains("default-src 'self'", page.Headers.GetValues("Content-Security-Policy").Single());
        Assert.Equal("nosniff", page.Headers.GetValues("X-Content-Type-Options").Single());
        string html = await page.Content.ReadAsStringAsync();

        // Every file the page names is served from /assets/ with its type; none comes from another host.
        var references = PageReference().Matches(html).Select(m => m.Groups[1].Value).ToList();
        Assert.Equal(["/assets/app.css", "/assets/charts.js", "/assets/app.js"], references);
        var expected = new Dictionary<string, string> { [".css"] = "text/css", [".js"] = "text/javascript" };
        var texts = new List<string> { html };
        foreach (string reference in references)
        {
            var asset = await served.Http.GetAsync(reference.TrimStart('/'));
            Assert.Equal(HttpStatusCode.OK, asset.StatusCode);
            Assert.Equal(expected[Path.GetExtension(reference)], asset.Content.Headers.ContentType?.MediaType);
            texts.Add(await asset.Content.ReadAsStringAsync());

            // Revalidation: the same ETag gets 304 without a body.
            var again = new HttpRequestMessage(HttpMethod.Get, reference.TrimStart('/'));
            again.Headers.IfNoneMatch.Add(asset.Headers.ETag!);
            var notModified = await served.Http.SendAsync(again);
            Assert.Equal(HttpStatusCode.NotModified, notModified.StatusCode);
            Assert.Empty(await notModified.Content.ReadAsByteArrayAsync());
        }
        Assert.All(texts, text => Assert.DoesNotMatch("https?://|//[a-z0-9-]+\\.[a-z]", text));
        Assert.Contains("Authorization", texts[^1]); // app.js sends the key itself
        Assert.DoesNotContain("new EventSource", texts[^1]); // which cannot send it

        await Error(await served.Http.GetAsync("assets/nothing.js"), HttpStatusCode.NotFound, code: "not_found", says: "nothing.js");
        await Error(await served.Http.GetAsync("assets/index.html"), HttpStatusCode.NotFound, code: "not_found");
        var post = await served.Http.PostAsync("", new StringContent(""));
        await Error(post, HttpStatusCode.MethodNotAllowed);
        Assert.Equal("GET", post.Content.Headers.Allow.Single());
        // The API behind it still needs the key.
        await Error(await served.Http.GetAsync("v1/media"), HttpStatusCode.Unauthorized, code: "invalid_api_key");
        await Json(await served.Http.SendAsync(Request(HttpMethod.Get, "v1/media", Key)), HttpStatusCode.OK);
    }

    [Fact]
    public async Task MediaListingShowsOnlyVideosInsideTheRoot()
    {
        await using var served = await StartAsync();
        var list = await Json(await served.Http.GetAsync("v1/media"), HttpStatusCode.OK);
        Assert.Equal("list", list.GetProperty("object").GetString());
        Assert.False(list.GetProperty("truncated").GetBoolean());
        var files = list.GetProperty("data").EnumerateArray().ToList();
        // Not notes.txt (not a video), .hidden.mp4, link.mp4 or outdir/secret.mp4 (outside through links).
        Assert.Equal(["clip.mp4", "inner.mp4", "sub/copy.mkv"], files.Select(f => f.GetProperty("path").GetString()));
        Assert.All(files, f => Assert.Equal(media.Clip.Length, f.GetProperty("bytes").GetInt64()));
        Assert.DoesNotContain("secret", list.ToString());

        // A listed path is a source a session reads, and plays back through its video URL.
        var created = await Json(await served.Http.PostAsync("v1/sessions", JsonBody(new { source = "sub/copy.mkv", fps = 1 })), HttpStatusCode.Created);
        Assert.Equal("file", created.GetProperty("kind").GetString());
        string id = created.GetProperty("id").GetString()!;
        string videoUrl = created.GetProperty("video_url").GetString()!;
        var whole = await served.Http.GetAsync(videoUrl.TrimStart('/'));
        Assert.Equal(HttpStatusCode.OK, whole.StatusCode);
        Assert.Equal("video/x-matroska", whole.Content.Headers.ContentType?.MediaType);
        Assert.Equal(media.Clip, await whole.Content.ReadAsByteArrayAsync());
        await Json(await served.Http.DeleteAsync($"v1/sessions/{id}"), HttpStatusCode.OK);
        await Error(await served.Http.GetAsync(videoUrl.TrimStart('/')), HttpStatusCode.NotFound, code: "session_not_found");

        // Without a media root the listing is empty.
        await using var bare = await Served.StartAsync(new ServerOptions(), Exact, pair);
        var empty = await Json(await bare.Http.GetAsync("v1/media"), HttpStatusCode.OK);
        Assert.Empty(empty.GetProperty("data").EnumerateArray());
        // A server given no demo clip refuses a demo session, and serves on.
        await Error(await bare.Http.PostAsync("v1/sessions", JsonBody(new { source = "demo" })), HttpStatusCode.BadRequest, "source", "no_demo");
        Assert.Equal(HttpStatusCode.OK, (await bare.Http.GetAsync("v1/media")).StatusCode);
    }

    [Fact]
    public async Task UploadsAreLimitedProbedAndOwnedByTheirSession()
    {
        long limit = media.Clip.Length + 1000;
        string folder;
        await using (var served = await StartAsync(new ServerOptions { MaxUploadBytes = limit, MaxSessions = 2 }))
        {
            folder = served.Server.UploadFolder;
            Assert.True(Directory.Exists(folder));

            // Too large: by Content-Length at once, and by counting a body sent without one.
            var big = new byte[limit + 1];
            media.Clip.CopyTo(big, 0);
            await Error(await served.Http.PostAsync("v1/uploads?filename=big.mp4", Video(big)), HttpStatusCode.RequestEntityTooLarge, "body", "request_too_large", "--max-upload");
            var chunked = new StreamContent(new NoLengthStream(big));
            chunked.Headers.ContentType = new("video/mp4");
            await Error(await served.Http.PostAsync("v1/uploads?filename=big.mp4", chunked), HttpStatusCode.RequestEntityTooLarge, "body", "request_too_large");
            // Not a video, or nothing: 400 saying so.
            await Error(await served.Http.PostAsync("v1/uploads?filename=notes.mp4", Video(Encoding.ASCII.GetBytes("these are notes, not a video; ffprobe finds no stream in them"))),
                HttpStatusCode.BadRequest, "body", "invalid_video", "'notes.mp4' (61 bytes) cannot be read as a video");
            await Error(await served.Http.PostAsync("v1/uploads", Video([])), HttpStatusCode.BadRequest, "body", "empty_upload");
            Assert.Empty(Directory.EnumerateFileSystemEntries(folder));

            // A good one: probed, then watched by a session that owns the file.
            var upload = await Json(await served.Http.PostAsync("v1/uploads?filename=" + Uri.EscapeDataString("../my clip.mp4"), Video(media.Clip)), HttpStatusCode.Created);
            Assert.Equal("upload", upload.GetProperty("object").GetString());
            Assert.Equal("my clip.mp4", upload.GetProperty("filename").GetString());
            Assert.Equal(media.Clip.Length, upload.GetProperty("bytes").GetInt64());
            Assert.Equal((96, 64), (upload.GetProperty("width").GetInt32(), upload.GetProperty("height").GetInt32()));
            Assert.Equal(3.0, upload.GetProperty("duration").GetDouble(), 1);
            string source = upload.GetProperty("source").GetString()!;
            Assert.Equal("upload:" + upload.GetProperty("id").GetString(), source);
            string stored = Assert.Single(Directory.GetFiles(folder));
            Assert.Equal(media.Clip, File.ReadAllBytes(stored));

            var created = await Json(await served.Http.PostAsync("v1/sessions", JsonBody(new { source, fps = 2 })), HttpStatusCode.Created);
            string id = created.GetProperty("id").GetString()!;
            Assert.Equal("upload", created.GetProperty("kind").GetString());
            Assert.Contains("my clip.mp4", created.GetProperty("source").GetString());
            // An upload is watched once.
            await Error(await served.Http.PostAsync("v1/sessions", JsonBody(new { source })), HttpStatusCode.BadRequest, "source", "upload_not_found");

            // Its video with a range request (as a video element seeks), and only with the session's token.
            string videoUrl = created.GetProperty("video_url").GetString()!;
            var range = new HttpRequestMessage(HttpMethod.Get, videoUrl.TrimStart('/'));
            range.Headers.Range = new RangeHeaderValue(100, 199);
            var part = await served.Http.SendAsync(range);
            Assert.Equal(HttpStatusCode.PartialContent, part.StatusCode);
            Assert.Equal("video/mp4", part.Content.Headers.ContentType?.MediaType);
            Assert.Equal(media.Clip.AsSpan(100, 100).ToArray(), await part.Content.ReadAsByteArrayAsync());
            await Error(await served.Http.GetAsync($"v1/sessions/{id}/video?token=0123"), HttpStatusCode.Forbidden, "token", "invalid_video_token");
            await Error(await served.Http.GetAsync($"v1/sessions/{id}/video"), HttpStatusCode.Forbidden, "token", "invalid_video_token");

            await Eventually(() => served.Http.GetAsync($"v1/sessions/{id}").Result.Content.ReadAsStringAsync().Result.Contains("\"state\":\"ended\""), "the upload was not watched to its end");
            Assert.Equal(6, (await Json(await served.Http.GetAsync($"v1/sessions/{id}"), HttpStatusCode.OK)).GetProperty("frames").GetInt32());
            Assert.True(File.Exists(stored)); // ended, not deleted: it still plays
            await Json(await served.Http.DeleteAsync($"v1/sessions/{id}"), HttpStatusCode.OK);
            Assert.False(File.Exists(stored));

            // Uploads no session took: the newest MaxSessions are kept, the older ones deleted; the rest go with the server.
            var waiting = new List<string>();
            for (int k = 0; k < 3; k++)
                waiting.Add((await Json(await served.Http.PostAsync("v1/uploads", Video(media.Clip)), HttpStatusCode.Created)).GetProperty("source").GetString()!);
            Assert.Equal(2, Directory.GetFiles(folder).Length);
            await Error(await served.Http.PostAsync("v1/sessions", JsonBody(new { source = waiting[0] })), HttpStatusCode.BadRequest, "source", "upload_not_found");
        }
        Assert.False(Directory.Exists(folder));
    }

    [Fact]
    public async Task DemoSessionPlaysTheGeneratedClipWithItsTokenAndCountsItsTokens()
    {
        await using var served = await StartAsync(new ServerOptions { ApiKey = Key });
        var created = await Json(await served.Http.SendAsync(Request(HttpMethod.Post, "v1/sessions", Key, JsonBody(new { source = "demo", fps = 1 }))), HttpStatusCode.Created);
        string id = created.GetProperty("id").GetString()!;
        Assert.Equal("demo", created.GetProperty("kind").GetString());
        Assert.Equal(0, created.GetProperty("tokens_generated").GetInt64());
        // The video URL needs no key (a video element sends none): its token is the key.
        string videoUrl = created.GetProperty("video_url").GetString()!;
        Assert.StartsWith($"/v1/sessions/{id}/video?token=", videoUrl);
        var video = await served.Http.GetAsync(videoUrl.TrimStart('/'));
        Assert.Equal(HttpStatusCode.OK, video.StatusCode);
        Assert.Equal("video/mp4", video.Content.Headers.ContentType?.MediaType);
        Assert.Equal(File.ReadAllBytes(VidKV.World.WorldDemo.DefaultPath), await video.Content.ReadAsByteArrayAsync());
        // The demo's world, for the page to judge answers and comments.
        var questions = VidKV.World.WorldDemo.Questions(VidKV.World.WorldDemo.Stream());
        Assert.Equal(questions.Select(q => q.Question), created.GetProperty("demo").GetProperty("questions").EnumerateArray().Select(q => q.GetProperty("question").GetString()));
        await Error(await served.Http.GetAsync($"v1/sessions/{id}/video?token={new string('0', 32)}"), HttpStatusCode.Forbidden, "token", "invalid_video_token");
        await Error(await served.Http.GetAsync($"v1/sessions/{id}"), HttpStatusCode.Unauthorized, code: "invalid_api_key"); // the rest of the session still needs the key

        var answer = await Json(await served.Http.SendAsync(Request(HttpMethod.Post, $"v1/sessions/{id}/ask", Key,
            JsonBody(new { question = "What moves?", max_tokens = 5, ignore_eos = true, stream = false }))), HttpStatusCode.OK);
        Assert.Equal(5, answer.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        var status = await Json(await served.Http.SendAsync(Request(HttpMethod.Get, $"v1/sessions/{id}", Key)), HttpStatusCode.OK);
        Assert.Equal(5, status.GetProperty("tokens_generated").GetInt64());
        // A push session has no file to play.
        var push = await Json(await served.Http.SendAsync(Request(HttpMethod.Post, "v1/sessions", Key, JsonBody(new { source = "push" }))), HttpStatusCode.Created);
        Assert.False(push.TryGetProperty("video_url", out _));
        Assert.False(push.TryGetProperty("demo", out _));
        await Error(await served.Http.GetAsync($"v1/sessions/{push.GetProperty("id").GetString()}/video?token=x"), HttpStatusCode.NotFound, "id", "no_video");
    }

    /// <summary>
    /// The page in Debian's chromium, headless, through Playwright (its node driver from the NuGet package; no browser
    /// download): with an API key on the server, the page asks for it; a text file uploaded is refused on the page;
    /// the demo stream plays and is read to its end; a question's streamed answer equals the engine's answer to the
    /// same question over HTTP; the charts gain points and pixels, the tokens/s chart a non-zero one. A screenshot is
    /// saved beside the test binaries.
    /// </summary>
    [Fact]
    public async Task BrowserWatchesTheDemoAsksAndSeesTheChartsMove()
    {
        await using var served = await StartAsync(new ServerOptions { ApiKey = Key });
        using var playwright = await Microsoft.Playwright.Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new()
        {
            ExecutablePath = Chromium(),
            Headless = true,
            Args = Environment.IsPrivilegedProcess ? ["--no-sandbox"] : [], // chromium refuses to run as root with its sandbox
        });
        var page = await browser.NewPageAsync(new() { ViewportSize = new() { Width = 1280, Height = 900 } });
        var scriptErrors = new List<string>();
        page.PageError += (_, message) => scriptErrors.Add(message);
        const float Wait = 120_000; // a deadline for a hung page, not a timing assert

        await page.GotoAsync(served.Server.Address.ToString());
        await page.Locator("#error").Filter(new() { HasText = "API key" }).WaitForAsync(new() { Timeout = Wait });
        await page.FillAsync("#api-key", Key);
        await page.ClickAsync("#key-form button");
        await page.WaitForFunctionAsync("() => document.getElementById('model').textContent.startsWith('model ')", null, new() { Timeout = Wait });
        Assert.True(await page.IsHiddenAsync("#error"));
        Assert.Equal(["clip.mp4", "inner.mp4", "sub/copy.mkv"], await page.EvalOnSelectorAllAsync<string[]>("#media option", "options => options.map(o => o.value)"));

        // A text file uploaded: the server's 400 shows on the page.
        string notes = Path.Combine(media.Outside, "notes.mp4");
        File.WriteAllText(notes, "not a video at all");
        await page.SetInputFilesAsync("#upload-file", notes);
        await page.ClickAsync("#upload");
        await page.Locator("#error").Filter(new() { HasText = "cannot be read as a video" }).WaitForAsync(new() { Timeout = Wait });

        string blankChart = await page.EvalOnSelectorAsync<string>("#kv-chart", "canvas => canvas.toDataURL()");
        await page.ClickAsync("#demo");
        await page.WaitForFunctionAsync("() => document.getElementById('state').textContent === 'ended'", null, new() { Timeout = Wait });
        Assert.True(await page.IsHiddenAsync("#error"));
        Assert.Equal($"{VidKV.World.WorldDemo.Ticks}", await page.TextContentAsync("#frames"));
        Assert.Contains($"the session has ended after {VidKV.World.WorldDemo.Ticks} frames", await page.TextContentAsync("#events"));
        string sessionId = (await page.TextContentAsync("#session-id"))!;
        Assert.StartsWith("sess_", sessionId);
        Assert.True(await page.EvalOnSelectorAsync<bool>("#video", "video => video.currentSrc.includes('/video?token=') && video.error === null"));

        const string Question = "What is on the screen?";
        await page.FillAsync("#question", Question);
        await page.FillAsync("#max-tokens", "12");
        int pointsBefore = int.Parse((await page.GetAttributeAsync("#tokens-chart", "data-points"))!);
        await page.ClickAsync("#ask");
        var answer = page.Locator(".answer[data-done]");
        await answer.WaitForAsync(new() { Timeout = Wait });
        string shown = (await answer.TextContentAsync())!;

        // The same question over HTTP on the same session (greedy, as the page asks): the same text.
        var reply = await Json(await served.Http.SendAsync(Request(HttpMethod.Post, $"v1/sessions/{sessionId}/ask", Key,
            JsonBody(new { question = Question, max_tokens = 12, temperature = 0, stream = false }))), HttpStatusCode.OK);
        string expected = reply.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        Assert.False(string.IsNullOrEmpty(expected));
        Assert.Equal(expected, shown);

        // The charts: more points since the question, a non-zero tokens/s among them, and the KV chart drawn.
        await page.WaitForFunctionAsync($"() => charts.tokens.points.some(p => p[0] > 0) && Number(document.getElementById('tokens-chart').dataset.points) > {pointsBefore}",
            null, new() { Timeout = Wait });
        Assert.True(await page.EvaluateAsync<double>("() => charts.kv.points[charts.kv.points.length - 1][0]") > 0); // hot KV in MiB
        Assert.NotEqual(blankChart, await page.EvalOnSelectorAsync<string>("#kv-chart", "canvas => canvas.toDataURL()"));

        // The demo's own questions are buttons; an answer to one gets the world's verdict.
        var demoQuestion = VidKV.World.WorldDemo.Questions(VidKV.World.WorldDemo.Stream())[0];
        Assert.Equal(VidKV.World.WorldDemo.QuestionCount, await page.Locator(".demo-question").CountAsync());
        await page.Locator(".demo-question").First.ClickAsync();
        var verdict = page.Locator(".qa .verdict");
        await verdict.WaitForAsync(new() { Timeout = Wait });
        string judged = (await page.Locator(".qa:has(.verdict) .answer").TextContentAsync())!.Trim();
        Assert.Equal(demoQuestion.Question, await page.Locator(".qa:has(.verdict) .question").TextContentAsync());
        Assert.Equal(judged.TrimEnd('.') == demoQuestion.Answer ? "✓" : $"✗ (the world: {demoQuestion.Answer})", await verdict.TextContentAsync());

        string screenshot = Path.Combine(AppContext.BaseDirectory, "TestResults", "webpage.png");
        Directory.CreateDirectory(Path.GetDirectoryName(screenshot)!);
        await page.ScreenshotAsync(new() { Path = screenshot, FullPage = true });
        Assert.True(new FileInfo(screenshot).Length > 10_000);
        output.WriteLine($"screenshot of the page: {screenshot}");
        Assert.Empty(scriptErrors);
    }

    /// <summary>Debian's chromium (test.sh installs it: apt-get install -y chromium); the test fails, never skips, without it.</summary>
    static string Chromium()
    {
        foreach (string folder in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Append("/usr/bin"))
            if (folder.Length > 0 && File.Exists(Path.Combine(folder, "chromium"))) return Path.Combine(folder, "chromium");
        throw new InvalidOperationException("Debian's chromium is not installed: apt-get install -y chromium (./test.sh installs it when missing)");
    }

    /// <summary>A stream whose length is unknown, so HttpClient sends it chunked, without Content-Length.</summary>
    sealed class NoLengthStream(byte[] bytes) : MemoryStream(bytes)
    {
        public override bool CanSeek => false;
    }
}
