using VidKV.Formats;
using VidKV.Text;

namespace VidKV.Models;

/// <summary>Opens a model (a GGUF file, or a Hugging Face folder / its .safetensors file) and builds its decoder.</summary>
public static class ModelLoader
{
    /// <summary>
    /// Loads a model. Errors are <see cref="ModelFormatException"/>s naming the file and the problem. With
    /// <paramref name="repack"/> (the default) weights this machine has faster layouts for are repacked once (see
    /// <see cref="DecoderModel(ModelConfig, IWeightSource, Vocabulary, bool)"/>).
    /// </summary>
    public static DecoderModel Load(string path, bool repack = true)
    {
        if (Directory.Exists(path)) return HuggingFaceModel.Load(path, repack);
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            return HuggingFaceModel.Load(Path.GetDirectoryName(Path.GetFullPath(path))!, repack);
        var file = GgufFile.Open(path);
        try
        {
            var config = Architectures.FromGguf(file);
            var vocabulary = Vocabulary.FromGguf(file);
            return new DecoderModel(config, new GgufWeights(file), vocabulary, repack);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }
}
