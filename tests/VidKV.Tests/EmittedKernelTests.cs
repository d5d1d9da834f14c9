using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// Whether this machine can run an emitted kernel (<see cref="EmittedCode"/>), judged apart from the kernels' own
/// checks: the CPU's flags come from /proc/cpuinfo, not CPUID, so a kernel that a capable machine fails to install
/// fails its test instead of being skipped.
/// </summary>
static class EmittedKernelSupport
{
    static readonly Lazy<HashSet<string>> cpuFlags = new(() =>
    {
        const string cpuinfo = "/proc/cpuinfo";
        string? line = File.Exists(cpuinfo) ? File.ReadLines(cpuinfo).FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal)) : null;
        return line == null ? [] : [.. line[(line.IndexOf(':') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries)];
    });

    /// <summary>Why a kernel that needs the CPU flag <paramref name="cpuFlag"/> (as /proc/cpuinfo names it) cannot run here, or null when it must.</summary>
    public static string? WhyNot(string cpuFlag)
    {
        if (Environment.GetEnvironmentVariable("VIDKV_EMIT") is "0" or "false") return "VIDKV_EMIT=0 turns the emitted kernels off";
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return "emitted kernels run on Linux x86-64 only";
        if (!Avx512BW.IsSupported) return "emitted kernels need AVX-512BW, which this CPU lacks or the runtime has switched off (DOTNET_EnableAVX512=0)";
        if (!cpuFlags.Value.Contains(cpuFlag)) return $"this CPU has no {cpuFlag}";
        return null;
    }
}

/// <summary>A theory over an emitted kernel: reported as skipped, with the reason, where this machine cannot run it.</summary>
sealed class EmittedKernelTheoryAttribute : TheoryAttribute
{
    public EmittedKernelTheoryAttribute(string cpuFlag) => Skip = EmittedKernelSupport.WhyNot(cpuFlag);
}

/// <summary>A fact about an emitted kernel: reported as skipped, with the reason, where this machine cannot run it.</summary>
sealed class EmittedKernelFactAttribute : FactAttribute
{
    public EmittedKernelFactAttribute(string cpuFlag) => Skip = EmittedKernelSupport.WhyNot(cpuFlag);
}

/// <summary>
/// Where the CPU has an emitted kernel's instruction and emission is on, the kernel is installed and the products use
/// it, so <see cref="KernelTests.MatMulMatchesReference"/> holds the emitted kernel, not the managed fallback, to the
/// reference; elsewhere these are reported as skipped with the reason.
/// </summary>
public class EmittedKernelTests
{
    [EmittedKernelFact("avx512_vnni")]
    public void VnniTilesRunWhereTheCpuHasAvx512Vnni()
    {
        Assert.True(VnniTiles.IsSupported, "the CPU has AVX512_VNNI but the vpdpbusd kernels were not installed");
        Assert.Contains("vpdpbusd", MachineLimits.KernelSet);
        Assert.True(IntegerTiles.Supports(GgmlType.Q6_K)); // Q6_K prefill runs on integer tiles only with VNNI
    }

    [EmittedKernelFact("avx512_bf16")]
    public unsafe void Bf16TilesRunWhereTheCpuHasAvx512Bf16()
    {
        Assert.True(Bf16Tiles.Handles(2), "the CPU has AVX512_BF16 but the vdpbf16ps kernel was not installed");
        Assert.Contains("vdpbf16ps", MachineLimits.KernelSet);
        var bytes = new byte[32 * 64 * 2];
        fixed (byte* p = bytes)
        {
            var w = new WeightMatrix("w", GgmlType.BF16, 32, 64, p);
            Assert.True(w.RoundsActivationsToBF16(8)); // prefill runs on the kernel
            Assert.False(w.RoundsActivationsToBF16(1)); // decode keeps f32 activations
        }
    }

    /// <summary>vcvtph2ps on zmm needs only AVX-512F, which every machine that emits kernels has.</summary>
    [EmittedKernelFact("avx512f")]
    public void F16RowsRunWhereKernelsAreEmitted()
    {
        Assert.True(F16Rows.Handles(64), "emitted kernels are on but the vcvtph2ps kernel was not installed");
        Assert.False(F16Rows.Handles(96)); // widths that are not whole 64s take the managed kernel
        Assert.Contains("vcvtph2ps", MachineLimits.KernelSet);
    }
}

/// <summary>
/// The emitter's memory operands in every displacement form it chooses — none (and rbp/r13, which need one), disp8,
/// EVEX's compressed disp8·N for a whole vector, a broadcast element, a half vector and a scalar, disp32 where the
/// displacement is not a multiple of N or out of range, negative ones, an index — run as code and move the right data.
/// </summary>
public class X86EmitterTests
{
    [EmittedKernelFact("avx512_vnni")]
    public unsafe void EveryDisplacementFormAddressesItsBytes()
    {
        // f(rdi = source + 1024 (so negative displacements stay inside), rsi = destination).
        var e = new X86Emitter();
        foreach (int r in new[] { X86Emitter.Rbp, X86Emitter.R12, X86Emitter.R13 }) e.Push(r);
        e.Mov(X86Emitter.Rbp, X86Emitter.Rdi);
        e.Mov(X86Emitter.R12, X86Emitter.Rdi);
        e.Mov(X86Emitter.R13, X86Emitter.Rdi);
        e.Lea(X86Emitter.R10, new(X86Emitter.Rdi, Disp: -1024)); // r10 = source, r11 = 8 (an index)
        e.Mov(X86Emitter.R11, X86Emitter.R10);
        e.Neg(X86Emitter.R11);
        e.Lea(X86Emitter.R11, new(X86Emitter.R11, X86Emitter.Rdi, Disp: -1016));
        (int Base, int Index, int Scale, int Disp)[] scalars =
        [
            (X86Emitter.Rdi, -1, 1, 0), (X86Emitter.Rbp, -1, 1, 0), (X86Emitter.R13, -1, 1, 0), (X86Emitter.R12, -1, 1, 8),
            (X86Emitter.Rdi, -1, 1, 200), (X86Emitter.Rdi, -1, 1, -16), (X86Emitter.Rdi, -1, 1, -1024), (X86Emitter.Rdi, X86Emitter.R11, 4, 24),
        ];
        for (int i = 0; i < scalars.Length; i++)
        {
            var (b, x, s, d) = scalars[i];
            e.Load(X86Emitter.Rax, new(b, x, s, d));
            e.Store(new(X86Emitter.Rsi, Disp: 8 * i), X86Emitter.Rax);
        }
        int[] vectors = [0, 128, 100, -192, 64 * 127, 64 * 128]; // none, disp8·64 (2, −3, 127), disp32 (not ·64, 128·64)
        for (int i = 0; i < vectors.Length; i++)
        {
            e.VLoad(16 + i, new(X86Emitter.Rdi, Disp: vectors[i]));
            e.VStore(new(X86Emitter.Rsi, Disp: 128 + 64 * i), 16 + i);
        }
        e.Vcvtph2ps(3, new(X86Emitter.Rdi, Disp: 96)); // 16 halves at source + 1120 (disp8·32)
        e.VStore(new(X86Emitter.Rsi, Disp: 512), 3);
        e.VZero(4);
        e.VLoad(5, new(X86Emitter.Rdi, Disp: 0)); // unsigned bytes of source + 1024
        e.VBroadcast32(6, new(X86Emitter.Rdi, Disp: 28)); // the word at source + 1052 (disp8·4) to every lane
        e.Vpdpbusd(4, 5, 6);
        e.VStore(new(X86Emitter.Rsi, Disp: 576), 4);
        e.VStoreScalar(new(X86Emitter.Rsi, Disp: 644), 16); // lane 0 of the first vector at destination + 644 (disp8·4)
        e.Vzeroupper();
        foreach (int r in new[] { X86Emitter.R13, X86Emitter.R12, X86Emitter.Rbp }) e.Pop(r);
        e.Ret();
        var entry = EmittedCode.Install(e.ToArray());
        Assert.NotNull(entry);

        var source = new byte[16384];
        new Random(5).NextBytes(source);
        var destination = new byte[1024];
        fixed (byte* ps = source, pd = destination)
            ((delegate* unmanaged<byte*, byte*, void>)entry[0])(ps + 1024, pd);

        for (int i = 0; i < scalars.Length; i++)
        {
            var (_, x, s, d) = scalars[i];
            int at = 1024 + d + (x < 0 ? 0 : 8 * s);
            Assert.True(BitConverter.ToInt64(source, at) == BitConverter.ToInt64(destination, 8 * i), $"load {i}: [base{(x < 0 ? "" : $" + index·{s}")} {d:+0;-0}]");
        }
        for (int i = 0; i < vectors.Length; i++)
            Assert.True(source.AsSpan(1024 + vectors[i], 64).SequenceEqual(destination.AsSpan(128 + 64 * i, 64)), $"vector load at {vectors[i]:+0;-0}");
        for (int j = 0; j < 16; j++)
            Assert.Equal((float)BitConverter.ToHalf(source, 1120 + 2 * j), BitConverter.ToSingle(destination, 512 + 4 * j));
        for (int lane = 0; lane < 16; lane++)
        {
            int want = 0;
            for (int k = 0; k < 4; k++) want += source[1024 + 4 * lane + k] * (sbyte)source[1052 + k];
            Assert.Equal(want, BitConverter.ToInt32(destination, 576 + 4 * lane));
        }
        Assert.True(source.AsSpan(1024, 4).SequenceEqual(destination.AsSpan(644, 4)), "vmovss to [rsi + 644]");
    }
}
