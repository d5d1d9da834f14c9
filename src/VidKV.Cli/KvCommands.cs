using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using VidKV.Cache;
using VidKV.Engine;
using VidKV.Models;

namespace VidKV.Cli;

/// <summary><c>vidkv kv</c>: tools for the paged KV cache and its policies.</summary>
static class KvCommands
{
    public static Command Create()
    {
        var command = new Command("kv", "Paged KV cache policies: list them, evaluate them against the full cache, calibrate head patterns.");
        command.Subcommands.Add(Policies());
        command.Subcommands.Add(Eval());
        command.Subcommands.Add(Calibrate());
        return command;
    }

    /// <summary>The registered policies as the README's markdown table (a test keeps the README equal to this output).</summary>
    static Command Policies()
    {
        var command = new Command("policies", "Print the registered KV policies, their options and defaults as a markdown table.");
        command.SetAction(r =>
        {
            r.InvocationConfiguration.Output.Write(PolicyDocs.MarkdownTable());
            return 0;
        });
        return command;
    }

    static Command Eval()
    {
        var model = CommonOptions.Model(required: true);
        var file = new Option<string>("--file", "-f") { Description = "Text to decode (e.g. story_eval.txt).", Required = true };
        var context = CommonOptions.ContextSize(512);
        var policy = new Option<string[]>("--policy") { Description = PolicyDocs.SpecHelp("Policy spec, repeatable."), Required = true, AllowMultipleArgumentsPerToken = true };
        var budget = new Option<int[]>("--budget") { Description = "Token budget per KV head, repeatable (e.g. --budget 64 128).", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [128] };
        var pageSize = new Option<int>("--page-size") { Description = "Tokens per page: 16, 32 or 64.", DefaultValueFactory = _ => 16 };
        var chunks = new Option<int>("--chunks") { Description = "Chunks of the text to evaluate (0 = all).", DefaultValueFactory = _ => 0 };
        var output = new Option<string>("--output", "-o") { Description = "Output format: md or json.", DefaultValueFactory = _ => "md" };
        output.AcceptOnlyFromAmong("md", "json");
        var threads = CommonOptions.Threads();
        var cache = CommonOptions.CacheType("--cache-type", "-ct", "keys and values");
        var repeat = new Option<int>("--repeat") { Description = "Repeat the text this many times (long synthetic contexts, with a large -c).", DefaultValueFactory = _ => 1 };
        var prefill = new Option<bool>("--prefill") { Description = "Prefill the unscored part of each chunk (its first half, or all but --score) in batches of 512 instead of decoding it token by token (fast for long contexts)." };
        var noAttention = new Option<bool>("--no-attention-metrics") { Description = "Skip attention recall and output error (they cost O(context) per head and step in double precision)." };
        var score = new Option<int>("--score") { Description = "Score only the last N next-token predictions of each chunk (0 = its second half); with --prefill the tokens before them are prefilled, so long contexts take minutes.", DefaultValueFactory = _ => 0 };

        var command = new Command("eval", "Decode a text token by token under each policy × budget in lockstep with the full cache, and report perplexity, KL, top-1 agreement, attention recall, output error and KV bytes read per step.")
            .With(model, file, context, policy, budget, pageSize, chunks, output, threads, cache, repeat, prefill, noAttention, score);
        command.SetAction(r =>
        {
            Tensors.WorkerPool.SetSharedThreadCount(Math.Max(1, r.GetValue(threads)));
            using var m = ModelLoader.Load(r.GetValue(model)!);
            string text = File.ReadAllText(r.GetValue(file)!);
            int ctx = r.GetValue(context) is > 0 and var c ? c : m.Config.ContextLength;
            var rows = KvEvaluation.Run(m, text, ctx, r.GetValue(policy)!, r.GetValue(budget)!, r.GetValue(pageSize),
                CommonOptions.ParseCacheType(r.GetValue(cache)!), r.GetValue(chunks), what => Console.Error.WriteLine($"  evaluating {what}"),
                attentionMetrics: !r.GetValue(noAttention), repeat: r.GetValue(repeat), prefillFirstHalf: r.GetValue(prefill), scoredTokens: r.GetValue(score));
            if (r.GetValue(output) == "json")
            {
                Console.WriteLine(JsonSerializer.Serialize(rows.Select(x => new
                {
                    model = Path.GetFileName(r.GetValue(model)), n_ctx = ctx, policy = x.Policy, budget = x.Budget, steps = x.Steps, ppl = x.Perplexity,
                    ppl_ratio = x.PerplexityRatio, kl = x.KlDivergence, top1_agreement = x.Top1Agreement, recall_mean = x.RecallMean,
                    recall_p5 = x.RecallP5, output_error_mean = x.OutputErrorMean, kv_bytes_per_step = x.BytesPerStep, kept_tokens_per_head = x.KeptTokensPerHead,
                    prepare_ms = x.PrepareMs, append_ms = x.AppendMs,
                })));
                return 0;
            }
            Console.WriteLine("| policy | budget | ppl | ppl / full | KL | top-1 agree | recall mean | recall p5 | out err | KV bytes/step | kept/head |");
            Console.WriteLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
            foreach (var x in rows)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {x.Policy} | {(x.Budget is int b ? b.ToString(CultureInfo.InvariantCulture) : "-")} | {x.Perplexity:F4} | {x.PerplexityRatio:F4} | {x.KlDivergence:F5} | {x.Top1Agreement:P1} | {Metric(x.RecallMean)} | {Metric(x.RecallP5)} | {Metric(x.OutputErrorMean)} | {x.BytesPerStep:N0} | {x.KeptTokensPerHead:F0} |"));
            return 0;
        });
        return command;
    }

    static string Metric(double? value) => value is double v ? v.ToString("F4", CultureInfo.InvariantCulture) : "-";

    static Command Calibrate()
    {
        var model = CommonOptions.Model(required: true);
        var file = new Option<string>("--file", "-f") { Description = "Calibration text (e.g. story_eval.txt).", Required = true };
        var context = CommonOptions.ContextSize(512);
        var sinks = new Option<int>("--sinks") { Description = "Sink tokens a streaming head keeps.", DefaultValueFactory = _ => 64 };
        var recent = new Option<int>("--recent") { Description = "Recent tokens a streaming head keeps.", DefaultValueFactory = _ => 256 };
        var chunks = new Option<int>("--chunks") { Description = "Chunks of the text to use (0 = all).", DefaultValueFactory = _ => 0 };
        var output = new Option<string>("--output", "-o") { Description = "Pattern file to write (one line per layer, one score per KV head).", Required = true };
        var threads = CommonOptions.Threads();
        var command = new Command("calibrate", "Rank heads for DuoAttention without training: decode the text with the full cache and score each (layer, KV head) by the output error it would have as a streaming head (sinks + recent only). Writes a pattern file for the 'duo' policy (duo:pattern=FILE,fraction=0.5).")
            .With(model, file, context, sinks, recent, chunks, output, threads);
        command.SetAction(r =>
        {
            Tensors.WorkerPool.SetSharedThreadCount(Math.Max(1, r.GetValue(threads)));
            using var m = ModelLoader.Load(r.GetValue(model)!);
            string text = File.ReadAllText(r.GetValue(file)!);
            int ctx = r.GetValue(context) is > 0 and var c ? c : m.Config.ContextLength;
            int s = r.GetValue(sinks), w = r.GetValue(recent);
            if (s < 0 || w < 1) throw new ArgumentException($"--sinks must be ≥ 0 and --recent ≥ 1 (got {s} and {w})");
            var scores = HeadCalibration.Run(m, text, ctx, s, w, r.GetValue(chunks), what => Console.Error.WriteLine($"  calibrating: {what}"));
            string path = r.GetValue(output)!;
            PatternFile.Write(path, scores, $"DuoAttention head pattern (training-free proxy) for {Path.GetFileName(r.GetValue(model))}\n" +
                $"mean relative output error of streaming ({s} sinks + {w} recent) vs full attention, -c {ctx}; higher = retrieval head\n" +
                $"{scores.GetLength(0)} layers x {scores.GetLength(1)} KV heads");
            for (int l = 0; l < scores.GetLength(0); l++)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"layer {l,3}: {string.Join("  ", Enumerable.Range(0, scores.GetLength(1)).Select(h => scores[l, h].ToString("F4", CultureInfo.InvariantCulture)))}"));
            Console.Error.WriteLine($"wrote {path}");
            return 0;
        });
        return command;
    }
}
