using System.Globalization;
using System.Text;

namespace VidKV.Video;

/// <summary>
/// Writes RGB frames to an H.264 video file through one ffmpeg process: raw rgb24 frames on its standard input
/// (<c>-f rawvideo -pix_fmt rgb24 -s WxH -r FPS -i -</c>), libx264 in yuv420p out, the container from the file's
/// extension (.mp4, .mkv, .mov). The file appears only once ffmpeg has finished it (written beside it under a
/// ".partial" name first); disposing without <see cref="CompleteAsync"/> abandons it.
/// </summary>
public sealed class RawVideoWriter : IAsyncDisposable
{
    readonly FfmpegProcess ffmpeg;
    readonly string path, partialPath;
    bool completed;

    RawVideoWriter(FfmpegProcess ffmpeg, string path, string partialPath, int width, int height)
    {
        this.ffmpeg = ffmpeg;
        this.path = path;
        this.partialPath = partialPath;
        Width = width;
        Height = height;
    }

    /// <summary>Starts ffmpeg writing <paramref name="path"/>.</summary>
    /// <param name="width">frame width in pixels (even: yuv420p halves it for chroma)</param>
    /// <param name="height">frame height in pixels (even)</param>
    /// <param name="fps">frames per second, in (0, 1000]</param>
    /// <param name="crf">x264 constant rate factor, 0 (lossless luma) to 51; 18 looks lossless to the eye</param>
    /// <param name="preset">x264 preset (ultrafast … veryslow): speed against size</param>
    /// <exception cref="ArgumentException">a size, rate, crf or path out of range</exception>
    /// <exception cref="VideoSourceException">ffmpeg is not installed</exception>
    public static RawVideoWriter Start(string path, int width, int height, double fps, int crf = 18, string preset = "veryfast", FfmpegOptions? options = null)
    {
        options ??= FfmpegOptions.Default;
        if (width <= 0 || height <= 0 || width % 2 != 0 || height % 2 != 0)
            throw new ArgumentException($"H.264 in yuv420p needs a positive even width and height, got {width}×{height}");
        if (!(fps > 0 && fps <= 1000)) throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"frames per second must be in (0, 1000], got {fps}"));
        if (crf is < 0 or > 51) throw new ArgumentException($"crf must be in 0..51, got {crf}");
        string extension = Path.GetExtension(path);
        if (extension.Length < 2) throw new ArgumentException($"'{path}' has no extension to choose the container by (.mp4, .mkv, .mov)");
        string partial = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, Path.GetFileNameWithoutExtension(path) + ".partial" + extension);
        string[] arguments =
        [
            "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", $"{width}x{height}", "-r", fps.ToString("R", CultureInfo.InvariantCulture), "-i", "-",
            "-c:v", "libx264", "-preset", preset, "-crf", crf.ToString(CultureInfo.InvariantCulture), "-pix_fmt", "yuv420p", partial,
        ];
        return new RawVideoWriter(FfmpegProcess.Start(options, options.FfmpegExecutable, arguments, path), path, partial, width, height);
    }

    /// <summary>Frame width in pixels.</summary>
    public int Width { get; }
    /// <summary>Frame height in pixels.</summary>
    public int Height { get; }
    /// <summary>Frames written so far.</summary>
    public long FrameCount { get; private set; }

    /// <summary>Writes one frame: <see cref="Width"/> · <see cref="Height"/> · 3 bytes of RGB, rows top to bottom.</summary>
    /// <exception cref="IOException">ffmpeg stopped (its error is in the message)</exception>
    public async ValueTask WriteFrameAsync(ReadOnlyMemory<byte> rgb, CancellationToken cancellation = default)
    {
        if (rgb.Length != 3 * Width * Height) throw new ArgumentException($"a {Width}×{Height} RGB frame is {3 * Width * Height} bytes, got {rgb.Length}");
        ObjectDisposedException.ThrowIf(completed, this);
        try
        {
            await ffmpeg.Input.WriteAsync(rgb, cancellation).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            throw await FailureAsync(e).ConfigureAwait(false);
        }
        FrameCount++;
    }

    /// <summary>Closes ffmpeg's input, waits for it to finish the file, and moves the file into place.</summary>
    /// <exception cref="IOException">ffmpeg failed (its error is in the message)</exception>
    public async Task CompleteAsync(CancellationToken cancellation = default)
    {
        ObjectDisposedException.ThrowIf(completed, this);
        completed = true;
        try
        {
            await ffmpeg.Input.FlushAsync(cancellation).ConfigureAwait(false);
            ffmpeg.Input.Close();
        }
        catch (IOException e)
        {
            throw await FailureAsync(e).ConfigureAwait(false);
        }
        if (await ffmpeg.WaitForExitAsync(cancellation).ConfigureAwait(false) != 0) throw await FailureAsync(null).ConfigureAwait(false);
        File.Move(partialPath, path, overwrite: true);
    }

    async Task<IOException> FailureAsync(Exception? inner)
    {
        ffmpeg.Kill();
        var error = new StringBuilder();
        await foreach (string line in ffmpeg.ErrorLines.ReadAllAsync().ConfigureAwait(false))
            if (line.Trim().Length > 0) error.Append(error.Length > 0 ? "; " : "").Append(line.Trim());
        File.Delete(partialPath);
        return new IOException($"{path}: ffmpeg could not write it: {(error.Length > 0 ? error.ToString() : "it stopped")}", inner);
    }

    /// <summary>Stops ffmpeg if it still runs and removes an unfinished file.</summary>
    public async ValueTask DisposeAsync()
    {
        await ffmpeg.DisposeAsync().ConfigureAwait(false);
        if (File.Exists(partialPath)) File.Delete(partialPath);
    }
}
