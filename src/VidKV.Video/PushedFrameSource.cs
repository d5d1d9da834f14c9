using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using VidKV.Formats;

namespace VidKV.Video;

/// <summary>
/// Frames an application pushes (a game, a screen grabber, its own decoder): <see cref="PushAsync"/> waits while
/// <c>capacity</c> frames are queued and unread, so a slow consumer slows the producer instead of growing a buffer;
/// <see cref="Complete"/> ends the stream. A frame without a timestamp gets the time since the first push.
/// </summary>
public sealed class PushedFrameSource : IFrameSource
{
    readonly Channel<VideoFrame> frames;
    readonly FrameSampling sampling;
    readonly TimestampSampler sampler;
    readonly SemaphoreSlim pushGate = new(1, 1);

    /// <summary>Never raised: pushed frames arrive decoded.</summary>
    public event Action<SkippedFrame>? FrameSkipped { add { } remove { } }
    Stopwatch? clock;
    TimeSpan lastTimestamp = TimeSpan.MinValue;
    long index;
    volatile bool completed;

    /// <param name="capacity">frames queued before <see cref="PushAsync"/> waits</param>
    /// <param name="sampling">frames outside its range or rate are dropped on push; larger ones are shrunk</param>
    /// <param name="name">how messages name the source</param>
    public PushedFrameSource(int capacity = 8, FrameSampling? sampling = null, string name = "pushed frames")
    {
        if (capacity <= 0) throw new ArgumentException($"capacity must be positive, got {capacity}");
        frames = Channel.CreateBounded<VideoFrame>(new BoundedChannelOptions(capacity) { FullMode = BoundedChannelFullMode.Wait, SingleReader = true });
        this.sampling = sampling ?? FrameSampling.All;
        this.sampling.Validate();
        sampler = new TimestampSampler(this.sampling);
        Name = name;
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <summary>Frames queued and not yet read.</summary>
    public int Queued => frames.Reader.Count;

    /// <summary>
    /// Queues a frame, waiting while the queue is full. Timestamps must not decrease. Returns false when the sampling
    /// dropped the frame (outside the range or rate, or past the frame limit).
    /// </summary>
    /// <exception cref="InvalidOperationException">after <see cref="Complete"/></exception>
    public async ValueTask<bool> PushAsync(RgbImage image, TimeSpan? timestamp = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(image);
        await pushGate.WaitAsync(cancellation).ConfigureAwait(false);
        try
        {
            if (completed) throw new InvalidOperationException($"{Name}: frames pushed after Complete()");
            clock ??= Stopwatch.StartNew();
            var time = timestamp ?? clock.Elapsed;
            if (time < lastTimestamp) throw new ArgumentException($"{Name}: timestamp {time} is before the previous frame's {lastTimestamp}");
            lastTimestamp = time;
            if (!sampler.Keep(time)) return false;
            var frame = new VideoFrame(FrameScaler.FitWithin(image, sampling), time, index++);
            try
            {
                await frames.Writer.WriteAsync(frame, cancellation).ConfigureAwait(false);
            }
            catch (ChannelClosedException e)
            {
                throw new InvalidOperationException($"{Name}: frames pushed after Complete()", e);
            }
            return true;
        }
        finally
        {
            pushGate.Release();
        }
    }

    /// <summary>Ends the stream: the reader gets the frames queued so far, then the end.</summary>
    public void Complete()
    {
        completed = true;
        frames.Writer.TryComplete();
    }

    /// <inheritdoc/>
    public IAsyncEnumerable<VideoFrame> ReadAsync(CancellationToken cancellation = default) => frames.Reader.ReadAllAsync(cancellation);

    /// <inheritdoc/>
    public ValueTask DisposeAsync()
    {
        Complete();
        pushGate.Dispose();
        return ValueTask.CompletedTask;
    }
}
