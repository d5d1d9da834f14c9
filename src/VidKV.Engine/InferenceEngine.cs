using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using VidKV.Cache;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Engine;

/// <summary>How an <see cref="InferenceEngine"/> schedules and stores its sessions.</summary>
public sealed record EngineOptions
{
    /// <summary>
    /// The KV cache of every session: policies (a session's own; a question's fork gets fresh ones), page size and type,
    /// and the one budget all sessions share (<see cref="KvCacheConfig.MaxHotPages"/>; 0 for none) with its cold tier.
    /// </summary>
    public KvCacheConfig Kv { get; init; } = new();
    /// <summary>Most positions one session (or a question on it) may reach.</summary>
    public int ContextLength { get; init; } = int.MaxValue;
    /// <summary>
    /// Most rows of one session's ingest or prompt in one step: a long ingest goes in chunks of this size between
    /// other sessions' decode steps, so it cannot starve an answer. Under <see cref="PrefillScheduling.Prepacked"/>
    /// only prompts too long for a step's free rows go in chunks.
    /// </summary>
    public int PrefillChunk { get; init; } = 128;
    /// <summary>
    /// How prompts and ingests fill a step's rows after its decode rows: in chunks, in turn
    /// (<see cref="PrefillScheduling.Chunked"/>, the default), or whole prompts bin-packed
    /// (<see cref="PrefillScheduling.Prepacked"/>).
    /// </summary>
    public PrefillScheduling Prefill { get; init; } = PrefillScheduling.Chunked;
    /// <summary>Most rows of one step, all sessions together.</summary>
    public int MaxBatchRows { get; init; } = 512;
    /// <summary>How sessions lay out video frames (the family's own format by default).</summary>
    public VideoOptions Video { get; init; } = new();
    /// <summary>
    /// Page metadata the shared store keeps beyond what <see cref="Kv"/>'s policies read, so that sessions may run
    /// policies of their own that read it (<see cref="SessionOptions.Kv"/>); <see cref="KvMetadata.All"/> allows every
    /// policy, at the cost of its metadata for every page.
    /// </summary>
    public KvMetadata KvMetadata { get; init; }
}

/// <summary>How one session of an <see cref="InferenceEngine"/> differs from the engine's defaults.</summary>
public sealed record SessionOptions
{
    /// <summary>
    /// The KV policies of this session and of its questions' forks (<see cref="KvCacheConfig.Default"/>,
    /// <see cref="KvCacheConfig.Budget"/>, the layer and head overrides); null runs the engine's. Page size, type, the hot
    /// budget and the cold tier are the engine's store's whatever this says, and the store must keep the page metadata
    /// the policies read (<see cref="EngineOptions.KvMetadata"/>).
    /// </summary>
    public KvCacheConfig? Kv { get; init; }
    /// <summary>
    /// Most positions the session (or a question on it) may reach; null takes <see cref="EngineOptions.ContextLength"/>.
    /// A live stream under a bounded policy keeps its memory bounded, but its positions go on growing.
    /// </summary>
    public int? ContextLength { get; init; }
}

/// <summary>
/// Runs a model for many sessions: one loop thread owns the model's worker pool and, step after step, runs one
/// <see cref="DecoderBatch"/> holding the next decode row of every answer being generated and chunks of pending
/// prompts and ingests (llama.cpp's server loop, vLLM's scheduler in miniature). Sessions share one KV page pool under
/// one budget; a question runs on a copy-on-write fork of its session's KV, so ingestion goes on while it is answered,
/// and its pages go back when it ends. Create sessions with <see cref="CreateSession"/>; dispose the engine to stop it
/// (the model stays the caller's). Given the model's vision tower and projector, sessions also take images and video
/// frames (<see cref="Session.AppendImageAsync"/>, <see cref="Session.AppendFrameAsync"/>, <see cref="Session.AppendVideoAsync"/>).
/// </summary>
public sealed class InferenceEngine : IAsyncDisposable
{
    readonly DecoderModel model;
    readonly EngineOptions options;
    readonly PagedKvStore store;
    readonly ConcurrentQueue<Action> inbox = new();
    readonly SemaphoreSlim wake = new(0);
    readonly Thread loop;
    readonly CancellationTokenSource stopping = new();
    readonly TaskCompletionSource stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    // Owned by the loop thread.
    readonly List<Work> active = [];
    readonly List<KvCache> batchCaches = [];
    readonly List<(Work Work, int Rows, int LogitRow)> batchParts = [];
    // Prepacked scheduling's scratch, reused step after step: the whole prompts (and their sizes, bins, order, bin
    // loads) and the active indices of the prompts too long for the step.
    readonly List<Work> packed = [];
    readonly List<int> tooLong = [];
    int[] packSizes = new int[16], packBins = new int[16], packOrder = new int[16], packLoads = new int[16];
    readonly DecoderBatch batch;
    readonly Activations buffers = new();
    readonly ForwardProfile profile = new();
    float[] logits = [];
    int nextWork;

    /// <summary>Creates the KV page pool for <paramref name="model"/> and starts the engine loop thread (defaults when <paramref name="options"/> is null).</summary>
    /// <param name="vision">
    /// the model's vision tower and projector (its mmproj), for images and video frames; its rows must be the text
    /// model's embedding width. The engine encodes with it one entry at a time and does not dispose it.
    /// </param>
    public InferenceEngine(DecoderModel model, EngineOptions? options = null, VisionModel? vision = null)
    {
        this.model = model;
        this.options = options ?? new EngineOptions();
        if (vision != null)
        {
            if (vision.OutputLength != model.Config.EmbeddingLength)
                throw new ArgumentException($"the projector {vision.Path} writes rows of {vision.OutputLength} floats but the text model {model.Path} takes {model.Config.EmbeddingLength}: not a pair", nameof(vision));
            if (this.options.Video.TokensPerSecond < 1)
                throw new ArgumentException($"video tokens per second must be at least 1, not {this.options.Video.TokensPerSecond}", nameof(options));
            Encoder = new FrameEncoder(vision, model, this.options.Video);
        }
        if (this.options.PrefillChunk < 1 || this.options.MaxBatchRows < this.options.PrefillChunk)
            throw new ArgumentException($"prefill chunk {this.options.PrefillChunk} must be at least 1 and at most the batch's {this.options.MaxBatchRows} rows");
        if (!Enum.IsDefined(this.options.Prefill))
            throw new ArgumentException($"prefill scheduling {this.options.Prefill} is not one of {string.Join(", ", Enum.GetNames<PrefillScheduling>())}", nameof(options));
        var c = model.Config;
        CheckPositions(this.options.Kv);
        store = this.options.Kv.CreateStore(c.LayerCount, c.KvHeadCount, c.HeadDim, this.options.KvMetadata);
        EngineMetrics.Register(this);
        batch = model.CreateBatch();
        loop = new Thread(Loop) { IsBackground = true, Name = "vidkv-engine" };
        loop.Start();
    }

    /// <summary>The model every session runs on (the engine does not dispose it).</summary>
    public DecoderModel Model => model;
    /// <summary>The batching and KV settings the engine was created with.</summary>
    public EngineOptions Options => options;

    /// <summary>The vision model sessions encode images and frames with; null for a text-only engine.</summary>
    public VisionModel? Vision => Encoder?.Vision;

    /// <summary>The vision half (null for a text-only engine).</summary>
    internal FrameEncoder? Encoder { get; }

    /// <summary>KV memory now, all sessions together.</summary>
    public KvMemory Memory => new(store.HotBytes, store.ColdBytes, store.HotBudgetBytes, store.PageCount, store.SequenceCount, store.ColdDroppedRows, store.PeakHotBytes);

    /// <summary>The page pool (tests and tools look at it between steps).</summary>
    internal PagedKvStore Store => store;

    /// <summary>
    /// While set, the loop runs posted actions but no step, so work posted meanwhile meets in the first step after it
    /// is cleared (tests line up prompts that way).
    /// </summary>
    internal bool Paused
    {
        get => Volatile.Read(ref paused);
        set
        {
            Volatile.Write(ref paused, value);
            if (!value) wake.Release();
        }
    }

    bool paused;

    /// <summary>On the loop thread: works with prompt or ingest rows waiting (tests call it through <see cref="Call"/>).</summary>
    internal int WaitingWorks => active.Count(w => !w.IsDecoding && w.HasPendingRows);

    /// <summary>Called on the loop thread after every step (tests check invariants there).</summary>
    internal Action? StepCompleted { get; set; }

    /// <summary>Sequences the last step ran rows of (several when sessions share a batch).</summary>
    internal int LastStepSequences => batchCaches.Count;

    /// <summary>The last step's batch and its sequences' caches, in the batch's sequence order (tests look at them in <see cref="StepCompleted"/>).</summary>
    internal (DecoderBatch Batch, IReadOnlyList<KvCache> Caches) LastStep => (batch, batchCaches);

    /// <summary>Forward-pass phase times of all steps so far.</summary>
    public ForwardTimes Times => profile.Times;

    /// <summary>A new session with an empty KV sequence, under the engine's policies and context unless <paramref name="options"/> gives its own.</summary>
    /// <exception cref="KvConfigException">a policy spec is bad, names layers or heads the model lacks, or reads page metadata the store does not keep</exception>
    /// <exception cref="ArgumentOutOfRangeException">the context length is below 1</exception>
    public Session CreateSession(SessionOptions? options = null)
    {
        ObjectDisposedException.ThrowIf(stopping.IsCancellationRequested, this);
        var kv = options?.Kv ?? this.options.Kv;
        int contextLength = options?.ContextLength ?? this.options.ContextLength;
        if (contextLength < 1) throw new ArgumentOutOfRangeException(nameof(options), $"the context length must be at least 1, not {contextLength}");
        if (options?.Kv != null)
        {
            CheckPositions(kv);
            // Checked here, on the caller's thread: a policy the store cannot serve would otherwise fail on the loop.
            var policies = kv.BuildPolicies(model.Config.LayerCount, model.Config.KvHeadCount);
            var missing = policies.Metadata & ~store.Metadata;
            if (missing != KvMetadata.None)
                throw new KvConfigException($"policy '{kv.Default}' reads {missing} page metadata, which this engine's KV store does not keep (EngineOptions.KvMetadata)");
        }
        var session = new Session(this, kv, contextLength);
        Interlocked.Increment(ref openSessions);
        return session;
    }

    int openSessions;

    /// <summary>Sessions created and not yet disposed.</summary>
    public int OpenSessions => Volatile.Read(ref openSessions);

    internal void SessionClosed() => Interlocked.Decrement(ref openSessions);

    /// <summary>Runs <paramref name="action"/> on the loop thread before its next step.</summary>
    internal void Post(Action action)
    {
        if (stopping.IsCancellationRequested) throw new ObjectDisposedException(nameof(InferenceEngine));
        inbox.Enqueue(action);
        wake.Release();
    }

    /// <summary>Runs <paramref name="function"/> on the loop thread and returns its result.</summary>
    internal Task<T> Call<T>(Func<T> function)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        Post(() =>
        {
            try { done.SetResult(function()); }
            catch (Exception e) { done.SetException(e); }
        });
        return done.Task;
    }

    internal PagedKvCache CreateCache(KvCacheConfig kv, int contextLength) => kv.CreateCache(store.CreateSequence(), contextLength, model.KeyRotation);

    /// <summary>Compact positions need one-component RoPE: an M-RoPE model's keys turn by several position components.</summary>
    void CheckPositions(KvCacheConfig kv)
    {
        if (kv.Positions == KvPositions.Compact && model.KeyRotation == null)
            throw new KvConfigException($"positions 'compact' are not supported for M-RoPE models: {model.Path} ({model.Config.Architecture}) turns keys by {model.PositionComponents} position components; use positions 'original'");
    }
    internal PagedKvCache Fork(PagedKvCache cache, KvCacheConfig kv) =>
        cache.Fork(kv.BuildPolicies(model.Config.LayerCount, model.Config.KvHeadCount));

    /// <summary>Adds work for the loop (called on the loop thread).</summary>
    internal void Start(Work work) => active.Add(work);

    void Loop()
    {
        try
        {
            while (true)
            {
                while (inbox.TryDequeue(out var action)) action();
                for (int i = active.Count - 1; i >= 0; i--)
                    if (active[i].IsFinished) active.RemoveAt(i);
                if (stopping.IsCancellationRequested) break;
                if (Paused || !Step())
                {
                    wake.Wait(); // nothing to run until a session posts work
                    continue;
                }
                StepCompleted?.Invoke();
            }
        }
        finally
        {
            foreach (var work in active) work.Fail(new ObjectDisposedException(nameof(InferenceEngine), "the engine was disposed"));
            active.Clear();
            stopped.TrySetResult();
        }
    }

    /// <summary>
    /// One step: the decode row of every generating answer first (latency), then prompt and ingest rows while rows are
    /// left, as <see cref="EngineOptions.Prefill"/> says: chunks in turn (round robin from where the last step stopped)
    /// or whole prompts packed. False when there was nothing to run.
    /// </summary>
    bool Step()
    {
        batch.Clear();
        batchCaches.Clear();
        batchParts.Clear();
        int rows = 0, logitRows = 0;
        foreach (var work in active)
            if (work.IsDecoding && rows < options.MaxBatchRows)
                Add(work, work.AddRows(batch, batchCaches.Count, 1), ref rows, ref logitRows);
        if (options.Prefill == PrefillScheduling.Prepacked) AddPrepacked(ref rows, ref logitRows);
        else AddChunks(ref rows, ref logitRows);
        if (batchParts.Count == 0) return false;
        var status = Run(logitRows);
        if (status != DecodeStatus.Ok && batchParts.Count > 1)
        {
            // Together they do not fit: run each part alone, so only the ones that cannot fit at all fail.
            var parts = batchParts.ToArray();
            foreach (var (work, count, _) in parts)
            {
                if (work.IsFinished) continue;
                batch.Clear();
                batchCaches.Clear();
                batchParts.Clear();
                rows = logitRows = 0;
                Add(work, work.AddRows(batch, 0, count), ref rows, ref logitRows);
                Finish(Run(logitRows));
            }
            return true;
        }
        Finish(status);
        return true;

        void Finish(DecodeStatus result)
        {
            foreach (var (work, count, logitRow) in batchParts)
            {
                if (result == DecodeStatus.Ok) work.Advance(count, logitRow < 0 ? default : logits.AsSpan(logitRow * model.Config.VocabSize, model.Config.VocabSize));
                else work.Fail(new InvalidOperationException(result == DecodeStatus.NoKvRoom
                    ? $"KV budget full: {store.HotBytes} of {store.HotBudgetBytes} bytes in use; use a KV policy that evicts or moves pages cold, or a larger budget"
                    : $"context full: the session would pass {options.ContextLength} positions"));
            }
        }
    }

    /// <summary>Chunked prefill: a chunk of each pending prompt or ingest in turn, from where the last step stopped, while rows are left.</summary>
    void AddChunks(ref int rows, ref int logitRows)
    {
        int start = nextWork;
        for (int k = 0; k < active.Count && rows < options.MaxBatchRows; k++)
        {
            var work = active[(start + k) % active.Count];
            if (work.IsDecoding || !work.HasPendingRows) continue;
            int want = Math.Min(options.PrefillChunk, options.MaxBatchRows - rows);
            Add(work, work.AddRows(batch, batchCaches.Count, want), ref rows, ref logitRows);
            nextWork = (start + k + 1) % Math.Max(1, active.Count);
        }
    }

    /// <summary>
    /// Prepacked prefill: the prompts that fit the free rows whole are packed first-fit decreasing into them (less a
    /// chunk kept for the longer ones, if any) and the first bin goes in; then the longer prompts get chunks in turn
    /// while rows are left. Equal sizes pack in the order the work started (first come, first served).
    /// </summary>
    void AddPrepacked(ref int rows, ref int logitRows)
    {
        int free = options.MaxBatchRows - rows;
        if (free <= 0) return;
        packed.Clear();
        tooLong.Clear();
        for (int i = 0; i < active.Count; i++)
        {
            var work = active[i];
            if (work.IsDecoding || !work.HasPendingRows) continue;
            int pending = work.PendingRows;
            if (pending == 0) continue;
            if (pending > free)
            {
                tooLong.Add(i);
                continue;
            }
            if (packed.Count == packSizes.Length)
            {
                int grown = 2 * packSizes.Length;
                Array.Resize(ref packSizes, grown);
                Array.Resize(ref packBins, grown);
                Array.Resize(ref packOrder, grown);
                Array.Resize(ref packLoads, grown);
            }
            packSizes[packed.Count] = pending;
            packed.Add(work);
        }
        int capacity = free - (tooLong.Count > 0 ? Math.Min(options.PrefillChunk, free) : 0);
        if (packed.Count > 0 && capacity > 0)
        {
            int n = packed.Count;
            Prepacking.FirstFitDecreasing(packSizes.AsSpan(0, n), capacity, packBins.AsSpan(0, n), packOrder.AsSpan(0, n), packLoads.AsSpan(0, n));
            for (int k = 0; k < n; k++)
            {
                int item = packOrder[k];
                if (packBins[item] == 0) Add(packed[item], packed[item].AddRows(batch, batchCaches.Count, packSizes[item]), ref rows, ref logitRows);
            }
        }
        if (tooLong.Count == 0) return;
        // The long ones in turn from where the last step stopped: the first at or after nextWork goes first.
        int first = 0;
        while (first < tooLong.Count && tooLong[first] < nextWork) first++;
        for (int k = 0; k < tooLong.Count && rows < options.MaxBatchRows; k++)
        {
            int index = tooLong[(first + k) % tooLong.Count];
            var work = active[index];
            int want = Math.Min(options.PrefillChunk, options.MaxBatchRows - rows);
            Add(work, work.AddRows(batch, batchCaches.Count, want), ref rows, ref logitRows);
            nextWork = index + 1;
        }
    }

    void Add(Work work, int added, ref int rows, ref int logitRows)
    {
        if (added == 0) return;
        batchCaches.Add(work.Cache);
        bool logitsWanted = batch.NeedsLogits(batch.Count - 1);
        batchParts.Add((work, added, logitsWanted ? logitRows : -1));
        if (logitsWanted) logitRows++;
        rows += added;
    }

    /// <summary>Decodes the batch; an exception (the caches are cut back by Decode) fails this step's work, not the loop.</summary>
    DecodeStatus Run(int logitRows)
    {
        int vocab = model.Config.VocabSize;
        if (logits.Length < logitRows * vocab) logits = new float[logitRows * vocab];
        try { return model.Decode(batch, batchCaches, buffers, logits, profile); }
        catch (Exception e)
        {
            foreach (var (work, _, _) in batchParts) work.Fail(e);
            batchParts.Clear();
            return DecodeStatus.Ok;
        }
    }

    /// <summary>Stops the loop after its current step; unfinished work fails with <see cref="ObjectDisposedException"/>. Sessions' KV goes with the engine.</summary>
    public async ValueTask DisposeAsync()
    {
        if (stopping.IsCancellationRequested) return;
        stopping.Cancel();
        wake.Release();
        await stopped.Task.ConfigureAwait(false);
        loop.Join();
        Encoder?.Dispose();
        EngineMetrics.Unregister(this);
        store.Dispose();
        wake.Dispose();
    }
}

/// <summary>
/// KV memory of an engine: bytes in RAM and in the cold file, the hot budget (0 = none), pages and sequences, the
/// rows dropped from a full cold file (<see cref="KvCacheConfig.MaxColdBytes"/>) so far, and the most bytes that were
/// in RAM at once since the engine started (within steps too).
/// </summary>
public readonly record struct KvMemory(long HotBytes, long ColdBytes, long BudgetBytes, int Pages, int Sequences, long ColdDroppedRows = 0, long PeakHotBytes = 0);

/// <summary>
/// Work the engine loop runs for a session, a few rows per step: an ingest (rows appended, no logits) or an answer
/// (a prompt, then one token per step). Lives on the loop thread.
/// </summary>
abstract class Work
{
    public abstract KvCache Cache { get; }
    public abstract bool IsFinished { get; }
    /// <summary>Whether the work now needs one decode row per step (an answer past its prompt).</summary>
    public virtual bool IsDecoding => false;
    public abstract bool HasPendingRows { get; }
    /// <summary>
    /// Rows the work's current unit (an answer's prompt, a session's first queued append) has still to run; 0 when none
    /// waits. Reading it may lay the unit's rows out (an append then counts as begun).
    /// </summary>
    public abstract int PendingRows { get; }
    /// <summary>Adds up to <paramref name="most"/> of its next rows to the batch as sequence <paramref name="sequence"/>; returns how many.</summary>
    public abstract int AddRows(DecoderBatch batch, int sequence, int most);
    /// <summary>The step ran: <paramref name="rows"/> of its rows are in the cache; <paramref name="logits"/> are its last row's when it asked.</summary>
    public abstract void Advance(int rows, ReadOnlySpan<float> logits);
    /// <summary>Ends the work with an error (its rows since the last step were not run).</summary>
    public abstract void Fail(Exception error);
}
