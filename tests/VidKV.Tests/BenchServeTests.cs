using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using VidKV.Cli;
using VidKV.Engine;
using VidKV.Models;
using VidKV.Server;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// <c>vidkv bench serve</c> with tiny sizes: its JSON per round against VidKV's server in process (both prefill
/// schedulings) and at <c>--url</c>, and against a stand-in that streams llama-server's chunk shapes; bad options exit 2.
/// Shapes and counts only, never times.
/// </summary>
public class BenchServeTests
{
    static (int Code, JsonElement Json, string Error) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CliRunner.Run(CliApp.BuildRoot(), args, stderr, stdout);
        return (code, code == 0 ? JsonDocument.Parse(stdout.ToString()).RootElement : default, stderr.ToString());
    }

    static string TinyModel(TempDirectory dir)
    {
        string path = dir.File("tiny.gguf");
        RandomModel.Write(path, RandomModelShape.Tiny, GgmlType.Q8_0);
        return path;
    }

    /// <summary>
    /// Each round's figures are there and consistent: every request counted and none failed, exactly clients × requests ×
    /// max tokens output tokens, a TTFT per request, at most max tokens − 1 gaps per request, P99 ≥ P50 &gt; 0, positive
    /// rates; and the RSS when the server ran in this process.
    /// </summary>
    static void CheckRounds(JsonElement json, (int Clients, string? Prefill)[] expected, int requests, int maxTokens, bool inProcess)
    {
        var rounds = json.GetProperty("rounds").EnumerateArray().ToList();
        Assert.Equal(expected, rounds.Select(r => (r.GetProperty("clients").GetInt32(), r.GetProperty("prefill").GetString())));
        foreach (var round in rounds)
        {
            int n = round.GetProperty("clients").GetInt32() * requests;
            Assert.Equal(n, round.GetProperty("requests").GetInt32());
            Assert.Equal(0, round.GetProperty("failed").GetInt32());
            Assert.Equal(n * maxTokens, round.GetProperty("output_tokens").GetInt64());
            Assert.True(round.GetProperty("prompt_tokens_mean").GetDouble() > 0);
            var ttft = round.GetProperty("ttft_ms");
            Assert.Equal(n, ttft.GetProperty("count").GetInt32());
            Assert.True(ttft.GetProperty("p50").GetDouble() > 0);
            Assert.True(ttft.GetProperty("p99").GetDouble() >= ttft.GetProperty("p50").GetDouble());
            var itl = round.GetProperty("itl_ms");
            Assert.InRange(itl.GetProperty("count").GetInt32(), 1, n * (maxTokens - 1));
            Assert.True(itl.GetProperty("p50").GetDouble() >= 0);
            Assert.True(itl.GetProperty("p99").GetDouble() >= itl.GetProperty("p50").GetDouble());
            Assert.True(round.GetProperty("wall_s").GetDouble() > 0);
            Assert.True(round.GetProperty("output_tokens_per_second").GetDouble() > 0);
            Assert.True(round.GetProperty("requests_per_second").GetDouble() > 0);
            if (inProcess) Assert.True(round.GetProperty("peak_rss_bytes").GetInt64() > 0);
            else Assert.Equal(JsonValueKind.Null, round.GetProperty("peak_rss_bytes").ValueKind);
        }
    }

    /// <summary>In process with <c>--prefill both</c>: for each N a chunked and a prepacked round, the first alternating.</summary>
    [Fact]
    public void InProcessReportsEachRoundOfBothPrefills()
    {
        using var dir = new TempDirectory();
        var (code, json, error) = Run("bench", "serve", "-m", TinyModel(dir), "--clients", "1,3", "--requests", "2", "--prompt-tokens", "20,33",
            "--max-tokens", "6", "--prefill", "both", "-t", "1", "-o", "json");
        Assert.True(code == 0, error);
        Assert.Equal("in-process", json.GetProperty("target").GetString());
        Assert.Equal(["chunked", "prepacked"], json.GetProperty("prefill").EnumerateArray().Select(p => p.GetString()));
        CheckRounds(json, [(1, "chunked"), (1, "prepacked"), (3, "prepacked"), (3, "chunked")], requests: 2, maxTokens: 6, inProcess: true);
    }

    /// <summary>At <c>--url</c>, against a VidKV server this test starts: the same figures, no prefill and no RSS.</summary>
    [Fact]
    public async Task UrlTargetsARunningServer()
    {
        using var dir = new TempDirectory();
        using var model = ModelLoader.Load(TinyModel(dir));
        await using var engine = new InferenceEngine(model, new EngineOptions { ContextLength = 1024 });
        await using var server = await InferenceServer.StartAsync(engine, new ServerOptions { Port = 0, MaxSessions = 2 });
        var (code, json, error) = await Task.Run(() => Run("bench", "serve", "--url", server.Address.ToString().TrimEnd('/'), "--clients", "1,2", "--requests", "2",
            "--prompt-tokens", "16", "--max-tokens", "5", "-o", "json"));
        Assert.True(code == 0, error);
        Assert.Equal(server.Address.ToString(), json.GetProperty("target").GetString());
        Assert.Equal(JsonValueKind.Null, json.GetProperty("prefill").ValueKind);
        CheckRounds(json, [(1, null), (2, null)], requests: 2, maxTokens: 5, inProcess: false);
    }

    /// <summary>
    /// A stand-in for llama-server's <c>/v1/chat/completions</c> stream (a role chunk whose content is null, a chunk per
    /// token, a last chunk with the finish reason and <c>usage</c>, <c>data: [DONE]</c>): the bench reads it, and every
    /// request it sent has the fields llama-server reads — the listed model, one user message, stream, max_tokens,
    /// temperature 0, ignore_eos — with prompts that differ between requests and are the same for the same request number.
    /// </summary>
    [Fact]
    public async Task LlamaServerShapedStreamsAreRead()
    {
        var bodies = new List<JsonElement>();
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(System.Net.IPAddress.Loopback, 0));
        await using var app = builder.Build();
        app.MapGet("/v1/models", () => Results.Text("""{"object":"list","data":[{"id":"model.gguf","object":"model","owned_by":"llamacpp"}]}""", "application/json"));
        app.MapPost("/v1/chat/completions", async (HttpContext context) =>
        {
            var body = (await JsonDocument.ParseAsync(context.Request.Body)).RootElement.Clone();
            lock (bodies) bodies.Add(body);
            int tokens = body.GetProperty("max_tokens").GetInt32();
            context.Response.ContentType = "text/event-stream";
            async Task Send(string data)
            {
                await context.Response.WriteAsync($"data: {data}\n\n");
                await context.Response.Body.FlushAsync();
            }
            const string head = "\"created\":1,\"id\":\"chatcmpl-x\",\"model\":\"model.gguf\",\"system_fingerprint\":\"b1\",\"object\":\"chat.completion.chunk\"";
            await Send($$$"""{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],{{{head}}}}""");
            for (int i = 0; i < tokens; i++)
            {
                await Task.Delay(1);
                await Send($$$"""{"choices":[{"finish_reason":null,"index":0,"delta":{"content":" w{{{i}}}"}}],{{{head}}}}""");
            }
            await Send($$$"""{"choices":[{"finish_reason":"length","index":0,"delta":{}}],{{{head}}},"usage":{"completion_tokens":{{{tokens}}},"prompt_tokens":40,"total_tokens":{{{tokens + 40}}}},"timings":{"prompt_n":40}}""");
            await context.Response.WriteAsync("data: [DONE]\n\n");
        });
        await app.StartAsync();
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();

        var (code, json, error) = await Task.Run(() => Run("bench", "serve", "--url", address, "--clients", "2", "--requests", "3", "--prompt-tokens", "12",
            "--max-tokens", "4", "-o", "json"));
        Assert.True(code == 0, error);
        CheckRounds(json, [(2, null)], requests: 3, maxTokens: 4, inProcess: false);
        Assert.Equal(40, json.GetProperty("rounds")[0].GetProperty("prompt_tokens_mean").GetDouble());

        Assert.Equal(1 + 6, bodies.Count); // the warm-up, then 2 clients × 3
        foreach (var body in bodies)
        {
            Assert.Equal("model.gguf", body.GetProperty("model").GetString());
            Assert.True(body.GetProperty("stream").GetBoolean());
            Assert.Equal(4, body.GetProperty("max_tokens").GetInt32());
            Assert.Equal(0, body.GetProperty("temperature").GetDouble());
            Assert.True(body.GetProperty("ignore_eos").GetBoolean());
            var message = Assert.Single(body.GetProperty("messages").EnumerateArray());
            Assert.Equal("user", message.GetProperty("role").GetString());
            Assert.Equal(12, message.GetProperty("content").GetString()!.Split(' ').Length);
        }
        // No two prompts alike; and a round of 3 clients × 2 requests sends the same six (and warm-up) prompts as
        // 2 × 3 did: a request's text depends on its number in the round only.
        var prompts = bodies.Select(b => b.GetProperty("messages")[0].GetProperty("content").GetString()!).Order().ToList();
        Assert.Equal(prompts.Count, prompts.Distinct().Count());
        bodies.Clear();
        (code, _, error) = await Task.Run(() => Run("bench", "serve", "--url", address, "--clients", "3", "--requests", "2", "--prompt-tokens", "12",
            "--max-tokens", "4", "-o", "json"));
        Assert.True(code == 0, error);
        Assert.Equal(prompts, bodies.Select(b => b.GetProperty("messages")[0].GetProperty("content").GetString()!).Order());
    }

    [Theory]
    [InlineData("--clients", "0", "--clients")]
    [InlineData("--clients", "1,x", "--clients")]
    [InlineData("--requests", "0", "--requests")]
    [InlineData("--prompt-tokens", "0", "--prompt-tokens")]
    [InlineData("--max-tokens", "0", "--max-tokens")]
    [InlineData("--prefill", "fast", "fast")]
    [InlineData("-o", "xml", "xml")]
    public void BadOptionsExit2(string option, string value, string says)
    {
        using var dir = new TempDirectory();
        var (code, _, error) = Run("bench", "serve", "-m", TinyModel(dir), option, value);
        Assert.Equal(CliRunner.BadInput, code);
        Assert.Contains(says, error);
    }

    /// <summary>-m and --url together or neither, --prefill with --url, a URL that is not http(s), a server that is not there: exit 2 with a line saying so.</summary>
    [Fact]
    public void BadTargetsExit2()
    {
        using var dir = new TempDirectory();
        string model = TinyModel(dir);
        (string[] Args, string Says)[] cases =
        [
            ([], "either -m"),
            (["-m", model, "--url", "http://127.0.0.1:9"], "either -m"),
            (["--url", "http://127.0.0.1:9", "--prefill", "both"], "--prefill"),
            (["--url", "ftp://127.0.0.1:9"], "--url"),
            (["--url", "http://127.0.0.1:9"], "cannot reach"),
        ];
        foreach (var (args, says) in cases)
        {
            var (code, _, error) = Run(["bench", "serve", .. args]);
            Assert.Equal(CliRunner.BadInput, code);
            Assert.Contains(says, error);
        }
        var (serveCode, _, serveError) = Run("serve", "-m", model, "--prefill", "fast");
        Assert.Equal(CliRunner.BadInput, serveCode);
        Assert.Contains("fast", serveError);
    }
}
