using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;
using Microsoft.AspNetCore.Http;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Video;

namespace VidKV.Server;

/// <summary>
/// One live video session of the server: an engine <see cref="Session"/> under a bounded KV policy that a background
/// task feeds from its source (ffmpeg for a file, URL or camera; frames clients push), with the model's proactive
/// comments when asked for. It keeps only counters and the latest state, never a list per frame, so its memory stays
/// bounded however long it runs; events go to each reader through a small queue that drops the oldest when the reader
/// is slow. Questions run on forks of its KV while ingestion goes on.
/// </summary>
sealed class LiveSession
{
    readonly IFrameSource frames;
    readonly PushedFrameSource? pushed;
    readonly CancellationTokenSource stop = new();
    readonly long started = Stopwatch.GetTimestamp();
    readonly InferenceEngine engine;
    Task ingestion = Task.CompletedTask;
    // Progress, written by the ingestion task only; read by status requests.
    int frameCount, framesReceived;
    long lastTimestampTicks = -1, lastFrameAt;
    double framesPerSecond;
    volatile string state = "ingesting";
    volatile string? error;
    int asks;

    /// <param name="video">the file the session reads, which <c>GET /v1/sessions/{id}/video</c> plays (null for a URL, a camera or pushed frames); an upload's is deleted when the session stops</param>
    public LiveSession(string id, string source, string kind, string kvPolicy, bool proactive, InferenceEngine engine, Session session,
        IFrameSource frames, VideoFile? video, int maxEventReaders)
    {
        Video = video;
        if (video != null) VideoToken = RandomNumberGenerator.GetHexString(32, lowercase: true);
        Id = id;
        Source = source;
        Kind = kind;
        KvPolicy = kvPolicy;
        Proactive = proactive;
        this.engine = engine;
        Session = session;
        this.frames = frames;
        pushed = frames as PushedFrameSource;
        Events = new SessionEvents(maxEventReaders);
        Created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    }

    public string Id { get; }
    /// <summary>The source as the client named it.</summary>
    public string Source { get; }
    /// <summary><c>file</c>, <c>upload</c>, <c>demo</c>, <c>url</c>, <c>camera</c> or <c>push</c>.</summary>
    public string Kind { get; }
    public string KvPolicy { get; }
    public bool Proactive { get; }
    /// <summary>The demo world's questions and events (a <c>demo</c> session only).</summary>
    public DemoInfo? Demo { get; init; }
    public long Created { get; }
    public Session Session { get; }
    public SessionEvents Events { get; }
    /// <summary>The video file the session reads, when it reads one.</summary>
    public VideoFile? Video { get; }
    /// <summary>The secret of <see cref="Video"/>'s URL (a query parameter, as a video element sends no header); null without a video.</summary>
    public string? VideoToken { get; }

    /// <summary>Whether <paramref name="token"/> is <see cref="VideoToken"/> (compared in constant time).</summary>
    public bool IsVideoToken(string? token) =>
        VideoToken != null && token != null && CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(token), Encoding.ASCII.GetBytes(VideoToken));
    /// <summary><c>ingesting</c>, then <c>ended</c> (the source ended), <c>failed</c> or <c>stopped</c> (deleted).</summary>
    public string State => state;

    /// <summary>Starts ingesting in the background: <paramref name="prefix"/> (the chat template's user turn opening), then the frames.</summary>
    public void Start(string prefix, ProactiveOptions? proactive)
    {
        frames.FrameSkipped += skipped => Events.Publish(new SessionEvent("error")
        {
            Message = $"skipped a frame after {skipped.Index} frames: {skipped.Reason}; ingestion goes on",
            Timestamp = skipped.Timestamp?.TotalSeconds,
        });
        ingestion = Task.Run(() => IngestAsync(prefix, proactive));
    }

    async Task IngestAsync(string prefix, ProactiveOptions? proactive)
    {
        var token = stop.Token;
        try
        {
            if (prefix.Length > 0) await Session.AppendAsync(prefix, token).ConfigureAwait(false);
            if (proactive != null)
            {
                await foreach (var comment in Session.WatchAsync(Counted(frames.ReadAsync(token)), proactive, token).ConfigureAwait(false))
                    Events.Publish(new SessionEvent("comment") { Frame = comment.FrameId, Timestamp = comment.Timestamp.TotalSeconds, Text = comment.Text });
            }
            else await Session.AppendVideoAsync(frames.ReadAsync(token), new FrameProgress(this), token).ConfigureAwait(false);
            Finish("ended", null);
        }
        catch (Exception e) when (token.IsCancellationRequested && e is OperationCanceledException or ObjectDisposedException)
        {
            Finish("stopped", null);
        }
        catch (Exception e)
        {
            Finish("failed", InferenceServer.Unwrap(e).Message);
        }
    }

    /// <summary>The frames, each counted once the consumer comes back for the next (WatchAsync appends one, decides, then asks again).</summary>
    async IAsyncEnumerable<VideoFrame> Counted(IAsyncEnumerable<VideoFrame> source)
    {
        int count = 0;
        await foreach (var frame in source.ConfigureAwait(false))
        {
            yield return frame;
            OnFrame(++count, frame.Timestamp);
        }
    }

    sealed class FrameProgress(LiveSession live) : IProgress<VideoProgress>
    {
        public void Report(VideoProgress value) => live.OnFrame(value.Frames, value.Timestamp);
    }

    void OnFrame(int count, TimeSpan timestamp)
    {
        long now = Stopwatch.GetTimestamp();
        if (lastFrameAt != 0)
        {
            // Frames per second as a moving average of the last few intervals: no list of past frames.
            double rate = 1 / Math.Max(Stopwatch.GetElapsedTime(lastFrameAt, now).TotalSeconds, 1e-6);
            framesPerSecond = framesPerSecond == 0 ? rate : 0.8 * framesPerSecond + 0.2 * rate;
        }
        lastFrameAt = now;
        Volatile.Write(ref frameCount, count);
        Volatile.Write(ref lastTimestampTicks, timestamp.Ticks);
        var memory = engine.Memory;
        Events.Publish(new SessionEvent("progress")
        {
            Frames = count, Timestamp = timestamp.TotalSeconds, FramesPerSecond = Math.Round(framesPerSecond, 3), HotBytes = memory.HotBytes, ColdBytes = memory.ColdBytes,
        });
    }

    void Finish(string final, string? message)
    {
        error = message;
        state = final;
        if (message != null) Events.Publish(new SessionEvent("error") { Message = message });
        Events.Complete(new SessionEvent("end") { State = final, Frames = Volatile.Read(ref frameCount), Message = message });
    }

    /// <summary>What <c>GET /v1/sessions/{id}</c> shows.</summary>
    public SessionInfo Info()
    {
        var memory = engine.Memory;
        long last = Volatile.Read(ref lastTimestampTicks);
        return new SessionInfo(Id, Created, Source, Kind, state, Volatile.Read(ref frameCount), last >= 0 ? TimeSpan.FromTicks(last).TotalSeconds : null,
            Math.Round(framesPerSecond, 3), Session.Length, KvPolicy, Proactive, new EngineKv(memory.HotBytes, memory.ColdBytes, memory.BudgetBytes, memory.Pages),
            Session.GeneratedTokens, VideoToken != null ? $"/v1/sessions/{Id}/video?token={VideoToken}" : null, error) { Demo = Demo };
    }

    /// <summary>The event a new reader gets first: where the session is now.</summary>
    public SessionEvent Snapshot()
    {
        var memory = engine.Memory;
        long last = Volatile.Read(ref lastTimestampTicks);
        return new SessionEvent("progress")
        {
            Frames = Volatile.Read(ref frameCount), Timestamp = last >= 0 ? TimeSpan.FromTicks(last).TotalSeconds : null, FramesPerSecond = Math.Round(framesPerSecond, 3),
            HotBytes = memory.HotBytes, ColdBytes = memory.ColdBytes, State = state,
        };
    }

    /// <summary>409 unless this session takes pushed frames and still ingests.</summary>
    public void RequirePush()
    {
        if (pushed == null)
            throw new ApiException(StatusCodes.Status409Conflict, "invalid_request_error",
                $"session {Id} reads its frames from {Source}; only a session created with \"source\": \"push\" takes pushed frames", code: "not_a_push_session");
        if (state != "ingesting") throw Ended();
    }

    ApiException Ended() => new(StatusCodes.Status409Conflict, "invalid_request_error", $"session {Id} has {state} and takes no more frames", code: "session_ended");

    /// <summary>
    /// Decodes one pushed JPEG/PNG and queues it (waiting while the session's small queue is full); a frame that does
    /// not decode is a 400 and the session goes on. Without <paramref name="timestamp"/> the frame's time is its
    /// arrival since the session started.
    /// </summary>
    public async Task<FrameAccepted> PushAsync(byte[] bytes, TimeSpan? timestamp, string param, CancellationToken cancellation)
    {
        RequirePush();
        RgbImage image;
        try
        {
            image = ImageReader.Decode(bytes, param);
        }
        catch (ImageFormatException e)
        {
            throw new ApiException(StatusCodes.Status400BadRequest, "invalid_request_error", $"the frame is not a readable image: {e.Message}", param, "invalid_image");
        }
        var time = timestamp ?? Stopwatch.GetElapsedTime(started);
        bool kept;
        try
        {
            kept = await pushed!.PushAsync(image, time, cancellation).ConfigureAwait(false);
        }
        catch (ArgumentException e)
        {
            throw ApiException.BadRequest(e.Message, "timestamp");
        }
        catch (Exception e) when (e is InvalidOperationException or ObjectDisposedException)
        {
            throw Ended();
        }
        return new FrameAccepted(kept, Interlocked.Increment(ref framesReceived), time.TotalSeconds);
    }

    /// <summary>Counts a question in; false when <paramref name="most"/> are being answered already.</summary>
    public bool TryBeginAsk(int most)
    {
        if (Interlocked.Increment(ref asks) <= most) return true;
        Interlocked.Decrement(ref asks);
        return false;
    }

    public void EndAsk() => Interlocked.Decrement(ref asks);

    /// <summary>Stops ingestion, waits for it, gives the session's pages back and ends its source (an upload's file is deleted); event readers get the end.</summary>
    public async Task StopAsync()
    {
        stop.Cancel();
        pushed?.Complete();
        await ingestion.ConfigureAwait(false); // it catches everything itself
        await Session.DisposeAsync().ConfigureAwait(false);
        await frames.DisposeAsync().ConfigureAwait(false);
        Video?.Dispose();
    }
}

/// <summary>
/// A live session's events for its readers: each reader has a queue of at most <see cref="Capacity"/> events that drops
/// the oldest when the reader falls behind, so a slow reader costs a bounded amount of memory and never slows
/// ingestion. A reader that comes after the end gets the end at once.
/// </summary>
sealed class SessionEvents(int maxReaders)
{
    const int Capacity = 64;
    readonly List<Channel<SessionEvent>> readers = [];
    SessionEvent? end;

    public void Publish(SessionEvent value)
    {
        lock (readers)
            foreach (var reader in readers) reader.Writer.TryWrite(value);
    }

    /// <summary>A new reader's queue, starting with <paramref name="first"/>; 429 when <c>maxReaders</c> read already.</summary>
    public Channel<SessionEvent> Subscribe(SessionEvent first)
    {
        var channel = Channel.CreateBounded<SessionEvent>(new BoundedChannelOptions(Capacity) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true });
        channel.Writer.TryWrite(first);
        lock (readers)
        {
            if (end != null)
            {
                channel.Writer.TryWrite(end);
                channel.Writer.TryComplete();
                return channel;
            }
            if (readers.Count >= maxReaders)
                throw new ApiException(StatusCodes.Status429TooManyRequests, "rate_limit_error",
                    $"{maxReaders} clients read this session's events already; try again when one has left", code: "too_many_readers");
            readers.Add(channel);
        }
        return channel;
    }

    public void Unsubscribe(Channel<SessionEvent> channel)
    {
        lock (readers) readers.Remove(channel);
    }

    /// <summary>Sends <paramref name="last"/> to every reader and ends their streams.</summary>
    public void Complete(SessionEvent last)
    {
        lock (readers)
        {
            end = last;
            foreach (var reader in readers)
            {
                reader.Writer.TryWrite(last);
                reader.Writer.TryComplete();
            }
            readers.Clear();
        }
    }
}
