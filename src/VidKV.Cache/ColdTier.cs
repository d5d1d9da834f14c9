using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace VidKV.Cache;

/// <summary>
/// The cold tier: a file of fixed-size slots, one page of one KV head each (keys then values, contiguous), so a page
/// of a head is one contiguous read. Writes are positional (pwrite), never through a writable memory map, so a full
/// disk surfaces as an <see cref="IOException"/> on the write that hit it instead of a SIGBUS. On Linux and macOS the
/// file is also mapped read-only (<see cref="SlotPointer"/>): attention reads a cold page where it lies in the page
/// cache, with no system call and no copy, and the kernel may drop those pages under memory pressure (they are file
/// pages, not the process's own memory; they do show in RSS while mapped). The mapping reserves
/// <see cref="MappedBytes"/> of address space up front (a shared read-only file mapping commits no memory), and only
/// slots already written are touched, never past the end of the file. Without a mapping (other systems, devices)
/// pages are copied back with pread: <see cref="Read"/>, or <see cref="ReadAsync"/> on one background thread
/// (FreeKV's asynchronous recall: the caller gets a ticket and waits on it only when it needs the page).
/// The file is deleted on dispose.
/// </summary>
internal sealed unsafe partial class ColdTier : IDisposable
{
    /// <summary>Address space reserved for the read-only mapping of the file: slots past it are read with pread.</summary>
    public const long MappedBytes = 1L << 40;
    byte* map;
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

    public ColdTier(string path, int slotBytes, bool mapped = true)
    {
        Path = path;
        SlotBytes = slotBytes;
        // A device (such as /dev/full in tests) is used as it is and never mapped; a regular file is created and deleted on close.
        bool device = File.Exists(path) && (File.GetAttributes(path) & FileAttributes.Device) != 0 || path.StartsWith("/dev/", StringComparison.Ordinal);
        try
        {
            file = device ? File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite)
                : File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"cold tier '{path}': cannot create the file: {e.Message}", e);
        }
        if (mapped && !device && (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()))
        {
            nint address = Mmap(0, unchecked((nuint)MappedBytes), ProtRead, MapShared, (int)file.DangerousGetHandle(), 0);
            if (address != -1) map = (byte*)address; // otherwise every read is a pread
        }
    }

    const int ProtRead = 1, MapShared = 1;

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int Munmap(nint address, nuint length);

    /// <summary>Whether slots can be read in place through the mapping.</summary>
    public bool IsMapped => map != null;

    /// <summary>
    /// The slot's bytes in the read-only mapping, valid until the slot is freed and rewritten or the tier is disposed;
    /// null without a mapping. Only for a slot that <see cref="Write"/> has filled (reading past the file's end through
    /// a mapping is a fatal signal, not an exception).
    /// </summary>
    public byte* SlotPointer(int slot)
    {
        long offset = (long)slot * SlotBytes;
        return map == null || offset + SlotBytes > MappedBytes ? null : map + offset;
    }

    public string Path { get; }
    public int SlotBytes { get; }
    public long FileBytes => slots * SlotBytes;
    /// <summary>Slots holding a page now (the file's length counts freed slots too, which are reused first).</summary>
    public int SlotsInUse => (int)slots - free.Count;

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
        if (map != null) Munmap((nint)map, unchecked((nuint)MappedBytes));
        map = null;
        file.Dispose();
    }
}
