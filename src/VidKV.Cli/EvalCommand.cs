using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using VidKV.Cache;
using VidKV.World;

namespace VidKV.Cli;

/// <summary>
/// <c>vidkv eval</c>: end-to-end evaluations of a model through VidKV's engine. <c>eval video</c> measures needle
/// accuracy against stream length and KV memory for each KV policy (<see cref="VideoEvaluation"/>).
/// </summary>
static class EvalCommand
{
    public static Command Create()
    {
        var command = new Command("eval", "Evaluate a model end to end through VidKV's engine on generated video whose every event is known.");
        command.Subcommands.Add(Video());
        return command;
    }

    static Command Video()
    {
        var model = CommonOptions.Model(required: false, CommonOptions.BuiltInModelText);
        var mmproj = new Option<string?>("--mmproj") { Description = "Vision projector (mmproj GGUF) paired with -m (neither: the built-in model)." };
        var lengths = new Option<string>("--lengths") { Description = $"Comma-separated stream lengths in frames (one frame per second of stream), each 2..{VideoEvalOptions.MaxLength}.", DefaultValueFactory = _ => "100,500,2000" };
        var streams = new Option<int>("--streams") { Description = "Held-out streams per length (seeds from 2^62 on, never trained on; the same seeds at every length, so a shorter stream is the start of a longer one).", DefaultValueFactory = _ => 1 };
        var distances = new Option<string>("--distances") { Description = "Comma-separated needle distances: ticks from a question's evidence back from the last frame; those not below a length are left out at that length.", DefaultValueFactory = _ => "1,10,100,1000" };
        var questions = new Option<int>("--questions") { Description = "Needle questions per distance and stream, among those about the evidence tick (what happened at mm:ss, what colour was X at mm:ss, when did X enter/leave), drawn from the seed; those whose answer is not \"nothing\" first.", DefaultValueFactory = _ => 4 };
        var size = new Option<int>("--size") { Description = "Side of the frames as drawn (the session resizes them for the tower, as from a video).", DefaultValueFactory = _ => 256 };
        var policies = new Option<string[]>("--policies")
        {
            Description = PolicyDocs.SpecHelp("KV policy specs to compare, comma-separated or repeated (an option after a comma, name=value, belongs to the spec before it); "
                + $"default: {string.Join(",", VideoEvalOptions.DefaultPolicies)}. 'full' runs uncapped, as the reference; every other runs under --hot-cap, which sets the budget ('--budget' below), or, for a spec that takes none but keeps a share of each group of frames (quickprefill, livevlm, without ratio=), the ratio that keeps full's run of the same streams within that budget (so full runs first)."),
            AllowMultipleArgumentsPerToken = true,
        };
        var hotCap = new Option<double>("--hot-cap") { Description = "MiB of hot KV (in RAM) the bounded policies are sized for: the token budget per KV head they get keeps every layer's and head's pages, a step's new rows and a question's fork included, under it; pages a policy moves out of RAM (freekv, resv) go to a cold file.", DefaultValueFactory = _ => 64 };
        var positions = new Option<string>("--positions")
        {
            Description = "RoPE positions each capped policy runs with, comma-separated for a row per policy and mode (original,compact compares them; 'full' evicts nothing and runs once, original). " + CommonOptions.PositionsHelp,
            DefaultValueFactory = _ => "original",
        };
        var proactive = new Option<bool>("--proactive") { Description = "Let the model comment on its own while it watches (as watch --proactive); off: frames only, as watch without it." };
        var coldDir = new Option<string?>("--cold-dir") { Description = "Folder for the capped runs' cold-tier files (default: the system's temporary folder); each is deleted after its run." };
        var plot = new Option<string?>("--plot") { Description = "Also write an SVG chart to this file: needle accuracy and peak hot KV MiB against stream length, one line per policy." };
        var output = new Option<string>("--output", "-o") { Description = "Output format: md (tables) or json (one object: the options, the CPU and threads, the cap's sizing, one row per policy and length with every answer).", DefaultValueFactory = _ => "md" };
        output.AcceptOnlyFromAmong("md", "json");
        var visionExact = CommonOptions.VisionExact();
        var threads = CommonOptions.Threads();
        var command = new Command("video", "Needle accuracy against stream length and memory, per KV policy: generated streams (sparse events, long static stretches) of each length are watched "
            + "through VidKV's engine as watch does; after the last frame, questions whose evidence lies chosen distances back are asked on forks of the session (greedy) and scored exactly. "
            + "Per policy and length: accuracy (overall, per distance, per question kind), time to first token (median, P90), hot and cold KV at the end, peak hot KV, ingest frames/s, frames, tokens. "
            + "Progress goes to stderr; Ctrl-C stops and prints the rows done.")
            .With(model, mmproj, lengths, streams, distances, questions, size, policies, positions, hotCap, proactive, coldDir, plot, output, visionExact, threads);
        command.SetAction(async (r, cancellation) =>
        {
            double capMib = r.GetValue(hotCap);
            if (!(capMib > 0) || double.IsInfinity(capMib)) throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"--hot-cap must be more than 0 MiB, not {capMib}"));
            var options = new VideoEvalOptions
            {
                Lengths = ParseList(r.GetValue(lengths)!, "--lengths"), Streams = r.GetValue(streams), Distances = ParseList(r.GetValue(distances)!, "--distances"),
                QuestionsPerDistance = r.GetValue(questions), FrameSize = r.GetValue(size),
                Policies = r.GetValue(policies) is { Length: > 0 } given ? VideoEvalOptions.SplitSpecs(given) : VideoEvalOptions.DefaultPolicies,
                HotCapBytes = (long)(capMib * 1048576), Proactive = r.GetValue(proactive), ColdDir = r.GetValue(coldDir),
                Positions = VideoEvalOptions.ParsePositions(r.GetValue(positions)!),
            };
            options.Validate();
            string? plotPath = r.GetValue(plot);
            if (plotPath != null && Path.GetDirectoryName(Path.GetFullPath(plotPath)) is { } folder && !Directory.Exists(folder))
                throw new ArgumentException($"--plot '{plotPath}': no such folder '{folder}'");
            int threadCount = Math.Max(1, r.GetValue(threads));
            Tensors.WorkerPool.SetSharedThreadCount(threadCount);
            var (textPath, visionPath) = BuiltInModel.Or(r.GetValue(model), r.GetValue(mmproj));
            using var text = Models.ModelLoader.Load(textPath);
            using var vision = Models.VisionModel.Load(visionPath, r.GetValue(visionExact));
            var log = r.InvocationConfiguration.Error;
            var result = await VideoEvaluation.RunAsync(text, vision, options, log, cancellation);
            var stdout = r.InvocationConfiguration.Output;
            if (r.GetValue(output) == "json") stdout.WriteLine(Json(result, Path.GetFileName(textPath), Path.GetFileName(visionPath), threadCount));
            else WriteTables(stdout, result);
            if (plotPath != null)
            {
                File.WriteAllText(plotPath, Plot(result));
                log.WriteLine($"wrote {plotPath}");
            }
            return result.Complete ? 0 : 130; // 130: stopped by Ctrl-C, as a shell reports SIGINT
        });
        return command;
    }

    static int[] ParseList(string text, string option)
    {
        var values = new List<int>();
        foreach (string part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            values.Add(int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : throw new ArgumentException($"{option}: '{part}' is not an integer"));
        return values.Count > 0 ? [.. values] : throw new ArgumentException($"{option}: give at least one value");
    }

    static string Mib(long bytes) => (bytes / 1048576.0).ToString("F2", CultureInfo.InvariantCulture);

    static string Number(double value, string format) => double.IsNaN(value) ? "–" : value.ToString(format, CultureInfo.InvariantCulture);

    static string Cap(VideoEvalRow row, VideoEvalResult result) => row.Uncapped ? "uncapped" : row.PeakHotBytes <= result.Options.HotCapBytes ? "within" : "OVER";

    /// <summary>What the cap sized for a row: its token budget, its ratio (a share of the video rows), or nothing.</summary>
    static string Sizing(VideoEvalRow row) => row.Budget is int b ? b.ToString(CultureInfo.InvariantCulture)
        : row.Ratio is double r ? "ratio " + r.ToString("0.####", CultureInfo.InvariantCulture) : "–";

    static void WriteTables(TextWriter output, VideoEvalResult result)
    {
        var o = result.Options;
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Needle accuracy on {o.Streams} held-out stream{(o.Streams == 1 ? "" : "s")} per length (sparse events), {o.QuestionsPerDistance} questions per distance; "
            + $"hot cap {o.HotCapBytes / 1048576.0:G4} MiB = {result.CapTokens} tokens per KV head at {result.KvBytesPerToken} bytes a token over layers and KV heads; "
            + $"budget {result.Budget} tokens per KV head ({result.ReserveTokens} kept free for a step's rows and a question's fork); a policy that keeps a share of its frames gets the ratio that fits full's rows in the budget; full runs uncapped."));
        if (!result.Complete) output.WriteLine("Stopped before the end: only the rows done are shown.");
        output.WriteLine();
        int[] distances = [.. o.Distances.Order()];
        var head = new StringBuilder("| policy | positions | frames | budget or ratio | hot cap | questions | accuracy |");
        foreach (int d in distances) head.Append(CultureInfo.InvariantCulture, $" d={d} |");
        head.Append(" \"nothing\" | TTFT p50 ms | TTFT p90 ms | hot MiB | peak hot MiB | cold MiB | frames/s | tokens |");
        output.WriteLine(head);
        output.WriteLine("| --- | --- | ---: | ---: | --- | ---: | ---: |" + string.Concat(distances.Select(_ => " ---: |")) + " ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var row in result.Rows)
        {
            var line = new StringBuilder(string.Create(CultureInfo.InvariantCulture, $"| {row.Policy} | {KvCacheConfig.PositionsName(row.Positions)} | {row.Length} | {Sizing(row)} | {Cap(row, result)} | {row.Questions} | {Number(100 * row.Accuracy, "F1")} % |"));
            var byDistance = row.ByDistance.ToDictionary(x => x.Distance);
            foreach (int d in distances) line.Append(byDistance.TryGetValue(d, out var x) ? $" {x.Right}/{x.Asked} |" : " – |");
            line.Append(CultureInfo.InvariantCulture,
                $" {row.NothingAnswers} | {Number(row.TtftMedianMs, "F1")} | {Number(row.TtftP90Ms, "F1")} | {Mib(row.HotBytes)} | {Mib(row.PeakHotBytes)} | {Mib(row.ColdBytes)} | {Number(row.FramesPerSecond, "F1")} | {row.Tokens} |");
            output.WriteLine(line);
        }
        var kinds = result.Rows.SelectMany(r => r.Answers).Select(a => a.Kind).Distinct().Order().ToArray();
        if (kinds.Length == 0) return;
        output.WriteLine();
        output.WriteLine("| policy | positions | frames |" + string.Concat(kinds.Select(k => $" {k} |")));
        output.WriteLine("| --- | --- | ---: |" + string.Concat(kinds.Select(_ => " ---: |")));
        foreach (var row in result.Rows)
        {
            var byKind = row.ByKind.ToDictionary(x => x.Kind);
            output.WriteLine($"| {row.Policy} | {KvCacheConfig.PositionsName(row.Positions)} | {row.Length} |" + string.Concat(kinds.Select(k => byKind.TryGetValue(k, out var x) ? $" {x.Right}/{x.Asked} |" : " – |")));
        }
    }

    static JsonSerializerOptions Indented { get; } = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    static double? Finite(double value) => double.IsFinite(value) ? value : null;

    static string Json(VideoEvalResult result, string model, string mmproj, int threads)
    {
        var o = result.Options;
        return JsonSerializer.Serialize(new
        {
            model, mmproj, cpu = Tensors.MachineLimits.CpuName, threads, kernels = Tensors.MachineLimits.KernelSet, complete = result.Complete,
            options = new
            {
                lengths = o.Lengths, streams = o.Streams, distances = o.Distances, questions_per_distance = o.QuestionsPerDistance, size = o.FrameSize,
                policies = o.Policies, positions = o.Positions.Select(KvCacheConfig.PositionsName), hot_cap_bytes = o.HotCapBytes, proactive = o.Proactive,
            },
            kv_bytes_per_token = result.KvBytesPerToken, cap_tokens_per_head = result.CapTokens, reserve_tokens_per_head = result.ReserveTokens, budget = result.Budget,
            rows = result.Rows.Select(row => new
            {
                policy = row.Policy, positions = KvCacheConfig.PositionsName(row.Positions), length = row.Length, uncapped = row.Uncapped, budget = row.Budget, ratio = row.Ratio,
                within_cap = row.Uncapped ? (bool?)null : row.PeakHotBytes <= o.HotCapBytes,
                streams = row.Streams, frames = row.Frames, tokens = row.Tokens, comments = row.Comments,
                questions = row.Questions, correct = row.Correct, accuracy = Finite(row.Accuracy), nothing_answers = row.NothingAnswers,
                by_distance = row.ByDistance.ToDictionary(x => x.Distance.ToString(CultureInfo.InvariantCulture), x => new { asked = x.Asked, right = x.Right }),
                by_kind = row.ByKind.ToDictionary(x => x.Kind.ToString(), x => new { asked = x.Asked, right = x.Right }),
                ttft_ms = new { median = Finite(row.TtftMedianMs), p90 = Finite(row.TtftP90Ms) },
                hot_kv_bytes = row.HotBytes, cold_kv_bytes = row.ColdBytes, peak_hot_kv_bytes = row.PeakHotBytes,
                ingest_seconds = row.IngestSeconds, ingest_frames_per_second = Finite(row.FramesPerSecond),
                answers = row.Answers.Select(a => new
                {
                    stream = a.Stream, distance = a.Distance, kind = a.Kind.ToString(), question = a.Question, truth = a.Truth, answer = a.Answer, right = a.Right, ttft_ms = a.TtftMs,
                }),
            }),
        }, Indented);
    }

    /// <summary>The chart: needle accuracy and peak hot KV against stream length, a line per policy, the cap as a reference line.</summary>
    internal static string Plot(VideoEvalResult result)
    {
        var policies = result.Rows.Select(r => r.Label).Distinct().ToList();
        IReadOnlyList<SvgChart.Series> Lines(Func<VideoEvalRow, double> y) => [.. policies.Select(p => new SvgChart.Series(
            result.Rows.FirstOrDefault(r => r.Label == p)?.Uncapped == true ? $"{p} (uncapped)" : p,
            [.. result.Rows.Where(r => r.Label == p).OrderBy(r => r.Length).Select(r => (X: (double)r.Length, Y: y(r)))]))];
        double[] lengths = [.. result.Rows.Select(r => (double)r.Length).Distinct().Order()];
        return SvgChart.Render($"vidkv eval video: needle accuracy and hot KV per policy (hot cap {result.Options.HotCapBytes / 1048576.0:G4} MiB)",
            "stream length (frames)", lengths,
        [
            new SvgChart.Panel("needle accuracy", "accuracy (%)", Lines(r => 100 * r.Accuracy)) { YMax = 100 },
            new SvgChart.Panel("peak hot KV", "MiB", Lines(r => r.PeakHotBytes / 1048576.0)) { Reference = (result.Options.HotCapBytes / 1048576.0, "hot cap") },
        ]);
    }
}
