namespace VidKV.Video;

/// <summary>
/// A video source cannot be read: ffmpeg is missing, the file or camera is absent, the data is not a readable video,
/// the stream has no frames, or it stalled. The message is one line, "source: problem"; the CLI prints it as is and
/// exits with code 2.
/// </summary>
public sealed class VideoSourceException : Exception
{
    /// <summary>"<paramref name="source"/>: <paramref name="problem"/>", with the underlying exception if there was one.</summary>
    public VideoSourceException(string source, string problem, Exception? inner = null) : base($"{source}: {problem}", inner)
    {
        SourceName = source;
    }

    /// <summary>What was being read, as the source names itself ("clip.mp4", "camera /dev/video0").</summary>
    public string SourceName { get; }
}
