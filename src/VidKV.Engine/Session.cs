using System.Runtime.CompilerServices;
using System.Text;
using System.Threading.Channels;
using VidKV.Cache;
using VidKV.Models;

namespace VidKV.Engine;

/// <summary>How <see cref="Session.AskAsync"/> generates an answer.</summary>
public sealed record AskOptions
{
    /// <summary>Most tokens of the answer.</summary>
    public int MaxTokens { get; init; } = 256;
    /// <summary>How each answer token is picked; greedy by default.</summary>
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
}

/// <summary>
/// One stream a model watches or reads, inside an <see cref="InferenceEngine"/>: what is appended (text, token ids,
/// embedding rows such as image or video tokens) goes into the session's KV sequence, in order, chunk by chunk
/// between the engine's other work; a question (<see cref="AskAsync"/>) is answered on a copy-on-write fork of what
/// the session holds when the question starts, so appending goes on while it is answered and the question's own
/// tokens go away with it. Dispose gives the session's pages back.
/// </summary>
public sealed class Session : IAsyncDisposable
{
    readonly InferenceEngine engine;
    readonly Ingest ingest;
    PagedKvCache? cache;
    int appendCalls;
    bool disposed;

    internal Session(InferenceEngine engine)
    {
        this.engine = engine;
        ingest = new Ingest(this);
        engine.Post(() =>
        {
            cache = engine.CreateCache();
            engine.Start(ingest);
        });
    }

    /// <summary>Positions in the session's KV sequence so far (what questions see).</summary>
    public int Length => cache?.Length ?? 0;

    internal PagedKvCache Cache => cache ?? throw new InvalidOperationException("the session's cache is not created yet");

    /// <summary>
    /// Appends text (tokenised with the model's vocabulary, special tokens parsed; the session's first text gets the
    /// vocabulary's BOS when it wants one). Completes once every token is in the session's KV.
    /// </summary>
    public Task AppendAsync(string text, CancellationToken cancellation = default)
    {
        bool first = Interlocked.Increment(ref appendCalls) == 1;
        var ids = engine.Model.Tokenizer.Encode(text, addSpecial: first, parseSpecial: true);
        return AppendTokensAsync(ids.ToArray(), cancellation);
    }

    /// <summary>Appends token ids as they are.</summary>
    public Task AppendTokensAsync(ReadOnlyMemory<int> tokens, CancellationToken cancellation = default)
    {
        int vocab = engine.Model.Config.VocabSize;
        foreach (int t in tokens.Span)
            if ((uint)t >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} is outside the vocabulary of {vocab}");
        Interlocked.Increment(ref appendCalls);
        return Queue(new Append(tokens, default, -1), cancellation);
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
        return Queue(new Append(default, rows, frameId), cancellation);
    }

    /// <summary>Appends each piece of text as <paramref name="source"/> yields it (a live transcript, a slow reader); completes when the source ends.</summary>
    public async Task AppendAsync(IAsyncEnumerable<string> source, CancellationToken cancellation = default)
    {
        await foreach (var text in source.WithCancellation(cancellation).ConfigureAwait(false)) await AppendAsync(text, cancellation).ConfigureAwait(false);
    }

    Task Queue(Append append, CancellationToken cancellation)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (cancellation.CanBeCanceled)
            append.Registration = cancellation.Register(() => engine.Post(() => ingest.Cancel(append, cancellation)));
        engine.Post(() => ingest.Add(append));
        return append.Done.Task;
    }

    /// <summary>
    /// Asks a question about what the session holds now and streams the answer as text pieces (whole UTF-8 characters),
    /// generated on a fork of the session's KV while appending goes on. <paramref name="prompt"/> is appended to the fork
    /// as it is (format it with the model's chat template if it has one). Cancelling, or leaving the enumeration early,
    /// stops the answer and frees its pages.
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

    /// <summary>Stops pending appends (they fail with <see cref="ObjectDisposedException"/>) and gives the session's pages back; answers in flight keep their forks until they end.</summary>
    public async ValueTask DisposeAsync()
    {
        if (disposed) return;
        disposed = true;
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

    sealed class Append(ReadOnlyMemory<int> tokens, ReadOnlyMemory<float> embeddings, int frameId)
    {
        public ReadOnlyMemory<int> Tokens = tokens;
        public ReadOnlyMemory<float> Embeddings = embeddings;
        public int FrameId = frameId;
        public int Done_;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public CancellationTokenRegistration Registration;
    }

    /// <summary>The session's appends, in order, a chunk per step (one ingest per session, so its rows stay one run).</summary>
    sealed class Ingest(Session session) : Work
    {
        readonly Queue<Append> queue = new();
        bool closed;

        public override KvCache Cache => session.Cache;
        public override bool IsFinished => closed;
        public override bool HasPendingRows => queue.Count > 0;

        public void Add(Append append)
        {
            if (closed) append.Done.TrySetException(new ObjectDisposedException(nameof(Session)));
            else queue.Enqueue(append);
        }

        public void Cancel(Append append, CancellationToken cancellation)
        {
            // Only an append not yet started can leave the queue whole; one half-ingested stays in (the KV is in order).
            if (append.Done_ > 0 || !queue.Contains(append)) return;
            var rest = queue.Where(a => a != append).ToList();
            queue.Clear();
            foreach (var a in rest) queue.Enqueue(a);
            append.Done.TrySetCanceled(cancellation);
        }

        public override int AddRows(DecoderBatch batch, int sequence, int most)
        {
            var append = queue.Peek();
            int e = batch.EmbeddingLength;
            if (!append.Tokens.IsEmpty)
            {
                var tokens = append.Tokens.Span;
                int n = Math.Min(most, tokens.Length - append.Done_);
                for (int i = 0; i < n; i++) batch.AddToken(tokens[append.Done_ + i], sequence, frame: append.FrameId);
                return n;
            }
            var rows = append.Embeddings.Span;
            int count = Math.Min(most, rows.Length / e - append.Done_);
            for (int i = 0; i < count; i++) batch.AddEmbedding(rows.Slice((append.Done_ + i) * e, e), sequence, frame: append.FrameId);
            return count;
        }

        public override void Advance(int rows, ReadOnlySpan<float> logits)
        {
            var append = queue.Peek();
            append.Done_ += rows;
            int total = append.Tokens.IsEmpty ? append.Embeddings.Length / session.engine.Model.Config.EmbeddingLength : append.Tokens.Length;
            if (append.Done_ < total) return;
            queue.Dequeue();
            append.Registration.Dispose();
            append.Done.TrySetResult();
        }

        public override void Fail(Exception error)
        {
            // The failed chunk did not run: the append fails, later ones still go in.
            if (queue.TryDequeue(out var append))
            {
                append.Registration.Dispose();
                append.Done.TrySetException(error);
            }
        }

        public void Close()
        {
            closed = true;
            while (queue.TryDequeue(out var append)) append.Done.TrySetException(new ObjectDisposedException(nameof(Session)));
        }
    }

    /// <summary>One answer: the prompt in chunks on a fork of the session's KV, then a token per step until the end or the limit.</summary>
    sealed class Answer(InferenceEngine engine, Session session, int[] prompt, AskOptions options) : Work
    {
        readonly Channel<string> output = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        readonly Sampler sampler = new(options.Sampling);
        readonly List<int> history = [.. prompt];
        readonly Decoder utf8 = Encoding.UTF8.GetDecoder();
        char[] chars = new char[16];
        PagedKvCache? fork;
        int promptDone, generated, next = -1;
        bool finished;

        public ChannelReader<string> Output => output.Reader;
        readonly TaskCompletionSource ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
        /// <summary>Completes once the answer has ended and its fork's pages are back in the pool.</summary>
        public Task Ended => ended.Task;
        public override KvCache Cache => fork!;
        public override bool IsFinished => finished;
        public override bool IsDecoding => !finished && next >= 0;
        public override bool HasPendingRows => !finished && promptDone < prompt.Length;

        /// <summary>On the loop thread: fork the session as it is now and join the loop.</summary>
        public void Begin()
        {
            if (finished) return;
            try { fork = engine.Fork(session.Cache); }
            catch (Exception e)
            {
                Fail(e);
                return;
            }
            engine.Start(this);
        }

        public override int AddRows(DecoderBatch batch, int sequence, int most)
        {
            if (next >= 0)
            {
                batch.AddToken(next, sequence, logits: true);
                return 1;
            }
            int n = Math.Min(most, prompt.Length - promptDone);
            for (int i = 0; i < n; i++) batch.AddToken(prompt[promptDone + i], sequence, logits: promptDone + i == prompt.Length - 1);
            return n;
        }

        public override void Advance(int rows, ReadOnlySpan<float> logits)
        {
            if (next < 0)
            {
                promptDone += rows;
                if (promptDone < prompt.Length) return;
            }
            int token = sampler.Sample(logits, history);
            history.Add(token);
            generated++;
            bool end = engine.Model.Vocabulary.IsEndOfGeneration(token);
            Emit(engine.Model.Tokenizer.TokenToPiece(token), flush: end || generated == options.MaxTokens);
            if (end || generated == options.MaxTokens) Complete(null);
            else next = token;
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
            fork?.Dispose(); // its pages go back before the reader hears the end
            fork = null;
            output.Writer.TryComplete(error);
            ended.TrySetResult();
        }
    }
}
