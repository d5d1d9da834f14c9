namespace VidKV.Video;

/// <summary>
/// What an ffmpeg source reads, parsed from the user's string: a local file, a URL (anything with a scheme ffmpeg
/// knows: http, https, rtsp, rtmp, udp, hls playlists…), or a camera (<c>camera:/dev/video0</c> or <c>camera:0</c>,
/// read through ffmpeg's v4l2 input).
/// </summary>
internal sealed record VideoInput(string Location, VideoInputKind Kind)
{
    public static VideoInput Parse(string source)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(source);
        if (source.StartsWith("camera:", StringComparison.OrdinalIgnoreCase))
        {
            string device = source["camera:".Length..];
            if (device.Length > 0 && device.All(char.IsAsciiDigit)) device = "/dev/video" + device;
            if (device.Length == 0) throw new ArgumentException($"'{source}' names no camera device (camera:/dev/video0 or camera:0)");
            return new VideoInput(device, VideoInputKind.Camera);
        }
        int scheme = source.IndexOf("://", StringComparison.Ordinal);
        if (scheme > 1 && source[..scheme].All(c => char.IsAsciiLetterOrDigit(c) || c is '+' or '-' or '.'))
            return new VideoInput(source, VideoInputKind.Url);
        return new VideoInput(source, VideoInputKind.File);
    }

    /// <summary>How messages name it: the path or URL, or "camera /dev/video0".</summary>
    public string Name => Kind == VideoInputKind.Camera ? $"camera {Location}" : Location;

    /// <summary>ffmpeg/ffprobe arguments that open it (input options, then <c>-i</c> where the tool needs it).</summary>
    public IEnumerable<string> InputArguments(bool withDashI)
    {
        if (Kind == VideoInputKind.Camera) { yield return "-f"; yield return "v4l2"; }
        // A file name ffmpeg would read as a protocol ("a:b.mp4") is passed with the file: prefix.
        string location = Kind == VideoInputKind.File && Location.Contains(':') ? "file:" + Location : Location;
        if (withDashI) yield return "-i";
        yield return location;
    }

    /// <summary>Throws the one-line error for a local file or device that is absent, before ffmpeg runs.</summary>
    public void CheckExists()
    {
        switch (Kind)
        {
            case VideoInputKind.Camera when !File.Exists(Location):
                throw new VideoSourceException(Name, "no such camera device");
            case VideoInputKind.File when Directory.Exists(Location):
                throw new VideoSourceException(Name, "is a folder, not a video file");
            case VideoInputKind.File when !File.Exists(Location):
                throw new VideoSourceException(Name, "no such file");
        }
    }

    /// <summary>Whether the input is a local file of length zero (asked after ffprobe fails: a FIFO also reports length
    /// zero, and .NET cannot tell a FIFO from a file without opening it, which would block).</summary>
    public bool IsEmptyFile => Kind == VideoInputKind.File && File.Exists(Location) && new FileInfo(Location).Length == 0;
}

/// <summary>How an ffmpeg source's input is opened.</summary>
internal enum VideoInputKind { File, Url, Camera }
