using System.Net;

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
    /// <summary>The folder image files may be read from (<c>file://</c> URLs and paths); null serves no files, only data URLs.</summary>
    public string? MediaRoot { get; init; }
    /// <summary>Most requests answered at once (each has its own session on the shared engine); more are refused with 429.</summary>
    public int MaxSessions { get; init; } = 4;
    /// <summary>Largest request body in bytes (and largest image file read); a larger one is refused with 413.</summary>
    public long MaxBodyBytes { get; init; } = 32L << 20;
    /// <summary>Most tokens of an answer when the request gives no <c>max_tokens</c> (null: until the end of generation or a full context).</summary>
    public int? DefaultMaxTokens { get; init; }
    /// <summary>The model's name in <c>/v1/models</c> and in responses (null: the model file's name).</summary>
    public string? ModelId { get; init; }
    /// <summary>Where a line per request and the start-up line go (null: nowhere).</summary>
    public TextWriter? Log { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first setting out of range.</summary>
    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new ArgumentException($"port {Port} is not 0-65535");
        if (MaxSessions < 1) throw new ArgumentException($"max sessions must be at least 1, not {MaxSessions}");
        if (MaxBodyBytes < 1024) throw new ArgumentException($"the body limit must be at least 1024 bytes, not {MaxBodyBytes}");
        if (DefaultMaxTokens is < 1) throw new ArgumentException($"the default max tokens must be at least 1, not {DefaultMaxTokens}");
        if (ApiKey is { Length: 0 }) throw new ArgumentException("the API key is empty");
        if (MediaRoot != null && !Directory.Exists(MediaRoot)) throw new ArgumentException($"media root '{MediaRoot}': no such folder");
    }
}
