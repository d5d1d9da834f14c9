using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Text;
using VidKV.Video;

namespace VidKV.Server;

/// <summary>
/// <c>POST /v1/chat/completions</c>: the JSON body becomes a <see cref="PreparedChat"/> (a <see cref="ChatPrompt"/>:
/// messages rendered with the model's chat template, images decoded, videos located; sampling settings checked), then a
/// session of its own on the shared engine reads the prompt part by part (<see cref="ChatPrompt.AppendPartAsync"/>, as
/// <see cref="VidKVChatClient"/> reads it) — text up to each image or video, each image with
/// <see cref="Session.AppendImageAsync"/>, each video's frames (ffmpeg, at the request's fps and frame limit) with
/// <see cref="Session.AppendVideoAsync"/> in the model family's video layout — and answers the rest with
/// <see cref="Session.AskAsync"/>, whole or as server-sent events. The request's abort token runs through every call,
/// so a client that goes away stops its answer, and the session's pages go back when the request ends.
/// </summary>
sealed class ChatCompletions(InferenceEngine engine, ServerOptions options, string modelId, MediaFiles media, SessionSlots slots)
{
    readonly ChatFormat format = ChatTemplate.Detect(engine.Model.Vocabulary.ChatTemplate);

    static readonly byte[] DonePayload = "data: [DONE]\n\n"u8.ToArray();

    public async Task HandleAsync(HttpContext context)
    {
        var request = await ReadJsonAsync(context, Wire.ChatCompletionRequest).ConfigureAwait(false);
        var chat = Prepare(request);
        slots.Take();
        var videos = new List<VideoFile>();
        try
        {
            foreach (var item in chat.Media)
                if (item.VideoUrl is { } url) videos.Add(await media.OpenVideoAsync(url, item.Param, item.PlainBase64, context.RequestAborted).ConfigureAwait(false));
            await AnswerAsync(context, chat, videos).ConfigureAwait(false);
        }
        finally
        {
            await chat.Prompt.DisposeAsync().ConfigureAwait(false);
            foreach (var video in videos) video.Dispose();
            slots.Release();
        }
    }

    /// <summary>One image or video of a request, in prompt order, with its place in the request for errors.</summary>
    sealed record MediaItem(string Param, RgbImage? Image, string? VideoUrl = null, bool PlainBase64 = false);

    /// <summary>A request checked and turned into the engine's terms.</summary>
    sealed record PreparedChat(ChatPrompt Prompt, List<MediaItem> Media, FrameSampling VideoSampling, int? MaxTokens, SamplingOptions Sampling,
        bool IgnoreEos, bool Stream, bool IncludeUsage);

    /// <summary>The JSON body as <typeparamref name="T"/>; malformed JSON is a 400 naming where and why.</summary>
    internal static async Task<T> ReadJsonAsync<T>(HttpContext context, JsonTypeInfo<T> type) where T : class
    {
        T? request;
        try
        {
            request = await JsonSerializer.DeserializeAsync(context.Request.Body, type, context.RequestAborted).ConfigureAwait(false);
        }
        catch (JsonException e)
        {
            string? field = e.Path is { Length: > 1 } path ? path.TrimStart('$', '.') : null;
            throw new ApiException(StatusCodes.Status400BadRequest, "invalid_request_error",
                $"malformed JSON{(field != null ? $" at {field}" : "")} (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}): {Reason(e)}", field, "invalid_json");
        }
        return request ?? throw ApiException.BadRequest("the body must be a JSON object, not null");
    }

    /// <summary>
    /// System.Text.Json's message in a client's terms: without the path it appends, and a value of the wrong type
    /// explained by what the field takes (its message names the request's .NET type, which says nothing to a client).
    /// </summary>
    static string Reason(JsonException e)
    {
        string message = e.Message.Split(" Path: ", 2)[0].Split(" LineNumber: ", 2)[0].TrimEnd(' ', '|', '.');
        if (!message.Contains("could not be converted to", StringComparison.Ordinal)) return message;
        string field = e.Path is { } path ? path[(path.LastIndexOf('.') + 1)..].Split('[')[0] : "";
        string expected = field switch
        {
            "max_tokens" or "max_completion_tokens" or "top_k" or "n" or "seed" or "num_frames" or "max_frames" or "kv_budget" or "comment_max_tokens" => "an integer",
            "temperature" or "top_p" or "min_p" or "fps" or "threshold" => "a number",
            "stream" or "ignore_eos" or "include_usage" or "proactive" => "true or false",
            "model" or "role" or "type" or "text" or "url" or "detail" or "data" or "format" or "source" or "question" or "kv_policy" or "silence_token"
                or "file_data" or "filename" or "file_id" => "a string",
            "messages" => "an array of messages",
            "stream_options" or "image_url" or "video_url" or "input_video" or "file" or "media_io_kwargs" or "video" => "an object",
            _ => "a value of another type",
        };
        return $"the value has the wrong type: expected {expected}";
    }

    PreparedChat Prepare(ChatCompletionRequest request)
    {
        if (request.Messages is not { Count: > 0 } messages) throw ApiException.BadRequest("at least one message is needed", "messages");
        if (request.N is int n && n != 1) throw ApiException.BadRequest($"one choice per request (n = 1) is all this server gives, not {n}", "n");
        if (request.Stop is { ValueKind: not JsonValueKind.Null } stop && !(stop.ValueKind == JsonValueKind.Array && stop.GetArrayLength() == 0))
            throw ApiException.BadRequest("stop sequences are not supported yet", "stop");
        if (request.Tools is { ValueKind: not JsonValueKind.Null } tools && !(tools.ValueKind == JsonValueKind.Array && tools.GetArrayLength() == 0))
            throw ApiException.BadRequest("tools are not supported yet", "tools");
        string maxName = request.MaxCompletionTokens != null ? "max_completion_tokens" : "max_tokens";
        int? maxTokens = request.MaxCompletionTokens ?? request.MaxTokens;
        if (maxTokens is < 1) throw ApiException.BadRequest($"must be at least 1, not {maxTokens}", maxName);
        var sampling = Sampling(request.Temperature, request.TopP, request.TopK, request.MinP, request.Seed);
        var videoSampling = VideoSampling(request.MediaIoKwargs?.Video);

        // Videos are opened once the request is checked and has its slot (HandleAsync), then given to the prompt.
        var prompt = new ChatPrompt.Builder(format);
        var mediaItems = new List<MediaItem>();
        for (int i = 0; i < messages.Count; i++)
        {
            string at = $"messages[{i}]";
            var message = messages[i] ?? throw ApiException.BadRequest("a message must be an object", at);
            string role = message.Role switch
            {
                "system" or "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                null => throw ApiException.BadRequest("missing role", $"{at}.role"),
                var other => throw ApiException.BadRequest($"role '{other}' is not supported (system, developer, user, assistant)", $"{at}.role"),
            };
            var content = message.Content ?? throw ApiException.BadRequest("missing content", $"{at}.content");
            prompt.BeginMessage(role);
            for (int j = 0; j < content.Parts.Count; j++)
            {
                string partAt = $"{at}.content[{j}]";
                var part = content.Parts[j] ?? throw ApiException.BadRequest("a content part must be an object", partAt);
                switch (part.Type)
                {
                    case "text":
                        prompt.AddText(part.Text ?? throw ApiException.BadRequest("a text part needs its text", $"{partAt}.text"));
                        break;
                    case "image_url":
                        string urlAt = $"{partAt}.image_url.url";
                        if (role != "user") throw ApiException.BadRequest($"images go in user messages, not {role} ones", partAt);
                        if (engine.Vision == null)
                            throw ApiException.BadRequest($"the model {modelId} reads no images: start the server with its vision projector (--mmproj)", partAt, "model_not_multimodal");
                        string url = part.ImageUrl?.Url ?? throw ApiException.BadRequest("an image_url part needs image_url.url", urlAt);
                        var image = media.Load(url, urlAt);
                        mediaItems.Add(new MediaItem(urlAt, image));
                        prompt.AddImage(image, urlAt);
                        break;
                    case "video_url" or "input_video":
                        if (role != "user") throw ApiException.BadRequest($"videos go in user messages, not {role} ones", partAt);
                        if (engine.Vision == null)
                            throw ApiException.BadRequest($"the model {modelId} reads no video: start the server with its vision projector (--mmproj)", partAt, "model_not_multimodal");
                        if (part.Type == "video_url")
                        {
                            string videoAt = $"{partAt}.video_url.url";
                            mediaItems.Add(new MediaItem(videoAt, null, part.VideoUrl?.Url ?? throw ApiException.BadRequest("a video_url part needs video_url.url", videoAt)));
                        }
                        else
                        {
                            // llama-server's shape: input_video.data (base64) or input_video.url (a URL, a file, or base64 too).
                            var input = part.InputVideo ?? throw ApiException.BadRequest("an input_video part needs input_video.data or input_video.url", $"{partAt}.input_video");
                            string videoAt = input.Data != null ? $"{partAt}.input_video.data" : $"{partAt}.input_video.url";
                            string value = input.Data ?? input.Url ?? throw ApiException.BadRequest("an input_video part needs input_video.data or input_video.url", $"{partAt}.input_video");
                            mediaItems.Add(new MediaItem(videoAt, null, value, PlainBase64: input.Data != null));
                        }
                        prompt.AddVideo(null, mediaItems[^1].Param);
                        break;
                    case "file":
                    {
                        // OpenAI's file part, inline: a data: URL whose media type says image or video.
                        string fileAt = $"{partAt}.file.file_data";
                        var file = part.File ?? throw ApiException.BadRequest("a file part needs file.file_data", $"{partAt}.file");
                        if (file.FileData == null)
                            throw ApiException.BadRequest(file.FileId != null ? "file_id refers to an uploaded file, which this server does not keep: send the file inline as file_data" : "a file part needs file.file_data", fileAt);
                        string mediaType = file.FileData.StartsWith("data:", StringComparison.OrdinalIgnoreCase) ? file.FileData[5..].Split([';', ','], 2)[0].ToLowerInvariant() : "";
                        bool isImage = mediaType.StartsWith("image/", StringComparison.Ordinal), isVideo = mediaType.StartsWith("video/", StringComparison.Ordinal);
                        if (!isImage && !isVideo)
                            throw ApiException.BadRequest($"file_data must be a data: URL of an image or a video, not {(mediaType.Length == 0 ? "this" : $"'{mediaType}'")}", fileAt);
                        if (role != "user") throw ApiException.BadRequest($"{(isImage ? "images" : "videos")} go in user messages, not {role} ones", partAt);
                        if (engine.Vision == null)
                            throw ApiException.BadRequest($"the model {modelId} reads no {(isImage ? "images" : "video")}: start the server with its vision projector (--mmproj)", partAt, "model_not_multimodal");
                        if (isImage)
                        {
                            var fileImage = media.Load(file.FileData, fileAt);
                            mediaItems.Add(new MediaItem(fileAt, fileImage));
                            prompt.AddImage(fileImage, fileAt);
                        }
                        else
                        {
                            mediaItems.Add(new MediaItem(fileAt, null, file.FileData));
                            prompt.AddVideo(null, fileAt);
                        }
                        break;
                    }
                    case null:
                        throw ApiException.BadRequest("missing part type (text, image_url, video_url, input_video, file)", $"{partAt}.type");
                    default:
                        throw ApiException.BadRequest($"content part type '{part.Type}' is not supported (text, image_url, video_url, input_video, file)", $"{partAt}.type");
                }
            }
        }
        return new PreparedChat(prompt.Build(), mediaItems, videoSampling, maxTokens, sampling, request.IgnoreEos ?? false, request.Stream ?? false,
            request.StreamOptions?.IncludeUsage ?? false);
    }

    /// <summary>Sampling settings checked, each bad one a 400 naming its field.</summary>
    internal static SamplingOptions Sampling(float? temperature, float? topP, int? topK, float? minP, long? seed)
    {
        var defaults = new SamplingOptions();
        if (temperature is float t && (!float.IsFinite(t) || t < 0)) throw ApiException.BadRequest($"must be 0 (greedy) or more, not {t}", "temperature");
        if (topP is float p && (!float.IsFinite(p) || p <= 0 || p > 1)) throw ApiException.BadRequest($"must be in (0, 1], not {p}", "top_p");
        if (topK is < 0) throw ApiException.BadRequest($"must be 0 (off) or more, not {topK}", "top_k");
        if (minP is float m && (!float.IsFinite(m) || m < 0 || m > 1)) throw ApiException.BadRequest($"must be in [0, 1], not {m}", "min_p");
        return new SamplingOptions
        {
            Temperature = temperature ?? defaults.Temperature,
            TopP = topP ?? defaults.TopP,
            TopK = topK ?? defaults.TopK,
            MinP = minP ?? defaults.MinP,
            Seed = seed is long s ? SamplingOptions.FoldSeed(s) : null, // OpenAI's seed is 64-bit, the sampler's 32
        };
    }

    /// <summary>A request's video sampling: vLLM's <c>media_io_kwargs.video</c> fps and num_frames, else the server's defaults; at most the server's frame limit.</summary>
    FrameSampling VideoSampling(VideoSampling? video)
    {
        const string at = "media_io_kwargs.video";
        double fps = video?.Fps ?? options.VideoFps;
        if (!double.IsFinite(fps) || fps <= 0 || fps > 60) throw ApiException.BadRequest($"must be more than 0 and at most 60, not {fps}", $"{at}.fps");
        int frames = video?.NumFrames ?? options.MaxVideoFrames;
        if (frames < 1 || frames > options.MaxVideoFrames)
            throw ApiException.BadRequest($"must be 1 to the server's limit of {options.MaxVideoFrames} (--max-video-frames), not {frames}", $"{at}.num_frames");
        return new FrameSampling { Fps = fps, MaxFrames = frames };
    }

    async Task AnswerAsync(HttpContext context, PreparedChat chat, List<VideoFile> videos)
    {
        var aborted = context.RequestAborted;
        int contextLength = engine.Options.ContextLength;
        await using var session = engine.CreateSession();
        for (int k = 0, v = 0; k < chat.Media.Count; k++)
        {
            var item = chat.Media[k];
            try
            {
                if (item.Image == null) chat.Prompt.ProvideVideo(k, new FfmpegSource(videos[v++].Path, chat.VideoSampling));
                await chat.Prompt.AppendPartAsync(session, k, aborted).ConfigureAwait(false);
            }
            catch (VideoSourceException e) when (!aborted.IsCancellationRequested)
            {
                // Its message starts with the (temporary) file's name: the client knows the video by its field.
                string problem = e.Message.StartsWith(e.SourceName + ": ", StringComparison.Ordinal) ? e.Message[(e.SourceName.Length + 2)..] : e.Message;
                throw new ApiException(400, "invalid_request_error", $"{item.Param}: the video cannot be read: {problem}", item.Param, "invalid_video");
            }
            catch (ArgumentException e)
            {
                throw ApiException.BadRequest(e.Message, item.Param);
            }
            catch (InvalidOperationException e) when (e is not ObjectDisposedException && !aborted.IsCancellationRequested)
            {
                throw new ApiException(400, "invalid_request_error", $"the prompt up to this {(item.Image != null ? "image" : "video")} does not fit: {e.Message}", item.Param, "context_length_exceeded");
            }
        }
        string question = chat.Prompt.Question;
        long used = (long)session.NextPosition + session.PromptTokenCount(question);
        if (used >= contextLength)
            throw new ApiException(400, "invalid_request_error", $"the prompt takes {used} positions, which does not fit the context of {contextLength} (the server's -c)", "messages", "context_length_exceeded");
        int room = (int)Math.Min(contextLength - used, int.MaxValue);
        var usage = new AskUsage();
        var ask = new AskOptions
        {
            MaxTokens = Math.Min(chat.MaxTokens ?? options.DefaultMaxTokens ?? int.MaxValue, room),
            Sampling = chat.Sampling, IgnoreEndOfGeneration = chat.IgnoreEos, Usage = usage,
        };
        // The pages are back before the client hears the end of the answer.
        await RespondAsync(context, session, question, ask, chat.Stream, chat.IncludeUsage, modelId, options.Log, () => session.DisposeAsync()).ConfigureAwait(false);
    }

    /// <summary>
    /// Asks <paramref name="question"/> on <paramref name="session"/> and sends the answer as a <c>chat.completion</c>
    /// (whole) or <c>chat.completion.chunk</c> server-sent events ending <c>data: [DONE]</c>; <paramref name="beforeEnd"/>
    /// runs once the answer is complete, before its end is sent. Nothing is sent before the first piece, so a failure up
    /// to there still gets a status code; after it, an error travels as an event.
    /// </summary>
    internal static async Task RespondAsync(HttpContext context, Session session, string question, AskOptions ask, bool stream, bool includeUsage,
        string modelId, TextWriter? log, Func<ValueTask>? beforeEnd)
    {
        var aborted = context.RequestAborted;
        var usage = ask.Usage!;
        string id = "chatcmpl-" + RandomNumberGenerator.GetHexString(24, lowercase: true);
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        await using var pieces = session.AskAsync(question, ask, aborted).GetAsyncEnumerator(aborted);
        // The first piece (or the end) before any byte is sent: a failure up to here still gets a status code.
        bool more = await pieces.MoveNextAsync().ConfigureAwait(false);
        if (!stream)
        {
            var text = new StringBuilder();
            for (; more; more = await pieces.MoveNextAsync().ConfigureAwait(false)) text.Append(pieces.Current);
            if (beforeEnd != null) await beforeEnd().ConfigureAwait(false);
            var completion = new ChatCompletion(id, created, modelId, [new CompletionChoice(0, new AssistantMessage(text.ToString()), FinishReason(usage))],
                new Usage(usage.PromptTokens, usage.CompletionTokens));
            await context.Response.WriteAsJsonAsync(completion, Wire.ChatCompletion, contentType: "application/json", aborted).ConfigureAwait(false);
            log?.WriteLine($"  {id}: {usage.PromptTokens} prompt + {usage.CompletionTokens} completion tokens, {FinishReason(usage)}");
            return;
        }

        var response = context.Response;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        ChatCompletionChunk Chunk(string? role, string? content, string? finish) => new(id, created, modelId, [new ChunkChoice(0, new ChunkDelta(role, content), finish)]);
        await WriteEventAsync(response, Chunk("assistant", "", null), aborted).ConfigureAwait(false);
        try
        {
            for (; more; more = await pieces.MoveNextAsync().ConfigureAwait(false))
                await WriteEventAsync(response, Chunk(null, pieces.Current, null), aborted).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException || !aborted.IsCancellationRequested)
        {
            // Headers are gone: the error travels as an event, as llama-server sends it, and the stream ends without [DONE].
            string reason = InferenceServer.Unwrap(e).Message;
            await WriteEventAsync(response, new ErrorBody(new ErrorDetail($"the answer failed: {reason}", "server_error", null, null)), Wire.ErrorBody, aborted).ConfigureAwait(false);
            log?.WriteLine($"  {id}: failed mid-stream: {reason}");
            return;
        }
        if (beforeEnd != null) await beforeEnd().ConfigureAwait(false);
        await WriteEventAsync(response, Chunk(null, null, FinishReason(usage)), aborted).ConfigureAwait(false);
        if (includeUsage)
            await WriteEventAsync(response, new ChatCompletionChunk(id, created, modelId, [], new Usage(usage.PromptTokens, usage.CompletionTokens)), aborted).ConfigureAwait(false);
        await response.Body.WriteAsync(DonePayload, aborted).ConfigureAwait(false);
        await response.Body.FlushAsync(aborted).ConfigureAwait(false);
        log?.WriteLine($"  {id}: {usage.PromptTokens} prompt + {usage.CompletionTokens} completion tokens, {FinishReason(usage)} (streamed)");
    }

    static string FinishReason(AskUsage usage) => usage.EndedOnEndOfGeneration ? "stop" : "length";

    static Task WriteEventAsync(HttpResponse response, ChatCompletionChunk chunk, CancellationToken cancellation) =>
        WriteEventAsync(response, chunk, Wire.ChatCompletionChunk, cancellation);

    /// <summary>One server-sent event, <c>data: {json}</c> and a blank line, flushed at once.</summary>
    internal static async Task WriteEventAsync<T>(HttpResponse response, T value, JsonTypeInfo<T> type, CancellationToken cancellation)
    {
        var buffer = new MemoryStream();
        buffer.Write("data: "u8);
        JsonSerializer.Serialize(buffer, value, type);
        buffer.Write("\n\n"u8);
        await response.Body.WriteAsync(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), cancellation).ConfigureAwait(false);
        await response.Body.FlushAsync(cancellation).ConfigureAwait(false);
    }
}
