using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Train;

/// <summary>
/// Writes a trained <see cref="TinyVlm"/> as llama.cpp lays such a pair out: <c>model.gguf</c> (Llama text decoder and
/// its vocabulary) and <c>mmproj.gguf</c> (idefics3 tower and projector), through the same writers as VidKV's random
/// models (<see cref="RandomModel"/>, <see cref="RandomVisionModel"/>) with the trained values in place of draws.
/// </summary>
internal static class ModelExport
{
    /// <summary>Writes <c>directory/model.gguf</c> and <c>directory/mmproj.gguf</c> of <paramref name="type"/> (F32, F16 or Q8_0); returns their paths.</summary>
    public static (string Text, string Projector) Write(string directory, TinyVlm model, string name, SyntheticVocabularyOptions vocabulary, GgmlType type = GgmlType.F32)
    {
        var tensors = model.Export();
        var shape = model.Config.ToShape(name, vocabulary);
        Directory.CreateDirectory(directory);
        string text = Path.Combine(directory, RandomVisionModel.TextFileName), projector = Path.Combine(directory, RandomVisionModel.ProjectorFileName);
        var fills = new List<GivenTensors>();
        GivenTensors Fill(GgufWriter w)
        {
            var fill = new GivenTensors(w, tensors);
            fills.Add(fill);
            return fill;
        }
        string typeName = GgmlTypes.Name(type);
        RandomModel.Write(text, shape.Text, type, Fill, $"{name} {typeName} (trained by VidKV.Train)");
        RandomVisionModel.WriteProjector(projector, shape, type, Fill, $"{name} mmproj {typeName} (trained by VidKV.Train)",
            $"idefics3 vision tower and projector of {name}, trained by VidKV.Train");
        var unused = tensors.Keys.Where(k => fills.All(f => f.Unused.Contains(k))).ToList();
        if (unused.Count > 0) throw new InvalidOperationException($"the writers did not take these tensors: {string.Join(", ", unused)}");
        return (text, projector);
    }
}
