using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using VidKV.Engine;

namespace VidKV.Server;

/// <summary>
/// An OpenAI-compatible HTTP API over an <see cref="InferenceEngine"/> (as llama-server and vLLM serve one), on Kestrel
/// with ASP.NET Core minimal APIs: <c>GET /health</c>, <c>GET /v1/models</c> and <c>POST /v1/chat/completions</c>
/// (whole or streamed as server-sent events; text, images and video), live video sessions under <c>/v1/sessions</c>
/// (<see cref="LiveSessions"/>) with <c>POST /v1/uploads</c> (<see cref="Uploads"/>) and <c>GET /v1/media</c> (the
/// media root's videos), <c>GET /metrics</c> (the engine's <see cref="EngineMetrics"/> in Prometheus text, by
/// OpenTelemetry's exporter), and a web page at <c>/</c> (<see cref="WebPage"/>). JSON is read and written only at this edge, by
/// source-generated System.Text.Json; each request gets a session of its own on the shared engine, whose loop batches
/// them. Errors are OpenAI's error body with a 4xx status naming what is wrong and where; one request's failure never
/// touches another's. Start it with <see cref="StartAsync"/>; dispose it to stop (the engine stays the caller's).
/// </summary>
public sealed class InferenceServer : IAsyncDisposable
{
    /// <summary>The routes and their methods, for a 405 on a known route asked with another method.</summary>
    static readonly Dictionary<string, string> Routes = new(StringComparer.OrdinalIgnoreCase)
    {
        ["/health"] = HttpMethods.Get,
        ["/v1/models"] = HttpMethods.Get,
        ["/metrics"] = HttpMethods.Get,
        ["/v1/chat/completions"] = HttpMethods.Post,
        ["/v1/sessions"] = HttpMethods.Post,
        ["/v1/uploads"] = HttpMethods.Post,
        ["/v1/media"] = HttpMethods.Get,
        [""] = HttpMethods.Get, // the page at /
    };

    /// <summary>How many files <c>GET /v1/media</c> lists at most.</summary>
    const int MaxListedFiles = 1000;

    readonly WebApplication app;
    readonly SessionSlots slots;
    readonly LiveSessions live;
    readonly Uploads uploads;

    InferenceServer(WebApplication app, SessionSlots slots, LiveSessions live, Uploads uploads, Uri address, string modelId)
    {
        this.app = app;
        this.slots = slots;
        this.live = live;
        this.uploads = uploads;
        Address = address;
        ModelId = modelId;
    }

    /// <summary>Where the server listens (with the real port when <see cref="ServerOptions.Port"/> was 0), e.g. <c>http://127.0.0.1:8080/</c>.</summary>
    public Uri Address { get; }

    /// <summary>The model's name in <c>/v1/models</c> and in every response.</summary>
    public string ModelId { get; }

    /// <summary>Chat requests being answered now (tests look at it).</summary>
    internal int ActiveRequests => slots.Held - live.Count;

    /// <summary>Live video sessions now (tests look at it).</summary>
    internal int LiveSessionCount => live.Count;

    /// <summary>The folder uploads are kept in while the server runs (tests look at it).</summary>
    internal string UploadFolder => uploads.Folder;

    /// <summary>
    /// Binds Kestrel to <see cref="ServerOptions.Host"/>:<see cref="ServerOptions.Port"/> and starts serving
    /// <paramref name="engine"/>'s model.
    /// </summary>
    /// <exception cref="ArgumentException">an option is out of range, or the media root does not exist</exception>
    /// <exception cref="IOException">the address cannot be bound (a port in use)</exception>
    public static async Task<InferenceServer> StartAsync(InferenceEngine engine, ServerOptions? options = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(engine);
        options ??= new ServerOptions();
        options.Validate();
        string modelId = options.ModelId ?? VidKVChatClient.DefaultModelId(engine.Model.Path);
        var media = new MediaFiles(options.MediaRoot, options.MaxBodyBytes, options.FetchTimeout);
        byte[]? keyHash = options.ApiKey is { } key ? SHA256.HashData(Encoding.UTF8.GetBytes(key)) : null;
        var slots = new SessionSlots(options.MaxSessions);
        var chat = new ChatCompletions(engine, options, modelId, media, slots);
        var uploads = new Uploads(options.MaxUploadBytes, options.MaxSessions);
        var live = new LiveSessions(engine, options, modelId, media, uploads, slots);
        var page = new WebPage();
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ApplicationName = "vidkv", ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders(); // one line per request goes to options.Log instead
        builder.Services.Configure<ConsoleLifetimeOptions>(o => o.SuppressStatusMessages = true);
        // The engine's meter, scraped fresh each time (the exporter's default caches a scrape for 300 ms).
        builder.Services.AddOpenTelemetry().WithMetrics(metrics => metrics.AddMeter(EngineMetrics.MeterName)
            .AddPrometheusExporter(prometheus => prometheus.ScrapeResponseCacheDurationMilliseconds = 0));
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = options.MaxBodyBytes;
            kestrel.Listen(options.Host, options.Port);
        });
        var app = builder.Build();

        app.Use(async (context, next) =>
        {
            long start = Stopwatch.GetTimestamp();
            try
            {
                await next(context).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                options.Log?.WriteLine($"{context.Request.Method} {context.Request.Path}: the client went away; its answer was stopped");
                return;
            }
            catch (Exception e)
            {
                var error = Unwrap(e) switch
                {
                    ApiException api => api,
                    BadHttpRequestException { StatusCode: StatusCodes.Status413PayloadTooLarge } =>
                        new ApiException(StatusCodes.Status413PayloadTooLarge, "invalid_request_error",
                            $"the request body is larger than the server's limit of {options.MaxBodyBytes} bytes (--max-body)", code: "request_too_large"),
                    BadHttpRequestException bad => new ApiException(bad.StatusCode, "invalid_request_error", bad.Message),
                    var other => new ApiException(StatusCodes.Status500InternalServerError, "server_error", $"internal error: {other.Message}"),
                };
                if (error.StatusCode >= 500) options.Log?.WriteLine($"{context.Request.Method} {context.Request.Path}: {e}");
                await WriteErrorAsync(context, error).ConfigureAwait(false);
            }
            options.Log?.WriteLine($"{context.Request.Method} {context.Request.Path} {context.Response.StatusCode} {Stopwatch.GetElapsedTime(start).TotalMilliseconds:F0} ms");
        });
        if (keyHash != null)
            app.Use((context, next) =>
            {
                // The page holds no secret (it asks for the key); a session's video has a token of its own (LiveSessions.VideoAsync).
                var path = context.Request.Path;
                if (path.Equals("/health", StringComparison.OrdinalIgnoreCase) || WebPage.IsPagePath(path) || IsVideoPath(path)) return next(context);
                string? problem = Authorize(context.Request.Headers.Authorization.ToString(), keyHash);
                if (problem == null) return next(context);
                context.Response.Headers.WWWAuthenticate = "Bearer";
                throw new ApiException(StatusCodes.Status401Unauthorized, "authentication_error", problem, code: "invalid_api_key");
            });

        app.MapGet("/health", (RequestDelegate)(context => context.Response.WriteAsJsonAsync(new HealthStatus("ok"), Wire.HealthStatus, contentType: "application/json", context.RequestAborted)));
        app.MapGet("/v1/models", (RequestDelegate)(context => context.Response.WriteAsJsonAsync(new ModelList([new ModelEntry(modelId, created, "vidkv")]), Wire.ModelList,
            contentType: "application/json", context.RequestAborted)));
        app.UseWebSockets();
        app.MapPost("/v1/chat/completions", (RequestDelegate)chat.HandleAsync);
        live.Map(app);
        app.MapPost("/v1/uploads", (RequestDelegate)uploads.HandleAsync);
        app.MapGet("/v1/media", (RequestDelegate)(context =>
        {
            var (files, truncated) = media.ListVideos(MaxListedFiles);
            return context.Response.WriteAsJsonAsync(new MediaList(files, truncated), Wire.MediaList, contentType: "application/json", context.RequestAborted);
        }));
        page.Map(app);
        app.MapPrometheusScrapingEndpoint("/metrics").WithMetadata(new Microsoft.AspNetCore.Routing.HttpMethodMetadata([HttpMethods.Get])); // others: 405
        app.MapFallback("{*path}", (RequestDelegate)(context =>
        {
            string path = context.Request.Path.Value ?? "/";
            if (Routes.TryGetValue(path.TrimEnd('/'), out var method))
            {
                context.Response.Headers.Allow = method;
                throw new ApiException(StatusCodes.Status405MethodNotAllowed, "invalid_request_error", $"{context.Request.Method} {path}: this route takes {method}");
            }
            throw new ApiException(StatusCodes.Status404NotFound, "invalid_request_error",
                $"no route {context.Request.Method} {path} (this server has GET / (its web page), GET /health, GET /metrics, GET /v1/models, POST /v1/chat/completions, " +
                "GET /v1/media, POST /v1/uploads, POST /v1/sessions, GET and DELETE /v1/sessions/{id}, POST /v1/sessions/{id}/frames, /v1/sessions/{id}/stream (WebSocket), " +
                "GET /v1/sessions/{id}/video, POST /v1/sessions/{id}/ask, GET /v1/sessions/{id}/events)", code: "not_found");
        }));

        try
        {
            await app.StartAsync(cancellation).ConfigureAwait(false);
        }
        catch
        {
            await app.DisposeAsync().ConfigureAwait(false);
            uploads.Dispose();
            throw;
        }
        string bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        var address = new Uri(bound.EndsWith('/') ? bound : bound + "/");
        options.Log?.WriteLine($"vidkv serve: listening on {address} (model {modelId}{(engine.Vision != null ? ", with images" : "")}; " +
            $"{(keyHash != null ? "API key required" : "no API key")}{(options.MediaRoot != null ? $"; media root {media.Root}" : "")}); web page: open {address} in a browser");
        return new InferenceServer(app, slots, live, uploads, address, modelId);
    }

    /// <summary>The engine's error inside the channel exception an answer's reader gets when the answer failed.</summary>
    internal static Exception Unwrap(Exception e) => e is System.Threading.Channels.ChannelClosedException { InnerException: { } inner } ? inner : e;

    /// <summary>Null when <paramref name="header"/> carries the key (compared in constant time, through SHA-256, so not even its length leaks), else why not.</summary>
    static string? Authorize(string header, byte[] keyHash)
    {
        if (header.Length == 0) return "missing API key: send it as Authorization: Bearer <key>";
        if (!header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)) return "the Authorization header must be Bearer <key>";
        var given = SHA256.HashData(Encoding.UTF8.GetBytes(header["Bearer ".Length..].Trim()));
        return CryptographicOperations.FixedTimeEquals(given, keyHash) ? null : "invalid API key";
    }

    /// <summary>Whether <paramref name="path"/> is <c>/v1/sessions/{id}/video</c>.</summary>
    static bool IsVideoPath(PathString path) =>
        path.Value is { } value && value.StartsWith("/v1/sessions/", StringComparison.Ordinal) && value.EndsWith("/video", StringComparison.Ordinal)
        && value.AsSpan("/v1/sessions/".Length, value.Length - "/v1/sessions/".Length - "/video".Length).IndexOf('/') < 0;

    static async Task WriteErrorAsync(HttpContext context, ApiException error)
    {
        if (context.Response.HasStarted) return; // a stream sends its own error event
        context.Response.StatusCode = error.StatusCode;
        await context.Response.WriteAsJsonAsync(error.Body, Wire.ErrorBody, contentType: "application/json", context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>Completes when the host is asked to stop (Ctrl+C, SIGTERM) or <paramref name="cancellation"/> fires.</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellation = default) => app.WaitForShutdownAsync(cancellation);

    /// <summary>Stops listening, lets requests in flight end (their clients see the connection close) and releases the host.</summary>
    public async ValueTask DisposeAsync()
    {
        await live.DisposeAsync().ConfigureAwait(false); // ends their event streams, so stopping does not wait on them
        using (var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5))) await app.StopAsync(timeout.Token).ConfigureAwait(false);
        await live.DisposeAsync().ConfigureAwait(false); // any a request started meanwhile
        await app.DisposeAsync().ConfigureAwait(false);
        uploads.Dispose();
    }
}
