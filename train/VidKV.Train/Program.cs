using System.CommandLine;
using System.Globalization;
using TorchSharp;
using VidKV.Tensors;
using VidKV.World;

namespace VidKV.Train;

/// <summary>
/// <c>dotnet run --project train/VidKV.Train -c Release -- train|eval …</c>: trains the built-in tiny VLM on generated
/// worlds and exports it as a GGUF pair (issue 20), or scores a checkpoint on held-out worlds.
/// </summary>
public static class Program
{
    /// <summary>Entry point: exit 0 on success, 2 on bad arguments.</summary>
    public static int Main(string[] args)
    {
        LibTorchLoadFix.Apply();
        var root = new RootCommand("Trains VidKV's built-in tiny vision-language model on generated video worlds (TorchSharp, CPU).");
        root.Subcommands.Add(TrainCommand());
        root.Subcommands.Add(EvalCommand());
        root.Subcommands.Add(ExportCommand());
        try
        {
            return root.Parse(args).Invoke();
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
    }

    static readonly Option<int> Steps = new("--steps") { Description = "Optimizer steps, one generated clip each.", DefaultValueFactory = _ => new TrainOptions().Steps };
    static readonly Option<long> Seed = new("--seed") { Description = "Seed of the initial weights and of the training worlds.", DefaultValueFactory = _ => 1 };
    static readonly Option<int> Threads = new("--threads", "-t") { Description = "libtorch threads (default: all cores).", DefaultValueFactory = _ => Environment.ProcessorCount };
    static readonly Option<int> MaxFrames = new("--max-frames") { Description = "Longest training clip, in frames (1 per second).", DefaultValueFactory = _ => new ExampleOptions().MaxFrames };
    static readonly Option<int> MinFrames = new("--min-frames") { Description = "Shortest training clip, in frames.", DefaultValueFactory = _ => new ExampleOptions().MinFrames };
    static readonly Option<double> Questions = new("--questions") { Description = "Questions per training clip on average (one after the last frame, the rest after random frames).", DefaultValueFactory = _ => new ExampleOptions().QuestionsPerClip };
    static readonly Option<int> MaxStart = new("--max-start") { Description = "Half the clips start at a time below this many seconds (stamps, questions and answers shifted): minutes a long watch shows. 0: every clip starts at 00:00.", DefaultValueFactory = _ => 0 };
    static readonly Option<int> MaxGap = new("--max-gap") { Description = "In half the clips a quarter of the frames start up to this many positions after the last row (log-uniform): the holes and distances a bounded KV policy leaves in a long stream. 0: none.", DefaultValueFactory = _ => 0 };
    static readonly Option<int> ImageSize = new("--image-size") { Description = "Side of the frames the tower sees (a multiple of --patch × --merge).", DefaultValueFactory = _ => new TinyVlmConfig().ImageSize };
    static readonly Option<int> Merge = new("--merge") { Description = "Idefics3 pixel-shuffle factor: patches merged per side into one decoder row.", DefaultValueFactory = _ => new TinyVlmConfig().MergeFactor };
    static readonly Option<int> Layers = new("--layers") { Description = "Decoder layers.", DefaultValueFactory = _ => new TinyVlmConfig().Layers };
    static readonly Option<int> EvalClips = new("--eval-clips") { Description = "Held-out clips scored at the end (and at each checkpoint).", DefaultValueFactory = _ => 64 };

    static Command TrainCommand()
    {
        var output = new Option<string>("--out", "-o") { Description = "Folder for checkpoints and the exported model.gguf + mmproj.gguf.", Required = true };
        var resume = new Option<string?>("--resume") { Description = "A checkpoint (…/step-N.bin) to go on from." };
        var probe = new Option<double>("--probe") { Description = "Weight of the training-only perception probe's loss (0: none).", DefaultValueFactory = _ => new TrainOptions().ProbeWeight };
        var changeProbe = new Option<double>("--change") { Description = "Weight of the training-only change probe's loss (0: none): at the decoder's middle layer each frame row names what happened in its cell since the frame before, each frame's closing row the frame's event.", DefaultValueFactory = _ => new TrainOptions().ChangeWeight };
        var pointer = new Option<double>("--pointer") { Description = "Weight of the training-only pointer loss (0: none): heads of the decoder's middle layer learn to look, from each answer row, at the frame rows of the objects the question is about (and a \"when\" answer at its frame's time stamp), from each decision and narration at the event's object.", DefaultValueFactory = _ => new TrainOptions().PointerWeight };
        var pointerTargets = new Option<PointerTargets>("--pointer-targets") { Description = "What --pointer points from: answers (answer rows at the question's objects: the built-in model's recipe) or all (also each listed object's words at it, decisions and narrations at the event's object, and a second head from \"when\" answers at the frame's time stamp).", DefaultValueFactory = _ => new TrainOptions().PointerTargets };
        var towerRate = new Option<double>("--tower-rate") { Description = "The tower's learning rate as a share of --lr in the language run (1: the same; 0: frozen, as after --vision-steps a LLaVA-style first stage keeps it).", DefaultValueFactory = _ => new TrainOptions().TowerRate };
        var decision = new Option<double>("--decision-weight") { Description = "Weight of each frame's proactive decision (silence or the comment's first token) in the language loss.", DefaultValueFactory = _ => new TrainOptions().DecisionWeight };
        var answer = new Option<double>("--answer-weight") { Description = "Weight of answers' tokens in the language loss.", DefaultValueFactory = _ => new TrainOptions().AnswerWeight };
        var visionSteps = new Option<int>("--vision-steps") { Description = "Steps that train the eyes alone first (tower, projector and perception probe on frames; the decoder waits), as towers come pretrained. 0: none.", DefaultValueFactory = _ => 0 };
        var visionFrames = new Option<int>("--vision-frames") { Description = "Frames per --vision-steps step.", DefaultValueFactory = _ => 32 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate.", DefaultValueFactory = _ => new TrainOptions().LearningRate };
        var type = new Option<string>("--type") { Description = "Tensor type of the exported files: f32, f16 or q8_0.", DefaultValueFactory = _ => "q8_0" };
        var command = new Command("train", "Train from scratch (or --resume), score held-out clips, export the GGUF pair.")
        {
            output, Steps, Seed, Threads, MinFrames, MaxFrames, Questions, MaxStart, MaxGap, probe, changeProbe, pointer, pointerTargets, towerRate, decision, answer, lr, resume, EvalClips, type, ImageSize, Merge, Layers, visionSteps, visionFrames,
        };
        command.SetAction(r =>
        {
            var exportType = ParseType(r.GetValue(type)!);
            var options = new TrainOptions { Steps = Positive(r.GetValue(Steps), "--steps"), Seed = r.GetValue(Seed), Threads = Positive(r.GetValue(Threads), "--threads"), LearningRate = r.GetValue(lr),
                ProbeWeight = r.GetValue(probe), DecisionWeight = NotNegative(r.GetValue(decision), "--decision-weight"), AnswerWeight = NotNegative(r.GetValue(answer), "--answer-weight"),
                ChangeWeight = NotNegative(r.GetValue(changeProbe), "--change"), PointerWeight = NotNegative(r.GetValue(pointer), "--pointer"), PointerTargets = r.GetValue(pointerTargets),
                TowerRate = NotNegative(r.GetValue(towerRate), "--tower-rate") };
            var config = new TinyVlmConfig { Vocab = WorldVocabulary.Size, ImageSize = r.GetValue(ImageSize), MergeFactor = r.GetValue(Merge), Layers = r.GetValue(Layers) };
            Check(config);
            var tokenizer = WorldVocabulary.CreateTokenizer();
            var examples = new WorldExamples(config, tokenizer, Frames(r));
            string dir = r.GetValue(output)!;
            Directory.CreateDirectory(dir);
            // The sizes go beside the checkpoints, so eval and export build the same model from them.
            File.WriteAllText(Path.Combine(dir, ConfigFile), System.Text.Json.JsonSerializer.Serialize(new { image_size = config.ImageSize, merge = config.MergeFactor, layers = config.Layers }));
            torch.manual_seed(options.Seed);
            using var model = new TinyVlm(config, options.Seed);
            var trainer = new Trainer(model, examples, options);
            int first = 0;
            if (r.GetValue(resume) is { } checkpoint)
            {
                string name = Path.GetFileNameWithoutExtension(checkpoint);
                if (!name.StartsWith("step-", StringComparison.Ordinal) || !int.TryParse(name["step-".Length..], NumberStyles.None, CultureInfo.InvariantCulture, out first))
                    throw new ArgumentException($"--resume {checkpoint}: not a step-N.bin checkpoint (its step is where the schedule goes on)");
                trainer.Load(checkpoint);
                Console.Error.WriteLine($"resuming from {checkpoint} at step {first}");
            }
            int pretrain = r.GetValue(visionSteps);
            if (pretrain < 0) throw new ArgumentException($"--vision-steps must be 0 or more, not {pretrain}");
            if (pretrain > 0 && first == 0) trainer.PretrainVision(pretrain, Positive(r.GetValue(visionFrames), "--vision-frames"), Console.Error);
            long parameters = model.parameters().Sum(p => p.numel());
            Console.Error.WriteLine($"tiny VLM: {parameters:N0} parameters, vocabulary {config.Vocab}, {config.TokensPerFrame} rows per frame; {options.Steps} steps on {options.Threads} threads");
            int clips = r.GetValue(EvalClips);
            trainer.Run(Console.Error, first, step =>
            {
                string path = Path.Combine(dir, $"step-{step}.bin");
                trainer.Save(path);
                Console.Error.WriteLine($"checkpoint {path}; held-out: {trainer.Evaluate(HeldOut(Math.Min(clips, 16)))}");
                // The evaluation leaves much garbage; collect it here, between steps, rather than while a native call runs
                // (two runs died inside libtorch a few steps after a checkpoint, on a scalar freed under them).
                GC.Collect();
                GC.WaitForPendingFinalizers();
                GC.Collect();
            });
            trainer.Save(Path.Combine(dir, "final.bin"));
            Console.Error.WriteLine($"held-out ({clips} clips): {trainer.Evaluate(HeldOut(clips))}");
            var (text, projector) = ModelExport.Write(dir, model, "vidkv-world-tiny", WorldVocabulary.Options, exportType);
            Console.Error.WriteLine($"wrote {text} and {projector}");
            return 0;
        });
        return command;
    }

    static Command EvalCommand()
    {
        var checkpoint = new Option<string>("--checkpoint", "-c") { Description = "A checkpoint written by train.", Required = true };
        var fitProbe = new Option<int>("--fit-probe") { Description = "First fit the perception probe alone on the frozen tower for this many clips (what its rows tell a linear head)." };
        var mistakes = new Option<bool>("--mistakes") { Description = "Print each wrong answer (kind, frames back to its evidence, question, right answer, the model's greedy tokens) to stdout." };
        var command = new Command("eval", "Score a checkpoint on held-out clips (answers exact, narration F1, silence on quiet frames).")
        {
            checkpoint, EvalClips, MinFrames, MaxFrames, Questions, MaxStart, MaxGap, Threads, fitProbe, mistakes,
        };
        command.SetAction(r =>
        {
            torch.set_num_threads(Positive(r.GetValue(Threads), "--threads"));
            var config = ConfigOf(r.GetValue(checkpoint)!);
            var tokenizer = WorldVocabulary.CreateTokenizer();
            var examples = new WorldExamples(config, tokenizer, Frames(r));
            using var model = new TinyVlm(config);
            var trainer = new Trainer(model, examples, new TrainOptions());
            trainer.Load(r.GetValue(checkpoint)!);
            if (r.GetValue(fitProbe) is > 0 and int probeSteps) trainer.FitProbe(probeSteps, Console.Error);
            Action<WorldQuestion, long[]>? wrong = !r.GetValue(mistakes) ? null : (q, said) =>
                Console.WriteLine($"{q.Kind}\t{q.Distance}\t{q.Question}\t{q.Answer}\t{tokenizer.Decode(said.Select(t => (int)t).ToArray())}");
            Console.WriteLine(trainer.Evaluate(HeldOut(r.GetValue(EvalClips)), wrong));
            return 0;
        });
        return command;
    }

    static Command ExportCommand()
    {
        var checkpoint = new Option<string>("--checkpoint", "-c") { Description = "A checkpoint written by train.", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "Folder for model.gguf + mmproj.gguf.", Required = true };
        var type = new Option<string>("--type") { Description = "Tensor type: f32, f16 or q8_0.", DefaultValueFactory = _ => "q8_0" };
        var command = new Command("export", "Write a checkpoint as the GGUF pair VidKV and llama.cpp load.") { checkpoint, output, type };
        command.SetAction(r =>
        {
            var exportType = ParseType(r.GetValue(type)!);
            using var model = new TinyVlm(ConfigOf(r.GetValue(checkpoint)!));
            model.load(r.GetValue(checkpoint)!);
            var (text, projector) = ModelExport.Write(r.GetValue(output)!, model, "vidkv-world-tiny", WorldVocabulary.Options, exportType);
            Console.Error.WriteLine($"wrote {text} and {projector}");
            return 0;
        });
        return command;
    }

    const string ConfigFile = "config.json";

    /// <summary>The sizes of a checkpoint's model: those in the config.json train wrote beside it, else the defaults.</summary>
    static TinyVlmConfig ConfigOf(string checkpoint)
    {
        var config = new TinyVlmConfig { Vocab = WorldVocabulary.Size };
        string path = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(checkpoint))!, ConfigFile);
        if (!File.Exists(path)) return config;
        using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(path));
        var root = json.RootElement;
        return config with
        {
            ImageSize = root.GetProperty("image_size").GetInt32(), MergeFactor = root.GetProperty("merge").GetInt32(),
            Layers = root.TryGetProperty("layers", out var layers) ? layers.GetInt32() : config.Layers, // checkpoints before --layers have the default
        };
    }

    static void Check(TinyVlmConfig c)
    {
        if (c.Layers < 1) throw new ArgumentException($"--layers must be at least 1, not {c.Layers}");
        if (c.MergeFactor < 1 || c.ImageSize < c.PatchSize * c.MergeFactor || c.ImageSize % (c.PatchSize * c.MergeFactor) != 0)
            throw new ArgumentException($"--image-size {c.ImageSize} must be a positive multiple of the patch ({c.PatchSize}) × --merge ({c.MergeFactor})");
    }

    /// <summary>The seeds of the first <paramref name="count"/> held-out clips (never trained on).</summary>
    public static IEnumerable<ulong> HeldOut(int count) => Enumerable.Range(0, count).Select(i => WorldStream.HeldOutSeeds + (ulong)i);

    static ExampleOptions Frames(ParseResult r)
    {
        int least = Positive(r.GetValue(MinFrames), "--min-frames"), most = Positive(r.GetValue(MaxFrames), "--max-frames");
        if (most < least) throw new ArgumentException($"--max-frames {most} is below --min-frames {least}");
        double questions = r.GetValue(Questions);
        if (!(questions >= 1)) throw new ArgumentException($"--questions must be at least 1, not {questions}");
        int start = r.GetValue(MaxStart), gap = r.GetValue(MaxGap);
        if (start < 0) throw new ArgumentException($"--max-start must be ≥ 0 seconds, not {start}");
        if (gap < 0) throw new ArgumentException($"--max-gap must be ≥ 0 positions, not {gap}");
        return new ExampleOptions { MinFrames = least, MaxFrames = most, QuestionsPerClip = questions, MaxStartSeconds = start, MaxPositionGap = gap };
    }

    static int Positive(int value, string name) => value >= 1 ? value : throw new ArgumentException($"{name} must be at least 1, not {value}");
    static double NotNegative(double value, string name) => value >= 0 && double.IsFinite(value) ? value : throw new ArgumentException($"{name} must be a finite number ≥ 0, not {value}");

    static GgmlType ParseType(string name) => name.ToLowerInvariant() switch
    {
        "f32" => GgmlType.F32,
        "f16" => GgmlType.F16,
        "q8_0" => GgmlType.Q8_0,
        _ => throw new ArgumentException($"--type must be f32, f16 or q8_0, not '{name}'"),
    };
}
