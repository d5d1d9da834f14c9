using System.Net;
using VidKV.Cache;

namespace VidKV.Server;

/// <summary>How an <see cref="InferenceServer"/> listens and what it lets clients do.</summary>
public sealed record ServerOptions
{
    /// <summary>The address to listen on; loopback by default, so nothing outside the machine reaches the server unless asked.</summary>
    public IPAddress Host { get; init; } = IPAddress.Loopback;
    /// <summary>The TCP port (0: any free one; <see cref="InferenceServer.Address"/> tells which).</summary>
    public int Port { get; init; } = 8080;
    /// <summary>When set, every endpoint but <c>/health</c> needs <c>Authorization: Bearer</c> with this key.</summary>
    public string? ApiKey { get; init; }
    /// <summary>The folder image and video files may be read from (<c>file://</c> URLs and paths; <c>GET /v1/media</c> lists its videos); null serves no files, only data URLs.</summary>
    public string? MediaRoot { get; init; }
    /// <summary>Most requests answered at once (each has its own session on the shared engine); more are refused with 429.</summary>
    public int MaxSessions { get; init; } = 4;
    /// <summary>Largest request body in bytes (and largest image file read); a larger one is refused with 413.</summary>
    public long MaxBodyBytes { get; init; } = 32L << 20;
    /// <summary>Largest video in bytes that <c>POST /v1/uploads</c> takes; a larger one is refused with 413.</summary>
    public long MaxUploadBytes { get; init; } = 512L << 20;
    /// <summary>Most tokens of an answer when the request gives no <c>max_tokens</c> (null: until the end of generation or a full context).</summary>
    public int? DefaultMaxTokens { get; init; }
    /// <summary>The model's name in <c>/v1/models</c> and in responses (null: the model file's name).</summary>
    public string? ModelId { get; init; }
    /// <summary>Where a line per request and the start-up line go (null: nowhere).</summary>
    public TextWriter? Log { get; init; }
    /// <summary>
    /// The KV policies of a live session that names none (<c>POST /v1/sessions</c>'s <c>kv_policy</c>, <c>kv_budget</c>
    /// override them): InfiniPot-V's hard cap on video rows by default, so a session's memory stays bounded however
    /// long it watches. Only the policy fields count; the store is the engine's.
    /// </summary>
    public KvCacheConfig SessionKv { get; init; } = new() { Default = "infinipotv", Budget = 2048 };
    /// <summary>Frames per second sampled from a video in a chat message when the request does not say (vLLM's <c>media_io_kwargs.video.fps</c>).</summary>
    public double VideoFps { get; init; } = 1;
    /// <summary>Most frames read from one video in a chat message (and the most a request's <c>num_frames</c> may ask).</summary>
    public int MaxVideoFrames { get; init; } = 64;
    /// <summary>Longest an http(s) video URL may take to arrive whole; past it the request gets 400.</summary>
    public TimeSpan FetchTimeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>Most questions answered at once on one live session (each on a fork of its KV); more get 429.</summary>
    public int MaxAsksPerSession { get; init; } = 4;
    /// <summary>Most clients reading one live session's events at once; more get 429.</summary>
    public int MaxEventReaders { get; init; } = 8;
    /// <summary>
    /// What a live session's <c>"demo"</c> source plays, with what is true of it (null: no demo, and such a session is
    /// a 400). <c>vidkv serve</c> gives the world demo <c>vidkv watch</c> plays without arguments.
    /// </summary>
    public ServerDemo? Demo { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first setting out of range.</summary>
    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new ArgumentException($"port {Port} is not 0-65535");
        if (MaxSessions < 1) throw new ArgumentException($"max sessions must be at least 1, not {MaxSessions}");
        if (MaxBodyBytes < 1024) throw new ArgumentException($"the body limit must be at least 1024 bytes, not {MaxBodyBytes}");
        if (MaxUploadBytes < 1024) throw new ArgumentException($"the upload limit must be at least 1024 bytes, not {MaxUploadBytes}");
        if (DefaultMaxTokens is < 1) throw new ArgumentException($"the default max tokens must be at least 1, not {DefaultMaxTokens}");
        if (ApiKey is { Length: 0 }) throw new ArgumentException("the API key is empty");
        if (MediaRoot != null && !Directory.Exists(MediaRoot)) throw new ArgumentException($"media root '{MediaRoot}': no such folder");
        if (!double.IsFinite(VideoFps) || VideoFps <= 0 || VideoFps > 60) throw new ArgumentException($"video fps must be more than 0 and at most 60, not {VideoFps}");
        if (MaxVideoFrames < 1) throw new ArgumentException($"max video frames must be at least 1, not {MaxVideoFrames}");
        if (FetchTimeout <= TimeSpan.Zero) throw new ArgumentException($"the fetch timeout must be positive, not {FetchTimeout}");
        if (MaxAsksPerSession < 1) throw new ArgumentException($"max asks per session must be at least 1, not {MaxAsksPerSession}");
        if (MaxEventReaders < 1) throw new ArgumentException($"max event readers must be at least 1, not {MaxEventReaders}");
        SessionKv.ValidateSpecs();
    }
}

/// <summary>
/// The demo clip of a server (<see cref="ServerOptions.Demo"/>) and its truth, which a <c>demo</c> session's JSON carries
/// so a page can mark what the model says: the questions asked after its last frame with their exact answers, and what
/// happens at each second as the narration a comment should say.
/// </summary>
/// <param name="EnsureVideoAsync">the clip's path, made first when it is not there yet (a <c>VidKV.Video.VideoSourceException</c> when it cannot be); the log gets a line when it is being made</param>
/// <param name="Questions">questions about the clip, asked after its last frame, with the exact answers</param>
/// <param name="Events">what happens in the clip: the second whose frame first shows it and its narration</param>
public sealed record ServerDemo(Func<TextWriter?, CancellationToken, Task<string>> EnsureVideoAsync, IReadOnlyList<DemoQuestion> Questions, IReadOnlyList<DemoEvent> Events);

/// <summary>A demo question and its exact answer.</summary>
public sealed record DemoQuestion(string Question, string Answer);

/// <summary>A demo event: the second of the stream whose frame first shows it, and its narration.</summary>
public sealed record DemoEvent(int Second, string Narration);
