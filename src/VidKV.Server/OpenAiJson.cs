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

    static JsonTypeInfo<T> Get<T>() => (JsonTypeInfo<T>)Options.GetTypeInfo(typeof(T));
}
