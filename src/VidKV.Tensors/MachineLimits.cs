using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace VidKV.Tensors;

/// <summary>
/// What this machine can do at most, measured on the worker pool: memory read bandwidth (decode reads every weight
/// once per token, so bandwidth ÷ bytes per token bounds tokens/s) and f32 fused multiply-add throughput (prefill's
/// matrix products are compute-bound, so FLOP/s ÷ FLOPs per token bounds it). The roofline model of Williams,
/// Waterman and Patterson (CACM 2009). Each figure is the median of several timed passes.
/// </summary>
internal static unsafe class MachineLimits
{
    /// <summary>
    /// The kernel paths this process runs (ggml's system_info): the widest vector ISA and which emitted kernels are in
    /// use, e.g. "AVX-512BW; emitted: vpdpbusd vdpbf16ps vcvtph2ps".
    /// </summary>
    public static string KernelSet
    {
        get
        {
            string isa = System.Runtime.Intrinsics.X86.Avx512BW.IsSupported ? "AVX-512BW"
                : System.Runtime.Intrinsics.X86.Avx2.IsSupported ? "AVX2" : Vector128.IsHardwareAccelerated ? "128-bit SIMD" : "scalar";
            var emitted = new List<string>();
            if (VnniTiles.IsSupported) emitted.Add("vpdpbusd");
            if (Bf16Tiles.Handles(2)) emitted.Add("vdpbf16ps");
            if (F16Rows.Handles(64)) emitted.Add("vcvtph2ps");
            return emitted.Count == 0 ? isa : $"{isa}; emitted: {string.Join(' ', emitted)}";
        }
    }

    /// <summary>
    /// The processor's name as the system reports it (<c>model name</c> in /proc/cpuinfo on Linux), else the
    /// architecture and core count; for benchmark reports.
    /// </summary>
    public static string CpuName
    {
        get
        {
            try
            {
                foreach (string line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal) && line.IndexOf(':') is int colon and > 0)
                        return line[(colon + 1)..].Trim();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            return $"{RuntimeInformation.ProcessArchitecture}, {Environment.ProcessorCount} logical processors";
        }
    }

    /// <summary>
    /// Both limits for the pool's thread count. The bandwidth buffer is freed again and, on Linux, the process's peak
    /// resident size is reset (<c>/proc/self/clear_refs</c>, "5") so the benchmark's peak RSS does not include it.
    /// </summary>
    public static (double ReadBytesPerSecond, double FlopsPerSecond) Measure(WorkerPool pool)
    {
        var limits = (ReadBandwidth(pool), FmaThroughput(pool));
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or DirectoryNotFoundException) { }
        return limits;
    }

    /// <summary>Read bandwidth in bytes per second: every thread sums its share of a buffer far larger than the caches.</summary>
    public static double ReadBandwidth(WorkerPool pool, long bufferBytes = 512L << 20, int passes = 7)
    {
        bufferBytes &= ~4095L;
        byte* buffer = (byte*)NativeMemory.AlignedAlloc((nuint)bufferBytes, 4096);
        try
        {
            for (long i = 0; i < bufferBytes; i += 4096) buffer[i] = (byte)i; // fault every page in before timing
            var job = new ReadJob { Buffer = buffer, Bytes = bufferBytes };
            var rates = new double[passes];
            pool.Run(&Read, &job); // warm-up
            for (int p = 0; p < passes; p++)
            {
                long start = Stopwatch.GetTimestamp();
                pool.Run(&Read, &job);
                rates[p] = bufferBytes / Stopwatch.GetElapsedTime(start).TotalSeconds;
            }
            return Median(rates);
        }
        finally { NativeMemory.AlignedFree(buffer); }
    }

    /// <summary>f32 FLOP/s of fused multiply-adds (2 FLOPs each) on registers only, every thread of the pool busy.</summary>
    public static double FmaThroughput(WorkerPool pool, long iterations = 20_000_000, int passes = 5)
    {
        var job = new FmaJob { Iterations = iterations };
        var rates = new double[passes];
        pool.Run(&Fma, &job); // warm-up (and JIT)
        for (int p = 0; p < passes; p++)
        {
            long start = Stopwatch.GetTimestamp();
            pool.Run(&Fma, &job);
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            rates[p] = (double)iterations * FmaChains * LanesPerFma * 2 * pool.ThreadCount / seconds;
        }
        return Median(rates);
    }

    static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    struct ReadJob
    {
        public byte* Buffer;
        public long Bytes;
        public long Sink;
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static void Read(void* context, int thread, int threads)
    {
        ref ReadJob job = ref *(ReadJob*)context;
        long lines = job.Bytes / 256;
        long start = lines * thread / threads * 256, end = lines * (thread + 1) / threads * 256;
        var a0 = Vector256<long>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        for (long i = start; i < end; i += 256)
        {
            byte* p = job.Buffer + i;
            a0 += Vector256.Load((long*)p) + Vector256.Load((long*)(p + 32));
            a1 += Vector256.Load((long*)(p + 64)) + Vector256.Load((long*)(p + 96));
            a2 += Vector256.Load((long*)(p + 128)) + Vector256.Load((long*)(p + 160));
            a3 += Vector256.Load((long*)(p + 192)) + Vector256.Load((long*)(p + 224));
        }
        Interlocked.Add(ref job.Sink, Vector256.Sum(a0 + a1 + a2 + a3)); // keeps the loads alive
    }

    const int FmaChains = 12;
    static int LanesPerFma => Vector512.IsHardwareAccelerated ? 16 : 8;

    struct FmaJob
    {
        public long Iterations;
        public float Sink;
    }

    /// <summary>Twelve independent accumulator chains, enough to hide the FMA latency on current cores.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static void Fma(void* context, int thread, int threads)
    {
        ref FmaJob job = ref *(FmaJob*)context;
        float result = Vector512.IsHardwareAccelerated ? Fma512(job.Iterations) : Fma256(job.Iterations);
        if (result == 12345.678f) job.Sink = result;
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static float Fma512(long iterations)
    {
        var m = Vector512.Create(0.999999f);
        var c = Vector512.Create(1e-7f);
        var a0 = Vector512.Create(1f); var a1 = a0; var a2 = a0; var a3 = a0; var a4 = a0; var a5 = a0;
        var a6 = a0; var a7 = a0; var a8 = a0; var a9 = a0; var a10 = a0; var a11 = a0;
        for (long i = 0; i < iterations; i++)
        {
            a0 = Vector512.FusedMultiplyAdd(a0, m, c); a1 = Vector512.FusedMultiplyAdd(a1, m, c);
            a2 = Vector512.FusedMultiplyAdd(a2, m, c); a3 = Vector512.FusedMultiplyAdd(a3, m, c);
            a4 = Vector512.FusedMultiplyAdd(a4, m, c); a5 = Vector512.FusedMultiplyAdd(a5, m, c);
            a6 = Vector512.FusedMultiplyAdd(a6, m, c); a7 = Vector512.FusedMultiplyAdd(a7, m, c);
            a8 = Vector512.FusedMultiplyAdd(a8, m, c); a9 = Vector512.FusedMultiplyAdd(a9, m, c);
            a10 = Vector512.FusedMultiplyAdd(a10, m, c); a11 = Vector512.FusedMultiplyAdd(a11, m, c);
        }
        return Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static float Fma256(long iterations)
    {
        var m = Vector256.Create(0.999999f);
        var c = Vector256.Create(1e-7f);
        var a0 = Vector256.Create(1f); var a1 = a0; var a2 = a0; var a3 = a0; var a4 = a0; var a5 = a0;
        var a6 = a0; var a7 = a0; var a8 = a0; var a9 = a0; var a10 = a0; var a11 = a0;
        for (long i = 0; i < iterations; i++)
        {
            a0 = Vector256.FusedMultiplyAdd(a0, m, c); a1 = Vector256.FusedMultiplyAdd(a1, m, c);
            a2 = Vector256.FusedMultiplyAdd(a2, m, c); a3 = Vector256.FusedMultiplyAdd(a3, m, c);
            a4 = Vector256.FusedMultiplyAdd(a4, m, c); a5 = Vector256.FusedMultiplyAdd(a5, m, c);
            a6 = Vector256.FusedMultiplyAdd(a6, m, c); a7 = Vector256.FusedMultiplyAdd(a7, m, c);
            a8 = Vector256.FusedMultiplyAdd(a8, m, c); a9 = Vector256.FusedMultiplyAdd(a9, m, c);
            a10 = Vector256.FusedMultiplyAdd(a10, m, c); a11 = Vector256.FusedMultiplyAdd(a11, m, c);
        }
        return Vector256.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }
}
