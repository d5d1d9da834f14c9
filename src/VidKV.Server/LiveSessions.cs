using System.Collections.Concurrent;
using System.Globalization;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using VidKV.Cache;
using VidKV.Engine;
using VidKV.Text;
using VidKV.Video;

namespace VidKV.Server;

/// <summary>
/// The live-session endpoints: <c>POST /v1/sessions</c> starts a session that watches a file under the media root, an
/// upload (<see cref="Uploads"/>), the server's demo clip (<see cref="ServerOptions.Demo"/>), an http(s)/rtsp/rtmp URL, a
/// camera, or frames clients push (<c>POST /v1/sessions/{id}/frames</c>, or binary messages on the WebSocket
/// <c>/v1/sessions/{id}/stream</c>); <c>GET /v1/sessions/{id}/video</c> plays the file a session reads (range requests,
/// for a video element); <c>POST /v1/sessions/{id}/ask</c> answers a question on a fork of
/// what it has seen so far while it goes on watching; <c>GET /v1/sessions/{id}/events</c> streams its progress,
/// proactive comments, errors and end; <c>GET</c> and <c>DELETE /v1/sessions/{id}</c> show and end it. Each live
/// session holds one of the server's <see cref="ServerOptions.MaxSessions"/> slots until it is deleted. A bad request
/// about a session (a corrupt frame, a frame for a session that reads a file) is refused and the session goes on.
/// </summary>
sealed partial class LiveSessions(InferenceEngine engine, ServerOptions options, string modelId, MediaFiles media, Uploads uploads, SessionSlots slots) : IAsyncDisposable
{
    /// <summary>Frames a push session queues before a push waits (the back-pressure that keeps it bounded).</summary>
    const int PushQueue = 8;

    readonly ConcurrentDictionary<string, LiveSession> sessions = new(StringComparer.Ordinal);
    readonly ChatFormat format = ChatTemplate.Detect(engine.Model.Vocabulary.ChatTemplate);
    readonly DemoInfo? demoInfo = options.Demo is { } demo ? new DemoInfo(demo.Questions, demo.Events) : null;
    const string Marker = "\u0001vidkv-question\u0001";

    /// <summary>Live sessions now.</summary>
    public int Count => sessions.Count;

    public void Map(IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/sessions", (RequestDelegate)CreateAsync);
        app.MapGet("/v1/sessions/{id}", (RequestDelegate)(context =>
            context.Response.WriteAsJsonAsync(Find(context).Info(), Wire.SessionInfo, contentType: "application/json", context.RequestAborted)));
        app.MapDelete("/v1/sessions/{id}", (RequestDelegate)DeleteAsync);
        app.MapPost("/v1/sessions/{id}/frames", (RequestDelegate)PushFrameAsync);
        app.MapGet("/v1/sessions/{id}/video", (RequestDelegate)VideoAsync);
        app.MapGet("/v1/sessions/{id}/stream", (RequestDelegate)StreamAsync);
        app.MapPost("/v1/sessions/{id}/ask", (RequestDelegate)AskAsync);
        app.MapGet("/v1/sessions/{id}/events", (RequestDelegate)EventsAsync);
    }

    LiveSession Find(HttpContext context)
    {
        string id = context.Request.RouteValues["id"] as string ?? "";
        return sessions.TryGetValue(id, out var live) ? live
            : throw new ApiException(StatusCodes.Status404NotFound, "invalid_request_error", $"no live session '{Shorten(id)}' (it never was, or was deleted)", "id", "session_not_found");
    }

    [GeneratedRegex(@"^camera:(/dev/video[0-9]+|[0-9]+)$")]
    private static partial Regex CameraSource();

    static readonly string[] StreamSchemes = ["http", "https", "rtsp", "rtsps", "rtmp", "rtmps"];

    async Task CreateAsync(HttpContext context)
    {
        var request = await ChatCompletions.ReadJsonAsync(context, Wire.SessionRequest).ConfigureAwait(false);
        if (engine.Vision == null)
            throw ApiException.BadRequest($"the model {modelId} watches no video: start the server with its vision projector (--mmproj)", null, "model_not_multimodal");
        string source = request.Source is { Length: > 0 } s ? s
            : throw ApiException.BadRequest("a source is needed: a file under --media-root, upload:ID, \"demo\", an http(s)/rtsp URL, camera:/dev/videoN, or \"push\"", "source");
        double fps = request.Fps ?? 1;
        if (!double.IsFinite(fps) || fps <= 0 || fps > 60) throw ApiException.BadRequest($"must be more than 0 and at most 60, not {fps}", "fps");
        if (request.MaxFrames is < 1) throw ApiException.BadRequest($"must be at least 1, not {request.MaxFrames}", "max_frames");
        var sampling = new FrameSampling { Fps = fps, MaxFrames = request.MaxFrames };
        if (request.KvBudget is < 1) throw ApiException.BadRequest($"must be at least 1 token, not {request.KvBudget}", "kv_budget");
        var kv = options.SessionKv with { Default = request.KvPolicy ?? options.SessionKv.Default, Budget = request.KvBudget ?? options.SessionKv.Budget };
        try
        {
            kv.ValidateSpecs();
        }
        catch (KvConfigException e)
        {
            throw ApiException.BadRequest(e.Message, "kv_policy");
        }
        ProactiveOptions? proactive = null;
        if (request.Proactive == true)
        {
            proactive = new ProactiveOptions { SilenceToken = request.SilenceToken ?? ",", Threshold = request.Threshold ?? 0.725f, MaxTokens = request.CommentMaxTokens ?? 100 };
            if (engine.Model.Tokenizer.Encode(proactive.SilenceToken, addSpecial: false, parseSpecial: true).Count != 1)
                throw ApiException.BadRequest($"'{Shorten(proactive.SilenceToken)}' is not one token of the model's vocabulary", "silence_token");
            if (!float.IsFinite(proactive.Threshold) || proactive.Threshold is < 0 or > 1) throw ApiException.BadRequest($"must be a probability in [0, 1], not {proactive.Threshold}", "threshold");
            if (proactive.MaxTokens < 1) throw ApiException.BadRequest($"must be at least 1, not {proactive.MaxTokens}", "comment_max_tokens");
        }

        // The slot first: an upload is the session's once its source is open, so nothing may refuse the session after that.
        slots.Take();
        string kind;
        IFrameSource frames;
        VideoFile? video;
        Session session;
        try
        {
            (kind, frames, video, source) = await OpenSourceAsync(source, sampling, context.RequestAborted).ConfigureAwait(false);
            try
            {
                session = engine.CreateSession(new VidKV.Engine.SessionOptions { Kv = kv, ContextLength = int.MaxValue });
            }
            catch (KvConfigException e)
            {
                video?.Dispose();
                await frames.DisposeAsync().ConfigureAwait(false);
                throw ApiException.BadRequest(e.Message, "kv_policy");
            }
        }
        catch
        {
            slots.Release();
            throw;
        }
        string id = "sess_" + RandomNumberGenerator.GetHexString(24, lowercase: true);
        var live = new LiveSession(id, source, kind, kv.Default + (kv.Budget is int b ? $" (budget {b})" : ""), proactive != null, engine, session, frames, video,
            options.MaxEventReaders)
        {
            Demo = kind == "demo" ? demoInfo : null,
        };
        sessions[id] = live;
        live.Start(UserTurnOpening(), proactive);
        options.Log?.WriteLine($"  {id}: watching {(kind == "push" ? "pushed frames" : source)} at {fps} fps, KV policy {live.KvPolicy}{(proactive != null ? ", proactive" : "")}");
        context.Response.StatusCode = StatusCodes.Status201Created;
        context.Response.Headers.Location = $"/v1/sessions/{id}";
        await context.Response.WriteAsJsonAsync(live.Info(), Wire.SessionInfo, contentType: "application/json", context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>A live session's frames go to its session and nowhere else, so their buffers are decoded into again once the session has resized them.</summary>
    static readonly FfmpegOptions LiveFrames = new() { ReuseFrameBuffers = true };

    /// <summary>
    /// The frame source <paramref name="source"/> names, the video file it reads (if one), and the source as the
    /// session shows it (an upload by its file name); a file is probed at once, so a corrupt one is a 400 here.
    /// </summary>
    async Task<(string Kind, IFrameSource Frames, VideoFile? Video, string Shown)> OpenSourceAsync(string source, FrameSampling sampling, CancellationToken cancellation)
    {
        if (source == "push") return ("push", new PushedFrameSource(PushQueue, sampling, "pushed frames"), null, source);
        if (source == "demo")
        {
            if (options.Demo == null) throw ApiException.BadRequest("this server has no demo clip (vidkv serve gives the world demo)", "source", "no_demo");
            string clip;
            try
            {
                clip = await options.Demo.EnsureVideoAsync(options.Log, cancellation).ConfigureAwait(false);
            }
            catch (VideoSourceException e)
            {
                throw new ApiException(StatusCodes.Status500InternalServerError, "server_error", $"the demo video cannot be made: {e.Message}", "source", "demo_unavailable");
            }
            return ("demo", new FfmpegSource(clip, sampling, LiveFrames), new VideoFile(clip, temporary: false), source);
        }
        if (source.StartsWith(Uploads.SourcePrefix, StringComparison.Ordinal))
        {
            // Probed when it was uploaded.
            var (upload, name) = uploads.Take(source[Uploads.SourcePrefix.Length..], "source");
            return ("upload", new FfmpegSource(upload.Path, sampling, LiveFrames), upload, $"{source} ({name})");
        }
        if (source.StartsWith("camera:", StringComparison.Ordinal))
            return CameraSource().IsMatch(source) ? ("camera", new FfmpegSource(source, sampling, LiveFrames), null, source)
                : throw ApiException.BadRequest($"'{Shorten(source)}' is not a camera (camera:/dev/videoN)", "source");
        int scheme = source.IndexOf("://", StringComparison.Ordinal);
        if (scheme > 0 && !source.StartsWith("file:", StringComparison.OrdinalIgnoreCase))
            return StreamSchemes.Contains(source[..scheme].ToLowerInvariant()) ? ("url", new FfmpegSource(source, sampling, LiveFrames), null, source)
                : throw ApiException.BadRequest($"unsupported URL scheme in '{Shorten(source)}' (http, https, rtsp, rtsps, rtmp, rtmps; or a file under --media-root)", "source");
        string path = media.ResolveFile(source, "source", "video");
        var file = new FfmpegSource(path, sampling, LiveFrames);
        try
        {
            await file.ProbeAsync(cancellation).ConfigureAwait(false);
        }
        catch (VideoSourceException e)
        {
            string problem = e.Message.StartsWith(e.SourceName + ": ", StringComparison.Ordinal) ? e.Message[(e.SourceName.Length + 2)..] : e.Message;
            throw new ApiException(StatusCodes.Status400BadRequest, "invalid_request_error", $"source: '{Shorten(source)}' cannot be read as a video: {problem}", "source", "invalid_video");
        }
        return ("file", file, new VideoFile(path, temporary: false), source);
    }

    /// <summary>
    /// The chat template's opening of a user turn: the frames go inside it, and a question closes it. In the plain format
    /// (no turns) the frames open the stream and each question is a line of its own after them, as <c>vidkv watch</c> asks.
    /// </summary>
    string UserTurnOpening()
    {
        if (format == ChatFormat.Plain) return "";
        string opening = ChatTemplate.Apply(format, [new ChatMessage("user", Marker)], addGenerationPrompt: false);
        return opening[..opening.IndexOf(Marker, StringComparison.Ordinal)];
    }

    /// <summary>A question as the rest of the user turn the session opened, then the assistant's turn.</summary>
    string QuestionPrompt(string question)
    {
        if (format == ChatFormat.Plain) return ChatTemplate.Apply(format, [new ChatMessage("user", question)]);
        string turn = ChatTemplate.Apply(format, [new ChatMessage("user", Marker + question)]);
        return turn[(turn.IndexOf(Marker, StringComparison.Ordinal) + Marker.Length)..];
    }

    async Task DeleteAsync(HttpContext context)
    {
        var live = Find(context);
        if (!sessions.TryRemove(live.Id, out _)) throw new ApiException(StatusCodes.Status404NotFound, "invalid_request_error", $"session {live.Id} is being deleted already", "id", "session_not_found");
        try
        {
            await live.StopAsync().ConfigureAwait(false);
        }
        finally
        {
            slots.Release();
        }
        options.Log?.WriteLine($"  {live.Id}: deleted after {live.Info().Frames} frames");
        await context.Response.WriteAsJsonAsync(new SessionDeleted(live.Id, true), Wire.SessionDeleted, contentType: "application/json", context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>
    /// The video file a session reads, with range requests (a video element seeks with them). The URL's token, from the
    /// session's <c>video_url</c>, is what authorises it: the API key check lets this route through, since a video
    /// element cannot send a header.
    /// </summary>
    Task VideoAsync(HttpContext context)
    {
        var live = Find(context);
        if (live.Video == null)
            throw new ApiException(StatusCodes.Status404NotFound, "invalid_request_error", $"session {live.Id} reads {live.Kind switch { "push" => "pushed frames", var k => "a " + k }}: it has no video file to play", "id", "no_video");
        if (!live.IsVideoToken(context.Request.Query["token"].FirstOrDefault()))
            throw new ApiException(StatusCodes.Status403Forbidden, "authentication_error", "the video's token is missing or wrong: play the session's video_url as GET /v1/sessions/{id} gives it", "token", "invalid_video_token");
        if (!ContentTypes.TryGetContentType(live.Video.Path, out var type)) type = "application/octet-stream";
        return TypedResults.PhysicalFile(live.Video.Path, type, enableRangeProcessing: true).ExecuteAsync(context);
    }

    /// <summary>Video types by file name extension: ASP.NET Core's table, which leaves Matroska out.</summary>
    static readonly Microsoft.AspNetCore.StaticFiles.FileExtensionContentTypeProvider ContentTypes = new() { Mappings = { [".mkv"] = "video/x-matroska" } };

    async Task PushFrameAsync(HttpContext context)
    {
        var live = Find(context);
        live.RequirePush();
        string? type = context.Request.ContentType;
        if (type == null || !type.StartsWith("image/", StringComparison.OrdinalIgnoreCase))
            throw new ApiException(StatusCodes.Status415UnsupportedMediaType, "invalid_request_error",
                $"send the frame as the body with Content-Type image/jpeg or image/png, not {type ?? "none"}", code: "unsupported_media_type");
        TimeSpan? timestamp = null;
        string? given = context.Request.Query["timestamp"].FirstOrDefault() ?? context.Request.Headers["X-Frame-Timestamp"].FirstOrDefault();
        if (given != null)
        {
            if (!double.TryParse(given, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) || !double.IsFinite(seconds) || seconds < 0 || seconds > TimeSpan.MaxValue.TotalSeconds / 2)
                throw ApiException.BadRequest($"'{Shorten(given)}' is not a time in seconds ≥ 0", "timestamp");
            timestamp = TimeSpan.FromSeconds(seconds);
        }
        using var body = new MemoryStream();
        await context.Request.Body.CopyToAsync(body, context.RequestAborted).ConfigureAwait(false);
        var accepted = await live.PushAsync(body.ToArray(), timestamp, "body", context.RequestAborted).ConfigureAwait(false);
        context.Response.StatusCode = StatusCodes.Status202Accepted;
        await context.Response.WriteAsJsonAsync(accepted, Wire.FrameAccepted, contentType: "application/json", context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>
    /// The WebSocket of a push session: each binary message is one JPEG/PNG frame, answered with a text message (the
    /// <see cref="FrameAccepted"/>, or an error body for a frame that does not decode, after which the socket goes on).
    /// The socket closes when the client closes it or the session ends.
    /// </summary>
    async Task StreamAsync(HttpContext context)
    {
        var live = Find(context);
        if (!context.WebSockets.IsWebSocketRequest)
            throw ApiException.BadRequest("this route is a WebSocket: connect with Upgrade: websocket and send each frame as a binary message (JPEG or PNG)", null, "websocket_required");
        live.RequirePush();
        var aborted = context.RequestAborted;
        using var socket = await context.WebSockets.AcceptWebSocketAsync().ConfigureAwait(false);
        var buffer = new byte[1 << 16];
        using var message = new MemoryStream();
        try
        {
            while (true)
            {
                message.SetLength(0);
                WebSocketReceiveResult received;
                do
                {
                    received = await socket.ReceiveAsync(buffer, aborted).ConfigureAwait(false);
                    if (received.MessageType == WebSocketMessageType.Close)
                    {
                        await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, aborted).ConfigureAwait(false);
                        return;
                    }
                    if (message.Length + received.Count > options.MaxBodyBytes)
                    {
                        await socket.CloseOutputAsync(WebSocketCloseStatus.MessageTooBig, $"a frame is over the server's limit of {options.MaxBodyBytes} bytes", aborted).ConfigureAwait(false);
                        return;
                    }
                    message.Write(buffer, 0, received.Count);
                } while (!received.EndOfMessage);
                byte[] reply;
                if (received.MessageType != WebSocketMessageType.Binary)
                    reply = JsonSerializer.SerializeToUtf8Bytes(ApiException.BadRequest("send each frame as one binary message (JPEG or PNG), not text", "message").Body, Wire.ErrorBody);
                else
                {
                    try
                    {
                        reply = JsonSerializer.SerializeToUtf8Bytes(await live.PushAsync(message.ToArray(), null, "message", aborted).ConfigureAwait(false), Wire.FrameAccepted);
                    }
                    catch (ApiException e) when (e.StatusCode == StatusCodes.Status409Conflict)
                    {
                        await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, $"session {live.Id} has {live.State}", aborted).ConfigureAwait(false);
                        return;
                    }
                    catch (ApiException e)
                    {
                        reply = JsonSerializer.SerializeToUtf8Bytes(e.Body, Wire.ErrorBody);
                    }
                }
                await socket.SendAsync(reply, WebSocketMessageType.Text, endOfMessage: true, aborted).ConfigureAwait(false);
            }
        }
        catch (WebSocketException) when (!aborted.IsCancellationRequested)
        {
            // The client went away without a close handshake: nothing to answer.
        }
    }

    async Task AskAsync(HttpContext context)
    {
        var live = Find(context);
        var request = await ChatCompletions.ReadJsonAsync(context, Wire.AskRequest).ConfigureAwait(false);
        if (string.IsNullOrWhiteSpace(request.Question)) throw ApiException.BadRequest("a question is needed", "question");
        if (request.MaxTokens is < 1) throw ApiException.BadRequest($"must be at least 1, not {request.MaxTokens}", "max_tokens");
        var sampling = ChatCompletions.Sampling(request.Temperature, request.TopP, request.TopK, request.MinP, request.Seed);
        if (!live.TryBeginAsk(options.MaxAsksPerSession))
            throw new ApiException(StatusCodes.Status429TooManyRequests, "rate_limit_error",
                $"session {live.Id} is answering {options.MaxAsksPerSession} questions already; try again when one has finished", code: "too_many_questions");
        try
        {
            var ask = new AskOptions { MaxTokens = request.MaxTokens ?? options.DefaultMaxTokens ?? 256, Sampling = sampling, IgnoreEndOfGeneration = request.IgnoreEos ?? false, Usage = new AskUsage() };
            await ChatCompletions.RespondAsync(context, live.Session, QuestionPrompt(request.Question), ask, request.Stream ?? true,
                request.StreamOptions?.IncludeUsage ?? false, modelId, options.Log, null).ConfigureAwait(false);
        }
        catch (ObjectDisposedException) when (!context.RequestAborted.IsCancellationRequested)
        {
            throw new ApiException(StatusCodes.Status404NotFound, "invalid_request_error", $"session {live.Id} was deleted before the question could be asked", "id", "session_not_found");
        }
        finally
        {
            live.EndAsk();
        }
    }

    async Task EventsAsync(HttpContext context)
    {
        var live = Find(context);
        var channel = live.Events.Subscribe(live.Snapshot());
        try
        {
            var response = context.Response;
            response.ContentType = "text/event-stream";
            response.Headers.CacheControl = "no-cache";
            response.Headers["X-Accel-Buffering"] = "no";
            var aborted = context.RequestAborted;
            await foreach (var value in channel.Reader.ReadAllAsync(aborted).ConfigureAwait(false))
            {
                // A named event ("event: progress") with the same type inside its data, for readers that see only data.
                await response.WriteAsync($"event: {value.Type}\n", aborted).ConfigureAwait(false);
                await ChatCompletions.WriteEventAsync(response, value, Wire.SessionEvent, aborted).ConfigureAwait(false);
            }
        }
        finally
        {
            live.Events.Unsubscribe(channel);
        }
    }

    /// <summary>Stops every live session (the server is stopping) and gives their slots back.</summary>
    public async ValueTask DisposeAsync()
    {
        foreach (var id in sessions.Keys)
            if (sessions.TryRemove(id, out var live))
            {
                await live.StopAsync().ConfigureAwait(false);
                slots.Release();
            }
    }

    static string Shorten(string text) => text.Length <= 80 ? text : text[..77] + "...";
}
