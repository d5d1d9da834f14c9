using System.Globalization;
using System.Text.Json;
using FFMpegCore;
using FFMpegCore.Exceptions;

namespace VidKV.Video;

/// <summary>
/// What ffprobe says about a source's first video stream: container, codec, coded size, time base (timestamps are
/// integers in it), the stream's first timestamp (frame timestamps count from it), average frame rate and duration
/// (null for live streams).
/// </summary>
public sealed record VideoInfo(string Container, string Codec, int Width, int Height, long TimeBaseNumerator, long TimeBaseDenominator,
    long StartPts, double FrameRate, TimeSpan? Duration)
{
    /// <summary>The time of <paramref name="pts"/> (in the time base) from the stream's start, rounded to 100 ns.</summary>
    public TimeSpan TimeOf(long pts) => Timestamps.ToTime(pts - StartPts, TimeBaseNumerator, TimeBaseDenominator);
}

/// <summary>Timestamp arithmetic in a rational time base, exact in 128-bit integers.</summary>
internal static class Timestamps
{
    /// <summary><paramref name="pts"/> · num/den seconds, to the nearest 100 ns tick.</summary>
    public static TimeSpan ToTime(long pts, long numerator, long denominator)
    {
        Int128 scaled = (Int128)pts * numerator * TimeSpan.TicksPerSecond;
        Int128 half = denominator / 2;
        Int128 ticks = scaled >= 0 ? (scaled + half) / denominator : -((-scaled + half) / denominator);
        return TimeSpan.FromTicks((long)ticks);
    }

    /// <summary>The smallest pts (in num/den units) at or after <paramref name="time"/>.</summary>
    public static long CeilingPts(TimeSpan time, long numerator, long denominator)
    {
        Int128 scaled = (Int128)time.Ticks * denominator, unit = (Int128)numerator * TimeSpan.TicksPerSecond;
        Int128 quotient = Int128.DivRem(scaled, unit).Quotient;
        if (quotient * unit < scaled) quotient++;
        return (long)quotient;
    }
}

/// <summary>
/// Runs ffprobe: stream facts (<see cref="VideoInfo"/>) through FFMpegCore's <c>FFProbe.AnalyseAsync</c> (its raw
/// stream keeps the fields it has no property for, <c>time_base</c> and <c>start_pts</c> among them), and the packet
/// index QuickDecoder plans from by hand: FFMpegCore's packet listing reads every stream's packets into one JSON document
/// and turns a missing pts into 0, where a plan must know that a pts is missing.
/// </summary>
internal static class VideoProbe
{
    /// <summary>Probes the first video stream; every failure is a one-line <see cref="VideoSourceException"/>.</summary>
    public static async Task<VideoInfo> ProbeAsync(VideoInput input, FfmpegOptions options, CancellationToken cancellation)
    {
        input.CheckExists();
        options.RequireTools(input.Name);
        var ffOptions = new FFOptions { BinaryFolder = options.BinaryFolder ?? "" };
        using var stall = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        stall.CancelAfter(options.StallTimeout);
        IMediaAnalysis analysis;
        try
        {
            analysis = input.Kind switch
            {
                VideoInputKind.Url => await FFProbe.AnalyseAsync(new Uri(input.Location), ffOptions, null, stall.Token).ConfigureAwait(false),
                VideoInputKind.Camera => await FFProbe.AnalyseAsync(input.Location, ffOptions, "-f v4l2", stall.Token).ConfigureAwait(false),
                _ => await FFProbe.AnalyseAsync(input.Location, ffOptions, null, stall.Token).ConfigureAwait(false),
            };
        }
        catch (OperationCanceledException) when (!cancellation.IsCancellationRequested)
        {
            throw FfmpegLog.Stalled(input.Name, options.StallTimeout);
        }
        catch (FFProbeProcessException e)
        {
            throw ProbeFailure(input, e.StandardError);
        }
        catch (Exception e) when (e is FFMpegException or JsonException or FileNotFoundException)
        {
            throw input.IsEmptyFile ? new VideoSourceException(input.Name, "empty file (zero-length stream)", e)
                : new VideoSourceException(input.Name, $"not a readable video ({FfmpegLog.Clean(e.Message.Split('\n')[0])})", e);
        }

        var stream = analysis.Raw.Streams.FirstOrDefault(s => s.CodecType == "video")
            ?? throw new VideoSourceException(input.Name, "no video frames (zero-length stream, or no video stream)");
        string? Extra(string key) => stream.ExtensionData is { } extra && extra.TryGetValue(key, out var value)
            ? Convert.ToString(value, CultureInfo.InvariantCulture) : null;
        var (timeBaseNumerator, timeBaseDenominator) = Fraction(Extra("time_base")) is var (n, d) && n > 0 && d > 0 ? (n, d)
            : throw new VideoSourceException(input.Name, "the video stream has no time base");
        double frameRate = Fraction(stream.AvgFrameRate) is var (fn, fd) && fn > 0 && fd > 0 ? (double)fn / fd
            : Fraction(stream.FrameRate) is var (rn, rd) && rn > 0 && rd > 0 ? (double)rn / rd : 0;
        int width = stream.Width ?? 0, height = stream.Height ?? 0;
        if (width <= 0 || height <= 0) throw new VideoSourceException(input.Name, "the video stream has no frame size (no decodable frames)");
        long startPts = long.TryParse(Extra("start_pts"), NumberStyles.Integer, CultureInfo.InvariantCulture, out long start) ? start : 0;
        TimeSpan? duration = analysis.Format.Duration > TimeSpan.Zero ? analysis.Format.Duration : null;
        return new VideoInfo(analysis.Format.FormatName ?? "", stream.CodecName ?? "", width, height, timeBaseNumerator, timeBaseDenominator,
            startPts, frameRate, duration);
    }

    /// <summary>
    /// The presentation timestamps of the first video stream's frames (sorted) and of its keyframes, from its packets
    /// (<c>ffprobe -show_entries packet=pts,flags</c>: the container is read, nothing is decoded). Packets flagged
    /// discard (an edit list's pre-roll) are decoded but give no frame, so they are left out. Null when a packet has
    /// no pts (raw elementary streams), so that no plan can be made from it.
    /// </summary>
    public static async Task<PacketIndex?> IndexAsync(VideoInput input, FfmpegOptions options, CancellationToken cancellation)
    {
        var arguments = new List<string> { "-v", "error", "-hide_banner", "-select_streams", "v:0", "-show_entries", "packet=pts,flags", "-of", "csv=p=0",
            input.InputArguments(withDashI: false).Last() };
        var frames = new List<long>();
        var keyframes = new List<long>();
        bool complete = true;
        var (exitCode, errors) = await RunAsync(options, arguments, input.Name, line =>
        {
            int comma = line.IndexOf(',');
            if (comma < 0) return;
            string flags = line[(comma + 1)..];
            if (flags.Length > 1 && flags[1] == 'D') return;
            if (!long.TryParse(line.AsSpan(0, comma), NumberStyles.Integer, CultureInfo.InvariantCulture, out long pts)) { complete = false; return; }
            frames.Add(pts);
            if (flags.StartsWith('K')) keyframes.Add(pts);
        }, cancellation).ConfigureAwait(false);
        if (exitCode != 0) throw ProbeFailure(input, errors);
        if (!complete || keyframes.Count == 0) return null;
        frames.Sort();
        keyframes.Sort();
        return new PacketIndex([.. frames], [.. keyframes]);
    }

    static (long, long) Fraction(string? text)
    {
        if (text is null) return (0, 0);
        int slash = text.IndexOf('/');
        return slash > 0 && long.TryParse(text.AsSpan(0, slash), CultureInfo.InvariantCulture, out long numerator)
            && long.TryParse(text.AsSpan(slash + 1), CultureInfo.InvariantCulture, out long denominator) ? (numerator, denominator) : (0, 0);
    }

    static VideoSourceException ProbeFailure(VideoInput input, IReadOnlyList<string> errors)
    {
        if (input.IsEmptyFile) return new VideoSourceException(input.Name, "empty file (zero-length stream)");
        string detail = FfmpegLog.LastProblem(errors, input) ?? "ffprobe failed";
        return input.Kind == VideoInputKind.Camera
            ? new VideoSourceException(input.Name, $"cannot open the camera ({detail})")
            : new VideoSourceException(input.Name, $"not a readable video ({detail})");
    }

    /// <summary>Runs ffprobe, handing each line of its output to <paramref name="onLine"/>; a probe that prints nothing for
    /// the stall timeout is killed and fails with the stall message.</summary>
    static async Task<(int ExitCode, List<string> Errors)> RunAsync(FfmpegOptions options, IEnumerable<string> arguments, string sourceName,
        Action<string> onLine, CancellationToken cancellation)
    {
        await using var process = FfmpegProcess.Start(options, options.FfprobeExecutable, arguments, sourceName);
        using var stall = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        using var killOnStall = stall.Token.Register(process.Kill);
        stall.CancelAfter(options.StallTimeout);
        using var output = new StreamReader(process.Output);
        while (await output.ReadLineAsync(CancellationToken.None).ConfigureAwait(false) is { } line)
        {
            stall.CancelAfter(options.StallTimeout);
            onLine(line);
        }
        var errors = new List<string>();
        await foreach (string line in process.ErrorLines.ReadAllAsync(CancellationToken.None).ConfigureAwait(false)) errors.Add(line);
        int exitCode = await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
        cancellation.ThrowIfCancellationRequested();
        if (stall.IsCancellationRequested) throw FfmpegLog.Stalled(sourceName, options.StallTimeout);
        return (exitCode, errors);
    }
}

/// <summary>A video stream's frame and keyframe presentation timestamps, each sorted.</summary>
internal sealed record PacketIndex(long[] FramePts, long[] KeyframePts);

/// <summary>Reading ffmpeg's log lines for the one line a user should see.</summary>
internal static class FfmpegLog
{
    /// <summary>The last line that reports a problem, without ffmpeg's "[context @ 0x…]" and level prefixes and without the
    /// input's name (the exception names it already), preceded by the last line a component (a demuxer, a decoder)
    /// logged when that says more: "moov atom not found; Invalid data found when processing input".</summary>
    public static string? LastProblem(IReadOnlyList<string> lines, VideoInput input)
    {
        string? last = null;
        for (int i = lines.Count - 1; i >= 0; i--)
        {
            string line = Clean(lines[i]);
            if (line.Length == 0 || line.StartsWith("Conversion failed", StringComparison.Ordinal)) continue;
            foreach (string prefix in new[] { input.Location + ": ", "file:" + input.Location + ": " })
                if (line.StartsWith(prefix, StringComparison.Ordinal)) line = line[prefix.Length..];
            bool fromComponent = lines[i].Contains(" @ 0x", StringComparison.Ordinal);
            if (last == null)
            {
                last = line;
                if (fromComponent) return last;
            }
            else if (fromComponent) return line == last ? last : $"{line}; {last}";
        }
        return last;
    }

    /// <summary>A log line without its "[context @ 0x…] " and "[level] " prefixes.</summary>
    public static string Clean(string line)
    {
        line = line.Trim();
        while (line.StartsWith('['))
        {
            int close = line.IndexOf("] ", StringComparison.Ordinal);
            if (close < 0) break;
            line = line[(close + 2)..].TrimStart();
        }
        return line;
    }

    public static VideoSourceException Stalled(string sourceName, TimeSpan timeout) =>
        new(sourceName, string.Create(CultureInfo.InvariantCulture, $"stream stalled: nothing arrived for {timeout.TotalSeconds:0.###} s"));
}
