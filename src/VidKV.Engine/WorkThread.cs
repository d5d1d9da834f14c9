using System.Collections.Concurrent;

namespace VidKV.Engine;

/// <summary>
/// One long-lived thread that runs the work posted to it in order. The vision tower's passes go here rather than to
/// the thread pool: every thread that multiplies keeps its own kernel scratch (<c>[ThreadStatic]</c>, megabytes for a
/// 1024-patch pass), so passes spread over the pool's threads as they come and go held a copy per thread — the
/// pinned heap of a 720p stream (SmolVLM2 shape) at ~200 MiB and the process's memory drifting with it.
/// </summary>
internal sealed class WorkThread : IDisposable
{
    readonly BlockingCollection<Action> queue = new();
    readonly Thread thread;

    public WorkThread(string name)
    {
        thread = new Thread(Run) { IsBackground = true, Name = name };
        thread.Start();
    }

    /// <summary>Runs <paramref name="work"/> on the thread after what was posted before; its result or exception comes back in the task.</summary>
    public Task<T> RunAsync<T>(Func<T> work, CancellationToken cancellation)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            queue.Add(() =>
            {
                if (cancellation.IsCancellationRequested)
                {
                    done.TrySetCanceled(cancellation);
                    return;
                }
                try
                {
                    done.TrySetResult(work());
                }
                catch (Exception e)
                {
                    done.TrySetException(e);
                }
            }, CancellationToken.None);
        }
        catch (InvalidOperationException) // disposed: adding was completed
        {
            done.TrySetException(new ObjectDisposedException(thread.Name));
        }
        return done.Task;
    }

    void Run()
    {
        foreach (var work in queue.GetConsumingEnumerable()) work();
    }

    /// <summary>Runs what was posted, then ends the thread.</summary>
    public void Dispose()
    {
        if (queue.IsAddingCompleted) return;
        queue.CompleteAdding();
        if (Thread.CurrentThread != thread) thread.Join();
    }
}
