using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using VidKV.World;

namespace VidKV.Cli;

/// <summary><c>vidkv world generate</c>: a synthetic world as an H.264 video with its event log and sample questions as JSON.</summary>
static class WorldCommand
{
    public static Command Create()
    {
        var command = new Command("world", "The synthetic video world (shapes that enter, leave, move, stop and change colour): videos whose every event is known.");
        command.Subcommands.Add(Generate());
        command.Subcommands.Add(Eval());
        return command;
    }

    static Command Eval()
    {
        var model = CommonOptions.Model(required: false, CommonOptions.BuiltInModelText);
        var mmproj = new Option<string?>("--mmproj") { Description = "Vision projector (mmproj GGUF) paired with -m (neither: the built-in model)." };
        var clips = new Option<int>("--clips") { Description = "Held-out worlds to watch (seeds from 2^62 on, which the trainer never uses).", DefaultValueFactory = _ => 20 };
        var ticks = new Option<int>("--ticks") { Description = "Frames of each world (one per second).", DefaultValueFactory = _ => 24 };
        var size = new Option<int>("--size") { Description = "Side of the frames as drawn (the session resizes them for the tower, as from a video).", DefaultValueFactory = _ => 256 };
        var questions = new Option<int>("--questions") { Description = "Distinct questions asked about each world after its last frame.", DefaultValueFactory = _ => 4 };
        var policy = new Option<string?>("--policy") { Description = PolicyDocs.SpecHelp("KV policy spec of the sessions; default full.") };
        var budget = new Option<int?>("--budget") { Description = "Token budget per KV head for the policy." };
        var positions = CommonOptions.Positions();
        var visionExact = CommonOptions.VisionExact();
        var threads = CommonOptions.Threads();
        var json = new Option<bool>("--json") { Description = "Print the result as JSON." };
        var command = new Command("eval", "Watch held-out generated worlds with a model through VidKV's engine (proactive comments on, then questions) and score it: exact answers per question kind, narration F1 on event frames, silence on event-free frames.")
            .With(model, mmproj, clips, ticks, size, questions, policy, budget, positions, visionExact, threads, json);
        command.SetAction(async (r, cancellation) =>
        {
            int clipCount = Positive(r.GetValue(clips), "--clips"), tickCount = Positive(r.GetValue(ticks), "--ticks"), side = Positive(r.GetValue(size), "--size");
            int asked = Positive(r.GetValue(questions), "--questions");
            var kv = new VidKV.Cache.KvCacheConfig { Default = r.GetValue(policy) ?? "full", Budget = r.GetValue(budget), Positions = CommonOptions.ParsePositions(r.GetValue(positions)) };
            kv.ValidateSpecs();
            Tensors.WorkerPool.SetSharedThreadCount(Math.Max(1, r.GetValue(threads)));
            var (textPath, visionPath) = BuiltInModel.Or(r.GetValue(model), r.GetValue(mmproj));
            using var text = Models.ModelLoader.Load(textPath);
            using var vision = Models.VisionModel.Load(visionPath, r.GetValue(visionExact));
            await using var engine = new Engine.InferenceEngine(text, new Engine.EngineOptions { Kv = kv }, vision);
            var log = r.InvocationConfiguration.Error;
            var score = await WorldEvaluation.RunAsync(engine, clipCount, tickCount, side, asked, WorldOptions.Clip,
                s => log.WriteLine($"  {s.Clips}/{clipCount}: {s.Summary()}"), cancellation);
            var output = r.InvocationConfiguration.Output;
            if (r.GetValue(json))
            {
                output.WriteLine(System.Text.Json.JsonSerializer.Serialize(new
                {
                    positions = VidKV.Cache.KvCacheConfig.PositionsName(kv.Positions), clips = score.Clips, questions = score.Questions, correct = score.Correct, accuracy = score.Accuracy,
                    by_kind = score.ByKind.ToDictionary(kv => kv.Key.ToString(), kv => new { asked = kv.Value.Asked, right = kv.Value.Right }),
                    event_frames = score.EventFrames, comments = score.Comments, hits = score.Hits, narration_f1 = score.NarrationF1,
                    quiet_frames = score.QuietFrames, quiet_silent = score.QuietSilent, silence = score.Silence, misses = score.Misses,
                }));
                return 0;
            }
            output.WriteLine(score.Summary());
            foreach (var (kind, (a, right)) in score.ByKind.OrderBy(k => k.Key)) output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {kind,-12} {right}/{a}"));
            foreach (string miss in score.Misses) output.WriteLine($"  miss: {miss}");
            return 0;
        });
        return command;
    }

    static int Positive(int value, string name) => value >= 1 ? value : throw new ArgumentException($"{name} must be at least 1, not {value}");

    static Command Generate()
    {
        var seed = new Option<ulong>("--seed", "-s") { Description = "Random seed: the same seed and options give the same video.", DefaultValueFactory = _ => 1UL };
        var ticks = new Option<int>("--ticks") { Description = "Length in ticks (one tick per second of video).", DefaultValueFactory = _ => 60 };
        var size = new Option<string>("--size") { Description = "Frame size: N (square) or WxH, even numbers (H.264 in yuv420p).", DefaultValueFactory = _ => "256" };
        var fps = new Option<double>("--fps") { Description = "Frames per second of the video (frames between ticks are interpolated).", DefaultValueFactory = _ => 8 };
        var output = new Option<string>("--output", "-o") { Description = "The video file (.mp4, .mkv, .mov); its log goes beside it as .json.", Required = true };
        var preset = new Option<string>("--preset") { Description = "clip: eventful (an event on a third of the ticks); stream: sparse events and long static stretches, for long streams.", DefaultValueFactory = _ => "clip" };
        preset.AcceptOnlyFromAmong("clip", "stream");
        var maxObjects = new Option<int?>("--max-objects") { Description = $"Most objects on screen, 1..{WorldOptions.ObjectLimit} (default 4)." };
        var eventProbability = new Option<double?>("--event-probability") { Description = "Probability of an event at a tick outside static stretches (default: the preset's)." };
        var questions = new Option<int>("--questions") { Description = "Sample questions asked at the last tick, written to the log.", DefaultValueFactory = _ => 8 };
        var crf = new Option<int>("--crf") { Description = "x264 quality, 0..51 (lower is better).", DefaultValueFactory = _ => 18 };
        var frames = new Option<string?>("--frames") { Description = "Also write each tick's frame, drawn at --size without compression, as FOLDER/tick-NNNNNN.ppm (what a reference run feeds llama.cpp)." };
        var command = new Command("generate", "Generate a world video and its log: VIDEO plus VIDEO.json with every event (tick, mm:ss, narration) and sample questions with answers.")
            .With(seed, ticks, size, fps, output, preset, maxObjects, eventProbability, questions, crf, frames);
        command.SetAction(r =>
        {
            var options = r.GetValue(preset) == "stream" ? WorldOptions.Stream : WorldOptions.Clip;
            if (r.GetValue(maxObjects) is int most) options = options with { MaxObjects = most, MinObjects = Math.Min(options.MinObjects, most) };
            if (r.GetValue(eventProbability) is double p) options = options with { EventProbability = p };
            return Run(r.InvocationConfiguration.Error, r.GetValue(seed), r.GetValue(ticks), r.GetValue(size)!, r.GetValue(fps), r.GetValue(output)!, options,
                r.GetValue(questions), r.GetValue(crf), r.GetValue(frames));
        });
        return command;
    }

    static int Run(TextWriter log, ulong seed, int ticks, string size, double fps, string path, WorldOptions options, int questionCount, int crf, string? frameFolder)
    {
        if (ticks is < 1 or > 360_000) throw new ArgumentException($"--ticks must be in 1..360000 (100 hours), got {ticks}");
        var (width, height) = ParseSize(size);
        if (!(fps > 0 && fps <= 120)) throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"--fps must be in (0, 120], got {fps}"));
        if (questionCount < 0) throw new ArgumentException($"--questions must be ≥ 0, got {questionCount}");
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder == null || !Directory.Exists(folder)) throw new ArgumentException($"--output '{path}': no such folder '{folder}'");
        options.Validate();

        var clock = Stopwatch.StartNew();
        var stream = WorldStream.Generate(seed, ticks, options);
        var asked = WorldQuestions.SampleDistinct(stream, ticks - 1, seed, questionCount);
        WorldVideo.WriteAsync(stream, path, width, height, fps, crf).GetAwaiter().GetResult();
        if (frameFolder != null)
        {
            Directory.CreateDirectory(frameFolder);
            for (int tick = 0; tick < ticks; tick++) stream.Render(tick, width, height).WritePpm(Path.Combine(frameFolder, $"tick-{tick:D6}.ppm"));
        }
        string logPath = Path.ChangeExtension(path, ".json");
        WorldVideo.WriteLog(WorldLog.Of(stream, width, height, fps, asked), logPath);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"wrote {path} ({WorldVideo.FrameCount(stream, fps)} frames, {width}×{height} at {fps} fps) and {logPath} ({stream.Events.Count} events, {asked.Count} questions) in {clock.Elapsed.TotalSeconds:F1} s"));
        return 0;
    }

    /// <summary>"256" or "320x240" as a width and height, both positive and even.</summary>
    static (int Width, int Height) ParseSize(string size)
    {
        string[] parts = size.Split('x');
        if (parts.Length is 1 or 2 && parts.All(p => int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n is > 0 and <= 8192))
        {
            int width = int.Parse(parts[0], CultureInfo.InvariantCulture), height = int.Parse(parts[^1], CultureInfo.InvariantCulture);
            if (width % 2 == 0 && height % 2 == 0) return (width, height);
            throw new ArgumentException($"--size {size}: H.264 in yuv420p needs an even width and height");
        }
        throw new ArgumentException($"--size '{size}' is not N or WxH with sides in 1..8192");
    }
}
