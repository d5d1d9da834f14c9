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

    /// <summary>
    /// Reads the language model's hyper-parameters from <c>config.json</c>. A vision-language checkpoint nests them in
    /// <c>text_config</c>; as llama.cpp's converter does (conversion/base.py <c>TextModel.__init__</c>:
    /// <c>hparams = {**hparams, **hparams["text_config"]}</c>) a nested field wins over the top level. Qwen2-VL and
    /// Qwen2.5-VL are llama.cpp's <c>qwen2vl</c> (conversion/qwenvl.py <c>Qwen2VLModel</c>) with M-RoPE sections from
    /// <c>rope_scaling.mrope_section</c>, padded to four (base.py <c>set_gguf_parameters</c>).
    /// </summary>
    public static ModelConfig ReadConfig(string path)
    {
        if (!File.Exists(path)) throw ModelFormatException.InFile(path, "file not found");
        using var document = ParseJson(path);
        var root = document.RootElement;
        JsonElement? text = root.TryGetProperty("text_config", out var tc) && tc.ValueKind == JsonValueKind.Object ? tc : null;

        // The field's value and its name in messages ("text_config.hidden_size" when nested).
        bool TryGet(string field, out JsonElement value, out string name)
        {
            if (text is { } t && t.TryGetProperty(field, out value) && value.ValueKind != JsonValueKind.Null) { name = "text_config." + field; return true; }
            name = field;
            return root.TryGetProperty(field, out value) && value.ValueKind != JsonValueKind.Null;
        }
        string? String(string field) => TryGet(field, out var v, out _) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

        string modelType = String("model_type") ?? "";
        string architecture = FirstArchitecture(root) is "Qwen2VLForConditionalGeneration" or "Qwen2_5_VLForConditionalGeneration"
            || modelType is "qwen2_vl" or "qwen2_5_vl" or "qwen2_vl_text" or "qwen2_5_vl_text" ? "qwen2vl" : modelType;
        if (architecture is not ("llama" or "qwen2" or "qwen2vl"))
            throw ModelFormatException.InFile(path, $"model_type '{modelType}' is not supported (llama, qwen2, Qwen2-VL)");

        int Int(string field, int? fallback = null)
        {
            if (!TryGet(field, out var v, out string name))
                return fallback ?? throw ModelFormatException.InFile(path, $"field '{name}' is missing");
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int i) || i <= 0)
                throw ModelFormatException.InFile(path, $"field '{name}' = {v.GetRawText()} is not a positive integer");
            return i;
        }
        double Number(string field, double fallback) => TryGet(field, out var v, out _) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : fallback;

        // rope_parameters (transformers 5) or rope_scaling: only Qwen-VL's M-RoPE sections are supported.
        int[]? sections = null;
        double? ropeTheta = null;
        bool hasRope = TryGet("rope_parameters", out var rope, out string ropeName) || TryGet("rope_scaling", out rope, out ropeName);
        if (hasRope && rope.ValueKind == JsonValueKind.Object)
        {
            string? type = rope.TryGetProperty("rope_type", out var rt) && rt.ValueKind == JsonValueKind.String ? rt.GetString()
                : rope.TryGetProperty("type", out var ty) && ty.ValueKind == JsonValueKind.String ? ty.GetString() : null;
            if (architecture != "qwen2vl" || !rope.TryGetProperty("mrope_section", out var ms) || type is not (null or "default" or "mrope"))
                throw ModelFormatException.InFile(path, $"field '{ropeName}' = {rope.GetRawText()} is not supported yet");
            if (ms.ValueKind != JsonValueKind.Array || ms.GetArrayLength() is 0 or > 4 || ms.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int n) || n < 0))
                throw ModelFormatException.InFile(path, $"field '{ropeName}.mrope_section' = {ms.GetRawText()} is not a list of up to 4 section sizes");
            sections = [.. ms.EnumerateArray().Select(e => e.GetInt32()), .. new int[4 - ms.GetArrayLength()]];
            if (rope.TryGetProperty("rope_theta", out var theta) && theta.ValueKind == JsonValueKind.Number) ropeTheta = theta.GetDouble();
        }
        if (architecture == "qwen2vl" && sections == null)
            throw ModelFormatException.InFile(path, "field 'rope_scaling.mrope_section' is missing: Qwen2-VL's M-RoPE needs its sections");

        // SmolVLM2's text config leaves out num_attention_heads (conversion/llama.py LlamaModel.__init__: 32 for VLlama3ForCausalLM).
        bool vllama = text is { } t2 && FirstArchitecture(t2) == "VLlama3ForCausalLM";
        int hidden = Int("hidden_size"), heads = Int("num_attention_heads", vllama ? 32 : null);
        int kvHeads = TryGet("num_key_value_heads", out _, out _) ? Int("num_key_value_heads") : heads;
        int headDim = TryGet("head_dim", out var hd, out _) && hd.ValueKind == JsonValueKind.Number ? Int("head_dim") : hidden / heads;
        return new ModelConfig
        {
            Architecture = architecture,
            LayerCount = Int("num_hidden_layers"),
            EmbeddingLength = hidden,
            FeedForwardLength = Int("intermediate_size"),
            HeadCount = heads,
            KvHeadCount = kvHeads,
            HeadDim = headDim,
            RopeDims = headDim,
            RopeFreqBase = (float)Number("rope_theta", ropeTheta ?? 10000),
            RopeMode = RopeMode.NeoX,
            RopeSections = sections,
            RmsNormEps = (float)Number("rms_norm_eps", 1e-6),
            ContextLength = TryGet("max_position_embeddings", out _, out _) ? Int("max_position_embeddings") : 2048,
            VocabSize = Int("vocab_size"),
        };
    }

    /// <summary><c>architectures[0]</c> of a config object, or null.</summary>
    internal static string? FirstArchitecture(JsonElement config) =>
        config.TryGetProperty("architectures", out var a) && a.ValueKind == JsonValueKind.Array && a.GetArrayLength() > 0 && a[0].ValueKind == JsonValueKind.String
            ? a[0].GetString() : null;

    /// <summary>Parses a JSON file; bad JSON is a <see cref="ModelFormatException"/> naming the file and line.</summary>
    internal static JsonDocument ParseJson(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw ModelFormatException.InFile(path, $"line {e.LineNumber + 1}: not valid JSON: {e.Message}"); }
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
            // Vision-language checkpoints nest the language model: llama.cpp's converter drops "language_model."
            // (conversion/base.py ModelBase.filter_tensors: LLaVA's language_model.model.* and language_model.lm_head.*,
            // newer transformers' model.language_model.*) and "text_model." (conversion/llama.py filter_tensors:
            // Idefics3 / SmolVLM's model.text_model.*), which leaves the plain model.* / lm_head.* names.
            foreach (var (name, found) in weights.byName.ToArray())
            {
                string plain = TextModelName(name);
                if (plain != name) weights.byName.TryAdd(plain, found);
            }
            return weights;
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>A checkpoint tensor's name with the language-model prefixes of vision-language checkpoints removed.</summary>
    public static string TextModelName(string name) =>
        name.Replace("language_model.", "", StringComparison.Ordinal).Replace("text_model.", "", StringComparison.Ordinal);

    /// <summary>The stored tensor named <paramref name="name"/> (its Hugging Face name), if any.</summary>
    public (SafetensorsFile File, SafetensorsTensorInfo Tensor)? Find(string name) => byName.TryGetValue(name, out var found) ? found : null;

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

    public long[]? Dimensions(string name) => byName.TryGetValue(HuggingFaceName(name), out var found) ? found.Tensor.Shape.Reverse().ToArray() : null;

    (SafetensorsFile File, SafetensorsTensorInfo Tensor) FindGguf(string name) =>
        byName.TryGetValue(HuggingFaceName(name), out var found) ? found
            : throw ModelFormatException.AtTensor(Path, HuggingFaceName(name), "required tensor is missing");

    public WeightMatrix Matrix(string name, int rows, int columns)
    {
        var (file, t) = FindGguf(name);
        if (t.Shape.Length != 2 || t.Shape[0] != rows || t.Shape[1] != columns)
            throw ModelFormatException.AtTensor(file.Path, t.Name, $"shape [{string.Join(", ", t.Shape)}] does not match the expected [{rows}, {columns}]");
        return new WeightMatrix(t.Name, t.Type, rows, columns, file.TensorPointer(t));
    }

    public WeightMatrix Flattened(string name, int rows, int columns)
    {
        var (file, t) = FindGguf(name);
        if (t.Shape.Length < 2 || t.Shape[0] != rows || t.ElementCount != (long)rows * columns)
            throw ModelFormatException.AtTensor(file.Path, t.Name, $"shape [{string.Join(", ", t.Shape)}] is not {rows} rows of {columns}");
        return new WeightMatrix(t.Name, t.Type, rows, columns, file.TensorPointer(t));
    }

    public float[] Vector(string name, int length)
    {
        var (file, t) = FindGguf(name);
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
