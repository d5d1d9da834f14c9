using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using VidKV.Cache;
using VidKV.Server;
using static VidKV.Tests.ServerTests;

namespace VidKV.Tests;

/// <summary>
/// Tests that read the process-wide "VidKV" meter run alone, after the parallel ones: the counters then move only by
/// what the test itself did, so their deltas are exact.
/// </summary>
[CollectionDefinition(nameof(MeterTests), DisableParallelization = true)]
public sealed class MeterTests;

/// <summary>
/// <c>GET /metrics</c>: the engine's instruments in Prometheus text from OpenTelemetry's exporter, with the GenAI
/// semantic-convention names, and values that move by what a request did: frames ingested, a question's first token
/// and its tokens, the open sessions, the KV bytes.
/// </summary>
[Collection(nameof(MeterTests))]
public class ServerMetricsTests(TinyVisionPair pair) : IClassFixture<TinyVisionPair>
{
    /// <summary>Prometheus text as (series with labels → value).</summary>
    static async Task<Dictionary<string, double>> ScrapeAsync(Served served)
    {
        var response = await served.Http.GetAsync("metrics");
        string text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, text);
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
        var series = new Dictionary<string, double>();
        foreach (string line in text.Split('\n'))
        {
            if (line.Length == 0 || line.StartsWith('#')) continue;
            // name{labels} value [timestamp]
            int end = line.IndexOf('}') is int brace && brace > 0 ? brace + 1 : line.IndexOf(' ');
            string[] rest = line[end..].Trim().Split(' ');
            series[line[..end]] = double.Parse(rest[0], CultureInfo.InvariantCulture);
        }
        return series;
    }

    /// <summary>The sum of every series of <paramref name="name"/> whose labels contain <paramref name="label"/>.</summary>
    static double Value(Dictionary<string, double> series, string name, string? label = null) =>
        series.Where(s => (s.Key == name || s.Key.StartsWith(name + "{", StringComparison.Ordinal)) && (label == null || s.Key.Contains(label, StringComparison.Ordinal)))
            .Sum(s => s.Value);

    [Fact]
    public async Task MetricsHaveTheInstrumentsAndMoveWithRequests()
    {
        await using var served = await Served.StartAsync(new ServerOptions { SessionKv = new KvCacheConfig { Default = "infinipotv", Budget = 64 } }, Exact, pair);
        var before = await ScrapeAsync(served);
        foreach (string name in new[] { "vidkv_kv_hot_bytes", "vidkv_kv_cold_bytes", "vidkv_sessions_open", "process_memory_usage_bytes" })
            Assert.True(before.Keys.Any(k => k.StartsWith(name, StringComparison.Ordinal)), $"no {name} in {string.Join(", ", before.Keys)}");
        Assert.True(Value(before, "process_memory_usage_bytes") > 1 << 20);

        var created = await served.Http.PostAsync("v1/sessions", new StringContent("{\"source\": \"push\", \"fps\": 10}", Encoding.UTF8, "application/json"));
        string id = (await Json(created, HttpStatusCode.Created)).GetProperty("id").GetString()!;
        for (int k = 0; k < 2; k++)
        {
            var frame = new ByteArrayContent(Png(40, 40, k));
            frame.Headers.ContentType = new("image/png");
            await Json(await served.Http.PostAsync($"v1/sessions/{id}/frames?timestamp={k}", frame), HttpStatusCode.Accepted);
        }
        await Eventually(() => Json(served.Http.GetAsync($"v1/sessions/{id}").Result, HttpStatusCode.OK).Result.GetProperty("frames").GetInt32() == 2, "the frames are not in");
        var ask = await served.Http.PostAsync($"v1/sessions/{id}/ask",
            new StringContent(JsonSerializer.Serialize(new { question = "What is it?", max_tokens = 3, ignore_eos = true, stream = false }), Encoding.UTF8, "application/json"));
        var usage = (await Json(ask, HttpStatusCode.OK)).GetProperty("usage");
        var during = await ScrapeAsync(served);

        Assert.Equal(2, Value(during, "vidkv_frames_ingested_total") - Value(before, "vidkv_frames_ingested_total"));
        Assert.Equal(2, Value(during, "vidkv_frame_duration_seconds_count") - Value(before, "vidkv_frame_duration_seconds_count"));
        Assert.Equal(1, Value(during, "gen_ai_server_time_to_first_token_seconds_count") - Value(before, "gen_ai_server_time_to_first_token_seconds_count"));
        Assert.True(Value(during, "gen_ai_server_time_to_first_token_seconds_sum") > Value(before, "gen_ai_server_time_to_first_token_seconds_sum"));
        Assert.Equal(1, Value(during, "gen_ai_server_time_per_output_token_seconds_count") - Value(before, "gen_ai_server_time_per_output_token_seconds_count"));
        Assert.Equal(3, Value(during, "vidkv_tokens_generated_total") - Value(before, "vidkv_tokens_generated_total"));
        Assert.Equal(3, Value(during, "gen_ai_client_token_usage_sum", "gen_ai_token_type=\"output\"") - Value(before, "gen_ai_client_token_usage_sum", "gen_ai_token_type=\"output\""));
        Assert.Equal(usage.GetProperty("prompt_tokens").GetInt32(),
            Value(during, "gen_ai_client_token_usage_sum", "gen_ai_token_type=\"input\"") - Value(before, "gen_ai_client_token_usage_sum", "gen_ai_token_type=\"input\""));
        Assert.Equal(1, Value(during, "vidkv_sessions_open") - Value(before, "vidkv_sessions_open"));
        Assert.True(Value(during, "vidkv_kv_hot_bytes") >= served.Engine.Memory.HotBytes && served.Engine.Memory.HotBytes > 0);

        await Json(await served.Http.DeleteAsync($"v1/sessions/{id}"), HttpStatusCode.OK);
        var after = await ScrapeAsync(served);
        Assert.Equal(Value(before, "vidkv_sessions_open"), Value(after, "vidkv_sessions_open"));
        Assert.Equal(Value(before, "vidkv_kv_hot_bytes"), Value(after, "vidkv_kv_hot_bytes"));
    }

    [Fact]
    public async Task MetricsNeedTheApiKey()
    {
        await using var served = await Served.StartAsync(new ServerOptions { ApiKey = "k" }, Exact, pair);
        await Error(await served.Http.GetAsync("metrics"), HttpStatusCode.Unauthorized, code: "invalid_api_key");
        var request = new HttpRequestMessage(HttpMethod.Get, "metrics");
        request.Headers.Authorization = new("Bearer", "k");
        Assert.Equal(HttpStatusCode.OK, (await served.Http.SendAsync(request)).StatusCode);
        var post = new HttpRequestMessage(HttpMethod.Post, "metrics") { Content = new StringContent("") };
        post.Headers.Authorization = new("Bearer", "k");
        await Error(await served.Http.SendAsync(post), HttpStatusCode.MethodNotAllowed);
    }
}
