using System.Text;

namespace VidKV.Video;

/// <summary>
/// The built-in demo stream: ten seconds of ffmpeg's <c>testsrc2</c> test pattern (moving colour bars, a clock and a
/// frame counter) at 320×240 and 25 fps, encoded once as H.264 MP4 (a keyframe per second and the index first, so a
/// browser can seek in it while it loads) and reused. <c>vidkv watch</c> with no source watches it, and the server's
/// live sessions start it as the source <c>"demo"</c>.
/// </summary>
public static class DemoVideo
{
    /// <summary>The lavfi source ffmpeg renders.</summary>
    public const string Pattern = "testsrc2=size=320x240:rate=25:duration=10";

    /// <summary>Where the clip is kept unless a caller names another path: the temporary folder, shared by every VidKV process.</summary>
    public static string DefaultPath { get; } = Path.Combine(Path.GetTempPath(), "vidkv-demo-testsrc2.mp4");

    static readonly SemaphoreSlim Writing = new(1, 1);

    /// <summary>
    /// The clip's path, written first when it is not there yet (into a file of its own, then moved into place, so a
    /// reader never sees half of it and two processes writing at once both end with a whole clip).
    /// </summary>
    /// <param name="path">where to keep it (null: <see cref="DefaultPath"/>)</param>
    /// <param name="log">told when the clip is being made (null: nothing)</param>
    /// <param name="options">where ffmpeg is (null: on PATH)</param>
    /// <exception cref="VideoSourceException">ffmpeg is missing or fails</exception>
    public static async Task<string> EnsureAsync(string? path = null, TextWriter? log = null, FfmpegOptions? options = null, CancellationToken cancellation = default)
    {
        path ??= DefaultPath;
        options ??= FfmpegOptions.Default;
        if (File.Exists(path)) return path;
        await Writing.WaitAsync(cancellation).ConfigureAwait(false);
        string partial = $"{path}.{Guid.NewGuid():N}.partial.mp4";
        try
        {
            if (File.Exists(path)) return path;
            log?.WriteLine($"making a demo video with ffmpeg: {path}");
            await using (var ffmpeg = FfmpegProcess.Start(options, options.FfmpegExecutable,
                ["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i", Pattern, "-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", "-movflags", "+faststart", partial],
                "demo video"))
            {
                var errors = new StringBuilder();
                await foreach (string line in ffmpeg.ErrorLines.ReadAllAsync(cancellation).ConfigureAwait(false)) errors.AppendLine(line);
                int code = await ffmpeg.WaitForExitAsync(cancellation).ConfigureAwait(false);
                if (code != 0) throw new VideoSourceException("demo video", $"ffmpeg failed (exit code {code}): {errors.ToString().Trim()}");
            }
            File.Move(partial, path, overwrite: true);
            return path;
        }
        finally
        {
            File.Delete(partial); // gone already when it was moved into place
            Writing.Release();
        }
    }
}
