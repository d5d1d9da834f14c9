using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Text;

namespace VidKV.Server;

/// <summary>
/// <c>POST /v1/chat/completions</c>: the JSON body becomes a <see cref="PreparedChat"/> (messages rendered with the
/// model's chat template, images decoded, sampling settings checked), then a session of its own on the shared engine
/// reads the prompt — text up to each image with <see cref="Session.AppendAsync(string, CancellationToken)"/>, each image with
/// <see cref="Session.AppendImageAsync"/> — and answers the rest with <see cref="Session.AskAsync"/>, whole or as
/// server-sent events. The request's abort token runs through every call, so a client that goes away stops its answer,
/// and the session's pages go back when the request ends.
/// </summary>
sealed class ChatCompletions(InferenceEngine engine, ServerOptions options, string modelId, MediaFiles media)
{
    readonly SemaphoreSlim slots = new(options.MaxSessions, options.MaxSessions);
    readonly ChatFormat format = ChatTemplate.Detect(engine.Model.Vocabulary.ChatTemplate);

    static readonly byte[] DonePayload = "data: [DONE]\n\n"u8.ToArray();

    /// <summary>Requests being answered now.</summary>
    public int Active => options.MaxSessions - slots.CurrentCount;

    public async Task HandleAsync(HttpContext context)
    {
        var request = await ReadAsync(context).ConfigureAwait(false);
        var chat = Prepare(request);
        if (!slots.Wait(0))
            throw new ApiException(StatusCodes.Status429TooManyRequests, "rate_limit_error",
                $"the server is answering {options.MaxSessions} requests already (its --max-sessions); try again when one has finished", code: "too_many_sessions");
        try
        {
            await AnswerAsync(context, chat).ConfigureAwait(false);
        }
        finally
        {
            slots.Release();
        }
    }

    /// <summary>A request checked and turned into the engine's terms.</summary>
    sealed record PreparedChat(string[] Segments, List<RgbImage> Images, List<string> ImageParams, int? MaxTokens, SamplingOptions Sampling,
        bool IgnoreEos, bool Stream, bool IncludeUsage);

    static async Task<ChatCompletionRequest> ReadAsync(HttpContext context)
    {
        ChatCompletionRequest? request;
        try
        {
            request = await JsonSerializer.DeserializeAsync(context.Request.Body, Wire.ChatCompletionRequest, context.RequestAborted).ConfigureAwait(false);
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
            "max_tokens" or "max_completion_tokens" or "top_k" or "n" or "seed" => "an integer",
            "temperature" or "top_p" or "min_p" => "a number",
            "stream" or "ignore_eos" or "include_usage" => "true or false",
            "model" or "role" or "type" or "text" or "url" or "detail" => "a string",
            "messages" => "an array of messages",
            "stream_options" or "image_url" => "an object",
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
        var defaults = new SamplingOptions();
        if (request.Temperature is float t && (!float.IsFinite(t) || t < 0)) throw ApiException.BadRequest($"must be 0 (greedy) or more, not {t}", "temperature");
        if (request.TopP is float p && (!float.IsFinite(p) || p <= 0 || p > 1)) throw ApiException.BadRequest($"must be in (0, 1], not {p}", "top_p");
        if (request.TopK is < 0) throw ApiException.BadRequest($"must be 0 (off) or more, not {request.TopK}", "top_k");
        if (request.MinP is float m && (!float.IsFinite(m) || m < 0 || m > 1)) throw ApiException.BadRequest($"must be in [0, 1], not {m}", "min_p");
        var sampling = new SamplingOptions
        {
            Temperature = request.Temperature ?? defaults.Temperature,
            TopP = request.TopP ?? defaults.TopP,
            TopK = request.TopK ?? defaults.TopK,
            MinP = request.MinP ?? defaults.MinP,
            // OpenAI's seed is 64-bit; the sampler's is 32: fold the halves, so every seed still picks one fixed stream.
            Seed = request.Seed is long seed ? unchecked((int)seed ^ (int)(seed >> 32)) : null,
        };

        // Each image stands in the rendered prompt as a marker no client text can contain, then the prompt is cut there.
        string marker = $"<vidkv-image-{Guid.NewGuid():N}>";
        var images = new List<RgbImage>();
        var imageParams = new List<string>();
        var turns = new List<ChatMessage>();
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
            var text = new StringBuilder();
            for (int j = 0; j < content.Parts.Count; j++)
            {
                string partAt = $"{at}.content[{j}]";
                var part = content.Parts[j] ?? throw ApiException.BadRequest("a content part must be an object", partAt);
                switch (part.Type)
                {
                    case "text":
                        text.Append(part.Text ?? throw ApiException.BadRequest("a text part needs its text", $"{partAt}.text"));
                        break;
                    case "image_url":
                        string urlAt = $"{partAt}.image_url.url";
                        if (role != "user") throw ApiException.BadRequest($"images go in user messages, not {role} ones", partAt);
                        if (engine.Vision == null)
                            throw ApiException.BadRequest($"the model {modelId} reads no images: start the server with its vision projector (--mmproj)", partAt, "model_not_multimodal");
                        string url = part.ImageUrl?.Url ?? throw ApiException.BadRequest("an image_url part needs image_url.url", urlAt);
                        images.Add(media.Load(url, urlAt));
                        imageParams.Add(urlAt);
                        text.Append(marker);
                        break;
                    case null:
                        throw ApiException.BadRequest("missing part type (text, image_url)", $"{partAt}.type");
                    default:
                        throw ApiException.BadRequest($"content part type '{part.Type}' is not supported (text, image_url)", $"{partAt}.type");
                }
            }
            turns.Add(new ChatMessage(role, text.ToString()));
        }
        string prompt = ChatTemplate.Apply(format, turns);
        return new PreparedChat(prompt.Split(marker), images, imageParams, maxTokens, sampling, request.IgnoreEos ?? false, request.Stream ?? false,
            request.StreamOptions?.IncludeUsage ?? false);
    }

    async Task AnswerAsync(HttpContext context, PreparedChat chat)
    {
        var aborted = context.RequestAborted;
        int contextLength = engine.Options.ContextLength;
        await using var session = engine.CreateSession();
        for (int k = 0; k < chat.Images.Count; k++)
        {
            try
            {
                if (chat.Segments[k].Length > 0) await session.AppendAsync(chat.Segments[k], aborted).ConfigureAwait(false);
                await session.AppendImageAsync(chat.Images[k], aborted).ConfigureAwait(false);
            }
            catch (ArgumentException e)
            {
                throw ApiException.BadRequest(e.Message, chat.ImageParams[k]);
            }
            catch (InvalidOperationException e) when (e is not ObjectDisposedException && !aborted.IsCancellationRequested)
            {
                throw new ApiException(400, "invalid_request_error", $"the prompt up to this image does not fit: {e.Message}", chat.ImageParams[k], "context_length_exceeded");
            }
        }
        string question = chat.Segments[^1];
        int questionTokens = engine.Model.Tokenizer.Encode(question, addSpecial: chat.Images.Count == 0, parseSpecial: true).Count;
        long used = (long)session.NextPosition + questionTokens;
        if (used >= contextLength)
            throw new ApiException(400, "invalid_request_error", $"the prompt takes {used} positions, which does not fit the context of {contextLength} (the server's -c)", "messages", "context_length_exceeded");
        int room = (int)Math.Min(contextLength - used, int.MaxValue);
        var usage = new AskUsage();
        var ask = new AskOptions
        {
            MaxTokens = Math.Min(chat.MaxTokens ?? options.DefaultMaxTokens ?? int.MaxValue, room),
            Sampling = chat.Sampling, IgnoreEndOfGeneration = chat.IgnoreEos, Usage = usage,
        };
        string id = "chatcmpl-" + RandomNumberGenerator.GetHexString(24, lowercase: true);
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        await using var pieces = session.AskAsync(question, ask, aborted).GetAsyncEnumerator(aborted);
        // The first piece (or the end) before any byte is sent: a failure up to here still gets a status code.
        bool more = await pieces.MoveNextAsync().ConfigureAwait(false);
        if (!chat.Stream)
        {
            var text = new StringBuilder();
            for (; more; more = await pieces.MoveNextAsync().ConfigureAwait(false)) text.Append(pieces.Current);
            await session.DisposeAsync().ConfigureAwait(false); // the pages are back before the client hears the answer
            var completion = new ChatCompletion(id, created, modelId, [new CompletionChoice(0, new AssistantMessage(text.ToString()), FinishReason(usage))],
                new Usage(usage.PromptTokens, usage.CompletionTokens));
            await context.Response.WriteAsJsonAsync(completion, Wire.ChatCompletion, contentType: "application/json", aborted).ConfigureAwait(false);
            options.Log?.WriteLine($"  {id}: {usage.PromptTokens} prompt + {usage.CompletionTokens} completion tokens, {FinishReason(usage)}");
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
            options.Log?.WriteLine($"  {id}: failed mid-stream: {reason}");
            return;
        }
        await session.DisposeAsync().ConfigureAwait(false);
        await WriteEventAsync(response, Chunk(null, null, FinishReason(usage)), aborted).ConfigureAwait(false);
        if (chat.IncludeUsage)
            await WriteEventAsync(response, new ChatCompletionChunk(id, created, modelId, [], new Usage(usage.PromptTokens, usage.CompletionTokens)), aborted).ConfigureAwait(false);
        await response.Body.WriteAsync(DonePayload, aborted).ConfigureAwait(false);
        await response.Body.FlushAsync(aborted).ConfigureAwait(false);
        options.Log?.WriteLine($"  {id}: {usage.PromptTokens} prompt + {usage.CompletionTokens} completion tokens, {FinishReason(usage)} (streamed)");
    }

    static string FinishReason(AskUsage usage) => usage.EndedOnEndOfGeneration ? "stop" : "length";

    static Task WriteEventAsync(HttpResponse response, ChatCompletionChunk chunk, CancellationToken cancellation) =>
        WriteEventAsync(response, chunk, Wire.ChatCompletionChunk, cancellation);

    /// <summary>One server-sent event, <c>data: {json}</c> and a blank line, flushed at once.</summary>
    static async Task WriteEventAsync<T>(HttpResponse response, T value, JsonTypeInfo<T> type, CancellationToken cancellation)
    {
        var buffer = new MemoryStream();
        buffer.Write("data: "u8);
        JsonSerializer.Serialize(buffer, value, type);
        buffer.Write("\n\n"u8);
        await response.Body.WriteAsync(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), cancellation).ConfigureAwait(false);
        await response.Body.FlushAsync(cancellation).ConfigureAwait(false);
    }
}
