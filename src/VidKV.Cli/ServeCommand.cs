using System.CommandLine;
using System.Net;
using VidKV.Cache;
using VidKV.Engine;
using VidKV.Models;
using VidKV.Server;
using VidKV.World;

namespace VidKV.Cli;

/// <summary>
/// <c>vidkv serve</c>: an OpenAI-compatible HTTP API (<see cref="InferenceServer"/>) over one model, as llama-server
/// serves one: chat completions whole or streamed, with images and video when the model's vision projector is given,
/// live video sessions, and a web page at <c>/</c> to watch and ask from a browser.
/// </summary>
public static class ServeCommand
{
    /// <summary>
    /// The server's demo: the world demo <c>vidkv watch</c> plays without arguments (<see cref="WorldDemo"/>), with its
    /// questions and events, so the web page marks what the model says as <c>watch</c> does.
    /// </summary>
    public static ServerDemo BuiltInDemo => builtInDemo.Value;

    // Made when a server first needs it, not each time the CLI builds its commands.
    static readonly Lazy<ServerDemo> builtInDemo = new(MakeDemo);

    static ServerDemo MakeDemo()
    {
        var world = WorldDemo.Stream();
        return new ServerDemo((log, cancellation) => WorldDemo.EnsureAsync(log: log, cancellation: cancellation),
            [.. WorldDemo.Questions(world).Select(q => new DemoQuestion(q.Question, q.Answer))],
            [.. world.Events.Select(e => new DemoEvent(e.Tick, e.Narration))]);
    }

    /// <summary>The environment variable read for the API key when <c>--api-key</c> is not given (a key on the command line shows in ps).</summary>
    public const string ApiKeyVariable = "VIDKV_API_KEY";

    public static Command Create()
    {
        var model = CommonOptions.Model(required: false, CommonOptions.BuiltInModelText);
        var mmproj = new Option<string?>("--mmproj") { Description = "Vision projector (mmproj GGUF, or the Hugging Face folder of -m) for images and video in chat messages and live sessions." };
        var host = new Option<string>("--host") { Description = "Address to listen on (an IP address or localhost). Loopback by default: other machines reach the server only when you say so.", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0: any free one).", DefaultValueFactory = _ => 8080 };
        var apiKey = new Option<string?>("--api-key") { Description = $"Require Authorization: Bearer KEY on every endpoint but /health and the web page at / (which asks for the key and sends it); default: ${ApiKeyVariable} when set, else no key." };
        var mediaRoot = new Option<string?>("--media-root") { Description = "Folder whose image and video files requests and live sessions may name (file:// URLs or paths; symbolic links are followed and must stay inside); GET /v1/media and the web page list its videos. Default: none, media come as data URLs, uploads or URLs only." };
        var maxSessions = new Option<int>("--max-sessions") { Description = "Most requests answered at once, each in its own session on the shared engine; more get 429.", DefaultValueFactory = _ => 4 };
        var maxBody = new Option<double>("--max-body") { Description = "Largest request body (and image file) in MiB; a larger one gets 413.", DefaultValueFactory = _ => 32 };
        var maxUpload = new Option<double>("--max-upload") { Description = "Largest video in MiB that POST /v1/uploads (the web page's upload) takes, kept in a temporary folder until its session is deleted or the server stops; a larger one gets 413.", DefaultValueFactory = _ => 512 };
        var context = CommonOptions.ContextSize(4096);
        var predict = new Option<int>("--n-predict", "-n") { Description = "Most tokens of an answer when a request gives no max_tokens (-1 = until the end of generation or a full context).", DefaultValueFactory = _ => -1 };
        var threads = CommonOptions.Threads();
        var sessionPolicy = new Option<string>("--session-policy") { Description = PolicyDocs.SpecHelp("KV policy of a live session that names none (its kv_policy), bounded so a session's memory stays bounded however long it watches."), DefaultValueFactory = _ => "infinipotv" };
        var sessionBudget = new Option<int>("--session-budget") { Description = "Token budget per KV head of a live session's policy when it gives none (its kv_budget).", DefaultValueFactory = _ => 2048 };
        var videoFps = new Option<double>("--video-fps") { Description = "Frames per second read from a video in a chat message when the request does not say (media_io_kwargs.video.fps).", DefaultValueFactory = _ => 1 };
        var maxVideoFrames = new Option<int>("--max-video-frames") { Description = "Most frames read from one video in a chat message (and the most media_io_kwargs.video.num_frames may ask).", DefaultValueFactory = _ => 64 };
        var fetchTimeout = new Option<double>("--fetch-timeout") { Description = "Seconds an http(s) video URL may take to arrive whole (at most --max-body MiB); past it the request gets 400.", DefaultValueFactory = _ => 10 };
        var prefill = PrefillOption();
        var visionExact = CommonOptions.VisionExact();
        var command = new Command("serve", "Serve the model over HTTP with an OpenAI-compatible API (like llama-server): GET /health, GET /v1/models, POST /v1/chat/completions (stream or not; text, images and video), live video sessions (/v1/sessions, /v1/uploads, /v1/media), GET /metrics, and a web page at / to watch a video and ask about it.")
            .With(model, mmproj, host, port, apiKey, mediaRoot, maxSessions, maxBody, maxUpload, context, predict, sessionPolicy, sessionBudget, videoFps, maxVideoFrames, fetchTimeout, prefill, visionExact, threads);
        command.SetAction(r => Run(r.InvocationConfiguration.Error, r.GetValue(model), r.GetValue(mmproj), new ServerOptions
        {
            Host = ParseHost(r.GetValue(host)!),
            Port = r.GetValue(port),
            ApiKey = r.GetValue(apiKey) ?? (Environment.GetEnvironmentVariable(ApiKeyVariable) is { Length: > 0 } key ? key : null),
            MediaRoot = r.GetValue(mediaRoot),
            MaxSessions = r.GetValue(maxSessions),
            MaxBodyBytes = r.GetValue(maxBody) is var mib && mib > 0 && mib <= 4096 ? (long)(mib * 1048576) : throw new ArgumentException($"--max-body must be more than 0 and at most 4096 MiB, not {mib}"),
            MaxUploadBytes = r.GetValue(maxUpload) is var upload && upload > 0 && upload <= 1 << 20 ? (long)(upload * 1048576) : throw new ArgumentException($"--max-upload must be more than 0 and at most 1048576 MiB, not {upload}"),
            DefaultMaxTokens = r.GetValue(predict) is var n && n >= 0 ? (n > 0 ? n : throw new ArgumentException("-n must be at least 1, or -1 for no limit")) : null,
            Log = r.InvocationConfiguration.Error,
            SessionKv = new KvCacheConfig { Default = r.GetValue(sessionPolicy)!, Budget = r.GetValue(sessionBudget) },
            VideoFps = r.GetValue(videoFps),
            MaxVideoFrames = r.GetValue(maxVideoFrames),
            Demo = BuiltInDemo,
            FetchTimeout = r.GetValue(fetchTimeout) is var seconds && seconds > 0 && seconds <= 3600 ? TimeSpan.FromSeconds(seconds) : throw new ArgumentException($"--fetch-timeout must be more than 0 and at most 3600 seconds, not {seconds}"),
        }, r.GetValue(context), ParsePrefill(r.GetValue(prefill)!), r.GetValue(visionExact), r.GetValue(threads)).GetAwaiter().GetResult());
        return command;
    }

    /// <summary><c>--prefill chunked|prepacked</c>: how prompts fill the engine's steps (<see cref="PrefillScheduling"/>).</summary>
    internal static Option<string> PrefillOption()
    {
        var option = new Option<string>("--prefill")
        {
            Description = "How waiting prompts fill each engine step after the decode rows: chunked (default; each prompt a chunk of up to 128 rows per step, in turn) "
                + "or prepacked (Prepacking: prompts that fit go in whole, bin-packed first-fit decreasing into the step's 512 rows; longer ones still in chunks).",
            DefaultValueFactory = _ => "chunked",
        };
        option.AcceptOnlyFromAmong("chunked", "prepacked");
        return option;
    }

    internal static PrefillScheduling ParsePrefill(string value) => value == "prepacked" ? PrefillScheduling.Prepacked : PrefillScheduling.Chunked;

    static IPAddress ParseHost(string host) =>
        host.Equals("localhost", StringComparison.OrdinalIgnoreCase) ? IPAddress.Loopback
        : IPAddress.TryParse(host, out var address) ? address
        : throw new ArgumentException($"--host '{host}' is not an IP address (or localhost)");

    static async Task<int> Run(TextWriter log, string? modelPath, string? mmprojPath, ServerOptions options, int contextSize, PrefillScheduling prefill, bool visionExact, int threads)
    {
        options.Validate(); // before the model loads: a bad option is reported at once
        // No -m: the built-in pair (a -m without --mmproj serves text only).
        if (modelPath == null) (modelPath, mmprojPath) = BuiltInModel.Or(null, mmprojPath);
        if (contextSize < 0) throw new ArgumentException($"-c must be 0 (the model's own) or more, not {contextSize}");
        Tensors.WorkerPool.SetSharedThreadCount(Math.Max(1, threads));
        using var model = ModelLoader.Load(modelPath);
        using var vision = mmprojPath != null ? VisionModel.Load(mmprojPath, visionExact) : null;
        int ctx = contextSize > 0 ? Math.Min(contextSize, model.Config.ContextLength) : model.Config.ContextLength;
        // The store keeps every kind of page metadata, so each live session may run the policy it names.
        await using var engine = new InferenceEngine(model, new EngineOptions { ContextLength = ctx, KvMetadata = Cache.KvMetadata.All, Prefill = prefill }, vision);
        if (!IPAddress.IsLoopback(options.Host) && options.ApiKey == null)
            log.WriteLine($"warning: listening on {options.Host} without an API key: anyone who reaches this address can use the model (--api-key or ${ApiKeyVariable})");
        await using var server = await InferenceServer.StartAsync(engine, options);
        log.WriteLine($"context {ctx} tokens per request; {prefill.ToString().ToLowerInvariant()} prefill; at most {options.MaxSessions} requests and live sessions at once; live sessions' KV policy {options.SessionKv.Default} (budget {options.SessionKv.Budget}); Ctrl+C stops");
        await server.WaitForShutdownAsync();
        return 0;
    }
}
