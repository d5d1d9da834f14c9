using System.CommandLine;
using VidKV.Cache;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Cli;

/// <summary>Options shared by several commands, with llama.cpp's names.</summary>
static class CommonOptions
{
    public static Option<string?> Model(bool required, string absent = "a small RANDOM-weight model VidKV writes itself") => new("--model", "-m")
    {
        Description = required ? "Path of a GGUF model file." : $"Path of a GGUF model file (default: {absent}).",
        Required = required,
    };

    /// <summary>What a vision command without <c>-m</c> runs (<see cref="BuiltInModel"/>).</summary>
    public const string BuiltInModelText = "the built-in model, a tiny VLM trained here on the generated world (models/world-tiny)";

    public static Option<int> ContextSize(int fallback) => new("--ctx-size", "-c")
    {
        Description = $"Context length in tokens (default {fallback}; 0 = the model's own).",
        DefaultValueFactory = _ => fallback,
    };

    public static Option<string> CacheType(string name, string alias, string what)
    {
        var option = new Option<string>(name, alias) { Description = $"KV cache type for {what}: f16 (default, as llama.cpp) or f32 (exact).", DefaultValueFactory = _ => "f16" };
        option.AcceptOnlyFromAmong("f16", "f32");
        return option;
    }

    public static Option<string> CacheTypeK() => CacheType("--cache-type-k", "-ctk", "keys");
    public static Option<string> CacheTypeV() => CacheType("--cache-type-v", "-ctv", "values");

    public static GgmlType ParseCacheType(string value) => value == "f32" ? GgmlType.F32 : GgmlType.F16;

    public static Option<bool> VisionExact() => new("--vision-exact")
    {
        Description = "Run the vision tower at llama.cpp's non-flash precision: f32 attention, F16 matrices with f32 activations (default: a tower stored in 16 bits or fewer "
            + "attends in bf16 and multiplies its F16 matrices in bf16, 1.5–2× faster where the CPU has AVX512_BF16; an F32 tower is exact either way).",
    };

    public static Option<int> Threads() => new("--threads", "-t")
    {
        Description = "Threads for the kernels (default: one per core, or VIDKV_THREADS).",
        DefaultValueFactory = _ => WorkerPool.DefaultThreadCount(),
    };

    public static Option<string?> ColdDir() => new("--cold-dir")
    {
        Description = "Folder for the KV cold-tier file: pages a policy moves out of RAM (resv, livevlm, freekv) go there (default: every page stays in RAM).",
    };

    public static Option<double> ColdMax() => new("--cold-max")
    {
        Description = "Most MiB the cold file holds with --cold-dir; when it is full the pages that went cold first are dropped for good (0 = no limit).",
        DefaultValueFactory = _ => 0,
    };

    public static Option<double?> UnchangedThreshold() => new("--unchanged-threshold")
    {
        Description = "Skip the vision encoder for a frame whose pixels (as the encoder takes them) differ from the last encoded frame's by at most this mean absolute difference, in levels 0–255: it reuses that frame's tokens at its own time (default: every frame is encoded; 0 reuses only identical frames).",
    };

    /// <summary>The threshold of <see cref="UnchangedThreshold"/>, checked.</summary>
    public static double? CheckUnchangedThreshold(double? threshold) =>
        threshold is double t && !(t >= 0 && t <= 255) ? throw new ArgumentException($"--unchanged-threshold must be in 0..255 (mean levels per byte), not {t}") : threshold;

    /// <summary>The help of <c>--positions</c>: what original and compact positions are.</summary>
    public const string PositionsHelp = "original (default): the rows a KV policy keeps stay at their RoPE positions and new rows go on at the stream's; "
        + "compact: after evictions the kept rows take consecutive positions (0..K-1 when every head keeps the same rows) and new rows go on at K, "
        + "their stored keys re-rotated, as StreamingLLM assigns positions within its cache. Only rows a policy evicts count (a retriever such as freekv "
        + "reads a subset without evicting); M-RoPE models (Qwen2-VL) take original only.";

    public static Option<string> Positions() => new("--positions")
    {
        Description = "RoPE positions of the kept KV rows: " + PositionsHelp,
        DefaultValueFactory = _ => "original",
    };

    /// <summary>The value of <see cref="Positions"/>; a bad one is an error naming the option.</summary>
    public static KvPositions ParsePositions(string? value)
    {
        try { return KvCacheConfig.ParsePositions(value ?? "original"); }
        catch (KvConfigException e) { throw new ArgumentException($"--{e.Message}"); }
    }

    /// <summary><paramref name="kv"/> with a cold file in <paramref name="dir"/> (one per process) of at most <paramref name="maxMib"/> MiB.</summary>
    public static KvCacheConfig WithColdTier(KvCacheConfig kv, string? dir, double maxMib)
    {
        if (maxMib < 0) throw new ArgumentException($"--cold-max must be ≥ 0 MiB, not {maxMib}");
        if (dir == null) return maxMib > 0 ? throw new ArgumentException("--cold-max needs --cold-dir (where the cold file goes)") : kv;
        if (!Directory.Exists(dir)) throw new ArgumentException($"--cold-dir '{dir}': no such folder");
        return kv with { ColdPath = Path.Combine(dir, $"vidkv-cold-{Environment.ProcessId}.bin"), MaxColdBytes = (long)(maxMib * 1048576) };
    }

    /// <summary>Where the built-in random-weight defaults are written: <c>$VIDKV_CACHE</c>, else <c>~/.cache/vidkv</c>.</summary>
    public static string CacheFolder => Environment.GetEnvironmentVariable("VIDKV_CACHE") is { Length: > 0 } c ? c
        : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "vidkv");

    /// <summary>
    /// The model to use when none is given: a tiny random-weight Qwen2-shaped model written once to <see cref="CacheFolder"/>.
    /// </summary>
    public static string DefaultModelPath(TextWriter log)
    {
        string path = Path.Combine(CacheFolder, "random-tiny-q8_0.gguf");
        log.WriteLine("note: no -m given, so this runs a tiny model with RANDOM weights that VidKV wrote itself: the text is gibberish.");
        log.WriteLine("      For real output point it at a GGUF, e.g.: vidkv generate -m qwen2.5-0.5b-instruct-q8_0.gguf -p \"Hello\"");
        if (!File.Exists(path))
        {
            log.WriteLine($"      writing {path} ...");
            RandomModel.Write(path, RandomModelShape.Tiny, GgmlType.Q8_0);
        }
        return path;
    }
}
