using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;
using System.Threading.Channels;
using VidKV.Formats;

namespace VidKV.Video;

/// <summary>One decoded frame, or a frame left out: its pixels (null when skipped), its pts in the stream's time base
/// (null when the decoder gave no frame at all), and why it was skipped.</summary>
internal readonly record struct DecodedItem(RgbImage? Image, long? Pts, string? SkipReason);

/// <summary>
/// One ffmpeg process that decodes a video stream to rgb24 rawvideo on its standard output, with the filters that
/// choose frames, and the reading of that output. Built by hand (FFMpegCore's argument builder and pipe sinks would hide
/// the standard error this needs line by line).
/// </summary>
/// <remarks>
/// <para>Rawvideo carries no timestamps. Debian 12's ffmpeg 5.1 has no per-frame side channel but its log
/// (<c>-stats_enc_pre</c> came in 6.1), so two <c>showinfo=checksum=0</c> filters print one line per frame on standard
/// error: the first sees every decoded frame (a heartbeat for the stall timeout, and the frame a "corrupt decoded frame"
/// warning belongs to), the last every frame written out, with its exact pts and size, before its bytes reach the
/// pipe. Log lines and output are so read in one order, and each frame's pts is the stream's own (<c>-copyts</c>, no
/// frame-rate conversion: <c>-fps_mode passthrough</c>). A container that carries timestamps (NUT, fragmented MOV)
/// would need a demuxer here and still leave decoder errors unattributed.</para>
/// <para>Frames are chosen inside ffmpeg, before the conversion to RGB: <c>trim</c> by pts for the range (it also ends
/// the run at the range's end), <c>select</c> with <see cref="SamplingGrid.SelectExpression"/> for the frame rate, and
/// <c>-frames:v</c> for the frame limit. Scaling, when asked, is <c>scale</c> with area averaging.</para>
/// </remarks>
internal sealed partial class FfmpegDecodeRun
{
    public required VideoInput Input { get; init; }
    public required FfmpegOptions Options { get; init; }
    /// <summary>Decoder threads (0: ffmpeg's choice).</summary>
    public int Threads { get; init; }
    /// <summary>Seek the input to the keyframe at this pts before decoding (files only); exact, since the seek lands on it.</summary>
    public long? SeekPts { get; init; }
    public long TimeBaseNumerator { get; init; } = 1;
    public long TimeBaseDenominator { get; init; } = 1;
    public long? TrimStartPts { get; init; }
    public long? TrimEndPts { get; init; }
    public SamplingGrid? Grid { get; init; }
    public double PreviousInterval { get; init; } = -1;
    public int? MaxWidth { get; init; }
    public int? MaxHeight { get; init; }
    public long? FrameCount { get; init; }
    /// <summary>Keep the stream's timestamps (<c>-copyts</c>); off for cameras, whose clock ffmpeg then starts at zero.</summary>
    public bool CopyTimestamps { get; init; } = true;
    /// <summary>Buffers handed back by consumers, decoded into before a new array is made (<see cref="FfmpegOptions.ReuseFrameBuffers"/>).</summary>
    public FrameBuffers? Buffers { get; init; }

    const int DecodedFilter = 0;

    internal List<string> Arguments(out int outputFilter)
    {
        var filters = new List<string> { "showinfo=checksum=0" };
        if (TrimStartPts != null || TrimEndPts != null)
        {
            var trim = new List<string>();
            if (TrimStartPts is { } start) trim.Add(Invariant($"start_pts={start}"));
            if (TrimEndPts is { } end) trim.Add(Invariant($"end_pts={end}"));
            filters.Add("trim=" + string.Join(':', trim));
        }
        if (Grid is { } grid) filters.Add($"select='{grid.SelectExpression(PreviousInterval)}'");
        if (MaxWidth != null || MaxHeight != null)
        {
            string width = MaxWidth is { } w ? Invariant($"'min(iw,{w})'") : "iw", height = MaxHeight is { } h ? Invariant($"'min(ih,{h})'") : "ih";
            filters.Add($"scale=w={width}:h={height}:force_original_aspect_ratio=decrease:flags=area");
        }
        filters.Add("format=rgb24");
        outputFilter = filters.Count;
        filters.Add("showinfo=checksum=0");

        var arguments = new List<string> { "-hide_banner", "-nostdin", "-nostats", "-loglevel", "repeat+level+info" };
        if (Threads > 0) arguments.AddRange(["-threads", Threads.ToString(CultureInfo.InvariantCulture)]);
        if (SeekPts is { } seek)
        {
            // -ss with -seek_timestamp is an absolute stream time; floored to microseconds it never passes the keyframe.
            Int128 microseconds = (Int128)seek * TimeBaseNumerator * 1_000_000 / TimeBaseDenominator;
            if (seek < 0 && microseconds * TimeBaseDenominator != (Int128)seek * TimeBaseNumerator * 1_000_000) microseconds--;
            decimal seconds = (decimal)(long)microseconds / 1_000_000m;
            arguments.AddRange(["-ss", seconds.ToString("0.######", CultureInfo.InvariantCulture), "-seek_timestamp", "1", "-noaccurate_seek"]);
        }
        if (CopyTimestamps) arguments.Add("-copyts");
        arguments.AddRange(Input.InputArguments(withDashI: true));
        arguments.AddRange(["-map", "0:v:0", "-an", "-sn", "-dn", "-vf", string.Join(',', filters), "-fps_mode", "passthrough"]);
        if (FrameCount is { } count) arguments.AddRange(["-frames:v", count.ToString(CultureInfo.InvariantCulture)]);
        arguments.AddRange(["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]);
        return arguments;
    }

    static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    [GeneratedRegex(@"\[Parsed_showinfo_(?<filter>\d+) @ [^\]]*\] (?:\[\w+\] )?n:\s*(?<n>\d+)\s+pts:\s*(?<pts>\S+).*?\ss:(?<width>\d+)x(?<height>\d+)")]
    private static partial Regex ShowinfoLine();

    /// <summary>
    /// Runs ffmpeg and yields its frames in order. <paramref name="beforeFrameRead"/> is awaited before each frame's
    /// bytes are taken from the pipe (QuickDecoder's bound on frames held ahead of the consumer; ffmpeg blocks on the
    /// full pipe meanwhile). Waiting there or in the consumer does not count toward the stall timeout; waiting on ffmpeg
    /// does.
    /// </summary>
    public async IAsyncEnumerable<DecodedItem> RunAsync(Func<CancellationToken, ValueTask>? beforeFrameRead,
        [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        var arguments = Arguments(out int outputFilter);
        await using var process = FfmpegProcess.Start(Options, Options.FfmpegExecutable, arguments, Input.Name);
        using var stall = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        using var killOnStall = stall.Token.Register(process.Kill);
        var recentErrors = new Queue<string>();
        var corruptPts = new HashSet<long>();
        bool corruptPending = false, outputEnded = false;
        while (true)
        {
            stall.CancelAfter(Options.StallTimeout);
            string? line = await NextLineAsync(process.ErrorLines, stall.Token).ConfigureAwait(false);
            stall.CancelAfter(Timeout.Infinite);
            if (line == null) break;
            var match = ShowinfoLine().Match(line);
            if (!match.Success)
            {
                if (line.Contains("corrupt decoded frame", StringComparison.Ordinal)) corruptPending = true;
                else if (line.Contains("Error while decoding stream", StringComparison.Ordinal))
                    yield return new DecodedItem(null, null, FfmpegLog.Clean(line));
                if (line.Contains("[error]", StringComparison.Ordinal) || line.Contains("[fatal]", StringComparison.Ordinal)
                    || line.Contains("[warning]", StringComparison.Ordinal))
                {
                    recentErrors.Enqueue(FfmpegLog.Clean(line));
                    if (recentErrors.Count > 8) recentErrors.Dequeue();
                }
                continue;
            }
            int filter = int.Parse(match.Groups["filter"].ValueSpan, CultureInfo.InvariantCulture);
            bool hasPts = long.TryParse(match.Groups["pts"].ValueSpan, NumberStyles.Integer, CultureInfo.InvariantCulture, out long pts);
            if (filter == DecodedFilter)
            {
                if (corruptPending && hasPts) corruptPts.Add(pts);
                corruptPending = false;
                continue;
            }
            if (filter != outputFilter) continue;
            int width = int.Parse(match.Groups["width"].ValueSpan, CultureInfo.InvariantCulture);
            int height = int.Parse(match.Groups["height"].ValueSpan, CultureInfo.InvariantCulture);
            if (beforeFrameRead != null) await beforeFrameRead(cancellation).ConfigureAwait(false);
            var pixels = Buffers?.Take(checked(3 * width * height)) ?? new byte[checked(3 * width * height)];
            stall.CancelAfter(Options.StallTimeout);
            int read = await ReadFullyAsync(process.Output, pixels).ConfigureAwait(false);
            stall.CancelAfter(Timeout.Infinite);
            cancellation.ThrowIfCancellationRequested();
            if (stall.IsCancellationRequested) throw FfmpegLog.Stalled(Input.Name, Options.StallTimeout);
            if (read == 0)
            {
                // ffmpeg filtered a frame past -frames:v and then stopped before writing it.
                outputEnded = true;
                break;
            }
            if (read < pixels.Length)
                throw new VideoSourceException(Input.Name, $"ffmpeg stopped in the middle of a frame ({Describe(recentErrors)})");
            long? framePts = hasPts ? pts : null;
            if (hasPts && corruptPts.Remove(pts)) yield return new DecodedItem(null, framePts, "corrupt decoded frame");
            else yield return new DecodedItem(new RgbImage(width, height, pixels), framePts, null);
        }
        cancellation.ThrowIfCancellationRequested();
        if (stall.IsCancellationRequested) throw FfmpegLog.Stalled(Input.Name, Options.StallTimeout);
        if (outputEnded) yield break;
        int exitCode = await process.WaitForExitAsync(cancellation).ConfigureAwait(false);
        if (exitCode != 0) throw new VideoSourceException(Input.Name, $"decoding failed ({Describe(recentErrors)})");
    }

    static string Describe(Queue<string> errors) => errors.Count > 0 ? errors.Last() : "ffmpeg gave no reason";

    static async ValueTask<string?> NextLineAsync(ChannelReader<string> lines, CancellationToken cancellation)
    {
        try
        {
            while (await lines.WaitToReadAsync(cancellation).ConfigureAwait(false))
                if (lines.TryRead(out string? line)) return line;
            return null;
        }
        catch (OperationCanceledException)
        {
            return null;
        }
    }

    static async ValueTask<int> ReadFullyAsync(Stream stream, byte[] buffer)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int read = await stream.ReadAsync(buffer.AsMemory(total)).ConfigureAwait(false);
            if (read == 0) break;
            total += read;
        }
        return total;
    }
}

/// <summary>
/// A few frame buffers handed back by the consumer (<see cref="VideoFrame.Recycle"/>) for the decoder to fill again:
/// at most <see cref="Kept"/> (the frames in flight between decoder and engine), of the size asked or none.
/// </summary>
internal sealed class FrameBuffers
{
    const int Kept = 4;
    readonly System.Collections.Concurrent.ConcurrentQueue<byte[]> spare = new();

    /// <summary>A spare buffer of <paramref name="length"/> bytes, or null (a spare of another size is dropped).</summary>
    public byte[]? Take(int length)
    {
        while (spare.TryDequeue(out var buffer))
            if (buffer.Length == length) return buffer;
        return null;
    }

    public void Return(byte[] buffer)
    {
        if (spare.Count < Kept) spare.Enqueue(buffer);
    }
}
