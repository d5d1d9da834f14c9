using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using VidKV.Engine;
using VidKV.Models;

namespace VidKV.Cli;

/// <summary><c>vidkv perplexity</c>: llama-perplexity's chunking and scoring on a text file.</summary>
static class PerplexityCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model(required: true);
        var file = new Option<string>("--file", "-f") { Description = "Text file to score.", Required = true };
        var context = CommonOptions.ContextSize(512);
        var batch = new Option<int>("--batch-size", "-b") { Description = "Tokens per forward pass (default: the context size).", DefaultValueFactory = _ => 0 };
        var output = new Option<string>("--output", "-o") { Description = "Output format: text or json.", DefaultValueFactory = _ => "text" };
        output.AcceptOnlyFromAmong("text", "json");
        var threads = CommonOptions.Threads();
        var cache = CommonOptions.CacheType("--cache-type", "-ct", "keys and values");

        var command = new Command("perplexity", "Perplexity of a model on a text, computed exactly as llama-perplexity does (second half of each chunk scored).")
            .With(model, file, context, batch, output, threads, cache);
        command.SetAction(r =>
        {
            Tensors.WorkerPool.SetSharedThreadCount(Math.Max(1, r.GetValue(threads)));
            using var m = ModelLoader.Load(r.GetValue(model)!);
            string text = File.ReadAllText(r.GetValue(file)!);
            int ctx = r.GetValue(context) is > 0 and var c ? c : m.Config.ContextLength;
            int b = r.GetValue(batch) is > 0 and var bs ? Math.Min(bs, ctx) : ctx;
            bool json = r.GetValue(output) == "json";
            var result = Perplexity.Evaluate(m, text, ctx, b, (chunk, running) =>
            {
                Console.Error.Write(string.Create(CultureInfo.InvariantCulture, $"[{chunk + 1}]{running:F4},"));
            }, CommonOptions.ParseCacheType(r.GetValue(cache)!));
            Console.Error.WriteLine();
            if (json)
            {
                Console.WriteLine(JsonSerializer.Serialize(new
                {
                    model = r.GetValue(model), n_ctx = ctx, n_chunks = result.ChunkCount, tokens = result.TokenCount,
                    scored_tokens_per_chunk = result.ScoredTokensPerChunk, ppl = result.Value, ppl_plus_minus = result.PlusMinus,
                    running_ppl_after_chunk = result.RunningAfterChunk,
                }));
            }
            else
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"Final estimate: PPL = {result.Value:F4} +/- {result.PlusMinus:F5} ({result.ChunkCount} chunks of {ctx} tokens, {result.TokenCount} tokens)"));
            }
            return 0;
        });
        return command;
    }
}
