using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using VidKV.Engine;
using VidKV.Models;
using VidKV.Server;

namespace VidKV.Cli;

/// <summary>
/// <c>vidkv bench serve</c>: concurrent streaming chat completions against an OpenAI-compatible server — VidKV's own
/// <see cref="InferenceServer"/> started in this process on loopback, or any server at <c>--url</c> (llama.cpp's
/// <c>llama-server</c>, vLLM), so both get the very same requests. For each client count N, N clients send their
/// requests one after the other, all at once; per request the time to the first content delta (TTFT) and the times
/// between content deltas (ITL), per N their P50/P99, output tokens/s and requests/s (vLLM's serving benchmark's
/// measures), and the peak RSS of the in-process server. Figures only: nothing is judged.
/// </summary>
static class BenchServeCommand
{
    /// <summary>
    /// Plain English words the prompts are drawn from: one token each (with its leading space) in the BPE vocabularies
    /// of common models, so N words are about N prompt tokens whichever server reads them.
    /// </summary>
    static readonly string[] Words =
    [
        "the", "river", "light", "stone", "window", "garden", "morning", "paper", "street", "water", "green", "house",
        "small", "after", "before", "music", "table", "night", "city", "field", "bird", "train", "road", "summer",
        "winter", "friend", "story", "market", "bread", "color", "little", "people", "school", "mountain", "open", "quiet",
        "early", "under", "over", "between", "across", "black", "white", "red", "blue", "yellow", "happy", "old", "new",
        "hand", "door", "fire", "snow", "rain", "wind", "sun", "moon", "star", "boat", "sea", "forest", "tree", "flower",
        "book", "letter", "word", "song", "voice", "dog", "cat", "horse", "fish", "apple", "coffee", "tea", "milk", "sugar",
        "chair", "bed", "room", "kitchen", "car", "bus", "bridge", "tower", "village", "king", "child", "mother", "father",
        "sister", "brother", "teacher", "doctor", "time", "year", "day", "week", "hour", "minute", "first", "last", "long",
    ];

    public static Command Create()
    {
        var model = new Option<string?>("--model", "-m") { Description = "GGUF model (or Hugging Face folder) to serve in this process on 127.0.0.1 (any free port). Give this or --url." };
        var url = new Option<string?>("--url") { Description = "Base URL of an already running OpenAI-compatible server to measure instead, e.g. http://127.0.0.1:8080 (llama-server: start it with -np at least the largest --clients, or requests wait for a slot). Give this or -m." };
        var clients = new Option<string>("--clients") { Description = "Comma-separated numbers of concurrent clients; one round per number.", DefaultValueFactory = _ => "1,4,16" };
        var requests = new Option<int>("--requests") { Description = "Requests each client sends, one after the other, in a round.", DefaultValueFactory = _ => 4 };
        var promptTokens = new Option<string>("--prompt-tokens")
        {
            Description = "Comma-separated prompt lengths in tokens; request k of a round takes the (k mod count)-th. A prompt of N tokens is N common English words drawn with a fixed seed per request (about one token each; the servers' usage gives the exact count), the same text for every server and round, and no two requests alike from their first word (so no server reuses a cached prefix).",
            DefaultValueFactory = _ => "256",
        };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Output tokens of every request: sent as max_tokens with ignore_eos (llama-server's and vLLM's field; VidKV's too) and temperature 0, so every answer has exactly this many.", DefaultValueFactory = _ => 128 };
        var prefill = new Option<string?>("--prefill")
        {
            Description = "In-process only: the engine's prefill scheduling, chunked (default), prepacked, or both: each round runs both, one after the other, the first alternating from round to round, each on a fresh engine and server.",
        };
        prefill.AcceptOnlyFromAmong("chunked", "prepacked", "both");
        var context = CommonOptions.ContextSize(4096);
        context.Description += " In-process only: each request's prompt and output must fit it.";
        var threads = CommonOptions.Threads();
        threads.Description += " In-process only.";
        var output = new Option<string>("--output", "-o") { Description = "Output format: md (table) or json.", DefaultValueFactory = _ => "md" };
        output.AcceptOnlyFromAmong("md", "json");
        var command = new Command("serve", "Serving under load: N concurrent clients (each N of --clients) stream chat completions (stream: true, --prompt-tokens in, --max-tokens out, ignore_eos, temperature 0) "
            + "from VidKV's server in this process (-m) or any OpenAI-compatible server (--url, e.g. llama-server, for the same requests); per N the TTFT (request sent to first content delta) and "
            + "inter-token latency (between content deltas) P50/P99 in ms, output tokens/s and requests/s over the round's wall time, the in-process server's peak RSS (sampled every 25 ms; the process holds the clients too). "
            + "Every round starts with one untimed warm-up request. Quick run: vidkv model random --shape tiny -o tiny.gguf, then vidkv bench serve -m tiny.gguf --clients 1,4 --requests 2 --prompt-tokens 64 --max-tokens 16 --prefill both.")
            .With(model, url, clients, requests, promptTokens, maxTokens, prefill, context, threads, output);
        command.SetAction(r =>
        {
            var settings = new Settings(
                r.GetValue(model), r.GetValue(url) is string u ? ParseUrl(u) : null, ParseList(r.GetValue(clients)!, "--clients"),
                r.GetValue(requests) is var n && n >= 1 ? n : throw new ArgumentException($"--requests must be at least 1, not {n}"),
                ParseList(r.GetValue(promptTokens)!, "--prompt-tokens"),
                r.GetValue(maxTokens) is var m && m >= 1 ? m : throw new ArgumentException($"--max-tokens must be at least 1, not {m}"),
                r.GetValue(context), r.GetValue(threads));
            if ((settings.ModelPath == null) == (settings.Url == null)) throw new ArgumentException("give either -m (a model to serve in this process) or --url (a running server), not both or neither");
            if (settings.Url != null && r.GetValue(prefill) != null) throw new ArgumentException("--prefill is for the in-process server (-m); a server at --url schedules its own way");
            if (settings.Context < 0) throw new ArgumentException($"-c must be 0 (the model's own) or more, not {settings.Context}");
            PrefillScheduling[] variants = r.GetValue(prefill) switch
            {
                "both" => [PrefillScheduling.Chunked, PrefillScheduling.Prepacked],
                "prepacked" => [PrefillScheduling.Prepacked],
                _ => [PrefillScheduling.Chunked],
            };
            return RunAsync(settings, variants, r.GetValue(output) == "json", r.InvocationConfiguration.Output, Console.Error).GetAwaiter().GetResult();
        });
        return command;
    }

    sealed record Settings(string? ModelPath, Uri? Url, int[] Clients, int Requests, int[] PromptTokens, int MaxTokens, int Context, int Threads);

    static Uri ParseUrl(string text) =>
        Uri.TryCreate(text.EndsWith('/') ? text : text + "/", UriKind.Absolute, out var uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps)
            ? uri : throw new ArgumentException($"--url '{text}' is not an http:// or https:// URL");

    static int[] ParseList(string text, string option)
    {
        var values = new List<int>();
        foreach (string part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < 1)
                throw new ArgumentException($"{option}: '{part}' is not an integer ≥ 1");
            values.Add(v);
        }
        return values.Count > 0 ? values.ToArray() : throw new ArgumentException($"{option}: give at least one value");
    }

    /// <summary>The prompt of request <paramref name="index"/> of a round: <paramref name="words"/> words drawn with the request's own seed.</summary>
    static string Prompt(int index, int words)
    {
        var random = new Random(1_000_003 * (index + 1));
        var text = new StringBuilder(words * 7);
        for (int i = 0; i < words; i++)
        {
            if (i > 0) text.Append(' ');
            text.Append(Words[random.Next(Words.Length)]);
        }
        return text.ToString();
    }

    /// <summary>One request's measures: when its content deltas came (ms after it was sent), its token counts from the usage chunk, or why it failed.</summary>
    sealed class RequestResult
    {
        public List<double> DeltaMs { get; } = [];
        public int? CompletionTokens { get; set; }
        public int? PromptTokens { get; set; }
        public string? Error { get; set; }
    }

    /// <summary>One round: N clients against one server (and, in process, one prefill scheduling).</summary>
    sealed record Round(int Clients, string? Prefill, int Requests, int Failed, double WallSeconds, long OutputTokens, double? PromptTokensMean,
        Summary TtftMs, Summary ItlMs, double OutputTokensPerSecond, double RequestsPerSecond, long? PeakRssBytes, string? FirstError);

    /// <summary>P50, P99 and mean of a sample (NaN when empty).</summary>
    sealed record Summary(int Count, double P50, double P99, double Mean)
    {
        public static Summary Of(List<double> values)
        {
            if (values.Count == 0) return new Summary(0, double.NaN, double.NaN, double.NaN);
            values.Sort();
            return new Summary(values.Count, Percentile(values, 50), Percentile(values, 99), values.Average());
        }

        /// <summary>Linear interpolation between the closest ranks (numpy's default, as vLLM's benchmark reports them).</summary>
        static double Percentile(List<double> sorted, double percent)
        {
            double rank = percent / 100 * (sorted.Count - 1);
            int low = (int)Math.Floor(rank), high = Math.Min(low + 1, sorted.Count - 1);
            return sorted[low] + (rank - low) * (sorted[high] - sorted[low]);
        }

        public object Json => new { count = Count, p50 = Finite(P50), p99 = Finite(P99), mean = Finite(Mean) };
    }

    static double? Finite(double value) => double.IsFinite(value) ? value : null;

    static async Task<int> RunAsync(Settings settings, PrefillScheduling[] variants, bool json, TextWriter output, TextWriter log)
    {
        // A new connection per request (loopback: a fraction of a millisecond): a server may close a kept-alive
        // connection just as the next request goes out on it, which then fails before it starts (seen with llama-server
        // under 16 clients), and that would count against the server.
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = int.MaxValue, PooledConnectionLifetime = TimeSpan.Zero })
        {
            Timeout = TimeSpan.FromMinutes(30),
        };
        var rounds = new List<Round>();
        DecoderModel? model = null;
        try
        {
            int ctx = 0;
            if (settings.ModelPath != null)
            {
                Tensors.WorkerPool.SetSharedThreadCount(Math.Max(1, settings.Threads));
                model = ModelLoader.Load(settings.ModelPath);
                ctx = settings.Context > 0 ? Math.Min(settings.Context, model.Config.ContextLength) : model.Config.ContextLength;
            }
            for (int round = 0; round < settings.Clients.Length; round++)
            {
                int clients = settings.Clients[round];
                if (model == null)
                {
                    rounds.Add(await RunRoundAsync(http, settings.Url!, settings, clients, null, sampleRss: false, log));
                    continue;
                }
                // In process: each variant on a fresh engine and server, the first variant alternating per round.
                for (int v = 0; v < variants.Length; v++)
                {
                    var prefill = variants[(v + round) % variants.Length];
                    await using var engine = new InferenceEngine(model, new EngineOptions { ContextLength = ctx, Prefill = prefill });
                    await using var server = await InferenceServer.StartAsync(engine, new ServerOptions { Port = 0, MaxSessions = 2 * settings.Clients.Max() });
                    // (twice the clients: a client may send its next request before the server has let go of its last one)
                    rounds.Add(await RunRoundAsync(http, server.Address, settings, clients, prefill.ToString().ToLowerInvariant(), sampleRss: true, log));
                }
            }
        }
        finally
        {
            model?.Dispose();
        }

        string target = settings.Url?.ToString() ?? "in-process";
        if (json)
        {
            output.WriteLine(JsonSerializer.Serialize(new
            {
                target, model = settings.ModelPath != null ? Path.GetFileName(settings.ModelPath.TrimEnd('/')) : null,
                clients = settings.Clients, requests_per_client = settings.Requests, prompt_tokens = settings.PromptTokens, max_tokens = settings.MaxTokens,
                prefill = settings.ModelPath != null ? variants.Select(v => v.ToString().ToLowerInvariant()) : null,
                threads = settings.ModelPath != null ? settings.Threads : (int?)null, processors = Environment.ProcessorCount, kernels = Tensors.MachineLimits.KernelSet,
                rounds = rounds.Select(x => new
                {
                    clients = x.Clients, prefill = x.Prefill, requests = x.Requests, failed = x.Failed, wall_s = x.WallSeconds,
                    output_tokens = x.OutputTokens, prompt_tokens_mean = x.PromptTokensMean, ttft_ms = x.TtftMs.Json, itl_ms = x.ItlMs.Json,
                    output_tokens_per_second = x.OutputTokensPerSecond, requests_per_second = x.RequestsPerSecond, peak_rss_bytes = x.PeakRssBytes, first_error = x.FirstError,
                }),
            }, new JsonSerializerOptions { WriteIndented = true }));
        }
        else
        {
            output.WriteLine($"target {target}; {settings.Requests} requests per client, prompts of {string.Join("/", settings.PromptTokens)} tokens, {settings.MaxTokens} output tokens each");
            output.WriteLine();
            output.WriteLine("| clients | prefill | requests | failed | TTFT P50 ms | TTFT P99 ms | ITL P50 ms | ITL P99 ms | output tok/s | req/s | peak RSS |");
            output.WriteLine("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
            foreach (var x in rounds)
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {x.Clients} | {x.Prefill ?? "-"} | {x.Requests} | {x.Failed} | {x.TtftMs.P50:F1} | {x.TtftMs.P99:F1} | {x.ItlMs.P50:F2} | {x.ItlMs.P99:F2} | {x.OutputTokensPerSecond:F1} | {x.RequestsPerSecond:F2} | {(x.PeakRssBytes is long rss ? $"{rss / 1048576.0:F0} MiB" : "-")} |"));
        }
        int failed = rounds.Sum(x => x.Failed);
        if (failed == 0) return 0;
        log.WriteLine($"vidkv: error: {failed} requests failed (first: {rounds.First(x => x.FirstError != null).FirstError}); their rounds' figures leave them out");
        return 1;
    }

    /// <summary>One round against <paramref name="server"/>: an untimed warm-up request, then <paramref name="clients"/> clients at once.</summary>
    static async Task<Round> RunRoundAsync(HttpClient http, Uri server, Settings settings, int clients, string? prefill, bool sampleRss, TextWriter log)
    {
        string modelId = await ModelIdAsync(http, server);
        var warmUp = await SendAsync(http, server, modelId, Prompt(-1, settings.PromptTokens[0]), settings.MaxTokens);
        if (warmUp.Error != null) throw new InvalidOperationException($"{server}: the warm-up request failed: {warmUp.Error}");

        long peakRss = Environment.WorkingSet;
        using var sampling = new CancellationTokenSource();
        var sampler = sampleRss ? Task.Run(async () =>
        {
            using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(25));
            try
            {
                while (await timer.WaitForNextTickAsync(sampling.Token)) peakRss = Math.Max(peakRss, Environment.WorkingSet);
            }
            catch (OperationCanceledException) { }
        }) : Task.CompletedTask;
        var clock = Stopwatch.StartNew();
        var results = await Task.WhenAll(Enumerable.Range(0, clients).Select(async client =>
        {
            var mine = new List<RequestResult>();
            for (int k = 0; k < settings.Requests; k++)
            {
                int index = client * settings.Requests + k;
                mine.Add(await SendAsync(http, server, modelId, Prompt(index, settings.PromptTokens[index % settings.PromptTokens.Length]), settings.MaxTokens));
            }
            return mine;
        }));
        double wall = clock.Elapsed.TotalSeconds;
        sampling.Cancel();
        await sampler;
        if (sampleRss) peakRss = Math.Max(peakRss, Environment.WorkingSet);

        var all = results.SelectMany(x => x).ToList();
        var done = all.Where(x => x.Error == null).ToList();
        var ttft = done.Where(x => x.DeltaMs.Count > 0).Select(x => x.DeltaMs[0]).ToList();
        var itl = done.SelectMany(x => x.DeltaMs.Zip(x.DeltaMs.Skip(1), (a, b) => b - a)).ToList();
        long tokens = done.Sum(x => (long)(x.CompletionTokens ?? x.DeltaMs.Count));
        var prompts = done.Where(x => x.PromptTokens != null).Select(x => (double)x.PromptTokens!.Value).ToList();
        var result = new Round(clients, prefill, all.Count, all.Count - done.Count, wall, tokens, prompts.Count > 0 ? prompts.Average() : null,
            Summary.Of(ttft), Summary.Of(itl), tokens / wall, done.Count / wall, sampleRss ? peakRss : null, all.FirstOrDefault(x => x.Error != null)?.Error);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"  {clients} clients{(prefill != null ? $", {prefill} prefill" : "")}: {done.Count}/{all.Count} requests in {wall:F2} s, TTFT P50 {result.TtftMs.P50:F1} ms, ITL P50 {result.ItlMs.P50:F2} ms, {result.OutputTokensPerSecond:F1} output tokens/s"));
        return result;
    }

    /// <summary>The first model the server lists (vLLM wants it in the request; llama-server and VidKV take any), else "default".</summary>
    static async Task<string> ModelIdAsync(HttpClient http, Uri server)
    {
        try
        {
            using var response = await http.GetAsync(new Uri(server, "v1/models"));
            if (!response.IsSuccessStatusCode) return "default";
            using var body = JsonDocument.Parse(await response.Content.ReadAsStreamAsync());
            return body.RootElement.TryGetProperty("data", out var data) && data.ValueKind == JsonValueKind.Array && data.GetArrayLength() > 0
                && data[0].TryGetProperty("id", out var id) && id.GetString() is { Length: > 0 } name ? name : "default";
        }
        catch (Exception e) when (e is HttpRequestException or JsonException)
        {
            throw new InvalidOperationException($"{server}: cannot reach the server: {e.Message}");
        }
    }

    /// <summary>The request body: a streamed chat completion of one user message, greedy, exactly <paramref name="maxTokens"/> tokens.</summary>
    static byte[] RequestBody(string modelId, string prompt, int maxTokens)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("model", modelId);
            json.WriteStartArray("messages");
            json.WriteStartObject();
            json.WriteString("role", "user");
            json.WriteString("content", prompt);
            json.WriteEndObject();
            json.WriteEndArray();
            json.WriteBoolean("stream", true);
            json.WriteStartObject("stream_options");
            json.WriteBoolean("include_usage", true);
            json.WriteEndObject();
            json.WriteNumber("max_tokens", maxTokens);
            json.WriteNumber("temperature", 0);
            json.WriteBoolean("ignore_eos", true);
            json.WriteEndObject();
        }
        return buffer.ToArray();
    }

    /// <summary>
    /// Sends one request and reads its server-sent events (<c>data: {json}</c> lines until <c>data: [DONE]</c>): the
    /// time of each non-empty <c>choices[0].delta.content</c>, and the token counts of a <c>usage</c> object. An HTTP
    /// error, an error event or a stream that ends without <c>[DONE]</c> fails the request.
    /// </summary>
    static async Task<RequestResult> SendAsync(HttpClient http, Uri server, string modelId, string prompt, int maxTokens)
    {
        var result = new RequestResult();
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(server, "v1/chat/completions"))
        {
            Content = new ByteArrayContent(RequestBody(modelId, prompt, maxTokens)) { Headers = { ContentType = new("application/json") } },
        };
        request.Headers.Accept.ParseAdd("text/event-stream");
        long sent = Stopwatch.GetTimestamp();
        try
        {
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            if (!response.IsSuccessStatusCode)
            {
                string body = await response.Content.ReadAsStringAsync();
                result.Error = $"HTTP {(int)response.StatusCode}: {(body.Length > 300 ? body[..300] + "…" : body)}";
                return result;
            }
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(), Encoding.UTF8);
            while (await reader.ReadLineAsync() is string line)
            {
                if (!line.StartsWith("data:", StringComparison.Ordinal)) continue; // blank separators, comments, other fields
                var payload = line.AsSpan(5).Trim();
                if (payload.SequenceEqual("[DONE]")) return result;
                double at = Stopwatch.GetElapsedTime(sent).TotalMilliseconds;
                using var chunk = JsonDocument.Parse(payload.ToString());
                var root = chunk.RootElement;
                if (root.TryGetProperty("error", out var error))
                {
                    result.Error = error.ValueKind == JsonValueKind.Object && error.TryGetProperty("message", out var message) ? message.ToString() : error.ToString();
                    return result;
                }
                if (root.TryGetProperty("choices", out var choices) && choices.ValueKind == JsonValueKind.Array && choices.GetArrayLength() > 0
                    && choices[0].TryGetProperty("delta", out var delta) && delta.TryGetProperty("content", out var content)
                    && content.ValueKind == JsonValueKind.String && content.GetString() is { Length: > 0 })
                    result.DeltaMs.Add(at);
                if (root.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
                {
                    if (usage.TryGetProperty("completion_tokens", out var completion) && completion.TryGetInt32(out int c)) result.CompletionTokens = c;
                    if (usage.TryGetProperty("prompt_tokens", out var promptTokens) && promptTokens.TryGetInt32(out int p)) result.PromptTokens = p;
                }
            }
            result.Error = "the stream ended without data: [DONE]";
        }
        catch (Exception e) when (e is HttpRequestException or IOException or JsonException or TaskCanceledException)
        {
            result.Error = e.Message;
        }
        return result;
    }
}
