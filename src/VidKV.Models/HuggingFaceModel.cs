using System.Text.Json;
using VidKV.Formats;
using VidKV.Tensors;
using VidKV.Text;

namespace VidKV.Models;

/// <summary>
/// Loads a Hugging Face checkpoint folder: <c>config.json</c>, <c>tokenizer.json</c> (+ <c>tokenizer_config.json</c>)
/// and <c>model.safetensors</c> or the shards listed in <c>model.safetensors.index.json</c>. Llama and Qwen2 checkpoints
/// keep Q/K in HF's layout, which pairs RoPE dimensions NeoX-style.
/// </summary>
internal static class HuggingFaceModel
{
    /// <summary>
    /// Loads the checkpoint in <paramref name="folder"/>; <paramref name="repack"/> as for a GGUF file (see
    /// <see cref="DecoderModel(ModelConfig, IWeightSource, Vocabulary, bool)"/>).
    /// </summary>
    public static DecoderModel Load(string folder, bool repack = true)
    {
        if (!Directory.Exists(folder)) throw ModelFormatException.InFile(folder, "folder not found");
        string configPath = Path.Combine(folder, "config.json");
        var config = ReadConfig(configPath);
        var vocabulary = HuggingFaceVocabulary.Load(Path.Combine(folder, "tokenizer.json"), Path.Combine(folder, "tokenizer_config.json"));
        var weights = SafetensorsWeights.Open(folder);
        try { return new DecoderModel(config, weights, vocabulary, repack); }
        catch { weights.Dispose(); throw; }
    }

    public static ModelConfig ReadConfig(string path)
    {
        if (!File.Exists(path)) throw ModelFormatException.InFile(path, "file not found");
        using var document = JsonDocument.Parse(File.ReadAllBytes(path));
        var root = document.RootElement;
        string modelType = root.TryGetProperty("model_type", out var mt) ? mt.GetString() ?? "" : "";
        if (modelType is not ("llama" or "qwen2"))
            throw ModelFormatException.InFile(path, $"model_type '{modelType}' is not supported (llama, qwen2)");
        if (root.TryGetProperty("rope_scaling", out var scaling) && scaling.ValueKind == JsonValueKind.Object)
            throw ModelFormatException.InFile(path, $"field 'rope_scaling' = {scaling.GetRawText()} is not supported yet");

        int Int(string field)
        {
            if (!root.TryGetProperty(field, out var v)) throw ModelFormatException.InFile(path, $"field '{field}' is missing");
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int i) || i <= 0)
                throw ModelFormatException.InFile(path, $"field '{field}' = {v.GetRawText()} is not a positive integer");
            return i;
        }
        double Number(string field, double fallback) => root.TryGetProperty(field, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : fallback;

        int hidden = Int("hidden_size"), heads = Int("num_attention_heads");
        int kvHeads = root.TryGetProperty("num_key_value_heads", out _) ? Int("num_key_value_heads") : heads;
        int headDim = root.TryGetProperty("head_dim", out var hd) && hd.ValueKind == JsonValueKind.Number ? Int("head_dim") : hidden / heads;
        return new ModelConfig
        {
            Architecture = modelType,
            LayerCount = Int("num_hidden_layers"),
            EmbeddingLength = hidden,
            FeedForwardLength = Int("intermediate_size"),
            HeadCount = heads,
            KvHeadCount = kvHeads,
            HeadDim = headDim,
            RopeDims = headDim,
            RopeFreqBase = (float)Number("rope_theta", 10000),
            RopeMode = RopeMode.NeoX,
            RmsNormEps = (float)Number("rms_norm_eps", 1e-6),
            ContextLength = root.TryGetProperty("max_position_embeddings", out _) ? Int("max_position_embeddings") : 2048,
            VocabSize = Int("vocab_size"),
        };
    }
}

/// <summary>
/// Safetensors shards served under GGUF tensor names (<c>blk.3.attn_q.weight</c> → <c>model.layers.3.self_attn.q_proj.weight</c>).
/// </summary>
internal sealed unsafe class SafetensorsWeights : IWeightSource
{
    readonly List<SafetensorsFile> files = [];
    readonly Dictionary<string, (SafetensorsFile File, SafetensorsTensorInfo Tensor)> byName = [];

    public string Path { get; }

    SafetensorsWeights(string path) => Path = path;

    public static SafetensorsWeights Open(string folder)
    {
        var weights = new SafetensorsWeights(folder);
        try
        {
            string index = System.IO.Path.Combine(folder, "model.safetensors.index.json");
            IEnumerable<string> shards;
            if (File.Exists(index))
            {
                using var document = JsonDocument.Parse(File.ReadAllBytes(index));
                if (!document.RootElement.TryGetProperty("weight_map", out var map)) throw ModelFormatException.InFile(index, "field 'weight_map' is missing");
                shards = map.EnumerateObject().Select(p => p.Value.GetString()!).Distinct().ToArray();
            }
            else shards = ["model.safetensors"];
            foreach (string shard in shards)
            {
                var file = SafetensorsFile.Open(System.IO.Path.Combine(folder, shard));
                weights.files.Add(file);
                foreach (var tensor in file.Tensors.Values) weights.byName[tensor.Name] = (file, tensor);
            }
            return weights;
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>The Hugging Face name of a GGUF-named tensor.</summary>
    public static string HuggingFaceName(string ggufName)
    {
        switch (ggufName)
        {
            case "token_embd.weight": return "model.embed_tokens.weight";
            case "output_norm.weight": return "model.norm.weight";
            case "output.weight": return "lm_head.weight";
        }
        if (!ggufName.StartsWith("blk.", StringComparison.Ordinal)) return ggufName;
        int dot = ggufName.IndexOf('.', 4);
        string layer = ggufName[4..dot], rest = ggufName[(dot + 1)..];
        int suffix = rest.LastIndexOf('.');
        string part = rest[..suffix], kind = rest[(suffix + 1)..];
        string mapped = part switch
        {
            "attn_norm" => "input_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_norm" => "post_attention_layernorm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => part,
        };
        return $"model.layers.{layer}.{mapped}.{kind}";
    }

    public bool Contains(string name) => byName.ContainsKey(HuggingFaceName(name));

    (SafetensorsFile File, SafetensorsTensorInfo Tensor) Find(string name) =>
        byName.TryGetValue(HuggingFaceName(name), out var found) ? found
            : throw ModelFormatException.AtTensor(Path, HuggingFaceName(name), "required tensor is missing");

    public WeightMatrix Matrix(string name, int rows, int columns)
    {
        var (file, t) = Find(name);
        if (t.Shape.Length != 2 || t.Shape[0] != rows || t.Shape[1] != columns)
            throw ModelFormatException.AtTensor(file.Path, t.Name, $"shape [{string.Join(", ", t.Shape)}] does not match the expected [{rows}, {columns}]");
        return new WeightMatrix(t.Name, t.Type, rows, columns, file.TensorPointer(t));
    }

    public WeightMatrix Flattened(string name, int rows, int columns)
    {
        var (file, t) = Find(name);
        if (t.Shape.Length < 2 || t.Shape[0] != rows || t.ElementCount != (long)rows * columns)
            throw ModelFormatException.AtTensor(file.Path, t.Name, $"shape [{string.Join(", ", t.Shape)}] is not {rows} rows of {columns}");
        return new WeightMatrix(t.Name, t.Type, rows, columns, file.TensorPointer(t));
    }

    public float[] Vector(string name, int length)
    {
        var (file, t) = Find(name);
        if (t.ElementCount != length) throw ModelFormatException.AtTensor(file.Path, t.Name, $"has {t.ElementCount} elements, expected {length}");
        var result = new float[length];
        Dequantize.Row(t.Type, file.TensorData(t), result);
        return result;
    }

    public void Dispose()
    {
        foreach (var f in files) f.Dispose();
    }
}
