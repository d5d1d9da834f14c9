using VidKV.Formats;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// The decoder architectures VidKV runs and how each reads its hyper-parameters. Llama, Qwen2 and Qwen2-VL's language
/// model (<c>qwen2vl</c>: Qwen2 with M-RoPE sections) share one graph (<see cref="DecoderModel"/>); they differ in RoPE
/// pairing as stored in GGUF (llama.cpp's LLAMA_ROPE_TYPE_NORM vs NEOX / MROPE) and in q/k/v biases, which are found
/// by tensor presence.
/// </summary>
internal static class Architectures
{
    static readonly Dictionary<string, RopeMode> GgufRopeModes = new()
    {
        ["llama"] = RopeMode.Normal,
        ["qwen2"] = RopeMode.NeoX,
        ["qwen2vl"] = RopeMode.NeoX, // LLAMA_ROPE_TYPE_MROPE: NeoX pairs, angles by section
    };

    public static IReadOnlyCollection<string> Supported => GgufRopeModes.Keys;

    /// <summary>Reads <c>{arch}.*</c> metadata; every problem names the file and the key.</summary>
    public static ModelConfig FromGguf(GgufFile file)
    {
        string arch = file.Get("general.architecture")?.AsString()
            ?? throw ModelFormatException.InFile(file.Path, "metadata 'general.architecture' is missing");
        if (!GgufRopeModes.TryGetValue(arch, out var ropeMode))
            throw ModelFormatException.InFile(file.Path, $"architecture '{arch}' is not supported (supported: {string.Join(", ", Supported)})");

        int Required(string key)
        {
            var v = file.Get($"{arch}.{key}") ?? throw ModelFormatException.InFile(file.Path, $"metadata '{arch}.{key}' is missing");
            if (!v.IsInteger || v.AsInt64() <= 0 || v.AsInt64() > int.MaxValue)
                throw ModelFormatException.InFile(file.Path, $"metadata '{arch}.{key}' = {v} is not a positive integer");
            return (int)v.AsInt64();
        }
        double Optional(string key, double fallback) => file.Get($"{arch}.{key}") is { } v ? v.AsDouble() : fallback;

        int embedding = Required("embedding_length");
        int heads = Required("attention.head_count");
        int kvHeads = file.Get($"{arch}.attention.head_count_kv") != null ? Required("attention.head_count_kv") : heads;
        if (embedding % heads != 0 || heads % kvHeads != 0)
            throw ModelFormatException.InFile(file.Path, $"{heads} heads and {kvHeads} KV heads do not divide embedding length {embedding}");
        int headDim = file.Get($"{arch}.attention.key_length") != null ? Required("attention.key_length") : embedding / heads;
        var embd = file.FindTensor("token_embd.weight") ?? throw ModelFormatException.AtTensor(file.Path, "token_embd.weight", "required tensor is missing");
        int[]? sections = null;
        if (arch == "qwen2vl")
        {
            // Qwen2-VL's M-RoPE: pairs per position component (t, h, w, e), llama.cpp's {arch}.rope.dimension_sections.
            string key = $"{arch}.rope.dimension_sections";
            var v = file.Get(key) ?? throw ModelFormatException.InFile(file.Path, $"metadata '{key}' is missing");
            sections = v.Type == GgufValueType.Array ? v.AsArray().AsInt32s() : [];
            if (sections.Length is 0 or > 4 || sections.Any(n => n < 0))
                throw ModelFormatException.InFile(file.Path, $"metadata '{key}' must be an array of up to 4 section sizes");
            sections = [.. sections, .. new int[4 - sections.Length]];
        }

        return new ModelConfig
        {
            Architecture = arch,
            LayerCount = Required("block_count"),
            EmbeddingLength = embedding,
            FeedForwardLength = Required("feed_forward_length"),
            HeadCount = heads,
            KvHeadCount = kvHeads,
            HeadDim = headDim,
            RopeDims = file.Get($"{arch}.rope.dimension_count") != null ? Required("rope.dimension_count") : headDim,
            RopeFreqBase = (float)Optional("rope.freq_base", 10000.0),
            RopeMode = ropeMode,
            RopeSections = sections,
            RmsNormEps = (float)Optional("attention.layer_norm_rms_epsilon", 1e-5),
            ContextLength = file.Get($"{arch}.context_length") != null ? Required("context_length") : 2048,
            VocabSize = (int)embd.Shape[^1],
        };
    }
}
