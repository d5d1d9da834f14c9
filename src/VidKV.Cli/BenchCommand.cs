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

        var command = new Command("bench", "Measure prompt processing (ppN) and generation (tgN) speed, like llama-bench.")
            .With(models, prompt, generate, depth, threads, repetitions, output, cacheK, cacheV);
        command.SetAction(r =>
        {
            int[] depths = ParseList(r.GetValue(depth)!, "-d", min: 0), threadCounts = ParseList(r.GetValue(threads)!, "-t", min: 1);
            int reps = r.GetValue(repetitions);
            if (reps < 1) throw new ArgumentException("-r must be at least 1");
            bool json = r.GetValue(output) == "json";
            var results = new List<BenchmarkResult>();
            if (!json)
            {
                Console.WriteLine("| model | type | test | depth | threads | t/s (mean ± sd) | median | peak RSS |");
                Console.WriteLine("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |");
            }
            foreach (string path in r.GetValue(models)!)
            {
                using var model = ModelLoader.Load(path);
                foreach (var result in Benchmark.Run(model, Path.GetFileName(path), r.GetValue(prompt), r.GetValue(generate), depths, threadCounts, reps,
                    CommonOptions.ParseCacheType(r.GetValue(cacheK)!), CommonOptions.ParseCacheType(r.GetValue(cacheV)!),
                    message => Console.Error.WriteLine($"  {message}")))
                {
                    results.Add(result);
                    if (!json)
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"| {result.Model} | {result.Type} | {result.Test} | {result.Depth} | {result.Threads} | {result.TokensPerSecond:F2} ± {result.TokensPerSecondSd:F2} | {result.TokensPerSecondMedian:F2} | {result.PeakRssBytes / 1048576.0:F0} MiB |"));
                }
            }
            if (json)
            {
                Console.WriteLine(JsonSerializer.Serialize(results.Select(x => new
                {
                    model = x.Model, type = x.Type, test = x.Test, depth = x.Depth, threads = x.Threads, repetitions = x.Repetitions,
                    tokens_per_second = x.TokensPerSecond, tokens_per_second_sd = x.TokensPerSecondSd, tokens_per_second_median = x.TokensPerSecondMedian,
                    samples = x.Samples, peak_rss_bytes = x.PeakRssBytes, kv_bytes = x.KvBytes,
                }), new JsonSerializerOptions { WriteIndented = true }));
            }
            return 0;
        });
        return command;
    }

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
