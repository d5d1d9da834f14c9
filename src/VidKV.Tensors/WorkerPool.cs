using System.Diagnostics;
using System.Runtime.ExceptionServices;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Persistent worker threads for data-parallel kernels, llama.cpp style: one job at a time, statically split
/// between <see cref="ThreadCount"/> threads (the caller is thread 0), no Task or delegate allocated per operation.
/// Between jobs the workers spin for a few milliseconds (decode issues a job every few microseconds), then sleep.
/// </summary>
internal sealed unsafe class WorkerPool : IDisposable
{
    /// <summary>
    /// How long an idle worker spins before it sleeps. Waking a sleeping worker costs ~50 µs and, on a busy virtual
    /// machine, sometimes milliseconds; the KV cache's serial work between kernels (page selection, recalls) can take
    /// a few hundred microseconds per layer, so the spin must outlast it.
    /// </summary>
    static readonly long SpinTicks = Stopwatch.Frequency / 250; // 4 ms

    static WorkerPool? shared;
    static readonly object sharedGate = new();

    readonly Thread[] threads;
    readonly object gate = new();
    readonly object runGate = new();
    delegate*<void*, int, int, void> job;
    void* context;
    int generation;
    int pending;
    int sleepers;
    volatile bool disposed;
    ExceptionDispatchInfo? failure;
    readonly long[] workerAllocations;

    public WorkerPool(int threadCount)
    {
        if (threadCount < 1) throw new ArgumentOutOfRangeException(nameof(threadCount), "at least one thread");
        ThreadCount = threadCount;
        threads = new Thread[threadCount - 1];
        workerAllocations = new long[threadCount];
        for (int i = 0; i < threads.Length; i++)
        {
            int index = i + 1;
            threads[i] = new Thread(() => WorkerLoop(index)) { IsBackground = true, Name = $"vidkv-worker-{index}" };
            threads[i].Start();
        }
    }

    public int ThreadCount { get; }

    /// <summary>The pool kernels use: <c>VIDKV_THREADS</c> threads if set, else one per core.</summary>
    public static WorkerPool Shared
    {
        get
        {
            if (shared != null) return shared;
            lock (sharedGate) return shared ??= new WorkerPool(DefaultThreadCount());
        }
    }

    public static int DefaultThreadCount() =>
        int.TryParse(Environment.GetEnvironmentVariable("VIDKV_THREADS"), out int n) && n > 0 ? n : Environment.ProcessorCount;

    /// <summary>Replaces the shared pool with one of <paramref name="threadCount"/> threads (the CLI's -t).</summary>
    public static void SetSharedThreadCount(int threadCount)
    {
        lock (sharedGate)
        {
            if (shared?.ThreadCount == threadCount) return;
            var old = shared;
            shared = new WorkerPool(threadCount);
            old?.Dispose();
        }
    }

    /// <summary>
    /// Runs <paramref name="function"/>(context, threadIndex, threadCount) on every thread and returns when all are done.
    /// The context is caller memory (usually a struct on the caller's stack) that must stay valid until then. On a
    /// disposed pool (a caller that took <see cref="Shared"/> just before <see cref="SetSharedThreadCount"/> replaced
    /// it) the job runs on the caller alone, as (context, 0, 1), instead of waiting for workers that are gone.
    /// </summary>
    public void Run(delegate*<void*, int, int, void> function, void* context)
    {
        if (ThreadCount == 1)
        {
            function(context, 0, 1);
            return;
        }
        lock (runGate)
        {
            if (disposed)
            {
                function(context, 0, 1);
                return;
            }
            job = function;
            this.context = context;
            Volatile.Write(ref pending, ThreadCount - 1);
            Interlocked.Increment(ref generation);
            if (Volatile.Read(ref sleepers) > 0)
                lock (gate) Monitor.PulseAll(gate);
            try { function(context, 0, ThreadCount); }
            finally
            {
                while (Volatile.Read(ref pending) != 0) Pause();
            }
            if (failure != null)
            {
                var f = failure;
                failure = null;
                f.Throw();
            }
        }
    }

    /// <summary>Managed bytes the worker threads (not the caller) have allocated so far, as of their last finished job.</summary>
    public long WorkerAllocatedBytes
    {
        get
        {
            long total = 0;
            for (int i = 1; i < workerAllocations.Length; i++) total += Volatile.Read(ref workerAllocations[i]);
            return total;
        }
    }

    /// <summary>The [start, end) share of <paramref name="total"/> items for one thread, boundaries rounded to <paramref name="granularity"/>.</summary>
    public static (int Start, int End) Split(int total, int thread, int threads, int granularity = 1)
    {
        int units = (total + granularity - 1) / granularity;
        int start = (int)((long)units * thread / threads) * granularity;
        int end = (int)((long)units * (thread + 1) / threads) * granularity;
        return (Math.Min(start, total), Math.Min(end, total));
    }

    void WorkerLoop(int index)
    {
        int seen = 0;
        while (true)
        {
            long spinStart = Stopwatch.GetTimestamp();
            int spins = 0;
            while (Volatile.Read(ref generation) == seen)
            {
                if (disposed) return;
                if (Stopwatch.GetTimestamp() - spinStart < SpinTicks)
                {
                    // Now and then let another runnable thread on this core (the cold tier's reader) have it.
                    if (++spins % 64 == 0) Thread.Yield();
                    else Pause();
                    continue;
                }
                lock (gate)
                {
                    // A full fence between announcing sleep and re-reading the generation: with a plain store the
                    // read could pass it (x86 store→load reordering) and Run could miss the sleeper.
                    Interlocked.Increment(ref sleepers);
                    while (Volatile.Read(ref generation) == seen && !disposed) Monitor.Wait(gate);
                    Interlocked.Decrement(ref sleepers);
                }
            }
            if (disposed) return;
            seen = Volatile.Read(ref generation);
            try { job(context, index, ThreadCount); }
            catch (Exception e) { failure ??= ExceptionDispatchInfo.Capture(e); }
            Volatile.Write(ref workerAllocations[index], GC.GetAllocatedBytesForCurrentThread());
            Interlocked.Decrement(ref pending);
        }
    }

    static void Pause()
    {
        if (X86Base.IsSupported) X86Base.Pause();
        else Thread.SpinWait(1);
    }

    /// <summary>Stops the workers after the job in flight, if any, has finished.</summary>
    public void Dispose()
    {
        lock (runGate) disposed = true;
        lock (gate) Monitor.PulseAll(gate);
        foreach (var t in threads) t.Join();
    }
}
