using System.Runtime.InteropServices;
using System.Text.Json;
using VidKV.Formats;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// The vision half of a Hugging Face vision-language folder, read as llama.cpp's converter would have written it into
/// an mmproj GGUF, so <see cref="VisionModel"/> loads it unchanged: <see cref="MmprojKeys"/> turns <c>config.json</c> and
/// <c>preprocessor_config.json</c> into the <c>clip.*</c> keys, <see cref="HuggingFaceVisionWeights"/> serves the
/// safetensors under the mmproj's tensor names with the converter's transforms. Families (by <c>architectures[0]</c>,
/// else <c>model_type</c>):
/// <list type="bullet">
/// <item><c>LlavaOnevisionForConditionalGeneration</c>: llama.cpp's HF converter has no LLaVA-OneVision class; its mmproj
/// comes from the legacy tools/mtmd/legacy-models/llava_surgery_v2.py + convert_image_encoder_to_gguf.py, whose key rules
/// this follows (projector <c>mlp</c>, <c>linear_1</c>/<c>linear_2</c> → <c>mm.0</c>/<c>mm.2</c>, no post-LayerNorm,
/// blocks up to the deepest <c>vision_feature_layer</c>), with the tower's tensors named as
/// gguf-py/gguf/tensor_mapping.py names <c>vision_tower.vision_model.*</c> (fc1 → <c>ffn_up</c>; the legacy script's
/// swapped fc1 → <c>ffn_down</c> is undone by llama.cpp's swap check anyway).</item>
/// <item><c>Idefics3ForConditionalGeneration</c>, <c>SmolVLMForConditionalGeneration</c>: conversion/smolvlm.py.</item>
/// <item><c>Qwen2VLForConditionalGeneration</c>, <c>Qwen2_5_VLForConditionalGeneration</c>: conversion/qwenvl.py
/// <c>Qwen2VLVisionModel</c> (fused qkv split in three, the Conv3D patch kernel split into two 2-D kernels).</item>
/// </list>
/// Fields absent from <c>config.json</c> take the defaults of the transformers config class, as the converter sees them
/// through <c>AutoConfig.from_pretrained(...).to_dict()</c> (conversion/base.py <c>load_hparams</c>).
/// </summary>
internal static class HuggingFaceVision
{
    internal enum Family { LlavaOnevision, Idefics3, Qwen2VL, Qwen25VL }

    static readonly Dictionary<string, Family> ByArchitecture = new()
    {
        ["LlavaOnevisionForConditionalGeneration"] = Family.LlavaOnevision,
        ["Idefics3ForConditionalGeneration"] = Family.Idefics3,
        ["SmolVLMForConditionalGeneration"] = Family.Idefics3,
        ["Qwen2VLForConditionalGeneration"] = Family.Qwen2VL,
        ["Qwen2_5_VLForConditionalGeneration"] = Family.Qwen25VL,
    };

    static readonly Dictionary<string, Family> ByModelType = new()
    {
        ["llava_onevision"] = Family.LlavaOnevision,
        ["idefics3"] = Family.Idefics3,
        ["smolvlm"] = Family.Idefics3,
        ["qwen2_vl"] = Family.Qwen2VL,
        ["qwen2_5_vl"] = Family.Qwen25VL,
    };

    // transformers' vision config defaults (configuration_*.py __init__ signatures), for fields a config.json leaves out.
    const string SiglipDefaults = """{"hidden_size":768,"intermediate_size":3072,"num_hidden_layers":12,"num_attention_heads":12,"image_size":224,"patch_size":16,"hidden_act":"gelu_pytorch_tanh","layer_norm_eps":1e-6}""";
    const string ClipDefaults = """{"hidden_size":768,"intermediate_size":3072,"num_hidden_layers":12,"num_attention_heads":12,"image_size":224,"patch_size":32,"hidden_act":"quick_gelu","layer_norm_eps":1e-5}""";
    const string Idefics3Defaults = """{"hidden_size":1152,"intermediate_size":3072,"num_hidden_layers":12,"num_attention_heads":16,"image_size":224,"patch_size":32,"hidden_act":"gelu_pytorch_tanh","layer_norm_eps":1e-6}""";
    const string Qwen2VLDefaults = """{"depth":32,"embed_dim":1280,"hidden_size":3584,"mlp_ratio":4,"num_heads":16,"patch_size":14,"spatial_merge_size":2,"temporal_patch_size":2,"hidden_act":"quick_gelu"}""";
    const string Qwen25VLDefaults = """{"depth":32,"hidden_size":3584,"intermediate_size":3420,"num_heads":16,"patch_size":14,"spatial_merge_size":2,"temporal_patch_size":2,"window_size":112,"fullatt_block_indexes":[7,15,23,31],"hidden_act":"silu"}""";

    /// <summary>The folder a model path stands for when it is a Hugging Face checkpoint (a folder, or a .safetensors file in one); null for other files.</summary>
    public static string? FolderOf(string path) =>
        Directory.Exists(path) ? path
        : path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path)) : null;

    /// <summary>The vision config and the tower's weights under mmproj names; problems name the file and field or tensor.</summary>
    public static (VisionConfig Config, IWeightSource Weights) Open(string folder)
    {
        var keys = ReadKeys(folder, out var family);
        var config = VisionConfig.FromKeys(System.IO.Path.Combine(folder, "config.json"), keys);
        return (config, HuggingFaceVisionWeights.Open(folder, family, config.BlockCount));
    }

    /// <summary>The <c>clip.*</c> keys llama.cpp's converter writes into the mmproj of the folder's checkpoint.</summary>
    public static Dictionary<string, GgufValue> MmprojKeys(string folder) => ReadKeys(folder, out _);

    static Dictionary<string, GgufValue> ReadKeys(string folder, out Family family)
    {
        if (!Directory.Exists(folder)) throw ModelFormatException.InFile(folder, "folder not found");
        string configPath = System.IO.Path.Combine(folder, "config.json");
        if (!File.Exists(configPath)) throw ModelFormatException.InFile(configPath, "file not found");
        using var document = HuggingFaceModel.ParseJson(configPath);
        var root = document.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw ModelFormatException.InFile(configPath, "not a JSON object");

        string? architecture = HuggingFaceModel.FirstArchitecture(root);
        string? modelType = root.TryGetProperty("model_type", out var mt) && mt.ValueKind == JsonValueKind.String ? mt.GetString() : null;
        if (!(architecture != null && ByArchitecture.TryGetValue(architecture, out family)) && !(modelType != null && ByModelType.TryGetValue(modelType, out family)))
        {
            if (!root.TryGetProperty("vision_config", out _))
                throw ModelFormatException.InFile(configPath, "field 'vision_config' is missing: the checkpoint has no vision tower (pass an mmproj with --mmproj)");
            throw ModelFormatException.InFile(configPath,
                $"architectures '{architecture}' (model_type '{modelType}') is not a supported vision-language model ({string.Join(", ", ByArchitecture.Keys)})");
        }
        if (!root.TryGetProperty("vision_config", out var visionConfig) || visionConfig.ValueKind != JsonValueKind.Object)
            throw ModelFormatException.InFile(configPath, $"field 'vision_config' is missing: a {architecture ?? modelType} checkpoint needs its vision tower's config");

        string? visionType = visionConfig.TryGetProperty("model_type", out var vt) && vt.ValueKind == JsonValueKind.String ? vt.GetString() : null;
        string defaults = family switch
        {
            Family.LlavaOnevision => visionType == "clip_vision_model" ? ClipDefaults : SiglipDefaults,
            Family.Idefics3 => Idefics3Defaults,
            Family.Qwen2VL => Qwen2VLDefaults,
            _ => Qwen25VLDefaults,
        };
        using var defaultDocument = JsonDocument.Parse(defaults);
        var vision = new Fields(configPath, "vision_config.", visionConfig, defaultDocument.RootElement);
        var top = new Fields(configPath, "", root, null);
        var preprocessor = Preprocessor(folder);

        var keys = new Dictionary<string, GgufValue>
        {
            ["clip.has_vision_encoder"] = GgufValue.Of(true),
        };
        // The text model's width (base.py MmprojModel.__init__: {**hparams, **text_config}["hidden_size"]).
        int textWidth = root.TryGetProperty("text_config", out var tc) && tc.ValueKind == JsonValueKind.Object && tc.TryGetProperty("hidden_size", out var th) && th.TryGetInt32(out int w) ? w
            : top.Has("hidden_size") ? top.Int("hidden_size") : 0;
        if (textWidth > 0) keys["clip.vision.projection_dim"] = GgufValue.Of((uint)textWidth);
        keys["clip.vision.image_mean"] = GgufValue.Of(preprocessor.Floats("image_mean"));
        keys["clip.vision.image_std"] = GgufValue.Of(preprocessor.Floats("image_std"));

        switch (family)
        {
            case Family.LlavaOnevision:
            {
                // convert_image_encoder_to_gguf.py with --llava-projector (projector type "mlp").
                keys["clip.has_llava_projector"] = GgufValue.Of(true);
                keys["clip.projector_type"] = GgufValue.Of("mlp");
                int layers = vision.Int("num_hidden_layers");
                Common(keys, vision, layers);
                keys["clip.vision.attention.layer_norm_epsilon"] = GgufValue.Of((float)vision.Number("layer_norm_eps"));
                // get_non_negative_vision_feature_layers: vision_feature_layer (else mm_vision_select_layer; absent,
                // LlavaOnevisionConfig's default -1), n → n ≥ 0 ? n : layers + n + 1.
                string? field = top.Has("vision_feature_layer") ? "vision_feature_layer" : top.Has("mm_vision_select_layer") ? "mm_vision_select_layer" : null;
                int[] featureLayers = (field == null ? [-1] : top.IntOrInts(field)).Select(n => n >= 0 ? n : layers + n + 1).ToArray();
                if (featureLayers.Length == 0 || featureLayers.Any(n => n < 0 || n > layers))
                    throw ModelFormatException.InFile(configPath, $"field '{field}' = {root.GetProperty(field!).GetRawText()} is outside the {layers} vision blocks");
                // Blocks up to the deepest feature layer (the script drops the ones after it).
                keys["clip.vision.block_count"] = GgufValue.Of((uint)featureLayers.Max());
                keys["clip.vision.feature_layer"] = GgufValue.Of(featureLayers);
                // image_grid_pinpoints: the legacy script reads the vision config's; transformers keeps it at the top
                // level of config.json (and in preprocessor_config.json).
                var pinpoints = vision.Has("image_grid_pinpoints", withDefaults: false) ? vision.Pairs("image_grid_pinpoints")
                    : top.Has("image_grid_pinpoints") ? top.Pairs("image_grid_pinpoints")
                    : preprocessor.Has("image_grid_pinpoints") ? preprocessor.Pairs("image_grid_pinpoints") : null;
                if (pinpoints != null) keys["clip.vision.image_grid_pinpoints"] = GgufValue.Of(pinpoints);
                // use_gelu from hidden_act: GELU in any spelling (SigLIP's gelu_pytorch_tanh included) is ggml's GELU;
                // quick_gelu is CLIP's. (The legacy script compares with "gelu" only, which would give a SigLIP tower quick GELU.)
                string act = vision.String("hidden_act");
                if (act != "quick_gelu" && !act.StartsWith("gelu", StringComparison.Ordinal))
                    throw ModelFormatException.InFile(configPath, $"field 'vision_config.hidden_act' = '{act}' is not supported for a LLaVA tower (gelu, gelu_pytorch_tanh, quick_gelu)");
                keys["clip.use_gelu"] = GgufValue.Of(act != "quick_gelu");
                break;
            }
            case Family.Idefics3:
            {
                // conversion/smolvlm.py SmolVLMModel.set_gguf_parameters.
                keys["clip.projector_type"] = GgufValue.Of("idefics3");
                Common(keys, vision, vision.Int("num_hidden_layers"));
                keys["clip.vision.attention.layer_norm_epsilon"] = GgufValue.Of((float)vision.Number("layer_norm_eps"));
                keys["clip.vision.projector.scale_factor"] = GgufValue.Of((uint)(top.Has("scale_factor") ? top.Int("scale_factor") : 2));
                keys["clip.use_gelu"] = GgufValue.Of(true);
                int longestEdge = preprocessor.Has("size") && preprocessor.Object("size") is { } size && size.Has("longest_edge")
                    ? size.Int("longest_edge") : vision.Int("image_size");
                keys["clip.vision.preproc_image_size"] = GgufValue.Of((uint)longestEdge);
                break;
            }
            default:
            {
                // conversion/qwenvl.py Qwen2VLVisionModel: image_size defaults to 560, num_heads → head count, depth →
                // blocks; Qwen2-VL's embed_dim is the ViT width and its hidden_size becomes feed_forward_length.
                bool qwen2 = family == Family.Qwen2VL;
                keys["clip.projector_type"] = GgufValue.Of(qwen2 ? "qwen2vl_merger" : "qwen2.5vl_merger");
                keys["clip.vision.image_size"] = GgufValue.Of((uint)(vision.Has("image_size", withDefaults: false) ? vision.Int("image_size") : 560));
                keys["clip.vision.patch_size"] = GgufValue.Of((uint)vision.Int("patch_size"));
                keys["clip.vision.embedding_length"] = GgufValue.Of((uint)vision.Int(qwen2 ? "embed_dim" : "hidden_size"));
                keys["clip.vision.feed_forward_length"] = GgufValue.Of((uint)vision.Int(qwen2 ? "hidden_size" : "intermediate_size"));
                keys["clip.vision.block_count"] = GgufValue.Of((uint)vision.Int("depth"));
                keys["clip.vision.attention.head_count"] = GgufValue.Of((uint)vision.Int("num_heads"));
                if (!qwen2)
                {
                    keys["clip.use_silu"] = GgufValue.Of(true);
                    // n_wa_pattern = fullatt_block_indexes[0] + 1, every later index that far from the one before.
                    int[] full = vision.IntOrInts("fullatt_block_indexes");
                    if (full.Length == 0) throw ModelFormatException.InFile(configPath, "field 'vision_config.fullatt_block_indexes' is empty");
                    int pattern = full[0] + 1;
                    for (int i = 1; i < full.Length; i++)
                        if (full[i] - full[i - 1] != pattern)
                            throw ModelFormatException.InFile(configPath, $"field 'vision_config.fullatt_block_indexes' = [{string.Join(", ", full)}] is not one full-attention block in every {pattern}");
                    keys["clip.vision.n_wa_pattern"] = GgufValue.Of((uint)pattern);
                }
                // The converter takes the top-level rms_norm_eps (1e-6 when absent) for the tower's norms.
                keys["clip.vision.attention.layer_norm_epsilon"] = GgufValue.Of((float)(top.Has("rms_norm_eps") ? top.Number("rms_norm_eps") : 1e-6));
                break;
            }
        }
        return keys;
    }

    /// <summary>base.py MmprojModel.set_gguf_parameters: the ViT's sizes.</summary>
    static void Common(Dictionary<string, GgufValue> keys, Fields vision, int blocks)
    {
        keys["clip.vision.image_size"] = GgufValue.Of((uint)vision.Int("image_size"));
        keys["clip.vision.patch_size"] = GgufValue.Of((uint)vision.Int("patch_size"));
        keys["clip.vision.embedding_length"] = GgufValue.Of((uint)vision.Int("hidden_size"));
        keys["clip.vision.feed_forward_length"] = GgufValue.Of((uint)vision.Int("intermediate_size"));
        keys["clip.vision.block_count"] = GgufValue.Of((uint)blocks);
        keys["clip.vision.attention.head_count"] = GgufValue.Of((uint)vision.Int("num_attention_heads"));
    }

    /// <summary>
    /// preprocessor_config.json, with processor_config.json's fields (its image_processor at the top) over it, as
    /// base.py MmprojModel.__init__ merges them.
    /// </summary>
    static Fields Preprocessor(string folder)
    {
        string path = System.IO.Path.Combine(folder, "preprocessor_config.json");
        string processorPath = System.IO.Path.Combine(folder, "processor_config.json");
        var merged = new Dictionary<string, JsonElement>();
        void Merge(string file, string? nested)
        {
            using var document = HuggingFaceModel.ParseJson(file);
            if (document.RootElement.ValueKind != JsonValueKind.Object) throw ModelFormatException.InFile(file, "not a JSON object");
            foreach (var p in document.RootElement.EnumerateObject()) merged[p.Name] = p.Value.Clone();
            if (nested != null && document.RootElement.TryGetProperty(nested, out var inner) && inner.ValueKind == JsonValueKind.Object)
                foreach (var p in inner.EnumerateObject()) merged[p.Name] = p.Value.Clone();
        }
        bool any = false;
        if (File.Exists(path)) { Merge(path, "media_proc_cfg"); any = true; }
        if (File.Exists(processorPath)) { Merge(processorPath, "image_processor"); any = true; }
        if (!any) throw ModelFormatException.InFile(path, "file not found (the image mean and std come from it)");
        return new Fields(File.Exists(path) ? path : processorPath, "", JsonSerializer.SerializeToElement(merged), null);
    }

    /// <summary>Typed reads of one JSON object's fields, with defaults; every problem names the file and the field.</summary>
    sealed class Fields(string path, string prefix, JsonElement obj, JsonElement? defaults)
    {
        public bool Has(string field, bool withDefaults = true) => TryGet(field, withDefaults, out _);

        bool TryGet(string field, bool withDefaults, out JsonElement value)
        {
            if (obj.TryGetProperty(field, out value) && value.ValueKind != JsonValueKind.Null) return true;
            return withDefaults && defaults is { } d && d.TryGetProperty(field, out value);
        }

        JsonElement Get(string field) => TryGet(field, true, out var v) ? v : throw ModelFormatException.InFile(path, $"field '{prefix}{field}' is missing");

        ModelFormatException Bad(string field, JsonElement v, string expected) => ModelFormatException.InFile(path, $"field '{prefix}{field}' = {v.GetRawText()} is not {expected}");

        public int Int(string field)
        {
            var v = Get(field);
            return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) && i > 0 ? i : throw Bad(field, v, "a positive integer");
        }

        public double Number(string field)
        {
            var v = Get(field);
            return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Bad(field, v, "a number");
        }

        public string String(string field)
        {
            var v = Get(field);
            return v.ValueKind == JsonValueKind.String ? v.GetString()! : throw Bad(field, v, "a string");
        }

        public Fields? Object(string field)
        {
            var v = Get(field);
            return v.ValueKind == JsonValueKind.Object ? new Fields(path, $"{prefix}{field}.", v, null) : null;
        }

        /// <summary>An integer or a list of integers (negative allowed: feature layers count from the end).</summary>
        public int[] IntOrInts(string field)
        {
            var v = Get(field);
            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int one)) return [one];
            if (v.ValueKind == JsonValueKind.Array && v.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out _)))
                return v.EnumerateArray().Select(e => e.GetInt32()).ToArray();
            throw Bad(field, v, "an integer or a list of integers");
        }

        public float[] Floats(string field)
        {
            var v = Get(field);
            if (v.ValueKind == JsonValueKind.Array && v.GetArrayLength() >= 3 && v.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number))
                return v.EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();
            throw Bad(field, v, "a list of at least 3 numbers");
        }

        /// <summary>[[w, h], ...] flattened (convert_image_encoder_to_gguf.py's image_grid_pinpoints).</summary>
        public int[] Pairs(string field)
        {
            var v = Get(field);
            if (v.ValueKind == JsonValueKind.Array && v.EnumerateArray().All(p => p.ValueKind == JsonValueKind.Array && p.GetArrayLength() == 2
                    && p.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int n) && n > 0)))
                return v.EnumerateArray().SelectMany(p => p.EnumerateArray().Select(e => e.GetInt32())).ToArray();
            throw Bad(field, v, "a list of [width, height] pairs");
        }
    }

    /// <summary>
    /// One row of a family's tensor table: a Hugging Face name and its mmproj name, <c>{i}</c> standing for the block.
    /// A module row maps its <c>.weight</c> and <c>.bias</c> (tensor_mapping.py's try_suffixes); an exact row one tensor.
    /// </summary>
    internal readonly record struct Row(string Hf, string Gguf, bool Exact = false);

    /// <summary>The SigLIP / CLIP tower of LLaVA-OneVision (tensor_mapping.py's vision_tower.vision_model.* rows) and the legacy projector names.</summary>
    internal static readonly Row[] LlavaOnevisionRows =
    [
        new("vision_tower.vision_model.embeddings.patch_embedding", "v.patch_embd"),
        new("vision_tower.vision_model.embeddings.position_embedding", "v.position_embd"),
        new("vision_tower.vision_model.embeddings.class_embedding", "v.class_embd", Exact: true),
        new("vision_tower.vision_model.pre_layrnorm", "v.pre_ln"),
        new("vision_tower.vision_model.encoder.layers.{i}.self_attn.q_proj", "v.blk.{i}.attn_q"),
        new("vision_tower.vision_model.encoder.layers.{i}.self_attn.k_proj", "v.blk.{i}.attn_k"),
        new("vision_tower.vision_model.encoder.layers.{i}.self_attn.v_proj", "v.blk.{i}.attn_v"),
        new("vision_tower.vision_model.encoder.layers.{i}.self_attn.out_proj", "v.blk.{i}.attn_out"),
        new("vision_tower.vision_model.encoder.layers.{i}.layer_norm1", "v.blk.{i}.ln1"),
        new("vision_tower.vision_model.encoder.layers.{i}.layer_norm2", "v.blk.{i}.ln2"),
        new("vision_tower.vision_model.encoder.layers.{i}.mlp.fc1", "v.blk.{i}.ffn_up"),
        new("vision_tower.vision_model.encoder.layers.{i}.mlp.fc2", "v.blk.{i}.ffn_down"),
        // post_layernorm is left out (convert_image_encoder_to_gguf.py should_skip_tensor with a llava projector).
        new("multi_modal_projector.linear_1", "mm.0"),
        new("multi_modal_projector.linear_2", "mm.2"),
        new("image_newline", "v.image_newline", Exact: true),
    ];

    /// <summary>Idefics3 / SmolVLM (tensor_mapping.py's "# SmolVLM" rows).</summary>
    internal static readonly Row[] Idefics3Rows =
    [
        new("model.vision_model.embeddings.patch_embedding", "v.patch_embd"),
        new("model.vision_model.embeddings.position_embedding", "v.position_embd"),
        new("model.vision_model.encoder.layers.{i}.self_attn.q_proj", "v.blk.{i}.attn_q"),
        new("model.vision_model.encoder.layers.{i}.self_attn.k_proj", "v.blk.{i}.attn_k"),
        new("model.vision_model.encoder.layers.{i}.self_attn.v_proj", "v.blk.{i}.attn_v"),
        new("model.vision_model.encoder.layers.{i}.self_attn.out_proj", "v.blk.{i}.attn_out"),
        new("model.vision_model.encoder.layers.{i}.layer_norm1", "v.blk.{i}.ln1"),
        new("model.vision_model.encoder.layers.{i}.layer_norm2", "v.blk.{i}.ln2"),
        new("model.vision_model.encoder.layers.{i}.mlp.fc1", "v.blk.{i}.ffn_up"),
        new("model.vision_model.encoder.layers.{i}.mlp.fc2", "v.blk.{i}.ffn_down"),
        new("model.vision_model.post_layernorm", "v.post_ln"),
        new("model.connector.modality_projection.proj", "mm.model.fc"),
    ];

    /// <summary>
    /// Qwen2-VL / Qwen2.5-VL (tensor_mapping.py's "# qwen2vl" / "# qwen2.5vl" rows). <c>visual.patch_embed.proj</c> and a
    /// fused <c>attn.qkv</c> are transformed (see <see cref="HuggingFaceVisionWeights"/>); unfused <c>attn.q/k/v</c> map as rows.
    /// </summary>
    internal static readonly Row[] QwenRows =
    [
        new("visual.blocks.{i}.norm1", "v.blk.{i}.ln1"),
        new("visual.blocks.{i}.norm2", "v.blk.{i}.ln2"),
        new("visual.blocks.{i}.attn.q", "v.blk.{i}.attn_q"),
        new("visual.blocks.{i}.attn.k", "v.blk.{i}.attn_k"),
        new("visual.blocks.{i}.attn.v", "v.blk.{i}.attn_v"),
        new("visual.blocks.{i}.attn.proj", "v.blk.{i}.attn_out"),
        new("visual.blocks.{i}.mlp.fc1", "v.blk.{i}.ffn_up"),
        new("visual.blocks.{i}.mlp.fc2", "v.blk.{i}.ffn_down"),
        new("visual.blocks.{i}.mlp.gate_proj", "v.blk.{i}.ffn_gate"),
        new("visual.blocks.{i}.mlp.up_proj", "v.blk.{i}.ffn_up"),
        new("visual.blocks.{i}.mlp.down_proj", "v.blk.{i}.ffn_down"),
        new("visual.merger.ln_q", "v.post_ln"),
        new("visual.merger.mlp.0", "mm.0"),
        new("visual.merger.mlp.2", "mm.2"),
    ];

    /// <summary>
    /// Other spellings of a family's prefixes (newer transformers nest everything under <c>model.</c>): the stored
    /// prefix and the table's. LLaVA's legacy surgery takes <c>model.vision_tower</c> and <c>model.image_newline</c> as
    /// well; conversion/qwen3vl.py maps <c>model.visual.</c> back to <c>visual.</c>.
    /// </summary>
    internal static (string Stored, string Table)[] PrefixAliases(Family family) => family switch
    {
        Family.LlavaOnevision => [("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."), ("model.image_newline", "image_newline")],
        Family.Idefics3 => [],
        _ => [("model.visual.", "visual.")],
    };

    internal static Row[] RowsOf(Family family) => family switch
    {
        Family.LlavaOnevision => LlavaOnevisionRows,
        Family.Idefics3 => Idefics3Rows,
        _ => QwenRows,
    };
}

/// <summary>
/// A Hugging Face folder's vision tower and projector served under mmproj tensor names (<see cref="HuggingFaceVision"/>'s
/// tables). Most tensors are the memory-mapped safetensors as stored; Qwen-VL's fused <c>attn.qkv</c> becomes three views
/// of its row blocks (q, k, v in order, as conversion/qwenvl.py slices it), and its Conv3D patch kernel
/// [out, 3, 2, p, p] becomes <c>v.patch_embd.weight</c> (frame 0) and <c>v.patch_embd.weight.1</c> (frame 1), copied
/// once into native memory this source owns and frees on <see cref="Dispose"/>. Dtypes stay as stored.
/// </summary>
internal sealed unsafe class HuggingFaceVisionWeights : IWeightSource
{
    readonly record struct Entry(string Source, string File, GgmlType Type, long[] Dimensions, nint Data);

    readonly SafetensorsWeights store;
    readonly Dictionary<string, Entry> entries = [];
    readonly Dictionary<string, string> expected = []; // mmproj name → the Hugging Face name it would come from
    readonly List<nint> owned = [];
    bool disposed;

    public string Path { get; }

    HuggingFaceVisionWeights(string folder, SafetensorsWeights store)
    {
        Path = folder;
        this.store = store;
    }

    public static HuggingFaceVisionWeights Open(string folder, HuggingFaceVision.Family family, int blocks)
    {
        var weights = new HuggingFaceVisionWeights(folder, SafetensorsWeights.Open(folder));
        try
        {
            weights.Map(family, blocks);
            return weights;
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    (SafetensorsFile File, SafetensorsTensorInfo Tensor)? Stored(string tableName, (string Stored, string Table)[] aliases)
    {
        if (store.Find(tableName) is { } found) return found;
        foreach (var (stored, table) in aliases)
            if (tableName.StartsWith(table, StringComparison.Ordinal) && store.Find(stored + tableName[table.Length..]) is { } alias) return alias;
        return null;
    }

    void Map(HuggingFaceVision.Family family, int blocks)
    {
        var aliases = HuggingFaceVision.PrefixAliases(family);
        foreach (var row in HuggingFaceVision.RowsOf(family))
        {
            bool perBlock = row.Hf.Contains("{i}", StringComparison.Ordinal);
            for (int i = 0; i < (perBlock ? blocks : 1); i++)
            {
                foreach (string suffix in row.Exact ? new[] { "" } : new[] { ".weight", ".bias" })
                {
                    string hf = row.Hf.Replace("{i}", i.ToString(), StringComparison.Ordinal) + suffix;
                    string gguf = row.Gguf.Replace("{i}", i.ToString(), StringComparison.Ordinal) + suffix;
                    if (Stored(hf, aliases) is { } t) Add(gguf, t.File, t.Tensor, t.Tensor.Shape.Reverse().ToArray(), 0);
                    else expected.TryAdd(gguf, hf);
                }
            }
        }
        if (family is HuggingFaceVision.Family.Qwen2VL or HuggingFaceVision.Family.Qwen25VL) MapQwen(blocks, aliases);
    }

    void Add(string gguf, SafetensorsFile file, SafetensorsTensorInfo tensor, long[] dimensions, long byteOffset) =>
        entries[gguf] = new Entry(tensor.Name, file.Path, tensor.Type, dimensions, (nint)(file.TensorPointer(tensor) + byteOffset));

    void MapQwen(int blocks, (string Stored, string Table)[] aliases)
    {
        // conversion/qwenvl.py modify_tensors: qkv [3c, ...] → q, k, v = rows [0, c), [c, 2c), [2c, 3c).
        for (int i = 0; i < blocks; i++)
            foreach (string suffix in new[] { ".weight", ".bias" })
            {
                if (Stored($"visual.blocks.{i}.attn.qkv{suffix}", aliases) is not { } qkv) continue;
                var (file, t) = qkv;
                if (t.Shape.Length is not (1 or 2) || t.Shape[0] % 3 != 0)
                    throw ModelFormatException.AtTensor(file.Path, t.Name, $"shape [{string.Join(", ", t.Shape)}] is not a fused q/k/v of 3·n rows");
                long rows = t.Shape[0] / 3, columns = t.Shape.Length == 2 ? t.Shape[1] : 1;
                long blockBytes = GgmlTypes.RowBytes(t.Type, checked((int)(rows * columns)));
                long[] dimensions = t.Shape.Length == 2 ? [columns, rows] : [rows];
                string[] parts = ["attn_q", "attn_k", "attn_v"];
                for (int k = 0; k < 3; k++) Add($"v.blk.{i}.{parts[k]}{suffix}", file, t, dimensions, k * blockBytes);
            }

        // The Conv3D patch kernel [out, in, 2, kh, kw] → two Conv2D kernels [out, in, kh, kw] (data[:, :, k]).
        if (Stored("visual.patch_embed.proj.weight", aliases) is { } conv)
        {
            var (file, t) = conv;
            if (t.Shape.Length != 5) throw ModelFormatException.AtTensor(file.Path, t.Name, $"shape [{string.Join(", ", t.Shape)}] is not a Conv3D kernel [out, in, t, kh, kw]");
            if (t.Shape[2] != 2) throw ModelFormatException.AtTensor(file.Path, t.Name, $"temporal patch size {t.Shape[2]} is not supported (2, as llama.cpp's converter)");
            long outputs = t.Shape[0], inputs = t.Shape[1], area = t.Shape[3] * t.Shape[4];
            int elementBytes = (int)GgmlTypes.RowBytes(t.Type, 1);
            long areaBytes = area * elementBytes, frameBytes = outputs * inputs * areaBytes;
            byte* source = file.TensorPointer(t);
            for (int k = 0; k < 2; k++)
            {
                var frame = (byte*)NativeMemory.AlignedAlloc((nuint)frameBytes, 64);
                owned.Add((nint)frame);
                for (long oc = 0; oc < outputs * inputs; oc++)
                    Buffer.MemoryCopy(source + (oc * 2 + k) * areaBytes, frame + oc * areaBytes, areaBytes, areaBytes);
                entries[k == 0 ? "v.patch_embd.weight" : "v.patch_embd.weight.1"] =
                    new Entry(t.Name, file.Path, t.Type, [t.Shape[4], t.Shape[3], inputs, outputs], (nint)frame);
            }
        }
        else expected.TryAdd("v.patch_embd.weight", "visual.patch_embed.proj.weight");
    }

    public bool Contains(string name) => entries.ContainsKey(name);

    public long[]? Dimensions(string name) => entries.TryGetValue(name, out var e) ? e.Dimensions.ToArray() : null;

    Entry Find(string name) => entries.TryGetValue(name, out var e) ? e
        : throw ModelFormatException.AtTensor(Path, expected.GetValueOrDefault(name) ?? name, $"required tensor is missing (the mmproj's {name})");

    static long Elements(long[] dimensions) => dimensions.Aggregate(1L, (a, b) => a * b);

    public WeightMatrix Matrix(string name, int rows, int columns)
    {
        var e = Find(name);
        if (e.Dimensions.Length != 2 || e.Dimensions[0] != columns || e.Dimensions[1] != rows)
            throw ModelFormatException.AtTensor(e.File, e.Source, $"shape [{string.Join(", ", e.Dimensions.Reverse())}] does not match the expected [{rows}, {columns}] of the mmproj's {name}");
        return new WeightMatrix(name, e.Type, rows, columns, (byte*)e.Data);
    }

    public WeightMatrix Flattened(string name, int rows, int columns)
    {
        var e = Find(name);
        if (e.Dimensions.Length < 2 || e.Dimensions[^1] != rows || Elements(e.Dimensions) != (long)rows * columns)
            throw ModelFormatException.AtTensor(e.File, e.Source, $"shape [{string.Join(", ", e.Dimensions.Reverse())}] is not {rows} rows of {columns} (the mmproj's {name})");
        return new WeightMatrix(name, e.Type, rows, columns, (byte*)e.Data);
    }

    public float[] Vector(string name, int length)
    {
        var e = Find(name);
        if (Elements(e.Dimensions) != length)
            throw ModelFormatException.AtTensor(e.File, e.Source, $"has {Elements(e.Dimensions)} elements, expected {length} (the mmproj's {name})");
        var result = new float[length];
        Dequantize.Row(e.Type, new ReadOnlySpan<byte>((byte*)e.Data, checked((int)GgmlTypes.RowBytes(e.Type, length))), result);
        return result;
    }

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        foreach (nint p in owned) NativeMemory.AlignedFree((void*)p);
        owned.Clear();
        store.Dispose();
    }
}
