using System.Runtime.CompilerServices;
using System.Threading.Channels;
using VidKV.Formats;

namespace VidKV.Video;

/// <summary>How <see cref="QuickDecoder"/> splits and runs its work.</summary>
public sealed record QuickDecoderOptions
{
    /// <summary>Defaults: one worker per core, one decoder thread each, at most 32 frames decoded ahead of the consumer.</summary>
    public static QuickDecoderOptions Default { get; } = new();

    /// <summary>ffmpeg processes decoding at once.</summary>
    public int Workers { get; init; } = Environment.ProcessorCount;
    /// <summary>Decoder threads in each worker's ffmpeg.</summary>
    public int ThreadsPerWorker { get; init; } = 1;
    /// <summary>At most this many frames are held decoded ahead of the consumer (ffmpeg waits on its pipe past that).
    /// A worker can run only while its chunk's first frame is within this many frames of the consumer, so sampled
    /// decoding (a few frames per keyframe interval) runs all workers at once, while decoding every frame of long GOPs
    /// needs a window of about GOP length × workers to gain.</summary>
    public int MaxFramesAhead { get; init; } = 32;
    /// <summary>Keyframe intervals are merged into one chunk until it decodes at least this many frames (one ffmpeg start
    /// per chunk), while its delivered frames stay within <see cref="MaxFramesAhead"/> / <see cref="Workers"/> (so every
    /// worker has room to decode its whole chunk while the consumer is at the start of the first), and only across a gap
    /// of at most <see cref="MergeGapFrames"/>. Measured on a 720p H.264 file (AMD EPYC Zen 4): an ffmpeg start with its
    /// seek costs about 100 ms, about 50 frames of one-thread decoding (2 ms each); at 1 frame/s of a 10-minute file
    /// chunks of 480 frames (38 chunks) gave 1.82× one-thread sequential decoding, 240 (60 chunks) 1.61–1.69×, 48 1.37×.</summary>
    public int MinChunkFrames { get; init; } = 480;
    /// <summary>The most frames a chunk decodes only to reach the next keyframe interval it takes in (the frames after
    /// its last wanted one, which a chunk of their own would skip: ffmpeg stops at a chunk's last wanted frame). Past it
    /// the next interval starts a chunk of its own, since decoding the gap would cost more than starting another ffmpeg
    /// (about 50 frames' worth; see <see cref="MinChunkFrames"/>).</summary>
    public int MergeGapFrames { get; init; } = 48;
    /// <summary>ffmpeg and ffprobe executables and the stall timeout (its <see cref="FfmpegOptions.DecoderThreads"/> is not
    /// used: see <see cref="ThreadsPerWorker"/>).</summary>
    public FfmpegOptions Ffmpeg { get; init; } = FfmpegOptions.Default;

    internal void Validate()
    {
        if (Workers <= 0) throw new ArgumentException($"workers must be positive, got {Workers}");
        if (ThreadsPerWorker < 0) throw new ArgumentException($"threads per worker must be 0 (automatic) or positive, got {ThreadsPerWorker}");
        if (MaxFramesAhead <= 0) throw new ArgumentException($"frames ahead must be positive, got {MaxFramesAhead}");
        if (MinChunkFrames <= 0) throw new ArgumentException($"chunk frames must be positive, got {MinChunkFrames}");
        if (MergeGapFrames < 0) throw new ArgumentException($"merge gap must be 0 or more frames, got {MergeGapFrames}");
        Ffmpeg.Validate();
    }
}

/// <summary>
/// Keyframe-parallel decoding of a file or seekable URL (QuickVideo's QuickDecoder, Schneider et al. 2025): the frames
/// the sampling wants are planned from ffprobe's packet index (no decoding), split into chunks that each start at a
/// keyframe, and decoded by several ffmpeg workers at once, each seeking to its chunk's keyframe; frames come out in
/// stream order, bit-identical (pixels and timestamps) to <see cref="FfmpegSource"/>'s one sequential pass, and decoding
/// runs ahead of the consumer by at most <see cref="QuickDecoderOptions.MaxFramesAhead"/> frames.
/// </summary>
/// <remarks>
/// Why the frames are the same: an ffmpeg seek (<c>-ss</c> before <c>-i</c>, <c>-noaccurate_seek</c>) to a keyframe's own
/// time lands on that keyframe, where decoding of a closed GOP starts afresh; each worker selects its frames with the
/// same <c>select</c> expression as the sequential pass, started from the interval of the last frame kept before its
/// chunk (<see cref="SamplingGrid"/>), and its <c>trim</c> range runs from its first planned frame to just past its last.
/// A leading B-frame of the next GOP (open GOPs) has a pts before that GOP's keyframe, so it belongs to the chunk that
/// decodes through it. Streams without timestamps on every packet cannot be planned and fall back to the sequential path.
/// </remarks>
public sealed class QuickDecoder : IFrameSource
{
    readonly VideoInput input;
    readonly FrameSampling sampling;
    readonly QuickDecoderOptions options;

    /// <param name="source">a path or a seekable URL (not a camera or a live stream: the plan reads the whole index first)</param>
    /// <param name="sampling">which frames to deliver (default every frame at its size)</param>
    /// <param name="options">workers, threads, frames ahead, ffmpeg settings</param>
    public QuickDecoder(string source, FrameSampling? sampling = null, QuickDecoderOptions? options = null)
    {
        input = VideoInput.Parse(source);
        if (input.Kind == VideoInputKind.Camera) throw new ArgumentException($"{input.Name}: a camera cannot be decoded in parallel (use FfmpegSource)");
        this.sampling = sampling ?? FrameSampling.All;
        this.options = options ?? QuickDecoderOptions.Default;
        this.sampling.Validate();
        this.options.Validate();
    }

    /// <inheritdoc/>
    public string Name => input.Name;

    /// <inheritdoc/>
    public event Action<SkippedFrame>? FrameSkipped;

    /// <summary>The chunks of the last plan (for benchmarks and tests).</summary>
    public int ChunkCount { get; private set; }

    /// <summary>Whether the last read fell back to one sequential pass (a stream whose packets lack timestamps).</summary>
    public bool FellBack { get; private set; }

    /// <summary>The most frames that were read from the workers' pipes and not yet taken by the consumer, at any moment of
    /// the last read (at most <see cref="QuickDecoderOptions.MaxFramesAhead"/>).</summary>
    public long PeakFramesAhead => Interlocked.Read(ref peakAhead);

    long framesRead, framesTaken, peakAhead;

    void CountRead()
    {
        long ahead = Interlocked.Increment(ref framesRead) - Interlocked.Read(ref framesTaken);
        for (long peak = Interlocked.Read(ref peakAhead); ahead > peak; peak = Interlocked.Read(ref peakAhead))
            if (Interlocked.CompareExchange(ref peakAhead, ahead, peak) == peak) break;
    }

    /// <inheritdoc/>
    /// <exception cref="VideoSourceException">the source cannot be read, has no frames (in the range), or stalls</exception>
    public async IAsyncEnumerable<VideoFrame> ReadAsync([EnumeratorCancellation] CancellationToken cancellation = default)
    {
        var info = await VideoProbe.ProbeAsync(input, options.Ffmpeg, cancellation).ConfigureAwait(false);
        var index = await VideoProbe.IndexAsync(input, options.Ffmpeg, cancellation).ConfigureAwait(false);
        var timing = FfmpegSource.TimingOf(input, info, sampling);
        FellBack = index == null;
        if (index == null)
        {
            ChunkCount = 1;
            await foreach (var frame in FfmpegSource.DecodeSequentialAsync(input, info, sampling, options.Ffmpeg, options.ThreadsPerWorker, Report, cancellation)
                .ConfigureAwait(false))
                yield return frame;
            yield break;
        }
        var chunks = Plan(index, timing, sampling.MaxFrames, options);
        ChunkCount = chunks.Count;
        if (chunks.Count == 0) throw FfmpegSource.NoFrames(input, sampling);

        framesRead = framesTaken = peakAhead = 0;
        var window = new FrameWindow(options.MaxFramesAhead);
        var results = chunks.Select(_ => Channel.CreateUnbounded<(DecodedItem Item, long Position)>(new UnboundedChannelOptions { SingleReader = true })).ToArray();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        int nextChunk = -1;
        async Task WorkAsync()
        {
            for (int c = Interlocked.Increment(ref nextChunk); c < chunks.Count && !stop.IsCancellationRequested; c = Interlocked.Increment(ref nextChunk))
            {
                var writer = results[c].Writer;
                try
                {
                    await DecodeChunkAsync(chunks[c], info, timing, window, writer, stop.Token).ConfigureAwait(false);
                    writer.TryComplete();
                }
                catch (Exception e)
                {
                    writer.TryComplete(e);
                }
            }
        }
        var workers = Enumerable.Range(0, Math.Min(options.Workers, chunks.Count)).Select(_ => Task.Run(WorkAsync)).ToArray();
        try
        {
            long delivered = 0;
            for (int c = 0; c < chunks.Count; c++)
            {
                var reader = results[c].Reader;
                while (await reader.WaitToReadAsync(stop.Token).ConfigureAwait(false))
                {
                    while (reader.TryRead(out var result))
                    {
                        var (item, position) = result;
                        TimeSpan? time = item.Pts is { } pts ? Timestamps.ToTime(pts - timing.Origin, info.TimeBaseNumerator, info.TimeBaseDenominator) : null;
                        if (item.Image is null) Report(new SkippedFrame(delivered, time, item.SkipReason ?? "not decoded"));
                        else yield return new VideoFrame(item.Image, time ?? TimeSpan.Zero, delivered++);
                        if (position >= 0)
                        {
                            Interlocked.Increment(ref framesTaken);
                            window.Release(position + 1);
                        }
                    }
                }
                if (c + 1 < chunks.Count) window.Release(chunks[c + 1].Position);
            }
            if (delivered == 0) throw FfmpegSource.NoFrames(input, sampling);
        }
        finally
        {
            stop.Cancel();
            foreach (var result in results) result.Writer.TryComplete();
            try { await Task.WhenAll(workers).ConfigureAwait(false); } catch (OperationCanceledException) { }
        }
    }

    void Report(SkippedFrame skipped) => FrameSkipped?.Invoke(skipped);

    /// <inheritdoc/>
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    async Task DecodeChunkAsync(Chunk chunk, VideoInfo info, FfmpegSource.Timing timing, FrameWindow window,
        ChannelWriter<(DecodedItem, long)> writer, CancellationToken cancellation)
    {
        var run = new FfmpegDecodeRun
        {
            Input = input,
            Options = options.Ffmpeg,
            Threads = options.ThreadsPerWorker,
            SeekPts = chunk.SeekPts,
            TimeBaseNumerator = info.TimeBaseNumerator,
            TimeBaseDenominator = info.TimeBaseDenominator,
            TrimStartPts = chunk.FirstPts,
            TrimEndPts = chunk.LastPts + 1,
            Grid = timing.Grid,
            PreviousInterval = chunk.PreviousInterval,
            MaxWidth = sampling.MaxWidth,
            MaxHeight = sampling.MaxHeight,
            FrameCount = chunk.Count,
        };
        long position = chunk.Position;
        async ValueTask WaitForRoomAsync(CancellationToken token)
        {
            await window.WaitForRoomAsync(position, token).ConfigureAwait(false);
            CountRead();
        }
        await foreach (var item in run.RunAsync(WaitForRoomAsync, cancellation).ConfigureAwait(false))
        {
            // A frame the decoder never produced holds no place in the plan; a frame read and dropped as corrupt does.
            long itemPosition = item.Image is null && item.Pts is null ? -1 : position++;
            writer.TryWrite((item, itemPosition));
        }
    }

    /// <summary>
    /// A run of consecutive keyframe intervals decoded by one ffmpeg process: seek to <see cref="SeekPts"/> (null: from
    /// the start), deliver the <see cref="Count"/> planned frames from <see cref="FirstPts"/> to <see cref="LastPts"/>,
    /// which hold places <see cref="Position"/>… in the output; <see cref="PreviousInterval"/> is the sampling interval of
    /// the last frame kept before it (−1 for none).
    /// </summary>
    internal sealed record Chunk(long? SeekPts, long FirstPts, long LastPts, int Count, long Position, double PreviousInterval);

    /// <summary>
    /// The frames the sequential pass would deliver (the same range, interval rule and limit, applied to the sorted
    /// frame timestamps of the index), grouped by the keyframe before each, and the groups merged into chunks.
    /// </summary>
    internal static List<Chunk> Plan(PacketIndex index, FfmpegSource.Timing timing, int? maxFrames, QuickDecoderOptions options)
    {
        var wanted = new List<long>();
        var intervals = new List<double>();
        double lastInterval = -1;
        foreach (long pts in index.FramePts)
        {
            if (timing.StartPts is { } start && pts < start) continue;
            if (timing.EndPts is { } end && pts >= end) break;
            double interval = -1;
            if (timing.Grid is { } grid)
            {
                interval = grid.Interval(pts);
                if (!(interval > lastInterval)) continue;
                lastInterval = interval;
            }
            wanted.Add(pts);
            intervals.Add(interval);
            if (wanted.Count == maxFrames) break;
        }

        var keyframes = index.KeyframePts;
        int KeyframeBefore(long pts)
        {
            int at = Array.BinarySearch(keyframes, pts);
            return at >= 0 ? at : ~at - 1;
        }
        int FramesFrom(long from, long to)
        {
            int first = Array.BinarySearch(index.FramePts, from), last = Array.BinarySearch(index.FramePts, to);
            if (first < 0) first = ~first;
            if (last < 0) last = ~last - 1;
            return Math.Max(1, last - first + 1);
        }
        // Frames strictly between a chunk's last wanted frame and the keyframe of the next interval.
        int Gap(long lastWanted, long keyframe) => keyframe <= lastWanted ? 0 : FramesFrom(lastWanted, keyframe) - 2;

        int maxWantedPerChunk = Math.Max(1, options.MaxFramesAhead / options.Workers);
        var chunks = new List<Chunk>();
        int i = 0;
        while (i < wanted.Count)
        {
            int keyframe = KeyframeBefore(wanted[i]);
            long? seek = keyframe >= 0 && keyframes[keyframe] > index.FramePts[0] ? keyframes[keyframe] : null;
            long from = keyframe >= 0 ? keyframes[keyframe] : index.FramePts[0];
            int first = i;
            // Take whole keyframe intervals while the chunk is short of MinChunkFrames decoded frames, has room, and the
            // next interval is within MergeGapFrames of the chunk's last wanted frame.
            while (i < wanted.Count)
            {
                int group = KeyframeBefore(wanted[i]), groupEnd = i;
                while (groupEnd < wanted.Count && KeyframeBefore(wanted[groupEnd]) == group) groupEnd++;
                bool firstGroup = i == first;
                if (!firstGroup && (FramesFrom(from, wanted[i - 1]) >= options.MinChunkFrames || groupEnd - first > maxWantedPerChunk
                    || group >= 0 && Gap(wanted[i - 1], keyframes[group]) > options.MergeGapFrames)) break;
                i = groupEnd;
            }
            chunks.Add(new Chunk(seek, wanted[first], wanted[i - 1], i - first, first, first > 0 ? intervals[first - 1] : -1));
        }
        return chunks;
    }
}

/// <summary>
/// The bound on frames held ahead of the consumer: the frame at output place p may be read from its worker's pipe only
/// while p &lt; consumed + ahead. The chunk being delivered always has room, so the bound cannot deadlock.
/// </summary>
internal sealed class FrameWindow(int ahead)
{
    readonly Lock gate = new();
    long consumed;
    TaskCompletionSource changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public async ValueTask WaitForRoomAsync(long position, CancellationToken cancellation)
    {
        while (true)
        {
            Task wait;
            lock (gate)
            {
                if (position < consumed + ahead) return;
                wait = changed.Task;
            }
            await wait.WaitAsync(cancellation).ConfigureAwait(false);
        }
    }

    /// <summary>Every place below <paramref name="position"/> has been consumed.</summary>
    public void Release(long position)
    {
        TaskCompletionSource old;
        lock (gate)
        {
            if (position <= consumed) return;
            consumed = position;
            old = changed;
            changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        old.TrySetResult();
    }
}
