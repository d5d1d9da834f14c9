using System.Runtime.CompilerServices;
using VidKV.Formats;

namespace VidKV.Video;

/// <summary>
/// Frames from anything ffmpeg reads — a file, a URL (HTTP, RTSP, RTMP, HLS…), or a camera (<c>camera:/dev/video0</c>,
/// v4l2) — decoded by one ffmpeg process, in stream order: the sequential path. Each frame carries its stream timestamp
/// (from the stream's first timestamp; a camera's from its first frame). Probing is ffprobe; see
/// <see cref="FfmpegDecodeRun"/> for how frames and timestamps come through the pipe.
/// </summary>
public sealed class FfmpegSource : IFrameSource
{
    readonly VideoInput input;
    readonly FrameSampling sampling;
    readonly FfmpegOptions options;
    Task<VideoInfo>? probe;

    /// <param name="source">a path, a URL, or <c>camera:DEVICE</c></param>
    /// <param name="sampling">which frames to deliver (default every frame at its size)</param>
    /// <param name="options">executables, decoder threads, stall timeout</param>
    public FfmpegSource(string source, FrameSampling? sampling = null, FfmpegOptions? options = null)
    {
        input = VideoInput.Parse(source);
        this.sampling = sampling ?? FrameSampling.All;
        this.options = options ?? FfmpegOptions.Default;
        this.sampling.Validate();
        this.options.Validate();
    }

    /// <inheritdoc/>
    public string Name => input.Name;

    /// <inheritdoc/>
    public event Action<SkippedFrame>? FrameSkipped;

    /// <summary>What ffprobe says about the video stream (probed once).</summary>
    /// <exception cref="VideoSourceException">ffprobe missing, no such file or camera, not a readable video, stalled</exception>
    public Task<VideoInfo> ProbeAsync(CancellationToken cancellation = default) => probe ??= VideoProbe.ProbeAsync(input, options, cancellation);

    /// <inheritdoc/>
    /// <exception cref="VideoSourceException">the source cannot be read, has no frames (in the range), or stalls</exception>
    public async IAsyncEnumerable<VideoFrame> ReadAsync([EnumeratorCancellation] CancellationToken cancellation = default)
    {
        var info = await ProbeAsync(cancellation).ConfigureAwait(false);
        await foreach (var frame in DecodeSequentialAsync(input, info, sampling, options, options.DecoderThreads, skipped => FrameSkipped?.Invoke(skipped), cancellation)
            .ConfigureAwait(false))
            yield return frame;
    }

    /// <summary>The plan every ffmpeg run of a source shares: where timestamps count from, the range in pts, the grid.</summary>
    internal sealed record Timing(long Origin, long? StartPts, long? EndPts, SamplingGrid? Grid);

    internal static Timing TimingOf(VideoInput input, VideoInfo info, FrameSampling sampling)
    {
        long origin = input.Kind == VideoInputKind.Camera ? 0 : info.StartPts;
        long? start = sampling.Start is { } s && s > TimeSpan.Zero ? origin + Timestamps.CeilingPts(s, info.TimeBaseNumerator, info.TimeBaseDenominator) : null;
        long? end = sampling.End is { } e ? origin + Timestamps.CeilingPts(e, info.TimeBaseNumerator, info.TimeBaseDenominator) : null;
        SamplingGrid? grid = sampling.Fps != null ? SamplingGrid.Create(sampling, info.TimeBaseNumerator, info.TimeBaseDenominator, start ?? origin) : null;
        return new Timing(origin, start, end, grid);
    }

    /// <summary>One ffmpeg process over the whole stream (seeking to the start time first when there is one).</summary>
    internal static async IAsyncEnumerable<VideoFrame> DecodeSequentialAsync(VideoInput input, VideoInfo info, FrameSampling sampling, FfmpegOptions options,
        int threads, Action<SkippedFrame> onSkipped, [EnumeratorCancellation] CancellationToken cancellation)
    {
        var timing = TimingOf(input, info, sampling);
        var buffers = options.ReuseFrameBuffers ? new FrameBuffers() : null;
        var run = new FfmpegDecodeRun
        {
            Buffers = buffers,
            Input = input,
            Options = options,
            Threads = threads,
            // Only a file is sought: the seek lands on the keyframe before the start, and trim drops what precedes it.
            SeekPts = input.Kind == VideoInputKind.File ? timing.StartPts : null,
            TimeBaseNumerator = info.TimeBaseNumerator,
            TimeBaseDenominator = info.TimeBaseDenominator,
            TrimStartPts = timing.StartPts,
            TrimEndPts = timing.EndPts,
            Grid = timing.Grid,
            MaxWidth = sampling.MaxWidth,
            MaxHeight = sampling.MaxHeight,
            FrameCount = sampling.MaxFrames,
            CopyTimestamps = input.Kind != VideoInputKind.Camera,
        };
        long index = 0;
        await foreach (var item in run.RunAsync(null, cancellation).ConfigureAwait(false))
        {
            TimeSpan? time = item.Pts is { } pts ? Timestamps.ToTime(pts - timing.Origin, info.TimeBaseNumerator, info.TimeBaseDenominator) : null;
            if (item.Image is null)
            {
                onSkipped(new SkippedFrame(index, time, item.SkipReason ?? "not decoded"));
                continue;
            }
            yield return new VideoFrame(item.Image, time ?? TimeSpan.Zero, index++) { Recycler = buffers == null ? null : buffers.Return };
        }
        if (index == 0) throw NoFrames(input, sampling);
    }

    internal static VideoSourceException NoFrames(VideoInput input, FrameSampling sampling) =>
        new(input.Name, sampling.Start != null || sampling.End != null ? "no video frames in the requested time range" : "no video frames (zero-length stream)");

    /// <inheritdoc/>
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
