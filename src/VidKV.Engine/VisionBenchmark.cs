using System.Diagnostics;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Engine;

/// <summary>
/// One row of <c>vidkv bench vision</c>: an encoder + projector pass over one entry (<c>entry</c>: a frame of the tower's
/// size), or the whole image pipeline (<c>image</c>: preprocessing and every entry of a file), repeated.
/// </summary>
internal sealed record VisionBenchmarkResult(string Model, string Type, string Test, int Width, int Height, int Entries, int Tokens,
    int Threads, int Repetitions, double[] SamplesMs, double FlopsPerPass)
{
    /// <summary>Median wall time of one repetition.</summary>
    public double MsMedian => Median(SamplesMs);
    /// <summary>Repetitions per second at the median: frames per second for <c>entry</c>, images per second for <c>image</c>.</summary>
    public double PerSecond => 1000 / MsMedian;
    /// <summary>FLOPs per second at the median.</summary>
    public double FlopsPerSecond => FlopsPerPass / (MsMedian / 1000);
    /// <summary>This machine's measured f32 FMA throughput (with --roofline).</summary>
    public double? PeakFlopsPerSecond { get; init; }
    /// <summary><see cref="FlopsPerSecond"/> over the peak: the fraction of the roofline reached.</summary>
    public double? FractionOfPeak => PeakFlopsPerSecond is double p && p > 0 ? FlopsPerSecond / p : null;
    /// <summary>Milliseconds per repetition in each phase of the tower (weight products by kind, attention, the rest).</summary>
    public IReadOnlyDictionary<string, double>? MsPerPhase { get; init; }
    public long PeakRssBytes { get; init; }
    public string Kernels { get; init; } = MachineLimits.KernelSet;

    static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}

/// <summary>
/// Times the vision encoder: <c>entry</c> = one pass over a deterministic random entry of the tower's size (what a
/// video frame costs: SigLIP/CLIP towers take their square; Qwen-VL a square of that side), and with an image
/// <c>image</c> = decode-free preprocessing plus every entry the preprocessor cuts (what llama-mtmd-cli does for it).
/// A warm-up (two passes and a second at least), then the repetitions; FLOPs from <see cref="VisionModel.FlopsPerEntry"/>.
/// </summary>
internal static class VisionBenchmark
{
    public static IEnumerable<VisionBenchmarkResult> Run(VisionModel model, string name, RgbImage? image, IReadOnlyList<int> threadCounts,
        int repetitions, bool roofline, Action<string>? progress = null)
    {
        var c = model.Config;
        int size = c.ImageSize;
        var random = new Random(77);
        var entry = new float[3 * size * size];
        for (int i = 0; i < entry.Length; i++) entry[i] = (float)(random.NextDouble() * 4 - 2);
        var output = new float[model.TokensFor(size, size) * model.OutputLength];
        var buffers = new Activations();
        string type = GgmlTypes.Name(model.WeightType);
        foreach (int threads in threadCounts)
        {
            WorkerPool.SetSharedThreadCount(threads);
            double? peak = null;
            if (roofline)
            {
                progress?.Invoke($"measuring f32 FMA throughput ({threads} threads)");
                peak = MachineLimits.FmaThroughput(WorkerPool.Shared);
            }

            progress?.Invoke($"entry {size}×{size}, {threads} threads");
            var profile = new ForwardProfile();
            WarmUp(() => model.Encode(entry, size, size, output, buffers));
            var samples = new double[repetitions];
            for (int r = 0; r < repetitions; r++)
            {
                long start = Stopwatch.GetTimestamp();
                model.Encode(entry, size, size, output, buffers, profile);
                samples[r] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                profile.Times.Tokens++;
            }
            yield return new VisionBenchmarkResult(name, type, "entry", size, size, 1, model.TokensFor(size, size), threads, repetitions, samples, model.FlopsPerEntry(size, size))
            {
                PeakFlopsPerSecond = peak,
                MsPerPhase = profile.Times.MillisecondsPerToken(default),
                PeakRssBytes = Process.GetCurrentProcess().PeakWorkingSet64,
            };

            if (image == null) continue;
            progress?.Invoke($"image {image.Width}×{image.Height}, {threads} threads");
            var pre = ImagePreprocessor.Preprocess(c, image);
            double flops = pre.Entries.Sum(e => model.FlopsPerEntry(e.Width, e.Height));
            int tokens = pre.Entries.Sum(e => model.TokensFor(e.Width, e.Height));
            WarmUp(() => EncodeImage(model, image, buffers));
            var imageSamples = new double[repetitions];
            for (int r = 0; r < repetitions; r++)
            {
                long start = Stopwatch.GetTimestamp();
                EncodeImage(model, image, buffers);
                imageSamples[r] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            }
            yield return new VisionBenchmarkResult(name, type, "image", image.Width, image.Height, pre.Entries.Count, tokens, threads, repetitions, imageSamples, flops)
            {
                PeakFlopsPerSecond = peak,
                PeakRssBytes = Process.GetCurrentProcess().PeakWorkingSet64,
            };
        }
    }

    /// <summary>Runs the work at least twice and for at least a second, so the JIT's later tiers are in place before timing.</summary>
    static void WarmUp(Action work)
    {
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < 2 || Stopwatch.GetElapsedTime(start).TotalSeconds < 1; i++) work();
    }

    static void EncodeImage(VisionModel model, RgbImage image, Activations buffers)
    {
        foreach (var entry in ImagePreprocessor.Preprocess(model.Config, image).Entries) model.EncodeEntry(entry, buffers);
    }
}
