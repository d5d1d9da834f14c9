using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.AI;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Text;
using VidKV.Video;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace VidKV.Engine;

/// <summary>How a <see cref="VidKVChatClient"/> reads videos, bounds answers and keeps conversations.</summary>
public sealed record VidKVChatClientOptions
{
    /// <summary>The model's name in responses and <see cref="ChatClientMetadata"/> (null: the model file's name without <c>.gguf</c>).</summary>
    public string? ModelId { get; init; }
    /// <summary>Frames per second a video is sampled at (at most one frame per 1/fps of stream time).</summary>
    public double VideoFps { get; init; } = 1;
    /// <summary>Most frames read of one video (null: all it has at <see cref="VideoFps"/>).</summary>
    public int? MaxVideoFrames { get; init; } = 256;
    /// <summary>
    /// Most tokens of an answer when <see cref="ChatOptions.MaxOutputTokens"/> is not set (null: until the end of
    /// generation or the engine's context, <see cref="EngineOptions.ContextLength"/>).
    /// </summary>
    public int? DefaultMaxOutputTokens { get; init; } = 1024;
    /// <summary>Most conversations kept at once; starting one more disposes the one used least recently.</summary>
    public int MaxConversations { get; init; } = 16;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first setting out of range.</summary>
    public void Validate()
    {
        if (!double.IsFinite(VideoFps) || VideoFps <= 0 || VideoFps > 1000) throw new ArgumentException($"video fps must be in (0, 1000], not {VideoFps}");
        if (MaxVideoFrames is < 1) throw new ArgumentException($"max video frames must be at least 1, not {MaxVideoFrames}");
        if (DefaultMaxOutputTokens is < 1) throw new ArgumentException($"the default max output tokens must be at least 1, not {DefaultMaxOutputTokens}");
        if (MaxConversations < 1) throw new ArgumentException($"max conversations must be at least 1, not {MaxConversations}");
        if (ModelId is { Length: 0 }) throw new ArgumentException("the model id is empty");
    }
}

/// <summary>
/// <see cref="IChatClient"/> (Microsoft.Extensions.AI) over an <see cref="InferenceEngine"/>: messages are rendered with
/// the model's chat template (ChatML or Llama 3, as the HTTP API does) and read by a session, text up to each image or
/// video, then the medium; the answer is generated with <see cref="Session.AskAsync"/>, whole or streamed a text piece
/// per <see cref="ChatResponseUpdate"/>, with usage (token counts) and finish reason (stop, length).
/// <para>
/// Content: <see cref="TextContent"/>; images as <see cref="DataContent"/> (<c>image/png</c>, <c>image/jpeg</c>,
/// <c>image/bmp</c>, <c>image/x-portable-pixmap</c>) or <see cref="UriContent"/> with a <c>file:</c> URI; videos
/// (<c>video/*</c>) likewise, decoded by ffmpeg at <see cref="VidKVChatClientOptions.VideoFps"/> and appended as the
/// session's video (<see cref="Session.AppendVideoAsync"/>). Other URIs (http, https, …) and other content are refused
/// with an <see cref="ArgumentException"/> naming the content (<c>messages[0].Contents[1]</c>), before anything is read.
/// Roles: system, user, assistant. <see cref="ChatOptions"/>: MaxOutputTokens, Temperature, TopP, TopK, Seed,
/// Instructions (a system message before this call's messages), ConversationId; stop sequences, tools, JSON response
/// formats and frequency or presence penalties are refused (<see cref="NotSupportedException"/>); the model id is not
/// checked (one model).
/// </para>
/// <para>
/// Conversations: with <see cref="ChatOptions.ConversationId"/> the client keeps a live <see cref="Session"/> under that
/// id (made on first use, named again in <see cref="ChatResponse.ConversationId"/>); each call appends only the messages
/// it is given (the new turn) to it, and after the answer the answer itself closed as the template closes an assistant
/// message, so the next call reads nothing twice. <see cref="UsageDetails.CachedInputTokenCount"/> counts the rows a call
/// found already in the session. Calls on one conversation run one at a time. A call cancelled during its answer keeps
/// its messages and the part of the answer generated so far; a call that fails while its messages go in (a video that
/// breaks mid-way, a full context) ends the conversation, whose KV would hold half a turn. At most
/// <see cref="VidKVChatClientOptions.MaxConversations"/> are kept (the least recently used goes); <see cref="DisposeAsync"/>
/// frees them all. Without an id each call reads its messages into a session of its own, disposed before the call returns.
/// </para>
/// </summary>
public sealed class VidKVChatClient : IChatClient, IAsyncDisposable
{
    static readonly string[] ImageTypes = ["image/png", "image/jpeg", "image/bmp", "image/x-portable-pixmap"];

    readonly InferenceEngine engine;
    readonly VidKVChatClientOptions options;
    readonly ChatFormat format;
    readonly string assistantEnd;
    readonly object gate = new();
    readonly Dictionary<string, Conversation> conversations = new(StringComparer.Ordinal);
    readonly LinkedList<Conversation> recent = new(); // most recently used first
    bool disposed;

    /// <summary>A client answering with <paramref name="engine"/> (which stays the caller's: disposing the client leaves it running).</summary>
    public VidKVChatClient(InferenceEngine engine, VidKVChatClientOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(engine);
        this.engine = engine;
        this.options = options ?? new VidKVChatClientOptions();
        this.options.Validate();
        format = ChatTemplate.Detect(engine.Model.Vocabulary.ChatTemplate);
        assistantEnd = ChatPrompt.AssistantMessageEnd(format);
        Metadata = new ChatClientMetadata("vidkv", null, this.options.ModelId ?? DefaultModelId(engine.Model.Path));
    }

    /// <summary>The engine the client answers with.</summary>
    public InferenceEngine Engine => engine;

    /// <summary>Provider "vidkv" and the model id.</summary>
    public ChatClientMetadata Metadata { get; }

    /// <summary>Conversations kept now.</summary>
    public int ConversationCount
    {
        get { lock (gate) return conversations.Count; }
    }

    /// <summary>The session of conversation <paramref name="id"/>, or null when none is kept under it (tests look at its length).</summary>
    internal Session? ConversationSession(string id)
    {
        lock (gate) return conversations.TryGetValue(id, out var conversation) ? conversation.Session : null;
    }

    /// <summary>A model's name from its path: the file or folder name, without <c>.gguf</c>.</summary>
    internal static string DefaultModelId(string path)
    {
        string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(path));
        return name.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) ? name[..^5] : name;
    }

    /// <inheritdoc/>
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<AiChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var turn = new Turn(Metadata.DefaultModelId!, options?.ConversationId);
        var text = new StringBuilder();
        await foreach (var piece in AnswerAsync(messages, options, turn, cancellationToken).ConfigureAwait(false)) text.Append(piece);
        return new ChatResponse(new AiChatMessage(ChatRole.Assistant, text.ToString()) { MessageId = turn.MessageId, CreatedAt = turn.Created })
        {
            ResponseId = turn.ResponseId,
            ConversationId = turn.ConversationId,
            ModelId = turn.ModelId,
            CreatedAt = turn.Created,
            FinishReason = turn.FinishReason,
            Usage = turn.UsageDetails(),
        };
    }

    /// <inheritdoc/>
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AiChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var turn = new Turn(Metadata.DefaultModelId!, options?.ConversationId);
        await foreach (var piece in AnswerAsync(messages, options, turn, cancellationToken).ConfigureAwait(false))
            yield return turn.Update([new TextContent(piece)]);
        var last = turn.Update([new UsageContent(turn.UsageDetails())]);
        last.FinishReason = turn.FinishReason;
        yield return last;
    }

    /// <summary>The client itself, its <see cref="InferenceEngine"/>, the engine's <see cref="DecoderModel"/>, or its <see cref="ChatClientMetadata"/>; null for anything else or any key.</summary>
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey != null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return Metadata;
        if (serviceType == typeof(InferenceEngine)) return engine;
        if (serviceType == typeof(DecoderModel)) return engine.Model;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>One call's answer: ids, times and what the engine reported, for the response and its updates.</summary>
    sealed class Turn(string modelId, string? conversationId)
    {
        public string ModelId { get; } = modelId;
        public string? ConversationId { get; } = conversationId;
        public string ResponseId { get; } = "chatcmpl-" + RandomNumberGenerator.GetHexString(24, lowercase: true);
        public string MessageId { get; } = "msg-" + RandomNumberGenerator.GetHexString(24, lowercase: true);
        public DateTimeOffset Created { get; } = DateTimeOffset.UtcNow;
        public AskUsage Usage { get; } = new();
        /// <summary>Rows the call found in its conversation's session (0 for a session of its own).</summary>
        public int CachedTokens { get; set; }

        public ChatFinishReason FinishReason => Usage.EndedOnEndOfGeneration ? ChatFinishReason.Stop : ChatFinishReason.Length;

        public UsageDetails UsageDetails() => new()
        {
            InputTokenCount = Usage.PromptTokens,
            OutputTokenCount = Usage.CompletionTokens,
            TotalTokenCount = Usage.PromptTokens + Usage.CompletionTokens,
            CachedInputTokenCount = ConversationId != null ? CachedTokens : null,
        };

        public ChatResponseUpdate Update(IList<AIContent> contents) => new(ChatRole.Assistant, contents)
        {
            ResponseId = ResponseId,
            MessageId = MessageId,
            ConversationId = ConversationId,
            ModelId = ModelId,
            CreatedAt = Created,
        };
    }

    /// <summary>A kept session and its turn lock; <see cref="Users"/> and <see cref="Removed"/> under the client's gate.</summary>
    sealed class Conversation(string id, Session session)
    {
        public string Id { get; } = id;
        public Session Session { get; } = session;
        public SemaphoreSlim TurnLock { get; } = new(1, 1);
        public LinkedListNode<Conversation>? Node { get; set; }
        /// <summary>Calls holding or waiting for it; it is disposed when removed and none is left.</summary>
        public int Users { get; set; }
        public bool Removed { get; set; }
    }

    /// <summary>
    /// The answer's text pieces, after the messages went into the call's session (the conversation's or one of its
    /// own); fills in <paramref name="turn"/>.
    /// </summary>
    async IAsyncEnumerable<string> AnswerAsync(IEnumerable<AiChatMessage> messages, ChatOptions? chatOptions, Turn turn,
        [EnumeratorCancellation] CancellationToken cancellation)
    {
        ArgumentNullException.ThrowIfNull(messages);
        ObjectDisposedException.ThrowIf(disposed, this);
        var (sampling, maxTokens) = Settings(chatOptions);
        await using var prompt = await BuildPromptAsync(messages, chatOptions?.Instructions, cancellation).ConfigureAwait(false);
        Conversation? conversation = null;
        if (turn.ConversationId is { } id)
        {
            conversation = Acquire(id, out var evicted);
            if (evicted != null) await evicted.Session.DisposeAsync().ConfigureAwait(false);
        }
        var session = conversation?.Session ?? engine.CreateSession();
        bool locked = false, touched = false, asked = false, broken = false;
        var tokens = new List<int>();
        try
        {
            if (conversation != null)
            {
                await conversation.TurnLock.WaitAsync(cancellation).ConfigureAwait(false);
                locked = true;
            }
            turn.CachedTokens = session.Length;
            for (int k = 0; k < prompt.Media.Count; k++)
            {
                touched = true;
                try
                {
                    await prompt.AppendPartAsync(session, k, cancellation).ConfigureAwait(false);
                }
                catch (Exception e) when (e is ArgumentException or VideoSourceException or ImageFormatException)
                {
                    throw new ArgumentException($"{prompt.MediaLabels[k]}: {Problem(e)}", nameof(messages), e);
                }
                catch (InvalidOperationException e) when (e is not ObjectDisposedException && !cancellation.IsCancellationRequested)
                {
                    throw new InvalidOperationException($"{prompt.MediaLabels[k]}: the messages up to this content do not fit: {e.Message}", e);
                }
            }
            int contextLength = engine.Options.ContextLength;
            long used = (long)session.NextPosition + session.PromptTokenCount(prompt.Question);
            if (used >= contextLength)
                throw new InvalidOperationException($"the messages take {used} positions, which does not fit the engine's context of {contextLength}");
            var ask = new AskOptions
            {
                MaxTokens = (int)Math.Min(maxTokens ?? int.MaxValue, contextLength - used),
                Sampling = sampling,
                Usage = turn.Usage,
                AnswerTokens = tokens,
            };
            asked = true;
            await foreach (var piece in session.AskAsync(prompt.Question, ask, cancellation).ConfigureAwait(false)) yield return piece;
        }
        finally
        {
            if (conversation == null) await session.DisposeAsync().ConfigureAwait(false);
            else
            {
                if (asked)
                {
                    // The question and the answer so far (all of it, or what came before a cancel) go into the
                    // conversation, closed as the template closes an assistant message.
                    try
                    {
                        if (turn.Usage.EndedOnEndOfGeneration && tokens.Count > 0) tokens.RemoveAt(tokens.Count - 1);
                        await session.AppendAsync(prompt.Question, CancellationToken.None).ConfigureAwait(false);
                        if (tokens.Count > 0) await session.AppendTokensAsync(tokens.ToArray(), CancellationToken.None).ConfigureAwait(false);
                        await session.AppendAsync(assistantEnd, CancellationToken.None).ConfigureAwait(false);
                    }
                    catch (Exception e) when (e is InvalidOperationException or ArgumentException)
                    {
                        broken = true; // no room left for the answer: the conversation cannot go on
                    }
                }
                else if (touched) broken = true;
                if (locked) conversation.TurnLock.Release();
                await ReleaseAsync(conversation, broken).ConfigureAwait(false);
            }
        }
    }

    (SamplingOptions Sampling, int? MaxTokens) Settings(ChatOptions? chat)
    {
        var defaults = new SamplingOptions();
        if (chat == null) return (defaults, options.DefaultMaxOutputTokens);
        if (chat.MaxOutputTokens is < 1) throw new ArgumentOutOfRangeException(nameof(chat), $"MaxOutputTokens must be at least 1, not {chat.MaxOutputTokens}");
        if (chat.Temperature is float t && (!float.IsFinite(t) || t < 0)) throw new ArgumentOutOfRangeException(nameof(chat), $"Temperature must be 0 (greedy) or more, not {t}");
        if (chat.TopP is float p && (!float.IsFinite(p) || p <= 0 || p > 1)) throw new ArgumentOutOfRangeException(nameof(chat), $"TopP must be in (0, 1], not {p}");
        if (chat.TopK is < 0) throw new ArgumentOutOfRangeException(nameof(chat), $"TopK must be 0 (off) or more, not {chat.TopK}");
        if (chat.StopSequences is { Count: > 0 }) throw new NotSupportedException("stop sequences are not supported yet");
        if (chat.Tools is { Count: > 0 }) throw new NotSupportedException("tools are not supported yet");
        if (chat.ResponseFormat is ChatResponseFormatJson) throw new NotSupportedException("JSON response formats are not supported yet");
        if (chat.FrequencyPenalty is float f && f != 0) throw new NotSupportedException("a frequency penalty is not supported");
        if (chat.PresencePenalty is float r && r != 0) throw new NotSupportedException("a presence penalty is not supported");
        var sampling = new SamplingOptions
        {
            Temperature = chat.Temperature ?? defaults.Temperature,
            TopP = chat.TopP ?? defaults.TopP,
            TopK = chat.TopK ?? defaults.TopK,
            Seed = chat.Seed is long seed ? SamplingOptions.FoldSeed(seed) : null,
        };
        return (sampling, chat.MaxOutputTokens ?? options.DefaultMaxOutputTokens);
    }

    /// <summary>
    /// The messages in the engine's terms: roles and text through the chat template, images decoded and videos opened
    /// (probed) here, so bad content fails before a session is touched.
    /// </summary>
    async Task<ChatPrompt> BuildPromptAsync(IEnumerable<AiChatMessage> messages, string? instructions, CancellationToken cancellation)
    {
        var builder = new ChatPrompt.Builder(format);
        var opened = new List<IFrameSource>();
        try
        {
            if (!string.IsNullOrEmpty(instructions))
            {
                builder.BeginMessage("system");
                builder.AddText(instructions);
            }
            int i = 0;
            foreach (var message in messages)
            {
                string at = $"messages[{i++}]";
                if (message == null) throw new ArgumentException($"{at} is null", nameof(messages));
                string role = message.Role == ChatRole.System ? "system"
                    : message.Role == ChatRole.User ? "user"
                    : message.Role == ChatRole.Assistant ? "assistant"
                    : throw new ArgumentException($"{at}: role '{message.Role}' is not supported (system, user, assistant)", nameof(messages));
                builder.BeginMessage(role);
                for (int j = 0; j < message.Contents.Count; j++)
                {
                    string contentAt = $"{at}.Contents[{j}]";
                    switch (message.Contents[j])
                    {
                        case TextContent text:
                            builder.AddText(text.Text);
                            break;
                        case DataContent data when data.HasTopLevelMediaType("image"):
                            builder.AddImage(DecodeImage(data.Data.ToArray(), data.MediaType, contentAt, role), contentAt);
                            break;
                        case DataContent data when data.HasTopLevelMediaType("video"):
                            RequireVision(contentAt, role);
                            string file = await TemporaryVideo.WriteAsync(data.Data, cancellation).ConfigureAwait(false);
                            var temporary = new FfmpegSource(file, Sampling());
                            builder.AddVideo(await OpenVideoAsync(temporary, new TemporaryVideo(file, temporary), contentAt, opened, cancellation).ConfigureAwait(false), contentAt);
                            break;
                        case DataContent data:
                            throw new ArgumentException($"{contentAt}: media type '{data.MediaType}' is not supported (images: {string.Join(", ", ImageTypes)}; videos: video/*)", nameof(messages));
                        case UriContent uri:
                            if (!uri.Uri.IsAbsoluteUri || !uri.Uri.IsFile || !string.IsNullOrEmpty(uri.Uri.Host))
                                throw new ArgumentException($"{contentAt}: only local file: URIs are read, not '{Shorten(uri.Uri.ToString())}'; send other media as DataContent", nameof(messages));
                            string path = uri.Uri.LocalPath;
                            if (uri.HasTopLevelMediaType("image"))
                            {
                                RequireVision(contentAt, role);
                                byte[] bytes;
                                try { bytes = await File.ReadAllBytesAsync(path, cancellation).ConfigureAwait(false); }
                                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                                {
                                    throw new ArgumentException($"{contentAt}: {path} cannot be read: {e.Message}", nameof(messages), e);
                                }
                                builder.AddImage(DecodeImage(bytes, uri.MediaType, contentAt, role), contentAt);
                            }
                            else if (uri.HasTopLevelMediaType("video"))
                            {
                                RequireVision(contentAt, role);
                                var video = new FfmpegSource(path, Sampling());
                                builder.AddVideo(await OpenVideoAsync(video, video, contentAt, opened, cancellation).ConfigureAwait(false), contentAt);
                            }
                            else throw new ArgumentException($"{contentAt}: media type '{uri.MediaType}' is not supported (image/*, video/*)", nameof(messages));
                            break;
                        case var other:
                            throw new ArgumentException($"{contentAt}: {other.GetType().Name} is not supported (TextContent, DataContent, UriContent)", nameof(messages));
                    }
                }
            }
            if (i == 0) throw new ArgumentException("at least one message is needed", nameof(messages));
            return builder.Build();
        }
        catch
        {
            foreach (var source in opened) await source.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    FrameSampling Sampling() => new() { Fps = options.VideoFps, MaxFrames = options.MaxVideoFrames };

    void RequireVision(string at, string role)
    {
        if (role != "user") throw new ArgumentException($"{at}: images and videos go in user messages, not {role} ones", "messages");
        if (engine.Vision == null)
            throw new ArgumentException($"{at}: the model {Metadata.DefaultModelId} reads no images or videos: create the engine with its vision projector (mmproj)", "messages");
    }

    RgbImage DecodeImage(byte[] bytes, string mediaType, string at, string role)
    {
        RequireVision(at, role);
        if (!ImageTypes.Contains(mediaType, StringComparer.OrdinalIgnoreCase))
            throw new ArgumentException($"{at}: image type '{mediaType}' is not read (PNG, JPEG, BMP, PPM: {string.Join(", ", ImageTypes)})", "messages");
        try
        {
            return ImageReader.Decode(bytes, at);
        }
        catch (ImageFormatException e)
        {
            throw new ArgumentException(e.Message, "messages", e);
        }
    }

    /// <summary>
    /// Keeps <paramref name="source"/> in <paramref name="opened"/> and probes the ffmpeg source under it, so an
    /// unreadable video fails here, naming <paramref name="at"/>.
    /// </summary>
    static async Task<IFrameSource> OpenVideoAsync(FfmpegSource ffmpeg, IFrameSource source, string at, List<IFrameSource> opened, CancellationToken cancellation)
    {
        opened.Add(source);
        try
        {
            await ffmpeg.ProbeAsync(cancellation).ConfigureAwait(false);
        }
        catch (VideoSourceException e)
        {
            throw new ArgumentException($"{at}: not a readable video: {Problem(e)}", "messages", e);
        }
        return source;
    }

    /// <summary>An exception's message, less the (perhaps temporary) file name a video error starts with: the caller knows the video by its content's place.</summary>
    static string Problem(Exception e) =>
        e is VideoSourceException video && e.Message.StartsWith(video.SourceName + ": ", StringComparison.Ordinal) ? e.Message[(video.SourceName.Length + 2)..] : e.Message;

    /// <summary>A video given as bytes, in a temporary file for ffmpeg; the file goes when the source is disposed.</summary>
    sealed class TemporaryVideo(string path, FfmpegSource source) : IFrameSource
    {
        public static async Task<string> WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellation)
        {
            string path = Path.Combine(Path.GetTempPath(), $"vidkv-chat-{Guid.NewGuid():N}.video");
            try
            {
                await File.WriteAllBytesAsync(path, data, cancellation).ConfigureAwait(false);
            }
            catch
            {
                File.Delete(path);
                throw;
            }
            return path;
        }
        public string Name => source.Name;
        public event Action<SkippedFrame>? FrameSkipped
        {
            add => source.FrameSkipped += value;
            remove => source.FrameSkipped -= value;
        }
        public IAsyncEnumerable<VideoFrame> ReadAsync(CancellationToken cancellation = default) => source.ReadAsync(cancellation);

        public async ValueTask DisposeAsync()
        {
            await source.DisposeAsync().ConfigureAwait(false);
            try { File.Delete(path); }
            catch (IOException) { } // a temporary file left behind is the system's to clean
        }
    }

    /// <summary>
    /// The conversation kept under <paramref name="id"/> (a new session on first use), counted as used; the least
    /// recently used beyond the limit is removed, and given in <paramref name="evicted"/> to dispose when no call holds it.
    /// </summary>
    Conversation Acquire(string id, out Conversation? evicted)
    {
        evicted = null;
        Conversation conversation;
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (conversations.TryGetValue(id, out var found))
            {
                conversation = found;
                recent.Remove(conversation.Node!);
            }
            else
            {
                conversation = new Conversation(id, engine.CreateSession());
                conversations.Add(id, conversation);
                if (conversations.Count > options.MaxConversations)
                {
                    evicted = recent.Last!.Value;
                    Remove(evicted);
                    if (evicted.Users > 0) evicted = null; // its last call disposes it
                }
            }
            conversation.Node = recent.AddFirst(conversation);
            conversation.Users++;
        }
        return conversation;
    }

    /// <summary>Under the gate: no longer kept (disposed by whoever sees it unused).</summary>
    void Remove(Conversation conversation)
    {
        if (conversation.Removed) return;
        conversation.Removed = true;
        conversations.Remove(conversation.Id);
        recent.Remove(conversation.Node!);
    }

    async ValueTask ReleaseAsync(Conversation conversation, bool broken)
    {
        bool dispose;
        lock (gate)
        {
            if (broken) Remove(conversation);
            dispose = --conversation.Users == 0 && conversation.Removed;
        }
        if (dispose) await conversation.Session.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>Frees every kept conversation's session (one in use goes when its call ends); the engine stays.</summary>
    public async ValueTask DisposeAsync()
    {
        List<Conversation> unused;
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
            var all = conversations.Values.ToList();
            foreach (var conversation in all) Remove(conversation);
            unused = all.Where(c => c.Users == 0).ToList();
        }
        foreach (var conversation in unused) await conversation.Session.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>As <see cref="DisposeAsync"/>, waiting for it.</summary>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    static string Shorten(string text) => text.Length <= 80 ? text : text[..77] + "...";
}
