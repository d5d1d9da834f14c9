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
