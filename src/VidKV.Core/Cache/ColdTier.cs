using Microsoft.Win32.SafeHandles;

namespace VidKV.Cache;

/// <summary>
/// The cold tier: a file of fixed-size slots, one page of one KV head each (keys then values, contiguous), so a
/// recall is one positional read. The file is read and written with positional I/O (pread/pwrite) rather than a
/// writable memory map: a full disk then surfaces as an <see cref="IOException"/> on the write that hit it instead
/// of a SIGBUS, and cold pages do not count toward the process's resident memory. The file is deleted on dispose.
/// </summary>
public sealed class ColdTier : IDisposable
{
    readonly SafeFileHandle file;
    readonly Stack<long> free = new();
    long slots;

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

    public void Dispose() => file.Dispose();
}
