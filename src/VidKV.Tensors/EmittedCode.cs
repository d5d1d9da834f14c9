using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Kernels emitted as x86-64 machine code at start-up (<see cref="X86Emitter"/>) for the instructions .NET 10 does not
/// expose on AVX-512 CPUs without AVX10 (Zen 4, Ice Lake, Sapphire Rapids): vpdpbusd (<see cref="VnniTiles"/>),
/// vdpbf16ps (<see cref="Bf16Tiles"/>) and vcvtph2ps (<see cref="F16Rows"/>). They go into fresh pages that are made
/// read+execute before use, and are called through unmanaged function pointers without a GC transition (they run for
/// microseconds, touch no managed object and call nothing). Linux x86-64 only (System V calling convention, mmap);
/// <c>VIDKV_EMIT=0</c> turns them all off, and the managed kernels run instead (the VNNI tiles are tested bit for bit
/// against the AVX-512BW ones, the f16 rows and bf16 tiles against the reference their products are held to). To read
/// what a kernel's <c>Emit</c> returns, write the bytes to a file and disassemble it with
/// <c>objdump -D -b binary -mi386:x86-64</c>.
/// </summary>
internal static unsafe partial class EmittedCode
{
    /// <summary>Whether emitted kernels may run here: Linux x86-64 with AVX-512BW, not switched off.</summary>
    public static bool Allowed { get; } =
        OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64 && Avx512BW.IsSupported
        && Environment.GetEnvironmentVariable("VIDKV_EMIT") is not ("0" or "false");

    /// <summary>
    /// Copies <paramref name="kernels"/> into one fresh mapping (each at a 64-byte boundary), makes it read+execute and
    /// returns their entry points, or null when no such mapping can be had. The mapping lives as long as the process,
    /// like any code.
    /// </summary>
    public static nint[]? Install(params byte[][] kernels)
    {
        int size = kernels.Sum(k => (k.Length + 63) / 64 * 64);
        nuint length = (nuint)((size + 4095) / 4096 * 4096);
        nint page = Mmap(0, length, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        if (page == -1) return null;
        var entries = new nint[kernels.Length];
        int at = 0;
        for (int i = 0; i < kernels.Length; i++)
        {
            entries[i] = page + at;
            kernels[i].CopyTo(new Span<byte>((byte*)page + at, kernels[i].Length));
            at += (kernels[i].Length + 63) / 64 * 64;
        }
        if (Mprotect(page, length, ProtRead | ProtExec) != 0)
        {
            _ = Munmap(page, length);
            return null;
        }
        return entries;
    }

    const int ProtRead = 1, ProtWrite = 2, ProtExec = 4, MapPrivate = 2, MapAnonymous = 0x20;

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    private static partial int Mprotect(nint address, nuint length, int protection);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int Munmap(nint address, nuint length);
}
