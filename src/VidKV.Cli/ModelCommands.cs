using System.CommandLine;
using System.Diagnostics;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Cli;

/// <summary><c>vidkv model info</c> and <c>vidkv model random</c>.</summary>
static class ModelCommands
{
    public static Command Create()
    {
        var command = new Command("model", "Inspect model files or write random-weight ones.");
        command.Subcommands.Add(Info());
        command.Subcommands.Add(Random());
        return command;
    }

    static Command Info()
    {
        var model = CommonOptions.Model(required: true);
        var noTensors = new Option<bool>("--no-tensors") { Description = "Print only the metadata." };
        var command = new Command("info", "Print a GGUF file's metadata and tensor table (for an mmproj file, first a one-line summary of its vision tower and projector).").With(model, noTensors);
        command.SetAction(r =>
        {
            var output = r.InvocationConfiguration.Output;
            using var file = GgufFile.Open(r.GetValue(model)!);
            output.WriteLine($"{file.Path}: GGUF v{file.Version}, {file.FileLength:N0} bytes, {file.MetadataList.Count} metadata keys, {file.Tensors.Count} tensors, alignment {file.Alignment}");
            if (file.Get("clip.projector_type") != null || file.Get("clip.vision.projector_type") != null)
            {
                string summary;
                try
                {
                    summary = VisionConfig.FromGguf(file).Summary(VisionConfig.ProjectorOutputLength(file));
                }
                catch (ModelFormatException e)
                {
                    summary = $"not readable: {e.Message}";
                }
                output.WriteLine($"  vision: {summary}");
            }
            int width = file.MetadataList.Count == 0 ? 0 : file.MetadataList.Max(kv => kv.Key.Length);
            foreach (var (key, value) in file.MetadataList) output.WriteLine($"  {key.PadRight(width)} = {value}");
            if (r.GetValue(noTensors)) return 0;
            output.WriteLine();
            output.WriteLine($"  {"#",5}  {"name",-36} {"type",-6} {"shape",-20} {"bytes",14}  offset");
            for (int i = 0; i < file.Tensors.Count; i++)
            {
                var t = file.Tensors[i];
                output.WriteLine($"  {i,5}  {t.Name,-36} {GgmlTypes.Name(t.Type),-6} {"[" + string.Join(", ", t.Shape) + "]",-20} {t.ByteCount,14:N0}  {file.DataOffset + t.Offset}");
            }
            long total = file.Tensors.Sum(t => t.ByteCount), parameters = file.Tensors.Sum(t => t.ElementCount);
            output.WriteLine($"  {parameters:N0} parameters, {total:N0} bytes of tensor data");
            return 0;
        });
        return command;
    }

    static Command Random()
    {
        string[] textShapes = [.. RandomModelShape.All.Select(s => s.Name)], visionShapes = [.. RandomVisionShape.All.Select(s => s.Name)];
        var shape = new Option<string>("--shape")
        {
            Description = $"Architecture shape. Text models (one GGUF, -o FILE): {string.Join(", ", textShapes)}. Vision-language models "
                + $"(a text GGUF + mmproj GGUF pair, -o DIR writes DIR/{RandomVisionModel.TextFileName} and DIR/{RandomVisionModel.ProjectorFileName}): {string.Join(", ", visionShapes)}.",
            DefaultValueFactory = _ => "tiny",
            HelpName = "shape",
        };
        shape.AcceptOnlyFromAmong([.. textShapes, .. visionShapes]);
        var type = new Option<string>("--type")
        {
            Description = $"Weight type: {string.Join(", ", RandomModel.WritableTypes.Select(GgmlTypes.Name))} (Q4_0 and the K-quants keep token_embd in Q8_0, as llama.cpp does for Q4_0; Q4_K/Q6_K rows that are not whole 256-column super-blocks fall back to Q8_0, so use --shape qwen2-1.5b for an all-K-quant file). "
                + $"Vision-language pairs: {string.Join(", ", RandomVisionModel.WritableTypes.Select(GgmlTypes.Name))} (Q8_0 rows that are not whole 32-value blocks fall back to F16; patch kernels, position embeddings, norms and biases keep the types llama.cpp's converters give them).",
            DefaultValueFactory = _ => "q8_0",
            HelpName = "type",
        };
        type.AcceptOnlyFromAmong(RandomModel.WritableTypes.Select(GgmlTypes.Name).ToArray());
        var output = new Option<string>("--output", "-o") { Description = "Where to write: the GGUF file for a text shape, the directory for a vision-language shape.", Required = true };
        var seed = new Option<ulong>("--seed", "-s") { Description = "Random seed.", DefaultValueFactory = _ => 42UL };
        var command = new Command("random", "Write a GGUF with random weights of a real architecture's shape, or a text + mmproj GGUF pair for a vision-language shape (for tests and benchmarks without downloads; llama.cpp loads them too).")
            .With(shape, type, output, seed);
        command.SetAction(r =>
        {
            string name = r.GetValue(shape)!;
            GgmlTypes.TryParse(r.GetValue(type)!, out var t);
            string path = r.GetValue(output)!;
            var clock = Stopwatch.StartNew();
            if (RandomVisionShape.Find(name) is { } vision)
            {
                var v = vision.Vision;
                Console.Error.WriteLine($"writing {path}: random {vision.Name} ({vision.Text.Architecture} text, {vision.Text.Layers} layers, hidden {vision.Text.Embedding}; "
                    + $"{VisionConfig.TypeName(v.Projector)} vision, {v.Blocks} blocks, width {v.Width}), {GgmlTypes.Name(t)} ...");
                var (text, projector) = RandomVisionModel.Write(path, vision, t, r.GetValue(seed));
                Console.Error.WriteLine($"done: {text} ({new FileInfo(text).Length:N0} bytes) and {projector} ({new FileInfo(projector).Length:N0} bytes) in {clock.Elapsed.TotalSeconds:F1} s");
                return 0;
            }
            var s = RandomModelShape.Find(name)!;
            Console.Error.WriteLine($"writing {path}: random {s.Name} ({s.Architecture}, {s.Layers} layers, hidden {s.Embedding}, vocab {s.Vocab}), {GgmlTypes.Name(t)} ...");
            RandomModel.Write(path, s, t, r.GetValue(seed));
            Console.Error.WriteLine($"done: {new FileInfo(path).Length:N0} bytes in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return command;
    }
}
