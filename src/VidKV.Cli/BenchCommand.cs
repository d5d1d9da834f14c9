using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using VidKV.Engine;
using VidKV.Models;

namespace VidKV.Cli;

/// <summary><c>vidkv bench</c>: throughput like llama-bench (pp/tg tests, depths, thread counts, repetitions).</summary>
static class BenchCommand
{
    public static Command Create()
    {
        var models = new Option<string[]>("--model", "-m") { Description = "GGUF model(s) to measure (repeat -m for several).", Required = true, AllowMultipleArgumentsPerToken = true };
        var prompt = new Option<int>("--n-prompt", "-p") { Description = "Prompt tokens of the pp test (0 = skip).", DefaultValueFactory = _ => 512 };
        var generate = new Option<int>("--n-gen", "-n") { Description = "Generated tokens of the tg test (0 = skip).", DefaultValueFactory = _ => 128 };
        var depth = new Option<string>("--n-depth", "-d") { Description = "Comma-separated context depths to test at.", DefaultValueFactory = _ => "0" };
        var threads = new Option<string>("--threads", "-t") { Description = "Comma-separated thread counts.", DefaultValueFactory = _ => Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture) };
        var repetitions = new Option<int>("--repetitions", "-r") { Description = "Timed repetitions per test (after one warm-up).", DefaultValueFactory = _ => 5 };
        var output = new Option<string>("--output", "-o") { Description = "Output format: md (table) or json.", DefaultValueFactory = _ => "md" };
        output.AcceptOnlyFromAmong("md", "json");
        var cacheK = CommonOptions.CacheTypeK();
        var cacheV = CommonOptions.CacheTypeV();

        var policy = new Option<string[]>("--policy") { Description = PolicyDocs.SpecHelp("KV policy spec(s) to compare, repeatable; default: full attention (every token kept), as llama-bench measures."), AllowMultipleArgumentsPerToken = true };
        var budget = new Option<int?>("--budget") { Description = "Token budget per KV head for the policies." };
        var pageSize = new Option<int>("--page-size") { Description = "Tokens per KV page: 16, 32 or 64.", DefaultValueFactory = _ => 32 };
        var kvConfig = new Option<string?>("--kv-config") { Description = "JSON file with a paged KV cache config: page_size, type, budget, a default policy spec and per-layer/per-head specs (as --policy); see KvCacheConfig." };
        var coldDir = new Option<string?>("--cold-dir") { Description = "Folder for the cold-tier file of paged caches (pages policies move out of RAM)." };
        var roofline = new Option<bool>("--roofline") { Description = "Also measure this machine's read bandwidth and f32 FMA throughput (a few seconds per thread count) and show each full-attention test's bound: decode ≤ bandwidth ÷ bytes read per token, prefill ≤ FLOP/s ÷ FLOPs per token (f32-FMA products only: Q4_0/Q8_0 prefill on AVX-512BW uses integer tiles and gets no bound)." };

        var interleave = new Option<bool>("--interleave") { Description = "Give every (policy, depth) its own cache and take the repetitions of a test in turns across them, so rows of one run compare under the same machine conditions (costs a separate fill per depth)." };

        var noRepack = new Option<string>("--no-repack", "-nr") { Description = "Comma-separated 0/1: 1 keeps weights as stored instead of repacking them at load (Q4_0/Q8_0/Q4_K/Q6_K rows interleaved by 16 with AVX-512BW), as llama-bench's -nr; 0,1 measures both in one run.", DefaultValueFactory = _ => "0" };
        var command = new Command("bench", "Measure prompt processing (ppN) and generation (tgN) speed, like llama-bench.")
            .With(models, prompt, generate, depth, threads, repetitions, output, cacheK, cacheV, policy, budget, pageSize, kvConfig, coldDir, roofline, interleave, noRepack);
        command.Subcommands.Add(Vision());
        command.Subcommands.Add(BenchVideoCommand.Create());
        command.Subcommands.Add(BenchServeCommand.Create());
        command.SetAction(r =>
        {
            int[] depths = ParseList(r.GetValue(depth)!, "-d", min: 0), threadCounts = ParseList(r.GetValue(threads)!, "-t", min: 1);
            int[] repackModes = ParseList(r.GetValue(noRepack)!, "-nr", min: 0);
            if (repackModes.Any(m => m > 1)) throw new ArgumentException("-nr takes 0 or 1");
            int reps = r.GetValue(repetitions);
            if (reps < 1) throw new ArgumentException("-r must be at least 1");
            bool json = r.GetValue(output) == "json";
            var caches = new List<Cache.KvCacheConfig?>();
            int index = 0;
            string? ColdPath() => r.GetValue(coldDir) is string dir ? Path.Combine(dir, $"vidkv-cold-{Environment.ProcessId}-{index++}.bin") : null;
            if (r.GetValue(kvConfig) is string configPath) caches.Add(Cache.KvCacheConfig.Load(configPath) is var loaded && r.GetValue(coldDir) != null ? loaded with { ColdPath = ColdPath() } : loaded);
            foreach (string spec in r.GetValue(policy) ?? [])
                caches.Add(new Cache.KvCacheConfig
                {
                    Default = spec, Budget = r.GetValue(budget), PageSize = r.GetValue(pageSize), Type = CommonOptions.ParseCacheType(r.GetValue(cacheK)!), ColdPath = ColdPath(),
                });
            if (caches.Count == 0) caches.Add(null);
            foreach (var config in caches) config?.ValidateSpecs(); // a bad spec fails before any model loads
            var results = new List<(BenchmarkResult Result, bool NoRepack)>();
            bool withRoofline = r.GetValue(roofline);
            Console.Error.WriteLine($"  kernels: {Tensors.MachineLimits.KernelSet}");
            if (!json)
            {
                Console.WriteLine("| model | type | kv | test | depth | threads | t/s (mean ± sd) | median | hot KV | cold KV | peak RSS |" + (withRoofline ? " bound t/s | of bound |" : ""));
                Console.WriteLine("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (withRoofline ? " ---: | ---: |" : ""));
            }
            foreach (string path in r.GetValue(models)!)
            foreach (int mode in repackModes)
            {
                bool keepStored = mode == 1;
                using var model = ModelLoader.Load(path, repack: !keepStored);
                // Layers and heads past this model's shape fail here, before any test runs.
                foreach (var config in caches) config?.BuildPolicies(model.Config.LayerCount, model.Config.KvHeadCount);
                string label = Path.GetFileName(path) + (keepStored && repackModes.Length > 1 ? " (no repack)" : "");
                foreach (var result in Benchmark.Run(model, label, r.GetValue(prompt), r.GetValue(generate), depths, threadCounts, reps,
                    CommonOptions.ParseCacheType(r.GetValue(cacheK)!), CommonOptions.ParseCacheType(r.GetValue(cacheV)!),
                    message => Console.Error.WriteLine($"  {message}"), caches, withRoofline, r.GetValue(interleave)))
                {
                    results.Add((result, keepStored));
                    if (!json)
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"| {result.Model} | {result.Type} | {result.Policy} | {result.Test} | {result.Depth} | {result.Threads} | {result.TokensPerSecond:F2} ± {result.TokensPerSecondSd:F2} | {result.TokensPerSecondMedian:F2} | {result.HotKvBytes / 1048576.0:F0} MiB | {result.ColdKvBytes / 1048576.0:F0} MiB | {result.PeakRssBytes / 1048576.0:F0} MiB |")
                            + (withRoofline ? string.Create(CultureInfo.InvariantCulture, $" {Optional(result.CeilingTokensPerSecond, "F1")} | {Optional(result.FractionOfCeiling * 100, "F0")}{(result.FractionOfCeiling is null ? "" : " %")} |") : ""));
                }
            }
            if (json)
            {
                Console.WriteLine(JsonSerializer.Serialize(results.Select(pair => JsonRow(pair.Result, pair.NoRepack)), new JsonSerializerOptions { WriteIndented = true }));
            }
            return 0;
        });
        return command;
    }

    /// <summary><c>vidkv bench vision</c>: the vision encoder + projector per frame (entry) and per image.</summary>
    static Command Vision()
    {
        var model = new Option<string>("--mmproj", "-m") { Description = "Vision projector file (llama.cpp mmproj GGUF) or Hugging Face VLM folder.", Required = true };
        var image = new Option<string?>("--image") { Description = "Also time the whole pipeline for this image (preprocessing and every entry it is cut into, as llama-mtmd-cli encodes it)." };
        var threads = new Option<string>("--threads", "-t") { Description = "Comma-separated thread counts.", DefaultValueFactory = _ => Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture) };
        var repetitions = new Option<int>("--repetitions", "-r") { Description = "Timed repetitions per test (after one warm-up).", DefaultValueFactory = _ => 5 };
        var output = new Option<string>("--output", "-o") { Description = "Output format: md (table) or json.", DefaultValueFactory = _ => "md" };
        output.AcceptOnlyFromAmong("md", "json");
        var roofline = new Option<bool>("--roofline") { Description = "Also measure this machine's f32 FMA throughput and report the fraction of it each test reaches (FLOPs of the products and attention ÷ time)." };
        var visionExact = CommonOptions.VisionExact();
        var command = new Command("vision", "Measure the vision encoder + projector: ms and FLOPs per frame (one entry of the tower's size) and per image.")
            .With(model, image, threads, repetitions, output, roofline, visionExact);
        command.SetAction(r =>
        {
            int[] threadCounts = ParseList(r.GetValue(threads)!, "-t", min: 1);
            int reps = r.GetValue(repetitions);
            if (reps < 1) throw new ArgumentException("-r must be at least 1");
            string path = r.GetValue(model)!;
            var picture = r.GetValue(image) is string file ? Formats.ImageReader.Read(file) : null;
            using var vision = VisionModel.Load(path, r.GetValue(visionExact));
            Console.Error.WriteLine($"  kernels: {Tensors.MachineLimits.KernelSet}");
            var results = VisionBenchmark.Run(vision, Path.GetFileName(path.TrimEnd('/')), picture, threadCounts, reps, r.GetValue(roofline),
                message => Console.Error.WriteLine($"  {message}")).ToList();
            if (r.GetValue(output) == "json")
            {
                Console.WriteLine(JsonSerializer.Serialize(results.Select(x => new
                {
                    model = x.Model, type = x.Type, projector = vision.Config.Projector.ToString(), test = x.Test, width = x.Width, height = x.Height,
                    entries = x.Entries, tokens = x.Tokens, threads = x.Threads, repetitions = x.Repetitions, samples_ms = x.SamplesMs,
                    ms_median = x.MsMedian, per_second = x.PerSecond, flops = x.FlopsPerPass, flops_per_second = x.FlopsPerSecond,
                    fma_flops_per_second = x.PeakFlopsPerSecond, fraction_of_peak = x.FractionOfPeak, ms_per_phase = x.MsPerPhase,
                    peak_rss_bytes = x.PeakRssBytes, kernels = x.Kernels,
                }), new JsonSerializerOptions { WriteIndented = true }));
                return 0;
            }
            Console.WriteLine("| model | type | test | size | entries | tokens | threads | ms (median) | per s | GFLOP | GFLOP/s | of peak |");
            Console.WriteLine("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
            foreach (var x in results)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {x.Model} | {x.Type} | {x.Test} | {x.Width}×{x.Height} | {x.Entries} | {x.Tokens} | {x.Threads} | {x.MsMedian:F1} | {x.PerSecond:F2} | {x.FlopsPerPass / 1e9:F2} | {x.FlopsPerSecond / 1e9:F1} | {Optional(x.FractionOfPeak * 100, "F0")}{(x.FractionOfPeak is null ? "" : " %")} |"));
            return 0;
        });
        return command;
    }

    /// <summary>One result as llama-bench's JSON fields plus ours.</summary>
    static object JsonRow(BenchmarkResult x, bool noRepack) => new
    {
        model = x.Model, type = x.Type, test = x.Test, depth = x.Depth, threads = x.Threads, repetitions = x.Repetitions,
        tokens_per_second = x.TokensPerSecond, tokens_per_second_sd = x.TokensPerSecondSd, tokens_per_second_median = x.TokensPerSecondMedian,
        samples = x.Samples, peak_rss_bytes = x.PeakRssBytes, kv_bytes = x.KvBytes,
        kv_policy = x.Policy, hot_kv_bytes = x.HotKvBytes, cold_kv_bytes = x.ColdKvBytes, kv_ms_per_token = x.KvMsPerToken, ms_per_token = x.MsPerToken,
        read_bytes_per_second = x.ReadBytesPerSecond, fma_flops_per_second = x.FlopsPerSecond,
        ceiling_tokens_per_second = x.CeilingTokensPerSecond, fraction_of_ceiling = x.FractionOfCeiling, no_repack = noRepack,
        kernels = Tensors.MachineLimits.KernelSet,
        policy_work = x.PolicyWork?.Select(w => new
        {
            policy = w.Policy, prepare_ms = w.PrepareMs, append_ms = w.AppendMs, prepare_ms_per_token = w.PrepareMsPerToken, append_ms_per_token = w.AppendMsPerToken,
            last_prepare = new { keys_per_head = w.LastPrepareKeys, heads = w.LastPrepareHeads, ms = w.LastPrepareMs },
        }),
    };

    static string Optional(double? value, string format) => value is double v ? v.ToString(format, CultureInfo.InvariantCulture) : "-";

    static int[] ParseList(string text, string option, int min)
    {
        var values = new List<int>();
        foreach (string part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < min)
                throw new ArgumentException($"{option}: '{part}' is not an integer ≥ {min}");
            values.Add(v);
        }
        if (values.Count == 0) throw new ArgumentException($"{option}: give at least one value");
        return values.ToArray();
    }
}
