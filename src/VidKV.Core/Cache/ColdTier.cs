using Microsoft.Win32.SafeHandles;

namespace VidKV.Cache;

/// <summary>
/// The cold tier: a file of fixed-size slots, one page of one KV head each (keys then values, contiguous), so a
/// recall is one positional read. The file is read and written with positional I/O (pread/pwrite) rather than a
/// writable memory map: a full disk then surfaces as an <see cref="IOException"/> on the write that hit it instead
/// of a SIGBUS, and cold pages do not count toward the process's resident memory. The file is deleted on dispose.
/// Reads can also be queued (<see cref="ReadAsync"/>) to one background thread, FreeKV's asynchronous recall: the
/// caller gets a ticket and waits on it only when it needs the page.
/// </summary>
public sealed unsafe class ColdTier : IDisposable
{
    readonly SafeFileHandle file;
    readonly Stack<long> free = new();
    long slots;

    // Background reads: one producer (the cache's thread) and one consumer (the reader) share a ring of requests without
    // a lock; ticket t is the t-th request (from 1). The reader sleeps on a semaphore only when the ring is empty.
    const int RingSize = 4096;
    readonly (int Slot, nint Destination)[] ring = new (int, nint)[RingSize];
    long submitted, completed;
    int readerSleeping;
    readonly SemaphoreSlim wake = new(0);
    Thread? reader;
    volatile bool stopping;
    readonly System.Collections.Concurrent.ConcurrentDictionary<long, string> failures = new();

    public ColdTier(string path, int slotBytes)
    {
        Path = path;
        SlotBytes = slotBytes;
        try
        {
            // A device (such as /dev/full in tests) is used as it is; a regular file is created and deleted on close.
            bool device = File.Exists(path) && (File.GetAttributes(path) & FileAttributes.Device) != 0 || path.StartsWith("/dev/", StringComparison.Ordinal);
            file = device ? File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite)
                : File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"cold tier '{path}': cannot create the file: {e.Message}", e);
        }
    }

    public string Path { get; }
    public int SlotBytes { get; }
    public long FileBytes => slots * SlotBytes;

    public int Allocate()
    {
        if (free.Count > 0) return (int)free.Pop();
        return (int)slots++;
    }

    public void Free(int slot) => free.Push(slot);

    public void Write(int slot, ReadOnlySpan<byte> data)
    {
        long offset = (long)slot * SlotBytes;
        try { RandomAccess.Write(file, data[..SlotBytes], offset); }
        catch (IOException e) { throw new IOException($"cold tier '{Path}': writing {SlotBytes} bytes at offset {offset} failed: {e.Message}", e); }
    }

    public void Read(int slot, Span<byte> data)
    {
        long offset = (long)slot * SlotBytes;
        int read = 0;
        while (read < SlotBytes)
        {
            int n = RandomAccess.Read(file, data[read..SlotBytes], offset + read);
            if (n == 0) throw new IOException($"cold tier '{Path}': slot {slot} at offset {offset} is past the end of the file");
            read += n;
        }
    }

    /// <summary>
    /// Queues a read of <paramref name="slot"/> into <paramref name="destination"/> (<see cref="SlotBytes"/> bytes that
    /// must stay valid until <see cref="Wait"/> returns for the ticket) and returns the ticket. One thread at a time.
    /// </summary>
    public long ReadAsync(int slot, byte* destination)
    {
        if (reader == null)
        {
            reader = new Thread(ReadLoop) { IsBackground = true, Name = "vidkv-cold-reader" };
            reader.Start();
        }
        long ticket = submitted + 1;
        if (ticket - Volatile.Read(ref completed) > RingSize) Wait(ticket - RingSize); // full: the oldest slot must be free
        ring[(ticket - 1) % RingSize] = (slot, (nint)destination);
        Volatile.Write(ref submitted, ticket);
        if (Interlocked.CompareExchange(ref readerSleeping, 0, 1) == 1) wake.Release();
        return ticket;
    }

    /// <summary>Returns once the read of <paramref name="ticket"/> is done; throws the read's <see cref="IOException"/> if it failed.</summary>
    public void Wait(long ticket)
    {
        var spin = new SpinWait();
        while (Volatile.Read(ref completed) < ticket) spin.SpinOnce();
        if (!failures.IsEmpty && failures.TryRemove(ticket, out var message)) throw new IOException(message);
    }

    void ReadLoop()
    {
        while (true)
        {
            long next = completed + 1;
            if (Volatile.Read(ref submitted) < next)
            {
                if (stopping) return;
                // Announce the sleep, then look again: a request queued in between either sees the flag or is seen here.
                Volatile.Write(ref readerSleeping, 1);
                Interlocked.MemoryBarrier();
                if (Volatile.Read(ref submitted) < next && !stopping) wake.Wait();
                else Volatile.Write(ref readerSleeping, 0);
                continue;
            }
            var (slot, destination) = ring[(next - 1) % RingSize];
            try { Read(slot, new Span<byte>((void*)destination, SlotBytes)); }
            catch (IOException e) { failures[next] = e.Message; }
            Volatile.Write(ref completed, next);
        }
    }

    /// <summary>Finishes queued reads, stops the reader thread and closes (deletes) the file.</summary>
    public void Dispose()
    {
        stopping = true;
        wake.Release();
        reader?.Join();
        wake.Dispose();
        file.Dispose();
    }
}
