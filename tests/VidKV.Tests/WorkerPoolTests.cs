using VidKV.Tensors;

namespace VidKV.Tests;

public unsafe class WorkerPoolTests
{
    struct Counts
    {
        public int* PerThread;
        public long* Items;
        public int Total;
    }

    static void Count(void* context, int thread, int threads)
    {
        ref Counts c = ref *(Counts*)context;
        var (start, end) = WorkerPool.Split(c.Total, thread, threads, 3);
        for (int i = start; i < end; i++) Interlocked.Increment(ref c.Items[i]);
        Interlocked.Increment(ref c.PerThread[thread]);
    }

    /// <summary>Every item runs exactly once and every thread once per job — also when workers have gone to sleep between jobs.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void EveryItemOnceAcrossSleepsAndBursts(int threads)
    {
        using var pool = new WorkerPool(threads);
        var perThread = new int[threads];
        var items = new long[101];
        fixed (int* pt = perThread)
        fixed (long* pi = items)
        {
            var counts = new Counts { PerThread = pt, Items = pi, Total = items.Length };
            for (int job = 0; job < 2000; job++)
            {
                if (job % 250 == 0) Thread.Sleep(5); // long enough for the workers to stop spinning and sleep
                pool.Run(&Count, &counts);
            }
        }
        Assert.All(items, n => Assert.Equal(2000, n));
        Assert.All(perThread, n => Assert.Equal(2000, n));
    }

    /// <summary>Runs <paramref name="jobs"/> counting jobs on <paramref name="pool"/> (see <see cref="Count"/>).</summary>
    internal static void RunCountingJobs(WorkerPool pool, long[] items, int[] perThread, int jobs)
    {
        fixed (int* pt = perThread)
        fixed (long* pi = items)
        {
            var counts = new Counts { PerThread = pt, Items = pi, Total = items.Length };
            for (int job = 0; job < jobs; job++) pool.Run(&Count, &counts);
        }
    }

    [Fact]
    public void SplitCoversTheRangeWithoutOverlap()
    {
        foreach (int total in new[] { 0, 1, 7, 16, 100, 4864 })
            foreach (int threads in new[] { 1, 2, 3, 8 })
                foreach (int granularity in new[] { 1, 16 })
                {
                    int next = 0;
                    for (int t = 0; t < threads; t++)
                    {
                        var (start, end) = WorkerPool.Split(total, t, threads, granularity);
                        Assert.Equal(next, start);
                        Assert.True(end >= start);
                        next = end;
                    }
                    Assert.Equal(total, next);
                }
    }
}

public class WorkerPoolDisposeTests
{
    /// <summary>
    /// A pool disposed while another thread keeps running jobs on it (SetSharedThreadCount replacing the shared pool
    /// under a caller) finishes the job in flight, then runs each later job on the caller alone: every item still
    /// runs exactly once per job and nothing waits for the stopped workers.
    /// </summary>
    [Fact]
    public async Task DisposingUnderARunningCallerNeitherHangsNorDropsWork()
    {
        var pool = new WorkerPool(3);
        var items = new long[101];
        var perThread = new int[3];
        const int jobs = 200_000; // far more than run before Dispose returns, even on a loaded machine
        var runner = Task.Run(() => WorkerPoolTests.RunCountingJobs(pool, items, perThread, jobs));
        while (Volatile.Read(ref items[0]) < 1000) Thread.Yield();
        pool.Dispose();
        await runner.WaitAsync(TimeSpan.FromMinutes(2)); // throws TimeoutException if jobs on the disposed pool hang
        Assert.All(items, n => Assert.Equal(jobs, n));
        Assert.Equal(jobs, perThread[0]); // thread 0 (the caller) takes part in every job
        Assert.True(perThread[1] < jobs, "workers ran every job although the pool was disposed mid-way");
    }
}
