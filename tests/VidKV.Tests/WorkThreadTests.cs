using VidKV.Engine;

namespace VidKV.Tests;

/// <summary><see cref="WorkThread"/>: the vision tower's one thread.</summary>
public class WorkThreadTests
{
    /// <summary>
    /// Work posted from many threads runs on one thread, never the poster's, in the order posted from each; a failure
    /// comes back in its own task and the thread goes on; work cancelled before it starts does not run; after
    /// <see cref="WorkThread.Dispose"/> (which runs what was posted first) posting fails with ObjectDisposedException.
    /// </summary>
    [Fact]
    public async Task WorkRunsInOrderOnOneThread()
    {
        var thread = new WorkThread("test");
        var posted = Enumerable.Range(0, 8).Select(p => Task.Run(() =>
            Enumerable.Range(0, 50).Select(i => thread.RunAsync(() => (Poster: p, Index: i, Thread: Environment.CurrentManagedThreadId), CancellationToken.None)).ToArray())).ToArray();
        var results = (await Task.WhenAll(posted)).SelectMany(tasks => tasks).ToArray();
        var done = await Task.WhenAll(results);
        Assert.Single(done.Select(r => r.Thread).Distinct());
        Assert.NotEqual(Environment.CurrentManagedThreadId, done[0].Thread);
        foreach (var group in done.GroupBy(r => r.Poster)) Assert.Equal(Enumerable.Range(0, 50), group.Select(r => r.Index));

        var failed = thread.RunAsync<int>(() => throw new InvalidDataException("bad frame"), CancellationToken.None);
        Assert.Equal("bad frame", (await Assert.ThrowsAsync<InvalidDataException>(() => failed)).Message);
        Assert.Equal(7, await thread.RunAsync(() => 7, CancellationToken.None));

        using var cancelled = new CancellationTokenSource();
        var gate = new ManualResetEventSlim();
        var blocker = thread.RunAsync(() => gate.Wait(TimeSpan.FromSeconds(30)), CancellationToken.None);
        bool ran = false;
        var skipped = thread.RunAsync(() => ran = true, cancelled.Token);
        cancelled.Cancel();
        gate.Set();
        await blocker;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => skipped);
        Assert.False(ran);

        var last = thread.RunAsync(() => 1, CancellationToken.None);
        thread.Dispose();
        Assert.Equal(1, await last);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => thread.RunAsync(() => 2, CancellationToken.None));
    }
}
