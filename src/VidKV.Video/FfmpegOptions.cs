namespace VidKV.Video;

/// <summary>
/// How the ffmpeg-based sources run ffmpeg and ffprobe: where the executables are (on PATH by default; Debian's
/// <c>apt-get install -y ffmpeg</c> provides both), how many decoder threads, and how long a stream may give nothing
/// before it counts as stalled.
/// </summary>
public sealed record FfmpegOptions
{
    /// <summary>Defaults: <c>ffmpeg</c> and <c>ffprobe</c> from PATH, ffmpeg's own thread count, a 10 s stall timeout.</summary>
    public static FfmpegOptions Default { get; } = new();

    /// <summary>The folder holding <c>ffmpeg</c> and <c>ffprobe</c>; null finds them on PATH.</summary>
    public string? BinaryFolder { get; init; }
    /// <summary>Decoder threads per ffmpeg process; 0 lets ffmpeg choose (one per core). 1 is single-threaded decoding.</summary>
    public int DecoderThreads { get; init; }
    /// <summary>A probe, or a decode that yields no decoded frame, for this long fails with a <see cref="VideoSourceException"/>.</summary>
    public TimeSpan StallTimeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>
    /// Decode into buffers that earlier frames handed back (<see cref="VidKV.Formats.VideoFrame.Recycle"/>, which the engine calls
    /// once it has resized a frame) instead of a new array a frame: a 720p stream otherwise puts 2.6 MiB a frame on the
    /// large-object heap, and the process's memory drifts up with the collections that churn brings. Only for a consumer
    /// that keeps no frame once it has handed it to the engine (watch, bench video do so).
    /// </summary>
    public bool ReuseFrameBuffers { get; init; }

    internal string FfmpegExecutable => BinaryFolder is { } folder ? Path.Combine(folder, "ffmpeg") : "ffmpeg";
    internal string FfprobeExecutable => BinaryFolder is { } folder ? Path.Combine(folder, "ffprobe") : "ffprobe";

    /// <summary>Throws the one-line "ffmpeg not found" error unless both tools are there.</summary>
    internal void RequireTools(string sourceName)
    {
        foreach (string tool in new[] { "ffprobe", "ffmpeg" })
        {
            bool found = BinaryFolder is { } folder ? File.Exists(Path.Combine(folder, tool))
                : (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Any(d => d.Length > 0 && File.Exists(Path.Combine(d, tool)));
            if (!found) throw NotFound(sourceName);
        }
    }

    internal VideoSourceException NotFound(string sourceName, Exception? inner = null) => new(sourceName,
        $"ffmpeg not found{(BinaryFolder is { } folder ? $" in '{folder}'" : "")}: install it with apt-get install -y ffmpeg", inner);

    internal void Validate()
    {
        if (DecoderThreads < 0) throw new ArgumentException($"decoder threads must be 0 (automatic) or positive, got {DecoderThreads}");
        if (StallTimeout <= TimeSpan.Zero) throw new ArgumentException($"stall timeout must be positive, got {StallTimeout}");
    }
}
