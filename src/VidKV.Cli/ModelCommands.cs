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
        var command = new Command("info", "Print a GGUF file's metadata and tensor table.").With(model, noTensors);
        command.SetAction(r =>
        {
            using var file = GgufFile.Open(r.GetValue(model)!);
            Console.WriteLine($"{file.Path}: GGUF v{file.Version}, {file.FileLength:N0} bytes, {file.MetadataList.Count} metadata keys, {file.Tensors.Count} tensors, alignment {file.Alignment}");
            int width = file.MetadataList.Count == 0 ? 0 : file.MetadataList.Max(kv => kv.Key.Length);
            foreach (var (key, value) in file.MetadataList) Console.WriteLine($"  {key.PadRight(width)} = {value}");
            if (r.GetValue(noTensors)) return 0;
            Console.WriteLine();
            Console.WriteLine($"  {"#",5}  {"name",-36} {"type",-6} {"shape",-20} {"bytes",14}  offset");
            for (int i = 0; i < file.Tensors.Count; i++)
            {
                var t = file.Tensors[i];
                Console.WriteLine($"  {i,5}  {t.Name,-36} {GgmlTypes.Name(t.Type),-6} {"[" + string.Join(", ", t.Shape) + "]",-20} {t.ByteCount,14:N0}  {file.DataOffset + t.Offset}");
            }
            long total = file.Tensors.Sum(t => t.ByteCount), parameters = file.Tensors.Sum(t => t.ElementCount);
            Console.WriteLine($"  {parameters:N0} parameters, {total:N0} bytes of tensor data");
            return 0;
        });
        return command;
    }

    static Command Random()
    {
        var shape = new Option<string>("--shape") { Description = $"Architecture shape: {string.Join(", ", RandomModelShape.All.Select(s => s.Name))}.", DefaultValueFactory = _ => "tiny" };
        shape.AcceptOnlyFromAmong(RandomModelShape.All.Select(s => s.Name).ToArray());
        var type = new Option<string>("--type") { Description = $"Weight type: {string.Join(", ", RandomModel.WritableTypes.Select(GgmlTypes.Name))} (Q4_0 and the K-quants keep token_embd in Q8_0, as llama.cpp does for Q4_0; Q4_K/Q6_K rows that are not whole 256-column super-blocks fall back to Q8_0, so use --shape qwen2-1.5b for an all-K-quant file).", DefaultValueFactory = _ => "q8_0" };
        type.AcceptOnlyFromAmong(RandomModel.WritableTypes.Select(GgmlTypes.Name).ToArray());
        var output = new Option<string>("--output", "-o") { Description = "Where to write the GGUF file.", Required = true };
        var seed = new Option<ulong>("--seed", "-s") { Description = "Random seed.", DefaultValueFactory = _ => 42UL };
        var command = new Command("random", "Write a GGUF with random weights of a real architecture's shape (for benchmarks without downloads).")
            .With(shape, type, output, seed);
        command.SetAction(r =>
        {
            var s = RandomModelShape.Find(r.GetValue(shape)!)!;
            GgmlTypes.TryParse(r.GetValue(type)!, out var t);
            string path = r.GetValue(output)!;
            var clock = Stopwatch.StartNew();
            Console.Error.WriteLine($"writing {path}: random {s.Name} ({s.Architecture}, {s.Layers} layers, hidden {s.Embedding}, vocab {s.Vocab}), {GgmlTypes.Name(t)} ...");
            RandomModel.Write(path, s, t, r.GetValue(seed));
            Console.Error.WriteLine($"done: {new FileInfo(path).Length:N0} bytes in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return command;
    }
}
