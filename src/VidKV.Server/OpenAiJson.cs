using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace VidKV.Server;

// The wire shapes of OpenAI's chat completions API (and llama-server's extensions to it), parsed and written only here
// at the edge by source-generated System.Text.Json; the endpoints turn them into the engine's typed calls at once.

/// <summary>The body of <c>POST /v1/chat/completions</c>; fields the server does not use are ignored.</summary>
sealed class ChatCompletionRequest
{
    public string? Model { get; init; }
    public List<RequestMessage?>? Messages { get; init; }
    public bool? Stream { get; init; }
    public StreamOptions? StreamOptions { get; init; }
    public int? MaxTokens { get; init; }
    public int? MaxCompletionTokens { get; init; }
    public float? Temperature { get; init; }
    public float? TopP { get; init; }
    /// <summary>llama-server's extension.</summary>
    public int? TopK { get; init; }
    /// <summary>llama-server's extension.</summary>
    public float? MinP { get; init; }
    public long? Seed { get; init; }
    public int? N { get; init; }
    /// <summary>vLLM's extension: go on past end-of-generation tokens to <c>max_tokens</c> (<see cref="VidKV.Engine.AskOptions.IgnoreEndOfGeneration"/>).</summary>
    public bool? IgnoreEos { get; init; }
    /// <summary>Not supported yet; refused when given, rather than ignored.</summary>
    public JsonElement? Stop { get; init; }
    /// <summary>Not supported yet; refused when given, rather than ignored.</summary>
    public JsonElement? Tools { get; init; }
    /// <summary>vLLM's per-request media settings: <c>{"video": {"fps": 2, "num_frames": 16}}</c>.</summary>
    public MediaIoKwargs? MediaIoKwargs { get; init; }
}

/// <summary>vLLM's <c>media_io_kwargs</c>; only its <c>video</c> entry is read.</summary>
sealed class MediaIoKwargs
{
    public VideoSampling? Video { get; init; }
}

/// <summary>How a request's videos are sampled: <c>fps</c> frames per second, at most <c>num_frames</c> frames (vLLM's names).</summary>
sealed class VideoSampling
{
    public double? Fps { get; init; }
    public int? NumFrames { get; init; }
}

sealed class StreamOptions
{
    public bool? IncludeUsage { get; init; }
}

sealed class RequestMessage
{
    public string? Role { get; init; }
    [JsonConverter(typeof(MessageContentConverter))]
    public MessageContent? Content { get; init; }
}

/// <summary>A message's content: a plain string arrives as one text part.</summary>
sealed class MessageContent(List<ContentPart?> parts)
{
    public List<ContentPart?> Parts { get; } = parts;
}

sealed class ContentPart
{
    public string? Type { get; init; }
    public string? Text { get; init; }
    public ImageUrl? ImageUrl { get; init; }
    /// <summary>vLLM's video part: <c>{"type": "video_url", "video_url": {"url": …}}</c>.</summary>
    public ImageUrl? VideoUrl { get; init; }
    /// <summary>llama-server's video part: <c>{"type": "input_video", "input_video": {"data" or "url": …}}</c>.</summary>
    public InputVideo? InputVideo { get; init; }
    /// <summary>OpenAI's file part: <c>{"type": "file", "file": {"file_data": "data:…;base64,…", "filename": …}}</c> (what the official clients send for a video).</summary>
    public FilePart? File { get; init; }
}

/// <summary>OpenAI's <c>file</c> content: inline <c>file_data</c> (a data: URL) and its name; <c>file_id</c> (an uploaded file) is not served here.</summary>
sealed class FilePart
{
    public string? FileData { get; init; }
    public string? Filename { get; init; }
    public string? FileId { get; init; }
}

/// <summary>llama-server's <c>input_video</c>: <c>data</c> (base64) or <c>url</c> (an http(s) URL, a file, base64).</summary>
sealed class InputVideo
{
    public string? Data { get; init; }
    public string? Url { get; init; }
    public string? Format { get; init; }
}

sealed class ImageUrl
{
    public string? Url { get; init; }
    public string? Detail { get; init; }
}

/// <summary>Reads <c>"content"</c>, which OpenAI allows to be a string or an array of content parts.</summary>
sealed class MessageContentConverter : JsonConverter<MessageContent>
{
    public override MessageContent? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.String:
                return new MessageContent([new ContentPart { Type = "text", Text = reader.GetString() }]);
            case JsonTokenType.StartArray:
                var parts = JsonSerializer.Deserialize(ref reader, (JsonTypeInfo<List<ContentPart?>>)options.GetTypeInfo(typeof(List<ContentPart?>)));
                return new MessageContent(parts ?? []);
            default:
                throw new JsonException($"content must be a string or an array of content parts, not {reader.TokenType}");
        }
    }

    public override void Write(Utf8JsonWriter writer, MessageContent value, JsonSerializerOptions options) =>
        throw new NotSupportedException("request content is only read");
}

/// <summary>A whole answer (<c>"object": "chat.completion"</c>).</summary>
sealed record ChatCompletion(string Id, long Created, string Model, List<CompletionChoice> Choices, Usage Usage)
{
    [JsonPropertyOrder(-1)]
    public string Object => "chat.completion";
}

sealed record CompletionChoice(int Index, AssistantMessage Message, string FinishReason);

sealed record AssistantMessage(string Content)
{
    [JsonPropertyOrder(-1)]
    public string Role => "assistant";
}

sealed record Usage(int PromptTokens, int CompletionTokens)
{
    public int TotalTokens => PromptTokens + CompletionTokens;
}

/// <summary>One server-sent event of a streamed answer (<c>"object": "chat.completion.chunk"</c>).</summary>
sealed record ChatCompletionChunk(string Id, long Created, string Model, List<ChunkChoice> Choices, Usage? Usage = null)
{
    [JsonPropertyOrder(-1)]
    public string Object => "chat.completion.chunk";
}

sealed record ChunkChoice(int Index, ChunkDelta Delta, [property: JsonIgnore(Condition = JsonIgnoreCondition.Never)] string? FinishReason);

sealed record ChunkDelta(string? Role, string? Content);

/// <summary><c>GET /v1/models</c>.</summary>
sealed record ModelList(List<ModelEntry> Data)
{
    [JsonPropertyOrder(-1)]
    public string Object => "list";
}

sealed record ModelEntry(string Id, long Created, string OwnedBy)
{
    [JsonPropertyOrder(-1)]
    public string Object => "model";
}

sealed record HealthStatus(string Status);

/// <summary>The body of <c>POST /v1/sessions</c>.</summary>
sealed class SessionRequest
{
    /// <summary>
    /// A file under the media root, an http(s)/rtsp(s)/rtmp(s) URL, <c>camera:/dev/videoN</c>, <c>push</c>, <c>demo</c>
    /// (the built-in test pattern clip) or <c>upload:ID</c> (a video <c>POST /v1/uploads</c> took).
    /// </summary>
    public string? Source { get; init; }
    public double? Fps { get; init; }
    public int? MaxFrames { get; init; }
    public bool? Proactive { get; init; }
    public string? SilenceToken { get; init; }
    public float? Threshold { get; init; }
    public int? CommentMaxTokens { get; init; }
    public string? KvPolicy { get; init; }
    public int? KvBudget { get; init; }
}

/// <summary>
/// A live session as <c>GET /v1/sessions/{id}</c> shows it. <c>tokens_generated</c> counts the tokens its answers and
/// proactive comments generated so far (their rate is its tokens/s); <c>video_url</c>, for a session that reads a file
/// (a file under the media root, an upload, the demo), plays that file with range requests, its token standing in for
/// the API key (a video element sends no Authorization header).
/// </summary>
sealed record SessionInfo(string Id, long Created, string Source, string Kind, string State, int Frames,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.Never)] double? LastTimestamp, double FramesPerSecond, int Rows, string KvPolicy, bool Proactive,
    EngineKv Kv, long TokensGenerated, string? VideoUrl, string? Error = null)
{
    [JsonPropertyOrder(-1)]
    public string Object => "session";
    /// <summary>A <c>demo</c> session's world: the questions it asks with the world's answers, and its events (absent otherwise).</summary>
    public DemoInfo? Demo { get; init; }
}

/// <summary>A demo session's truth on the wire (<see cref="ServerDemo"/>'s questions and events).</summary>
sealed record DemoInfo(IReadOnlyList<DemoQuestion> Questions, IReadOnlyList<DemoEvent> Events);

/// <summary>The engine's KV memory, every session together.</summary>
sealed record EngineKv(long HotBytes, long ColdBytes, long BudgetBytes, int Pages);

/// <summary>The body of <c>POST /v1/sessions/{id}/ask</c>.</summary>
sealed class AskRequest
{
    public string? Question { get; init; }
    public int? MaxTokens { get; init; }
    public bool? Stream { get; init; }
    public StreamOptions? StreamOptions { get; init; }
    public float? Temperature { get; init; }
    public float? TopP { get; init; }
    public int? TopK { get; init; }
    public float? MinP { get; init; }
    public long? Seed { get; init; }
    /// <summary>vLLM's extension, as in chat completions.</summary>
    public bool? IgnoreEos { get; init; }
}

/// <summary>One event of <c>GET /v1/sessions/{id}/events</c> (its <c>type</c> is also the SSE event name).</summary>
sealed record SessionEvent(string Type)
{
    public int? Frames { get; init; }
    public double? Timestamp { get; init; }
    public double? FramesPerSecond { get; init; }
    public long? HotBytes { get; init; }
    public long? ColdBytes { get; init; }
    public int? Frame { get; init; }
    public string? Text { get; init; }
    public string? Message { get; init; }
    public string? State { get; init; }
}

/// <summary>The answer to a pushed frame (<c>POST /v1/sessions/{id}/frames</c>, or a WebSocket message).</summary>
sealed record FrameAccepted(bool Accepted, int FramesReceived, double Timestamp);

/// <summary>The answer to <c>POST /v1/uploads</c>: what ffprobe found, and the <c>source</c> a session watches it by.</summary>
sealed record UploadInfo(string Id, string Filename, long Bytes, [property: JsonIgnore(Condition = JsonIgnoreCondition.Never)] double? Duration,
    int Width, int Height, string Source)
{
    [JsonPropertyOrder(-1)]
    public string Object => "upload";
}

/// <summary><c>GET /v1/media</c>: the video files under the media root, each a <c>source</c> a session may watch.</summary>
sealed record MediaList(List<MediaEntry> Data, bool Truncated)
{
    [JsonPropertyOrder(-1)]
    public string Object => "list";
}

/// <summary>One video file under the media root: its path relative to the root, its size and its modification time (Unix seconds).</summary>
sealed record MediaEntry(string Path, long Bytes, long Modified);

/// <summary>The answer to <c>DELETE /v1/sessions/{id}</c>.</summary>
sealed record SessionDeleted(string Id, bool Deleted)
{
    [JsonPropertyOrder(-1)]
    public string Object => "session.deleted";
}

/// <summary>OpenAI's error body: <c>{"error": {"message", "type", "param", "code"}}</c>.</summary>
sealed record ErrorBody(ErrorDetail Error);

sealed record ErrorDetail(
    string Message,
    string Type,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.Never)] string? Param,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.Never)] string? Code);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    NumberHandling = JsonNumberHandling.Strict)]
[JsonSerializable(typeof(ChatCompletionRequest))]
[JsonSerializable(typeof(List<ContentPart?>))]
[JsonSerializable(typeof(ChatCompletion))]
[JsonSerializable(typeof(ChatCompletionChunk))]
[JsonSerializable(typeof(ModelList))]
[JsonSerializable(typeof(HealthStatus))]
[JsonSerializable(typeof(ErrorBody))]
[JsonSerializable(typeof(SessionRequest))]
[JsonSerializable(typeof(SessionInfo))]
[JsonSerializable(typeof(AskRequest))]
[JsonSerializable(typeof(SessionEvent))]
[JsonSerializable(typeof(FrameAccepted))]
[JsonSerializable(typeof(SessionDeleted))]
[JsonSerializable(typeof(UploadInfo))]
[JsonSerializable(typeof(MediaList))]
partial class ServerJson : JsonSerializerContext;

/// <summary>
/// The source-generated metadata of <see cref="ServerJson"/> under options that leave quotes, <c>&lt;</c>, <c>&gt;</c>
/// and non-ASCII text unescaped (the default escapes them for HTML pages; these bodies are JSON and event streams only),
/// so a streamed piece reads as what the model said.
/// </summary>
static class Wire
{
    static readonly JsonSerializerOptions Options = new(ServerJson.Default.Options) { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static readonly JsonTypeInfo<ChatCompletionRequest> ChatCompletionRequest = Get<ChatCompletionRequest>();
    public static readonly JsonTypeInfo<ChatCompletion> ChatCompletion = Get<ChatCompletion>();
    public static readonly JsonTypeInfo<ChatCompletionChunk> ChatCompletionChunk = Get<ChatCompletionChunk>();
    public static readonly JsonTypeInfo<ModelList> ModelList = Get<ModelList>();
    public static readonly JsonTypeInfo<HealthStatus> HealthStatus = Get<HealthStatus>();
    public static readonly JsonTypeInfo<ErrorBody> ErrorBody = Get<ErrorBody>();
    public static readonly JsonTypeInfo<SessionRequest> SessionRequest = Get<SessionRequest>();
    public static readonly JsonTypeInfo<SessionInfo> SessionInfo = Get<SessionInfo>();
    public static readonly JsonTypeInfo<AskRequest> AskRequest = Get<AskRequest>();
    public static readonly JsonTypeInfo<SessionEvent> SessionEvent = Get<SessionEvent>();
    public static readonly JsonTypeInfo<FrameAccepted> FrameAccepted = Get<FrameAccepted>();
    public static readonly JsonTypeInfo<SessionDeleted> SessionDeleted = Get<SessionDeleted>();
    public static readonly JsonTypeInfo<UploadInfo> UploadInfo = Get<UploadInfo>();
    public static readonly JsonTypeInfo<MediaList> MediaList = Get<MediaList>();

    static JsonTypeInfo<T> Get<T>() => (JsonTypeInfo<T>)Options.GetTypeInfo(typeof(T));
}
