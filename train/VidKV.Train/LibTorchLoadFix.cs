using System.Buffers.Binary;
using System.Text;

namespace VidKV.Train;

/// <summary>
/// Lets TorchSharp-cpu 0.107.0 load on systems whose libstdc++ predates GCC 13 (Debian 12's stops at GLIBCXX_3.4.30).
/// Its <c>libLibTorchSharp.so</c> asks for <c>GLIBCXX_3.4.32</c> for one symbol, <c>std::ios_base_library_init()</c>,
/// which GCC 13's <c>&lt;iostream&gt;</c> only names (an <c>.globl</c> with no relocation: nothing calls it) so that a
/// program linked against the newer library cannot start with an older one. The dynamic loader refuses the whole
/// library over that version need unless the need is marked weak (<c>VER_FLG_WEAK</c> in its <c>Elf64_Vernaux</c>),
/// which this does to the copy in the program's own folder, before TorchSharp first loads it. The facts are in
/// ../shared/notes/torchsharp-on-debian12.md; marking the need weak alone was enough here (no stand-in library): the
/// loader then only looks symbols up through relocations, and there is none for that one.
/// </summary>
public static class LibTorchLoadFix
{
    const string Library = "libLibTorchSharp.so";
    const string Version = "GLIBCXX_3.4.32";
    const ushort VerFlagWeak = 0x2;

    /// <summary>
    /// Patches <c>runtimes/linux-x64/native/libLibTorchSharp.so</c> under <paramref name="directory"/> (the program's
    /// folder by default) when this Linux system's libstdc++ lacks <c>GLIBCXX_3.4.32</c>; nothing elsewhere, and nothing
    /// when already patched. Returns whether the file was changed.
    /// </summary>
    public static bool Apply(string? directory = null)
    {
        if (!OperatingSystem.IsLinux()) return false;
        string path = Path.Combine(directory ?? AppContext.BaseDirectory, "runtimes", "linux-x64", "native", Library);
        if (!File.Exists(path)) return false;
        if (SystemHasVersion()) return false;
        byte[] elf = File.ReadAllBytes(path);
        if (!SetVersionNeedWeak(elf, Version, weak: true)) return false;
        string temporary = path + ".patching";
        File.WriteAllBytes(temporary, elf);
        File.Move(temporary, path, overwrite: true);
        return true;
    }

    /// <summary>Whether a libstdc++ the loader would pick defines <see cref="Version"/> (looked for as text in the file).</summary>
    static bool SystemHasVersion()
    {
        string[] candidates = ["/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6"];
        string? found = candidates.FirstOrDefault(File.Exists);
        if (found == null) return false; // cannot tell: patching is harmless (a weak need is still checked when present)
        return File.ReadAllBytes(found).AsSpan().IndexOf(Encoding.ASCII.GetBytes(Version + "\0")) >= 0;
    }

    /// <summary>
    /// Sets (or with <paramref name="weak"/> false, clears) <c>VER_FLG_WEAK</c> on the <c>.gnu.version_r</c> entry naming
    /// <paramref name="version"/> in a 64-bit little-endian ELF image; returns whether a byte changed (false when the
    /// flag was already so, or no entry names that version). Walks the section headers to SHT_GNU_verneed and its
    /// linked string table.
    /// </summary>
    internal static bool SetVersionNeedWeak(byte[] elf, string version, bool weak)
    {
        var span = elf.AsSpan();
        if (elf.Length < 64 || !span[..4].SequenceEqual("\u007fELF"u8) || elf[4] != 2 || elf[5] != 1)
            throw new InvalidDataException("not a 64-bit little-endian ELF file");
        long sectionOffset = BinaryPrimitives.ReadInt64LittleEndian(span[0x28..]);
        int sectionSize = BinaryPrimitives.ReadUInt16LittleEndian(span[0x3A..]), sectionCount = BinaryPrimitives.ReadUInt16LittleEndian(span[0x3C..]);
        const uint ShtGnuVerneed = 0x6ffffffe;
        for (int i = 0; i < sectionCount; i++)
        {
            var header = span.Slice((int)(sectionOffset + (long)i * sectionSize), sectionSize);
            if (BinaryPrimitives.ReadUInt32LittleEndian(header[4..]) != ShtGnuVerneed) continue;
            long offset = BinaryPrimitives.ReadInt64LittleEndian(header[0x18..]);
            int link = BinaryPrimitives.ReadInt32LittleEndian(header[0x28..]);
            var strings = span.Slice((int)(sectionOffset + (long)link * sectionSize), sectionSize);
            long stringsOffset = BinaryPrimitives.ReadInt64LittleEndian(strings[0x18..]);
            // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32.
            for (long need = offset; ; )
            {
                int count = BinaryPrimitives.ReadUInt16LittleEndian(span[(int)(need + 2)..]);
                long aux = need + BinaryPrimitives.ReadUInt32LittleEndian(span[(int)(need + 8)..]);
                for (int k = 0; k < count; k++)
                {
                    // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32.
                    long name = stringsOffset + BinaryPrimitives.ReadUInt32LittleEndian(span[(int)(aux + 8)..]);
                    if (NameAt(span, name) == version)
                    {
                        var flags = span[(int)(aux + 4)..];
                        ushort value = BinaryPrimitives.ReadUInt16LittleEndian(flags);
                        ushort wanted = weak ? (ushort)(value | VerFlagWeak) : (ushort)(value & ~VerFlagWeak);
                        if (wanted == value) return false;
                        BinaryPrimitives.WriteUInt16LittleEndian(flags, wanted);
                        return true;
                    }
                    aux += BinaryPrimitives.ReadUInt32LittleEndian(span[(int)(aux + 12)..]);
                }
                uint next = BinaryPrimitives.ReadUInt32LittleEndian(span[(int)(need + 12)..]);
                if (next == 0) break;
                need += next;
            }
        }
        return false;
    }

    static string NameAt(ReadOnlySpan<byte> elf, long offset)
    {
        var rest = elf[(int)offset..];
        return Encoding.ASCII.GetString(rest[..rest.IndexOf((byte)0)]);
    }
}
