using System.Runtime.CompilerServices;
using System.Text;
using System.Threading.Channels;
using VidKV.Cache;
using VidKV.Formats;
using VidKV.Models;

namespace VidKV.Engine;

/// <summary>How <see cref="Session.AskAsync"/> generates an answer.</summary>
public sealed record AskOptions
{
    /// <summary>Most tokens of the answer.</summary>
    public int MaxTokens { get; init; } = 256;
    /// <summary>How each answer token is picked; greedy by default.</summary>
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    /// <summary>
    /// Keep generating past end-of-generation tokens until <see cref="MaxTokens"/>, their text included (vLLM's
    /// <c>ignore_eos</c>; llama.cpp's bars those tokens instead): answers of a fixed length, for benchmarks and tests.
    /// </summary>
    public bool IgnoreEndOfGeneration { get; init; }
    /// <summary>Where the answer reports its token counts and why it ended (null: not reported). One per question.</summary>
    public AskUsage? Usage { get; init; }
    /// <summary>
    /// Gets the answer's token ids as they are generated (an end-of-generation token that ended it included), complete
    /// once the enumeration has ended: a conversation appends them to its session. One list per question.
    /// </summary>
    internal List<int>? AnswerTokens { get; init; }
}

/// <summary>
/// What one answer of <see cref="Session.AskAsync"/> used, filled in on the engine's loop as the answer runs and final
/// once its enumeration has ended (the counts an HTTP API reports as usage and finish reason).
/// </summary>
public sealed class AskUsage
{
    int promptTokens, completionTokens;
    volatile bool endOfGeneration;

    /// <summary>
    /// Rows the answer read before its first token: the session's rows when the question forked it, an open video
    /// segment's closing rows and the prompt's tokens (image and frame rows count one each).
    /// </summary>
    public int PromptTokens { get => Volatile.Read(ref promptTokens); internal set => Volatile.Write(ref promptTokens, value); }

    /// <summary>Tokens generated, an end-of-generation token that ended the answer included.</summary>
    public int CompletionTokens { get => Volatile.Read(ref completionTokens); internal set => Volatile.Write(ref completionTokens, value); }

    /// <summary>
    /// Whether the answer ended on the model's end-of-generation token; false when it reached
    /// <see cref="AskOptions.MaxTokens"/>, was stopped or failed.
    /// </summary>
    public bool EndedOnEndOfGeneration { get => endOfGeneration; internal set => endOfGeneration = value; }
}

/// <summary>
/// One stream a model watches or reads, inside an <see cref="InferenceEngine"/>: what is appended (text, token ids,
/// embedding rows, images, video frames) goes into the session's KV sequence, in call order, chunk by chunk between
/// the engine's other work; a question (<see cref="AskAsync"/>) is answered on a copy-on-write fork of what the session
/// holds when the question starts (at the end of the append being ingested then), so appending goes on while it is
/// answered and the question's own tokens go away with it. Dispose gives the session's pages back.
/// <para>
/// Positions: without M-RoPE a row's position is its place in the sequence. With M-RoPE (Qwen2-VL) an image or a
/// video's temporal patches take a grid of positions that advances the sequence by less than their rows, so the
/// session keeps its next position (<see cref="NextPosition"/>) apart from its row count (<see cref="Length"/>), in
/// one place that appends and questions' forks share; see <see cref="SequencePositions"/>.
/// </para>
/// <para>
/// Video (needs the engine's vision model): frames go in one by one, each its own incremental prefill, in the family's
/// format (<see cref="VideoLayout"/> lists them with their sources) or VideoLLM-online's brackets
/// (<see cref="VideoOptions.Format"/>). Frames form a segment, which the family's closing rows end: at the end of each
/// <see cref="AppendVideoAsync"/>, at <see cref="EndVideoSegmentAsync"/>, before the next text or image; a question
/// asked while a segment is open gets the closing rows on its fork only, so it reads the video so far as a whole
/// video while the session's segment goes on. Each frame's visual rows carry its session frame id (0, 1, …; one per
/// Qwen-VL frame pair) into the KV store, and <see cref="FrameTimestamp"/> maps ids back to stream time.
/// </para>
/// </summary>
public sealed class Session : IAsyncDisposable
{
    /// <summary>
    /// Frames <see cref="AppendVideoAsync"/> keeps queued ahead of the one being prefilled: none. The tower and the
    /// prefill each use every core, and with two frames ahead (the next one encoding while the last one prefilled) a
    /// SmolVLM2-256M-shaped pair ingested 0.95–1.06 frames/s against 1.04–1.14 one frame at a time (2 cores, AMD EPYC
    /// Zen 4, 4 runs each of `vidkv bench video ingest … --fps 4 --max-frames 60`, with and without `--serial`).
    /// The source still decodes ahead (ffmpeg is its own process).
    /// </summary>
    const int FramesAhead = 0;

    readonly InferenceEngine engine;
    readonly Ingest ingest;
    readonly SemaphoreSlim order = new(1, 1); // appends queue in call order; frames encode one at a time
    PagedKvCache? cache;
    int appendCalls;
    bool disposed;
    PreparedFrame? pendingFrame; // Qwen-VL: a frame waiting for its partner (under order)
    // Loop thread.
    readonly SequencePositions positions;
    readonly VideoLayout? layout;
    /// <summary>Timestamps kept for <see cref="FrameTimestamp"/>: the newest 65,536 frame units (18 hours at 1 frame/s), so a stream's memory stays bounded (a power of two; tests set a small one before the first frame).</summary>
    internal int TimestampsKept { get; set; } = 1 << 16;
    readonly object frameLock = new();
    TimeSpan[] frameTimes = []; // frame id mod TimestampsKept once full (grown to it); under frameLock
    int frameCount;
    int nextPosition;

    readonly KvCacheConfig kv;

    internal Session(InferenceEngine engine, KvCacheConfig kv, int contextLength)
    {
        this.engine = engine;
        this.kv = kv;
        ingest = new Ingest(this);
        positions = new SequencePositions(engine.Model.PositionComponents);
        if (engine.Encoder is { } encoder) layout = new VideoLayout(engine.Model, encoder.Vision, engine.Options.Video);
        engine.Post(() =>
        {
            cache = engine.CreateCache(kv, contextLength);
            engine.Start(ingest);
        });
    }

    long preprocessTicks, encodeTicks;
    int reusedFrames;

    /// <summary>Video frame units that reused the last encoded unit's rows instead of being encoded (<see cref="VideoOptions.UnchangedThreshold"/>).</summary>
    public int ReusedFrames => Volatile.Read(ref reusedFrames);

    /// <summary>Time spent so far preparing video frames (resize, normalise; measured around each frame's preparation, for benchmarks).</summary>
    public TimeSpan PreprocessTime => TimeSpan.FromTicks(Interlocked.Read(ref preprocessTicks));

    /// <summary>Time spent so far encoding video frames (vision tower + projector, waits for the encoder included; for benchmarks).</summary>
    public TimeSpan EncodeTime => TimeSpan.FromTicks(Interlocked.Read(ref encodeTicks));

    long generatedTokens;

    /// <summary>Tokens generated on this session so far by its answers and proactive comments (an end-of-generation token included); its rate is the session's tokens/s.</summary>
    public long GeneratedTokens => Interlocked.Read(ref generatedTokens);

    /// <summary>Rows in the session's KV sequence so far (what questions see).</summary>
    public int Length => cache?.Length ?? 0;

    /// <summary>
    /// The position the session's next text row takes: <see cref="Length"/>, or less under M-RoPE after images and video
    /// and under compact positions after evictions (<see cref="KvPositions.Compact"/>). What a context length bounds.
    /// </summary>
    public int NextPosition => Volatile.Read(ref nextPosition);

    /// <summary>Video frame units in the session so far (frames; Qwen-VL frame pairs), which is the next frame id.</summary>
    public int FrameCount
    {
        get { lock (frameLock) return frameCount; }
    }

    /// <summary>
    /// The stream timestamp of frame <paramref name="frameId"/> (a pair's first frame); null for an id not (yet) given,
    /// or older than the newest 65,536 frame units (the map is bounded; frames keep their time in the prompt text where
    /// the family's format has one).
    /// </summary>
    public TimeSpan? FrameTimestamp(int frameId)
    {
        lock (frameLock) return frameId >= 0 && frameId < frameCount && frameId >= frameCount - TimestampsKept ? frameTimes[frameId % TimestampsKept] : null;
    }

    internal PagedKvCache Cache => cache ?? throw new InvalidOperationException("the session's cache is not created yet");

    /// <summary>
    /// Time this session's KV cache spent in each stage of attention (choosing pages, recalls, the kernel, the policies'
    /// updates: eviction, compression), summed since it was created; zero before (profiles, benchmarks).
    /// </summary>
    public KvPhaseTimes KvTimes => cache?.Times ?? default;

    /// <summary>Every row the session sends to the model, with its position and frame id, when set (tests and tools; loop thread).</summary>
    internal List<SessionRow>? Record { get; set; }
    /// <summary>Whether each append's last row computes logits, kept in <see cref="LastLogits"/> (the hook proactive mode needs).</summary>
    internal bool KeepLogits { get; set; }
    /// <summary>The logits after the last completed append, when <see cref="KeepLogits"/>.</summary>
    internal float[]? LastLogits { get; private set; }

    /// <summary>
    /// Appends text (tokenised with the model's vocabulary, special tokens parsed; the session's first append gets the
    /// vocabulary's BOS when it wants one), after the closing rows of an open video segment. Completes once every token
    /// is in the session's KV.
    /// </summary>
    public Task AppendAsync(string text, CancellationToken cancellation = default)
    {
        bool first = Interlocked.Increment(ref appendCalls) == 1;
        var ids = engine.Model.Tokenizer.Encode(text, addSpecial: first, parseSpecial: true).ToArray();
        return Ordered(async () => Both(await FlushPendingFrame(cancellation).ConfigureAwait(false),
            Queue(new Append(AppendKind.Closing, [RowRun.Text(ids)]), cancellation)), cancellation);
    }

    /// <summary>Appends token ids as they are (an open video segment stays open).</summary>
    public Task AppendTokensAsync(ReadOnlyMemory<int> tokens, CancellationToken cancellation = default)
    {
        int vocab = engine.Model.Config.VocabSize;
        foreach (int t in tokens.Span)
            if ((uint)t >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} is outside the vocabulary of {vocab}");
        Interlocked.Increment(ref appendCalls);
        var ids = tokens.ToArray();
        return Ordered(async () => Both(await FlushPendingFrame(cancellation).ConfigureAwait(false),
            Queue(new Append(AppendKind.Raw, [RowRun.Text(ids)]), cancellation)), cancellation);
    }

    /// <summary>
    /// Appends embedding rows ([rows, embedding length] f32: a projector's image or video tokens) at the next positions,
    /// each row tagged with <paramref name="frameId"/> (a video frame; −1 for none) in the KV store.
    /// </summary>
    public Task AppendEmbeddingsAsync(ReadOnlyMemory<float> rows, int frameId = -1, CancellationToken cancellation = default)
    {
        int e = engine.Model.Config.EmbeddingLength;
        if (rows.Length == 0 || rows.Length % e != 0)
            throw new ArgumentException($"embedding rows must be a whole number of {e}-float rows (the model's embedding length), not {rows.Length} floats", nameof(rows));
        Interlocked.Increment(ref appendCalls);
        var copy = rows.ToArray();
        return Ordered(async () => Both(await FlushPendingFrame(cancellation).ConfigureAwait(false),
            Queue(new Append(AppendKind.Raw, [RowRun.Embeddings(copy, e, frameId)]), cancellation)), cancellation);
    }

    /// <summary>Appends each piece of text as <paramref name="source"/> yields it (a live transcript, a slow reader); completes when the source ends.</summary>
    public async Task AppendAsync(IAsyncEnumerable<string> source, CancellationToken cancellation = default)
    {
        await foreach (var text in source.WithCancellation(cancellation).ConfigureAwait(false)) await AppendAsync(text, cancellation).ConfigureAwait(false);
    }

    /// <summary>
    /// Appends one image in llama.cpp's mtmd layout for the projector (<see cref="MediaPrompt"/>: LLaVA's entries back
    /// to back, SmolVLM's slices and overview with their tokens, Qwen-VL's <c>&lt;|vision_start|&gt;</c> grid
    /// <c>&lt;|vision_end|&gt;</c>, whose M-RoPE positions advance the session by max(columns, rows)), after the closing
    /// rows of an open video segment. Completes once its rows are in the KV.
    /// </summary>
    public Task AppendImageAsync(RgbImage image, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(image);
        var encoder = RequireVision();
        bool first = Interlocked.Increment(ref appendCalls) == 1;
        return Ordered(async () =>
        {
            var flushed = await FlushPendingFrame(cancellation).ConfigureAwait(false);
            var runs = await encoder.EncodeImageAsync(image, cancellation).ConfigureAwait(false);
            if (first) runs.InsertRange(0, BosRuns());
            return Both(flushed, Queue(new Append(AppendKind.Closing, runs), cancellation));
        }, cancellation);
    }

    /// <summary>
    /// Appends one video frame in the family's format (see <see cref="VideoLayout"/>): encoded at once, prefilled as its
    /// own chunk, its visual rows tagged with the next frame id. Completes once the frame is in the KV — for Qwen-VL's
    /// native format, whose frames go in pairs, a frame waiting for its partner completes when it is held.
    /// </summary>
    public async Task AppendFrameAsync(VideoFrame frame, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(frame);
        var queued = await QueueFrameAsync(frame, cancellation).ConfigureAwait(false);
        await queued.ConfigureAwait(false);
    }

    /// <summary>
    /// Appends the frames of <paramref name="frames"/> as they come (<see cref="AppendFrameAsync"/> each, one
    /// after the other: see <see cref="FramesAhead"/>; the source decodes ahead meanwhile), then ends the segment (<see cref="EndVideoSegmentAsync"/>).
    /// <paramref name="progress"/> hears of each frame once it is in the session (also while the source waits for its
    /// next frame). Cancelling stops reading frames;
    /// the frames already in stay, and the segment stays open until the next append ends it.
    /// </summary>
    public async Task AppendVideoAsync(IAsyncEnumerable<VideoFrame> frames, IProgress<VideoProgress>? progress = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(frames);
        RequireVision();
        var inFlight = new Queue<(Task Done, VideoFrame? Frame)>();
        int count = 0;
        async Task Settle()
        {
            var (done, frame) = inFlight.Dequeue();
            await done.ConfigureAwait(false);
            if (frame != null) progress?.Report(new VideoProgress(++count, frame.Timestamp, frame.Index));
        }
        await using var source = frames.GetAsyncEnumerator(cancellation);
        while (true)
        {
            var next = source.MoveNextAsync().AsTask();
            // While the source has no frame yet (a live stream, pushed frames), frames are reported as they land in the
            // KV rather than when later frames push them out of the look-ahead.
            while (inFlight.Count > 0 && !next.IsCompleted)
            {
                await Task.WhenAny(next, inFlight.Peek().Done).ConfigureAwait(false);
                if (inFlight.Peek().Done.IsCompleted) await Settle().ConfigureAwait(false);
            }
            if (!await next.ConfigureAwait(false)) break;
            var frame = source.Current;
            inFlight.Enqueue((await QueueFrameAsync(frame, cancellation).ConfigureAwait(false), frame));
            while (inFlight.Count > FramesAhead) await Settle().ConfigureAwait(false);
        }
        inFlight.Enqueue((await QueueEndAsync(cancellation).ConfigureAwait(false), null));
        while (inFlight.Count > 0) await Settle().ConfigureAwait(false);
    }

    /// <summary>
    /// Ends the open video segment: a Qwen-VL frame waiting for its partner goes in paired with itself, then the family's
    /// closing rows (SmolVLM's <c>"\n\n"</c>, OneVision's newline row, <c>&lt;|vision_end|&gt;</c>, <c>]</c>). Nothing when no segment is open.
    /// </summary>
    public Task EndVideoSegmentAsync(CancellationToken cancellation = default) => QueueEndAsync(cancellation).Unwrap();

    FrameEncoder RequireVision() => engine.Encoder
        ?? throw new InvalidOperationException("this engine has no vision model: create it with the model's mmproj (new InferenceEngine(model, options, vision))");

    /// <summary>Prepares, encodes and queues a frame in call order; the task it gives completes when the frame is in the KV.</summary>
    async Task<Task> QueueFrameAsync(VideoFrame frame, CancellationToken cancellation)
    {
        var encoder = RequireVision();
        long prepareStart = System.Diagnostics.Stopwatch.GetTimestamp();
        var prepared = TimedAsync(encoder.PrepareAsync(frame, cancellation), prepareStart); // resizing needs no order
        await order.WaitAsync(cancellation).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            var next = await prepared.ConfigureAwait(false);
            if (!encoder.PairsFrames) return await QueueUnit(encoder, next, null, cancellation).ConfigureAwait(false);
            if (pendingFrame == null)
            {
                pendingFrame = next;
                return Task.CompletedTask;
            }
            var waiting = pendingFrame;
            pendingFrame = null;
            if (waiting.Width == next.Width && waiting.Height == next.Height) return await QueueUnit(encoder, waiting, next, cancellation).ConfigureAwait(false);
            // The frame size changed: the waiting frame goes alone (paired with itself); this one waits for its partner.
            var alone = await QueueUnit(encoder, waiting, null, cancellation).ConfigureAwait(false);
            pendingFrame = next;
            return alone;
        }
        finally
        {
            order.Release();
        }
    }

    async Task<Task> QueueUnit(FrameEncoder encoder, PreparedFrame first, PreparedFrame? second, CancellationToken cancellation)
    {
        long encodeStart = System.Diagnostics.Stopwatch.GetTimestamp();
        EncodedFrame encoded;
        try
        {
            encoded = await encoder.EncodeAsync(first, second, cancellation).ConfigureAwait(false);
        }
        finally
        {
            // The tower has read the planes (EncodeAsync returns, or throws, only after its work has ended).
            encoder.Release(first);
            if (second != null && second != first) encoder.Release(second);
        }
        Interlocked.Add(ref encodeTicks, System.Diagnostics.Stopwatch.GetElapsedTime(encodeStart).Ticks);
        if (encoded.Reused) Interlocked.Increment(ref reusedFrames);
        bool firstAppend = Interlocked.Increment(ref appendCalls) == 1;
        return Queue(new Append(AppendKind.Frame, firstAppend ? BosRuns() : []) { Frame = encoded, Started = encodeStart, Frames = second != null ? 2 : 1 }, cancellation);
    }


    async Task<PreparedFrame> TimedAsync(Task<PreparedFrame> preparing, long start)
    {
        var prepared = await preparing.ConfigureAwait(false);
        Interlocked.Add(ref preprocessTicks, System.Diagnostics.Stopwatch.GetElapsedTime(start).Ticks);
        return prepared;
    }

    /// <summary>Under <see cref="order"/>: queues a Qwen-VL frame still waiting for its partner, paired with itself.</summary>
    async Task<Task> FlushPendingFrame(CancellationToken cancellation)
    {
        if (pendingFrame == null || engine.Encoder is not { } encoder) return Task.CompletedTask;
        var waiting = pendingFrame;
        pendingFrame = null;
        return await QueueUnit(encoder, waiting, null, cancellation).ConfigureAwait(false);
    }

    Task<Task> QueueEndAsync(CancellationToken cancellation) => OrderedOuter(async () =>
        Both(await FlushPendingFrame(cancellation).ConfigureAwait(false), Queue(new Append(AppendKind.EndSegment, []), cancellation)), cancellation);

    List<RowRun> BosRuns()
    {
        var vocabulary = engine.Model.Vocabulary;
        return vocabulary.AddBos && vocabulary.BosId >= 0 ? [RowRun.Text([vocabulary.BosId])] : [];
    }

    static Task Both(Task first, Task second) => first.IsCompletedSuccessfully ? second : Task.WhenAll(first, second);

    /// <summary>Runs <paramref name="queue"/> after every earlier append has queued (at once when none waits) and gives the task of what it queued.</summary>
    Task Ordered(Func<Task<Task>> queue, CancellationToken cancellation) => OrderedOuter(queue, cancellation).Unwrap();

    async Task<Task> OrderedOuter(Func<Task<Task>> queue, CancellationToken cancellation)
    {
        await order.WaitAsync(cancellation).ConfigureAwait(false);
        try
        {
            return await queue().ConfigureAwait(false);
        }
        finally
        {
            order.Release();
        }
    }

    Task Queue(Append append, CancellationToken cancellation)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (cancellation.CanBeCanceled)
            append.Registration = cancellation.Register(() => engine.Post(() => ingest.Cancel(append, cancellation)));
        engine.Post(() => ingest.Add(append));
        return append.Done.Task;
    }

    /// <summary>The tokens <see cref="AskAsync"/> reads for <paramref name="prompt"/> now (the vocabulary's BOS among them while nothing was appended).</summary>
    internal int PromptTokenCount(string prompt) =>
        engine.Model.Tokenizer.Encode(prompt, addSpecial: Volatile.Read(ref appendCalls) == 0, parseSpecial: true).Count;

    /// <summary>
    /// Asks a question about what the session holds now and streams the answer as text pieces (whole UTF-8 characters;
    /// the end-of-generation token that ends it is not in the text, <see cref="AskOptions.Usage"/> counts it),
    /// generated on a fork of the session's KV while appending goes on. The fork is taken between appends (an append
    /// part way in, such as a frame, finishes first); an open video segment gets its closing rows on the fork only, then
    /// <paramref name="prompt"/> goes in as it is (format it with the model's chat template if it has one), at positions
    /// going on from the session's. The frames' timestamps are in the prompt where the family's format has them, so an
    /// answer can say when things happened. Cancelling, or leaving the enumeration early, stops the answer and frees its pages.
    /// </summary>
    public async IAsyncEnumerable<string> AskAsync(string prompt, AskOptions? options = null, [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        options ??= new AskOptions();
        if (options.MaxTokens < 1) throw new ArgumentOutOfRangeException(nameof(options), $"MaxTokens must be at least 1, not {options.MaxTokens}");
        var ids = engine.Model.Tokenizer.Encode(prompt, addSpecial: Volatile.Read(ref appendCalls) == 0, parseSpecial: true);
        if (ids.Count == 0) throw new ArgumentException("the prompt has no tokens", nameof(prompt));
        var answer = new Answer(engine, this, ids.ToArray(), options);
        engine.Post(answer.Begin);
        using var registration = cancellation.Register(() => engine.Post(() => answer.Fail(new OperationCanceledException(cancellation))));
        bool completed = false;
        try
        {
            await foreach (var piece in answer.Output.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            {
                cancellation.ThrowIfCancellationRequested(); // pieces already produced do not outlive a cancel
                yield return piece;
            }
            cancellation.ThrowIfCancellationRequested();
            completed = true;
        }
        finally
        {
            if (!completed)
            {
                // Stopped early (cancelled, or the caller left): the answer's pages are back before this returns.
                bool posted = true;
                try { engine.Post(() => answer.Fail(new OperationCanceledException("the caller stopped reading the answer"))); }
                catch (ObjectDisposedException) { posted = false; }
                if (posted) await answer.Ended.ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Watches <paramref name="frames"/> and speaks up on its own (<see cref="ProactiveOptions"/>, VideoLLM-online): each
    /// frame goes in (<see cref="AppendFrameAsync"/>), then the model's next-token distribution decides — if the silence
    /// token's probability is below the threshold, a greedy comment is generated with that token zeroed, yielded with the
    /// frame's timestamp, and appended to the session so later frames and questions see what was said. Ends the video
    /// segment when the frames end. Questions may be asked meanwhile (<see cref="AskAsync"/>).
    /// </summary>
    public async IAsyncEnumerable<ProactiveComment> WatchAsync(IAsyncEnumerable<VideoFrame> frames, ProactiveOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(frames);
        options ??= new ProactiveOptions();
        int silence = SilenceToken(options);
        KeepLogits = true;
        await foreach (var frame in frames.WithCancellation(cancellation).ConfigureAwait(false))
        {
            int before = FrameCount;
            await AppendFrameAsync(frame, cancellation).ConfigureAwait(false);
            if (FrameCount == before) continue; // a Qwen-VL frame waiting for its partner: nothing went in yet
            if (await CommentAfterAppendAsync(options, silence, FrameCount - 1, frame.Timestamp, cancellation).ConfigureAwait(false) is { } comment)
                yield return comment;
        }
        await EndVideoSegmentAsync(cancellation).ConfigureAwait(false);
    }

    int SilenceToken(ProactiveOptions options)
    {
        if (options.MaxTokens < 1) throw new ArgumentOutOfRangeException(nameof(options), $"MaxTokens must be at least 1, not {options.MaxTokens}");
        if (options.Threshold is < 0 or > 1 || float.IsNaN(options.Threshold)) throw new ArgumentOutOfRangeException(nameof(options), $"Threshold {options.Threshold} is not a probability");
        var ids = engine.Model.Tokenizer.Encode(options.SilenceToken, addSpecial: false, parseSpecial: true);
        if (ids.Count != 1) throw new ArgumentException($"the silence token '{options.SilenceToken}' is {ids.Count} tokens in this vocabulary, not one", nameof(options));
        return ids[0];
    }

    /// <summary>
    /// The proactive decision after the last append (its logits kept by <see cref="KeepLogits"/>): p(silence) from the
    /// softmax of those logits; below the threshold, the comment (silence zeroed at its first step) and its tokens
    /// appended to the session. Null when the model stays silent.
    /// </summary>
    internal async Task<ProactiveComment?> CommentAfterAppendAsync(ProactiveOptions options, int silence, int frameId, TimeSpan timestamp, CancellationToken cancellation)
    {
        var logits = LastLogits ?? throw new InvalidOperationException("no logits were kept for the last append (KeepLogits)");
        float max = System.Numerics.Tensors.TensorPrimitives.Max(logits);
        double sum = 0;
        foreach (float l in logits) sum += Math.Exp(l - max);
        float pSilence = (float)(Math.Exp(logits[silence] - max) / sum);
        if (pSilence >= options.Threshold) return null;
        var start = (float[])logits.Clone();
        start[silence] = float.NegativeInfinity;
        var answer = new Answer(engine, this, [], new AskOptions { MaxTokens = options.MaxTokens, Sampling = SamplingOptions.Greedy }, start);
        engine.Post(answer.Begin);
        var text = new StringBuilder();
        await foreach (var piece in answer.Output.ReadAllAsync(cancellation).ConfigureAwait(false)) text.Append(piece);
        await answer.Ended.ConfigureAwait(false);
        await AppendTokensAsync(answer.Tokens.ToArray(), cancellation).ConfigureAwait(false); // what was said stays in the dialogue
        return new ProactiveComment(frameId, timestamp, text.ToString(), pSilence);
    }

    /// <summary>Stops pending appends (they fail with <see cref="ObjectDisposedException"/>) and gives the session's pages back; answers in flight keep their forks until they end.</summary>
    public async ValueTask DisposeAsync()
    {
        if (disposed) return;
        disposed = true;
        engine.SessionClosed();
        try
        {
            await engine.Call(() =>
            {
                ingest.Close();
                cache?.Dispose();
                cache = null;
                return 0;
            }).ConfigureAwait(false);
        }
        catch (ObjectDisposedException) { } // the engine went first and took the KV with it
    }

    /// <summary>What an append is, for the video segment: raw rows, rows that end an open segment first, a frame unit, the segment's end.</summary>
    enum AppendKind { Raw, Closing, Frame, EndSegment }

    /// <summary>One append: its runs (known when queued, or laid out on the loop when it starts: frames and segment ends).</summary>
    sealed class Append(AppendKind kind, List<RowRun> runs)
    {
        public readonly AppendKind Kind = kind;
        public readonly List<RowRun> Runs = runs;
        public EncodedFrame? Frame;
        public long Started; // a frame's encoding start (Stopwatch timestamp), for EngineMetrics.FrameDuration
        public int Frames; // video frames in a frame unit (two in a Qwen-VL pair)
        public RowCursor? Cursor; // set when it starts
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public CancellationTokenRegistration Registration;
    }

    /// <summary>On the loop thread, when an append starts: its runs with the video segment's (frames, ends) around them.</summary>
    List<RowRun> LayOut(Append append)
    {
        var runs = new List<RowRun>();
        if (append.Kind == AppendKind.Closing && layout is { IsOpen: true }) runs.AddRange(layout.Close(end: true));
        runs.AddRange(append.Runs);
        if (append.Kind == AppendKind.Frame && layout != null)
        {
            int id;
            lock (frameLock)
            {
                id = frameCount++;
                if (id == frameTimes.Length && id < TimestampsKept) Array.Resize(ref frameTimes, Math.Min(TimestampsKept, Math.Max(256, 2 * id)));
                frameTimes[id % TimestampsKept] = append.Frame!.Timestamp;
            }
            runs.AddRange(layout.Frame(append.Frame!, id));
        }
        if (append.Kind == AppendKind.EndSegment && layout is { IsOpen: true }) runs.AddRange(layout.Close(end: true));
        return runs;
    }

    /// <summary>The session's appends, in order, a chunk per step (one ingest per session, so its rows stay one run).</summary>
    sealed class Ingest(Session session) : Work
    {
        readonly Queue<Append> queue = new();
        readonly List<Action> atBoundary = [];
        bool closed;

        public override KvCache Cache => session.Cache;
        public override bool IsFinished => closed;
        public override bool HasPendingRows => queue.Count > 0;

        /// <summary>
        /// Whether an append is part way in (a fork now would see half of it): its rows are laid out — the video layout
        /// has taken its frame — whether or not any has run yet.
        /// </summary>
        public bool MidAppend => queue.TryPeek(out var append) && append.Cursor != null;

        /// <summary>Runs <paramref name="action"/> (posted to the loop) once no append is part way in.</summary>
        public void AtBoundary(Action action)
        {
            if (MidAppend && !closed) atBoundary.Add(action);
            else session.engine.Post(action);
        }

        public void Add(Append append)
        {
            if (closed) append.Done.TrySetException(new ObjectDisposedException(nameof(Session)));
            else queue.Enqueue(append);
        }

        public void Cancel(Append append, CancellationToken cancellation)
        {
            // Only an append not yet started can leave the queue whole; one half-ingested stays in (the KV is in order).
            if (append.Cursor != null || !queue.Contains(append)) return;
            var rest = queue.Where(a => a != append).ToList();
            queue.Clear();
            foreach (var a in rest) queue.Enqueue(a);
            append.Done.TrySetCanceled(cancellation);
        }

        /// <summary>The append going in, its rows laid out; appends with no rows (a segment end with no segment open) complete on the way. Null when none waits.</summary>
        Append? Front()
        {
            while (queue.TryPeek(out var append))
            {
                append.Cursor ??= new RowCursor(session.LayOut(append));
                if (append.Cursor.Total > 0) return append;
                Complete(queue.Dequeue());
            }
            return null;
        }

        public override int PendingRows => Front() is { Cursor: { } cursor } ? cursor.Total - cursor.Done : 0;

        public override int AddRows(DecoderBatch batch, int sequence, int most) =>
            Front() is { Cursor: { } cursor } ? cursor.AddRows(batch, session.positions, sequence, most, session.KeepLogits, session.Record) : 0;

        public override void Advance(int rows, ReadOnlySpan<float> logits)
        {
            var append = queue.Peek();
            append.Cursor!.Advance(rows);
            // Under compact positions the next row turns at the cache's next RoPE position, behind its place once evictions compacted.
            var cache = session.cache!;
            Volatile.Write(ref session.nextPosition, cache.Positions == KvPositions.Compact ? cache.NextRopePosition : session.positions.Next);
            if (!append.Cursor.Finished) return;
            queue.Dequeue();
            if (session.KeepLogits && !logits.IsEmpty) session.LastLogits = logits.ToArray();
            Complete(append);
        }

        void Complete(Append append, Exception? error = null)
        {
            append.Registration.Dispose();
            if (error == null && append.Kind == AppendKind.Frame)
            {
                EngineMetrics.FramesIngested.Add(append.Frames);
                EngineMetrics.FrameDuration.Record(EngineMetrics.Seconds(append.Started, System.Diagnostics.Stopwatch.GetTimestamp()));
            }
            if (error == null) append.Done.TrySetResult();
            else append.Done.TrySetException(error);
            foreach (var action in atBoundary) session.engine.Post(action);
            atBoundary.Clear();
        }

        public override void Fail(Exception error)
        {
            // The failed chunk did not run: the append fails, later ones still go in.
            if (queue.TryDequeue(out var append)) Complete(append, error);
        }

        public void Close()
        {
            closed = true;
            while (queue.TryDequeue(out var append)) append.Done.TrySetException(new ObjectDisposedException(nameof(Session)));
            foreach (var action in atBoundary) session.engine.Post(action);
            atBoundary.Clear();
        }
    }

    /// <summary>
    /// One answer: on a fork of the session's KV (taken between appends), the closing rows of an open video segment and
    /// the prompt in chunks, then a token per step until the end or the limit, at positions going on from the session's.
    /// </summary>
    sealed class Answer(InferenceEngine engine, Session session, int[] prompt, AskOptions options, float[]? startLogits = null) : Work
    {
        /// <summary>The answer's token ids (for a proactive comment, which then goes into the session).</summary>
        public List<int> Tokens { get; } = [];
        readonly Channel<string> output = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        readonly Sampler sampler = new(options.Sampling);
        readonly List<int> history = [.. prompt];
        readonly Decoder utf8 = Encoding.UTF8.GetDecoder();
        char[] chars = new char[16];
        PagedKvCache? fork;
        SequencePositions? positions;
        RowCursor? promptRows;
        RowRun? nextRow;
        int generated;
        bool finished;
        readonly long asked = System.Diagnostics.Stopwatch.GetTimestamp();
        long firstToken;
        int inputTokens;

        public ChannelReader<string> Output => output.Reader;
        readonly TaskCompletionSource ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
        /// <summary>Completes once the answer has ended and its fork's pages are back in the pool.</summary>
        public Task Ended => ended.Task;
        public override KvCache Cache => fork!;
        public override bool IsFinished => finished;
        public override bool IsDecoding => !finished && nextRow != null;
        public override bool HasPendingRows => !finished && promptRows is { Finished: false };
        public override int PendingRows => HasPendingRows ? promptRows!.Total - promptRows.Done : 0;

        /// <summary>On the loop thread: fork the session as it is at the end of the append being ingested and join the loop.</summary>
        public void Begin()
        {
            if (finished) return;
            if (session.ingest.MidAppend)
            {
                session.ingest.AtBoundary(Begin);
                return;
            }
            try
            {
                fork = engine.Fork(session.Cache, session.kv);
                positions = session.positions.Clone();
                if (startLogits != null)
                {
                    // A continuation right after the last append (a proactive comment): no closing rows, no prompt; the
                    // first token comes from the logits that append left.
                    promptRows = new RowCursor([]);
                    Advance(0, startLogits);
                    if (finished) return;
                }
                else
                {
                    var runs = session.layout?.Close(end: false) ?? new List<RowRun>();
                    runs.Add(RowRun.Text(prompt));
                    promptRows = new RowCursor(runs);
                }
            }
            catch (Exception e)
            {
                Fail(e);
                return;
            }
            engine.Start(this);
        }

        public override int AddRows(DecoderBatch batch, int sequence, int most)
        {
            if (nextRow != null)
            {
                if (!nextRow.Begun)
                {
                    positions!.Begin(nextRow);
                    nextRow.Begun = true;
                }
                positions!.Add(batch, nextRow, 0, sequence, logits: true);
                return 1;
            }
            return promptRows!.AddRows(batch, positions!, sequence, most, lastLogits: true, record: null);
        }

        public override void Advance(int rows, ReadOnlySpan<float> logits)
        {
            if (nextRow == null && rows > 0)
            {
                promptRows!.Advance(rows);
                if (!promptRows.Finished) return;
            }
            if (generated == 0)
            {
                inputTokens = fork!.Length;
                if (options.Usage is { } usage) usage.PromptTokens = inputTokens;
            }
            int token = sampler.Sample(logits, history);
            history.Add(token);
            Tokens.Add(token);
            options.AnswerTokens?.Add(token);
            generated++;
            EngineMetrics.GeneratedTokens.Add(1);
            Interlocked.Increment(ref session.generatedTokens);
            if (generated == 1)
            {
                firstToken = System.Diagnostics.Stopwatch.GetTimestamp();
                if (startLogits == null) EngineMetrics.TimeToFirstToken.Record(EngineMetrics.Seconds(asked, firstToken));
            }
            bool end = !options.IgnoreEndOfGeneration && engine.Model.Vocabulary.IsEndOfGeneration(token);
            if (options.Usage is { } counts)
            {
                counts.CompletionTokens = generated;
                counts.EndedOnEndOfGeneration = end;
            }
            // The end-of-generation token ends the text without being part of it (as generate does not print it).
            Emit(end ? [] : engine.Model.Tokenizer.TokenToPiece(token), flush: end || generated == options.MaxTokens);
            if (end || generated == options.MaxTokens) Complete(null);
            else nextRow = RowRun.Text([token]);
        }

        void Emit(byte[] piece, bool flush)
        {
            int needed = utf8.GetCharCount(piece, flush);
            if (chars.Length < needed) chars = new char[Math.Max(needed, 2 * chars.Length)];
            int n = utf8.GetChars(piece, chars, flush);
            if (n > 0) output.Writer.TryWrite(new string(chars, 0, n));
        }

        public override void Fail(Exception error) => Complete(error);

        void Complete(Exception? error)
        {
            if (finished) return;
            finished = true;
            if (generated > 0 && startLogits == null)
            {
                EngineMetrics.RecordUsage(inputTokens, generated);
                if (error == null && generated > 1)
                    EngineMetrics.TimePerOutputToken.Record(EngineMetrics.Seconds(firstToken, System.Diagnostics.Stopwatch.GetTimestamp()) / (generated - 1));
            }
            fork?.Dispose(); // its pages go back before the reader hears the end
            fork = null;
            output.Writer.TryComplete(error);
            ended.TrySetResult();
        }
    }
}
