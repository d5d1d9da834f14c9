using System.Text.Json;
using VidKV.Cli;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;
using VidKV.Text;
using Xunit;

namespace VidKV.Tests;

/// <summary>
/// Hugging Face vision-language folders against the GGUF pair llama.cpp's converter makes of the same weights. Each case
/// writes a tiny random checkpoint twice: as a Hugging Face folder (config.json, preprocessor_config.json, safetensors,
/// tokenizer.json) with the real field and tensor names of its transformers version, and as a text GGUF + mmproj GGUF
/// by the converter's rules, written out here literally: the clip.* keys per family and one table of
/// (Hugging Face name, GGUF name, transform) rows (gguf-py/gguf/tensor_mapping.py, conversion/qwenvl.py,
/// conversion/llama.py, the legacy LLaVA scripts). The loaders' own tables are not used to write either side.
/// </summary>
public class HuggingFaceVisionTests
{
    /// <summary>How a GGUF tensor comes from its Hugging Face tensor.</summary>
    public enum Transform
    {
        /// <summary>As stored (GGUF dimensions = the reversed shape).</summary>
        None,
        /// <summary>conversion/llama.py LlamaModel.permute with the query heads (llama text only).</summary>
        PermuteQ,
        /// <summary>The same with the KV heads.</summary>
        PermuteK,
        /// <summary>conversion/qwenvl.py: rows [0, n/3) of a fused qkv.</summary>
        Q,
        /// <summary>Rows [n/3, 2n/3).</summary>
        K,
        /// <summary>Rows [2n/3, n).</summary>
        V,
        /// <summary>conversion/qwenvl.py: data[:, :, 0] of the Conv3D kernel → v.patch_embd.weight.</summary>
        Frame0,
        /// <summary>data[:, :, 1] → v.patch_embd.weight.1.</summary>
        Frame1,
    }

    public sealed record Row(string Hf, string Gguf, Transform Transform = Transform.None);

    const int TextWidth = 64, TextHeads = 4, TextKvHeads = 2, TextFfn = 128, TextLayers = 2;
    const int VisionWidth = 32, VisionHeads = 2, VisionFfn = 48;

    static readonly string[] Images = ["gradient_97x61", "pattern_64x64"];

    // ---- the language model: tensor_mapping.py's text rows; {p} the checkpoint's prefix, {head} its lm_head ----

    static readonly Row[] TextRows =
    [
        new("{p}embed_tokens.weight", "token_embd.weight"),
        new("{p}norm.weight", "output_norm.weight"),
        new("{head}", "output.weight"),
        new("{p}layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
        new("{p}layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", Transform.PermuteQ),
        new("{p}layers.{i}.self_attn.q_proj.bias", "blk.{i}.attn_q.bias", Transform.PermuteQ),
        new("{p}layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", Transform.PermuteK),
        new("{p}layers.{i}.self_attn.k_proj.bias", "blk.{i}.attn_k.bias", Transform.PermuteK),
        new("{p}layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
        new("{p}layers.{i}.self_attn.v_proj.bias", "blk.{i}.attn_v.bias"),
        new("{p}layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
        new("{p}layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
        new("{p}layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
        new("{p}layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
        new("{p}layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
    ];

    static IEnumerable<(string, long[])> TextTensors(string p, string head, bool biases, int vocab)
    {
        int headDim = TextWidth / TextHeads, kv = TextKvHeads * headDim;
        yield return ($"{p}embed_tokens.weight", [vocab, TextWidth]);
        yield return ($"{p}norm.weight", [TextWidth]);
        yield return (head, [vocab, TextWidth]);
        for (int i = 0; i < TextLayers; i++)
        {
            string l = $"{p}layers.{i}.";
            yield return (l + "input_layernorm.weight", [TextWidth]);
            yield return (l + "self_attn.q_proj.weight", [TextWidth, TextWidth]);
            yield return (l + "self_attn.k_proj.weight", [kv, TextWidth]);
            yield return (l + "self_attn.v_proj.weight", [kv, TextWidth]);
            if (biases)
            {
                yield return (l + "self_attn.q_proj.bias", [TextWidth]);
                yield return (l + "self_attn.k_proj.bias", [kv]);
                yield return (l + "self_attn.v_proj.bias", [kv]);
            }
            yield return (l + "self_attn.o_proj.weight", [TextWidth, TextWidth]);
            yield return (l + "post_attention_layernorm.weight", [TextWidth]);
            yield return (l + "mlp.gate_proj.weight", [TextFfn, TextWidth]);
            yield return (l + "mlp.up_proj.weight", [TextFfn, TextWidth]);
            yield return (l + "mlp.down_proj.weight", [TextWidth, TextFfn]);
        }
    }

    static Dictionary<string, object> TextConfig(string modelType, string architecture, int vocab, float eps, float theta) => new()
    {
        ["architectures"] = new[] { architecture }, ["model_type"] = modelType, ["hidden_size"] = TextWidth, ["intermediate_size"] = TextFfn,
        ["num_hidden_layers"] = TextLayers, ["num_attention_heads"] = TextHeads, ["num_key_value_heads"] = TextKvHeads,
        ["rms_norm_eps"] = eps, ["rope_theta"] = theta, ["max_position_embeddings"] = 4096, ["vocab_size"] = vocab, ["tie_word_embeddings"] = false,
    };

    // ---- the vision towers: one (hf, gguf, transform) table per family, {i} the block ----

    /// <summary>LLaVA-OneVision; {v} the vision tower's prefix, {m} the projector's, {n} image_newline's name.</summary>
    static readonly Row[] OnevisionRows =
    [
        new("{v}vision_model.embeddings.patch_embedding.weight", "v.patch_embd.weight"),
        new("{v}vision_model.embeddings.patch_embedding.bias", "v.patch_embd.bias"),
        new("{v}vision_model.embeddings.position_embedding.weight", "v.position_embd.weight"),
        new("{v}vision_model.encoder.layers.{i}.self_attn.q_proj.weight", "v.blk.{i}.attn_q.weight"),
        new("{v}vision_model.encoder.layers.{i}.self_attn.q_proj.bias", "v.blk.{i}.attn_q.bias"),
        new("{v}vision_model.encoder.layers.{i}.self_attn.k_proj.weight", "v.blk.{i}.attn_k.weight"),
        new("{v}vision_model.encoder.layers.{i}.self_attn.k_proj.bias", "v.blk.{i}.attn_k.bias"),
        new("{v}vision_model.encoder.layers.{i}.self_attn.v_proj.weight", "v.blk.{i}.attn_v.weight"),
        new("{v}vision_model.encoder.layers.{i}.self_attn.v_proj.bias", "v.blk.{i}.attn_v.bias"),
        new("{v}vision_model.encoder.layers.{i}.self_attn.out_proj.weight", "v.blk.{i}.attn_out.weight"),
        new("{v}vision_model.encoder.layers.{i}.self_attn.out_proj.bias", "v.blk.{i}.attn_out.bias"),
        new("{v}vision_model.encoder.layers.{i}.layer_norm1.weight", "v.blk.{i}.ln1.weight"),
        new("{v}vision_model.encoder.layers.{i}.layer_norm1.bias", "v.blk.{i}.ln1.bias"),
        new("{v}vision_model.encoder.layers.{i}.layer_norm2.weight", "v.blk.{i}.ln2.weight"),
        new("{v}vision_model.encoder.layers.{i}.layer_norm2.bias", "v.blk.{i}.ln2.bias"),
        new("{v}vision_model.encoder.layers.{i}.mlp.fc1.weight", "v.blk.{i}.ffn_up.weight"),
        new("{v}vision_model.encoder.layers.{i}.mlp.fc1.bias", "v.blk.{i}.ffn_up.bias"),
        new("{v}vision_model.encoder.layers.{i}.mlp.fc2.weight", "v.blk.{i}.ffn_down.weight"),
        new("{v}vision_model.encoder.layers.{i}.mlp.fc2.bias", "v.blk.{i}.ffn_down.bias"),
        // {v}vision_model.post_layernorm.*: skipped (convert_image_encoder_to_gguf.py, llava projector)
        new("{m}linear_1.weight", "mm.0.weight"),
        new("{m}linear_1.bias", "mm.0.bias"),
        new("{m}linear_2.weight", "mm.2.weight"),
        new("{m}linear_2.bias", "mm.2.bias"),
        new("{n}", "v.image_newline"),
    ];

    static readonly Row[] Idefics3Rows =
    [
        new("model.vision_model.embeddings.patch_embedding.weight", "v.patch_embd.weight"),
        new("model.vision_model.embeddings.patch_embedding.bias", "v.patch_embd.bias"),
        new("model.vision_model.embeddings.position_embedding.weight", "v.position_embd.weight"),
        new("model.vision_model.encoder.layers.{i}.self_attn.q_proj.weight", "v.blk.{i}.attn_q.weight"),
        new("model.vision_model.encoder.layers.{i}.self_attn.q_proj.bias", "v.blk.{i}.attn_q.bias"),
        new("model.vision_model.encoder.layers.{i}.self_attn.k_proj.weight", "v.blk.{i}.attn_k.weight"),
        new("model.vision_model.encoder.layers.{i}.self_attn.k_proj.bias", "v.blk.{i}.attn_k.bias"),
        new("model.vision_model.encoder.layers.{i}.self_attn.v_proj.weight", "v.blk.{i}.attn_v.weight"),
        new("model.vision_model.encoder.layers.{i}.self_attn.v_proj.bias", "v.blk.{i}.attn_v.bias"),
        new("model.vision_model.encoder.layers.{i}.self_attn.out_proj.weight", "v.blk.{i}.attn_out.weight"),
        new("model.vision_model.encoder.layers.{i}.self_attn.out_proj.bias", "v.blk.{i}.attn_out.bias"),
        new("model.vision_model.encoder.layers.{i}.layer_norm1.weight", "v.blk.{i}.ln1.weight"),
        new("model.vision_model.encoder.layers.{i}.layer_norm1.bias", "v.blk.{i}.ln1.bias"),
        new("model.vision_model.encoder.layers.{i}.layer_norm2.weight", "v.blk.{i}.ln2.weight"),
        new("model.vision_model.encoder.layers.{i}.layer_norm2.bias", "v.blk.{i}.ln2.bias"),
        new("model.vision_model.encoder.layers.{i}.mlp.fc1.weight", "v.blk.{i}.ffn_up.weight"),
        new("model.vision_model.encoder.layers.{i}.mlp.fc1.bias", "v.blk.{i}.ffn_up.bias"),
        new("model.vision_model.encoder.layers.{i}.mlp.fc2.weight", "v.blk.{i}.ffn_down.weight"),
        new("model.vision_model.encoder.layers.{i}.mlp.fc2.bias", "v.blk.{i}.ffn_down.bias"),
        new("model.vision_model.post_layernorm.weight", "v.post_ln.weight"),
        new("model.vision_model.post_layernorm.bias", "v.post_ln.bias"),
        new("model.connector.modality_projection.proj.weight", "mm.model.fc.weight"),
    ];

    /// <summary>Qwen2-VL / Qwen2.5-VL; {v} the tower's prefix (visual. or model.visual.).</summary>
    static readonly Row[] QwenRows =
    [
        new("{v}patch_embed.proj.weight", "v.patch_embd.weight", Transform.Frame0),
        new("{v}patch_embed.proj.weight", "v.patch_embd.weight.1", Transform.Frame1),
        new("{v}blocks.{i}.norm1.weight", "v.blk.{i}.ln1.weight"),
        new("{v}blocks.{i}.norm1.bias", "v.blk.{i}.ln1.bias"),
        new("{v}blocks.{i}.norm2.weight", "v.blk.{i}.ln2.weight"),
        new("{v}blocks.{i}.norm2.bias", "v.blk.{i}.ln2.bias"),
        new("{v}blocks.{i}.attn.qkv.weight", "v.blk.{i}.attn_q.weight", Transform.Q),
        new("{v}blocks.{i}.attn.qkv.weight", "v.blk.{i}.attn_k.weight", Transform.K),
        new("{v}blocks.{i}.attn.qkv.weight", "v.blk.{i}.attn_v.weight", Transform.V),
        new("{v}blocks.{i}.attn.qkv.bias", "v.blk.{i}.attn_q.bias", Transform.Q),
        new("{v}blocks.{i}.attn.qkv.bias", "v.blk.{i}.attn_k.bias", Transform.K),
        new("{v}blocks.{i}.attn.qkv.bias", "v.blk.{i}.attn_v.bias", Transform.V),
        new("{v}blocks.{i}.attn.proj.weight", "v.blk.{i}.attn_out.weight"),
        new("{v}blocks.{i}.attn.proj.bias", "v.blk.{i}.attn_out.bias"),
        new("{v}blocks.{i}.mlp.fc1.weight", "v.blk.{i}.ffn_up.weight"),
        new("{v}blocks.{i}.mlp.fc1.bias", "v.blk.{i}.ffn_up.bias"),
        new("{v}blocks.{i}.mlp.fc2.weight", "v.blk.{i}.ffn_down.weight"),
        new("{v}blocks.{i}.mlp.fc2.bias", "v.blk.{i}.ffn_down.bias"),
        new("{v}blocks.{i}.mlp.gate_proj.weight", "v.blk.{i}.ffn_gate.weight"),
        new("{v}blocks.{i}.mlp.gate_proj.bias", "v.blk.{i}.ffn_gate.bias"),
        new("{v}blocks.{i}.mlp.up_proj.weight", "v.blk.{i}.ffn_up.weight"),
        new("{v}blocks.{i}.mlp.up_proj.bias", "v.blk.{i}.ffn_up.bias"),
        new("{v}blocks.{i}.mlp.down_proj.weight", "v.blk.{i}.ffn_down.weight"),
        new("{v}blocks.{i}.mlp.down_proj.bias", "v.blk.{i}.ffn_down.bias"),
        new("{v}merger.ln_q.weight", "v.post_ln.weight"),
        new("{v}merger.ln_q.bias", "v.post_ln.bias"),
        new("{v}merger.mlp.0.weight", "mm.0.weight"),
        new("{v}merger.mlp.0.bias", "mm.0.bias"),
        new("{v}merger.mlp.2.weight", "mm.2.weight"),
        new("{v}merger.mlp.2.bias", "mm.2.bias"),
    ];

    static IEnumerable<(string, long[])> SiglipTensors(string p, int blocks, bool patchBias = true)
    {
        yield return (p + "embeddings.patch_embedding.weight", [VisionWidth, 3, 16, 16]);
        if (patchBias) yield return (p + "embeddings.patch_embedding.bias", [VisionWidth]);
        yield return (p + "embeddings.position_embedding.weight", [16, VisionWidth]);
        for (int i = 0; i < blocks; i++)
        {
            string l = $"{p}encoder.layers.{i}.";
            foreach (string proj in new[] { "q_proj", "k_proj", "v_proj", "out_proj" })
            {
                yield return (l + $"self_attn.{proj}.weight", [VisionWidth, VisionWidth]);
                yield return (l + $"self_attn.{proj}.bias", [VisionWidth]);
            }
            foreach (string norm in new[] { "layer_norm1", "layer_norm2" })
            {
                yield return (l + norm + ".weight", [VisionWidth]);
                yield return (l + norm + ".bias", [VisionWidth]);
            }
            yield return (l + "mlp.fc1.weight", [VisionFfn, VisionWidth]);
            yield return (l + "mlp.fc1.bias", [VisionFfn]);
            yield return (l + "mlp.fc2.weight", [VisionWidth, VisionFfn]);
            yield return (l + "mlp.fc2.bias", [VisionWidth]);
        }
        yield return (p + "post_layernorm.weight", [VisionWidth]);
        yield return (p + "post_layernorm.bias", [VisionWidth]);
    }

    static IEnumerable<(string, long[])> QwenTensors(string p, int blocks, bool qwen25, int ffn)
    {
        yield return (p + "patch_embed.proj.weight", [VisionWidth, 3, 2, 14, 14]);
        for (int i = 0; i < blocks; i++)
        {
            string l = $"{p}blocks.{i}.";
            yield return (l + "norm1.weight", [VisionWidth]);
            yield return (l + "norm2.weight", [VisionWidth]);
            if (!qwen25)
            {
                yield return (l + "norm1.bias", [VisionWidth]);
                yield return (l + "norm2.bias", [VisionWidth]);
            }
            yield return (l + "attn.qkv.weight", [3 * VisionWidth, VisionWidth]);
            yield return (l + "attn.qkv.bias", [3 * VisionWidth]);
            yield return (l + "attn.proj.weight", [VisionWidth, VisionWidth]);
            yield return (l + "attn.proj.bias", [VisionWidth]);
            string[] mlp = qwen25 ? ["gate_proj", "up_proj"] : ["fc1"];
            foreach (string up in mlp)
            {
                yield return (l + $"mlp.{up}.weight", [ffn, VisionWidth]);
                yield return (l + $"mlp.{up}.bias", [ffn]);
            }
            string down = qwen25 ? "down_proj" : "fc2";
            yield return (l + $"mlp.{down}.weight", [VisionWidth, ffn]);
            yield return (l + $"mlp.{down}.bias", [VisionWidth]);
        }
        yield return (p + "merger.ln_q.weight", [VisionWidth]);
        if (!qwen25) yield return (p + "merger.ln_q.bias", [VisionWidth]);
        yield return (p + "merger.mlp.0.weight", [4 * VisionWidth, 4 * VisionWidth]);
        yield return (p + "merger.mlp.0.bias", [4 * VisionWidth]);
        yield return (p + "merger.mlp.2.weight", [TextWidth, 4 * VisionWidth]);
        yield return (p + "merger.mlp.2.bias", [TextWidth]);
    }

    static readonly float[] Half3 = [0.5f, 0.5f, 0.5f];
    static readonly float[] ClipMean = [0.48145466f, 0.4578275f, 0.40821073f];
    static readonly float[] ClipStd = [0.26862954f, 0.26130258f, 0.27577711f];

    /// <summary>One family's tiny checkpoint: its Hugging Face side and the GGUF pair's keys.</summary>
    sealed class Case
    {
        public required string Name { get; init; }
        public required List<(string Name, long[] Shape)> Tensors { get; init; }
        public required List<Row> Rows { get; init; }
        public required Dictionary<string, object> Config { get; init; }
        public required Dictionary<string, object> Preprocessor { get; init; }
        /// <summary>The mmproj's clip.* keys, as the converter writes them for this config.</summary>
        public required Action<GgufWriter> Mmproj { get; init; }
        /// <summary>llama.cpp's text architecture; sections for qwen2vl.</summary>
        public required string TextArchitecture { get; init; }
        public int[]? Sections { get; init; }
        public float TextEps { get; init; } = 1e-6f;
        public float TextTheta { get; init; } = 1e6f;
        public GgmlType Type { get; init; } = GgmlType.F32;
        public int Shards { get; init; } = 1;
    }

    static List<Row> Expand(IEnumerable<Row> rows, int blocks, params (string Key, string Value)[] names)
    {
        var result = new List<Row>();
        foreach (var row in rows)
        {
            string hf = row.Hf, gguf = row.Gguf;
            foreach (var (k, v) in names) hf = hf.Replace(k, v);
            bool perBlock = hf.Contains("{i}");
            for (int i = 0; i < (perBlock ? blocks : 1); i++)
                result.Add(row with { Hf = hf.Replace("{i}", i.ToString()), Gguf = gguf.Replace("{i}", i.ToString()) });
        }
        return result;
    }

    static Case Build(string name, int vocab)
    {
        switch (name)
        {
            case "llava-onevision":
            case "llava-onevision-new-layout":
            {
                // transformers < 4.52 (language_model.model.*, vision_tower.*) and ≥ 4.52 (model.language_model.*, model.vision_tower.*).
                bool newer = name.EndsWith("new-layout");
                string p = newer ? "model.language_model." : "language_model.model.", head = newer ? "lm_head.weight" : "language_model.lm_head.weight";
                string v = newer ? "model.vision_tower." : "vision_tower.", m = newer ? "model.multi_modal_projector." : "multi_modal_projector.";
                string n = newer ? "model.image_newline" : "image_newline";
                int[][] pinpoints = [[64, 128], [128, 64], [128, 128], [192, 64], [64, 192]];
                var tensors = TextTensors(p, head, biases: true, vocab).Concat(SiglipTensors(v + "vision_model.", 2))
                    .Append((m + "linear_1.weight", [TextWidth, VisionWidth])).Append((m + "linear_1.bias", [TextWidth]))
                    .Append((m + "linear_2.weight", [TextWidth, TextWidth])).Append((m + "linear_2.bias", [TextWidth]))
                    .Append((n, [TextWidth])).ToList();
                return new Case
                {
                    Name = name,
                    Tensors = tensors,
                    Rows = [.. Expand(TextRows, TextLayers, ("{p}", p), ("{head}", head)), .. Expand(OnevisionRows, 2, ("{v}", v), ("{m}", m), ("{n}", n))],
                    Config = new()
                    {
                        ["architectures"] = new[] { "LlavaOnevisionForConditionalGeneration" }, ["model_type"] = "llava_onevision",
                        ["vision_feature_layer"] = -1, ["vision_feature_select_strategy"] = "full", ["image_grid_pinpoints"] = pinpoints,
                        ["text_config"] = TextConfig("qwen2", "Qwen2ForCausalLM", vocab, 1e-6f, 1e6f),
                        // As the released checkpoints: no hidden_act or layer_norm_eps (SigLIP's defaults apply).
                        ["vision_config"] = new Dictionary<string, object>
                        {
                            ["model_type"] = "siglip_vision_model", ["hidden_size"] = VisionWidth, ["image_size"] = 64, ["intermediate_size"] = VisionFfn,
                            ["num_attention_heads"] = VisionHeads, ["num_hidden_layers"] = 2, ["patch_size"] = 16, ["vision_use_head"] = false,
                        },
                    },
                    Preprocessor = new()
                    {
                        ["image_processor_type"] = "LlavaOnevisionImageProcessor", ["image_mean"] = Half3, ["image_std"] = Half3,
                        ["image_grid_pinpoints"] = pinpoints, ["size"] = new { height = 64, width = 64 },
                    },
                    Mmproj = w => w.Add("clip.has_llava_projector", true).Add("clip.projector_type", "mlp").Add("clip.vision.projection_dim", 64u)
                        .Add("clip.vision.image_size", 64u).Add("clip.vision.patch_size", 16u).Add("clip.vision.embedding_length", (uint)VisionWidth)
                        .Add("clip.vision.feed_forward_length", (uint)VisionFfn).Add("clip.vision.block_count", 2u).Add("clip.vision.attention.head_count", (uint)VisionHeads)
                        .Add("clip.vision.attention.layer_norm_epsilon", 1e-6f).Add("clip.vision.feature_layer", GgufValue.Of(new[] { 2 }))
                        .Add("clip.vision.image_grid_pinpoints", GgufValue.Of(new[] { 64, 128, 128, 64, 128, 128, 192, 64, 64, 192 }))
                        .Add("clip.vision.image_mean", GgufValue.Of(Half3)).Add("clip.vision.image_std", GgufValue.Of(Half3)).Add("clip.use_gelu", true),
                    TextArchitecture = "qwen2",
                };
            }
            case "idefics3":
            case "smolvlm":
            {
                bool smol = name == "smolvlm";
                int scale = smol ? 4 : 2;
                var tensors = TextTensors("model.text_model.", "lm_head.weight", biases: false, vocab).Concat(SiglipTensors("model.vision_model.", 2))
                    .Append(("model.connector.modality_projection.proj.weight", [TextWidth, VisionWidth * scale * scale])).ToList();
                var vision = new Dictionary<string, object>
                {
                    ["model_type"] = smol ? "smolvlm_vision" : "idefics3_vision", ["hidden_size"] = VisionWidth, ["image_size"] = 64,
                    ["intermediate_size"] = VisionFfn, ["num_attention_heads"] = VisionHeads, ["num_hidden_layers"] = 2, ["patch_size"] = 16,
                };
                if (smol) vision["layer_norm_eps"] = 1e-5;
                return new Case
                {
                    Name = name,
                    Tensors = tensors,
                    Rows = [.. Expand(TextRows, TextLayers, ("{p}", "model.text_model."), ("{head}", "lm_head.weight")), .. Expand(Idefics3Rows, 2)],
                    Config = new()
                    {
                        ["architectures"] = new[] { smol ? "SmolVLMForConditionalGeneration" : "Idefics3ForConditionalGeneration" },
                        ["model_type"] = smol ? "smolvlm" : "idefics3", ["scale_factor"] = scale,
                        ["text_config"] = TextConfig("llama", smol ? "VLlama3ForCausalLM" : "LlamaForCausalLM", vocab, 1e-5f, 10000f),
                        ["vision_config"] = vision,
                    },
                    Preprocessor = new()
                    {
                        ["image_processor_type"] = "Idefics3ImageProcessor", ["image_mean"] = Half3, ["image_std"] = Half3, ["do_image_splitting"] = true,
                        ["size"] = new { longest_edge = 192 }, ["max_image_size"] = new { longest_edge = 64 },
                    },
                    Mmproj = w => w.Add("clip.projector_type", "idefics3").Add("clip.vision.projection_dim", 64u)
                        .Add("clip.vision.image_size", 64u).Add("clip.vision.patch_size", 16u).Add("clip.vision.embedding_length", (uint)VisionWidth)
                        .Add("clip.vision.feed_forward_length", (uint)VisionFfn).Add("clip.vision.block_count", 2u).Add("clip.vision.attention.head_count", (uint)VisionHeads)
                        .Add("clip.vision.attention.layer_norm_epsilon", smol ? 1e-5f : 1e-6f).Add("clip.vision.projector.scale_factor", (uint)scale)
                        .Add("clip.use_gelu", true).Add("clip.vision.preproc_image_size", 192u)
                        .Add("clip.vision.image_mean", GgufValue.Of(Half3)).Add("clip.vision.image_std", GgufValue.Of(Half3)),
                    TextArchitecture = "llama",
                    TextEps = 1e-5f,
                    TextTheta = 10000f,
                };
            }
            case "qwen2-vl":
            {
                // transformers < 4.52: text fields at the top, model.* / lm_head, visual.*; rope_scaling type mrope.
                const int blocks = 2, ffn = 4 * VisionWidth;
                var tensors = TextTensors("model.", "lm_head.weight", biases: true, vocab).Concat(QwenTensors("visual.", blocks, false, ffn)).ToList();
                var config = TextConfig("qwen2_vl", "Qwen2VLForConditionalGeneration", vocab, 1e-6f, 1e6f);
                config["rope_scaling"] = new { type = "mrope", mrope_section = new[] { 2, 3, 3 } };
                config["vision_config"] = new Dictionary<string, object>
                {
                    ["depth"] = blocks, ["embed_dim"] = VisionWidth, ["mlp_ratio"] = 4, ["num_heads"] = VisionHeads, ["in_chans"] = 3,
                    ["hidden_size"] = TextWidth, ["patch_size"] = 14, ["spatial_merge_size"] = 2, ["spatial_patch_size"] = 14, ["temporal_patch_size"] = 2,
                };
                return new Case
                {
                    Name = name,
                    Tensors = tensors,
                    Rows = [.. Expand(TextRows, TextLayers, ("{p}", "model."), ("{head}", "lm_head.weight")), .. Expand(QwenRows, blocks, ("{v}", "visual."))],
                    Config = config,
                    Preprocessor = new()
                    {
                        ["image_processor_type"] = "Qwen2VLImageProcessor", ["min_pixels"] = 3136, ["max_pixels"] = 12845056, ["patch_size"] = 14,
                        ["temporal_patch_size"] = 2, ["merge_size"] = 2, ["image_mean"] = ClipMean, ["image_std"] = ClipStd,
                    },
                    // feed_forward_length is the vision config's hidden_size (the text width), as conversion/qwenvl.py renames it.
                    Mmproj = w => w.Add("clip.projector_type", "qwen2vl_merger").Add("clip.vision.projection_dim", 64u)
                        .Add("clip.vision.image_size", 560u).Add("clip.vision.patch_size", 14u).Add("clip.vision.embedding_length", (uint)VisionWidth)
                        .Add("clip.vision.feed_forward_length", (uint)TextWidth).Add("clip.vision.block_count", (uint)blocks).Add("clip.vision.attention.head_count", (uint)VisionHeads)
                        .Add("clip.vision.attention.layer_norm_epsilon", 1e-6f)
                        .Add("clip.vision.image_mean", GgufValue.Of(ClipMean)).Add("clip.vision.image_std", GgufValue.Of(ClipStd)),
                    TextArchitecture = "qwen2vl",
                    Sections = [2, 3, 3, 0],
                };
            }
            case "qwen2.5-vl":
            {
                // transformers ≥ 4.52: text_config, model.language_model.* / lm_head, model.visual.*; bf16, two shards.
                const int blocks = 4;
                var tensors = TextTensors("model.language_model.", "lm_head.weight", biases: true, vocab).Concat(QwenTensors("model.visual.", blocks, true, VisionFfn)).ToList();
                var text = TextConfig("qwen2_5_vl_text", "Qwen2_5_VLForConditionalGeneration", vocab, 1e-6f, 1e6f);
                text["rope_scaling"] = new { type = "default", mrope_section = new[] { 2, 3, 3 }, rope_type = "default" };
                return new Case
                {
                    Name = name,
                    Tensors = tensors,
                    Rows = [.. Expand(TextRows, TextLayers, ("{p}", "model.language_model."), ("{head}", "lm_head.weight")), .. Expand(QwenRows, blocks, ("{v}", "model.visual."))],
                    Config = new()
                    {
                        ["architectures"] = new[] { "Qwen2_5_VLForConditionalGeneration" }, ["model_type"] = "qwen2_5_vl", ["text_config"] = text,
                        ["vision_config"] = new Dictionary<string, object>
                        {
                            ["depth"] = blocks, ["hidden_act"] = "silu", ["hidden_size"] = VisionWidth, ["intermediate_size"] = VisionFfn, ["num_heads"] = VisionHeads,
                            ["in_chans"] = 3, ["out_hidden_size"] = TextWidth, ["patch_size"] = 14, ["spatial_merge_size"] = 2, ["spatial_patch_size"] = 14,
                            ["window_size"] = 112, ["fullatt_block_indexes"] = new[] { 1, 3 }, ["tokens_per_second"] = 2, ["temporal_patch_size"] = 2,
                        },
                    },
                    Preprocessor = new()
                    {
                        ["image_processor_type"] = "Qwen2VLImageProcessor", ["min_pixels"] = 3136, ["max_pixels"] = 12845056, ["patch_size"] = 14,
                        ["temporal_patch_size"] = 2, ["merge_size"] = 2, ["image_mean"] = ClipMean, ["image_std"] = ClipStd,
                    },
                    // n_wa_pattern = fullatt_block_indexes[0] + 1; the top level has no rms_norm_eps, so the tower's eps is 1e-6.
                    Mmproj = w => w.Add("clip.projector_type", "qwen2.5vl_merger").Add("clip.vision.projection_dim", 64u)
                        .Add("clip.vision.image_size", 560u).Add("clip.vision.patch_size", 14u).Add("clip.vision.embedding_length", (uint)VisionWidth)
                        .Add("clip.vision.feed_forward_length", (uint)VisionFfn).Add("clip.vision.block_count", (uint)blocks).Add("clip.vision.attention.head_count", (uint)VisionHeads)
                        .Add("clip.vision.attention.layer_norm_epsilon", 1e-6f).Add("clip.use_silu", true).Add("clip.vision.n_wa_pattern", 2u)
                        .Add("clip.vision.image_mean", GgufValue.Of(ClipMean)).Add("clip.vision.image_std", GgufValue.Of(ClipStd)),
                    TextArchitecture = "qwen2vl",
                    Sections = [2, 3, 3, 0],
                    Type = GgmlType.BF16,
                    Shards = 2,
                };
            }
            default: throw new ArgumentException(name);
        }
    }

    // ---- the vocabulary: byte-level BPE with the special tokens the image layouts look up ----

    static readonly string[] Specials =
    [
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
        "<fake_token_around_image>", "<global-img>",
        .. Enumerable.Range(1, 6).SelectMany(r => Enumerable.Range(1, 6).Select(c => $"<row_{r}_col_{c}>")),
    ];

    static (string[] Tokens, int[] Types, string[] Merges) Vocab()
    {
        var tokens = Enumerable.Range(0, 256).Select(b => ByteLevelBpeTokenizer.ByteSymbol((byte)b).ToString()).ToList();
        var merges = new List<string>();
        foreach (string word in new[] { "\n\n", " the", " image", "describe", " look", " this", "look" })
        {
            string built = ByteLevelBpeTokenizer.ByteSymbol((byte)word[0]).ToString();
            foreach (char ch in word[1..])
            {
                string next = ByteLevelBpeTokenizer.ByteSymbol((byte)ch).ToString();
                if (!tokens.Contains(built + next)) { merges.Add($"{built} {next}"); tokens.Add(built + next); }
                built += next;
            }
        }
        int regular = tokens.Count;
        tokens.AddRange(Specials);
        return ([.. tokens], tokens.Select((_, i) => i < regular ? (int)TokenType.Normal : (int)TokenType.Control).ToArray(), [.. merges]);
    }

    // ---- random values and the transforms ----

    static float[] Values(string name, long[] shape)
    {
        long count = shape.Aggregate(1L, (a, b) => a * b);
        ulong seed = 14695981039346656037UL;
        foreach (char c in name) seed = (seed ^ c) * 1099511628211UL;
        var random = new Random((int)(seed ^ (seed >> 32)));
        double Normal() => Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
        bool vector = shape.Length == 1;
        bool norm = vector && (name.Contains("norm") || name.Contains("ln_q")) && name.EndsWith(".weight");
        float mean = norm ? 1f : 0f;
        double std = norm ? 0.1 : name.EndsWith(".bias") ? 0.1 : name.Contains("embed_tokens") ? 1.0
            : name.Contains("position_embedding") || name.Contains("image_newline") ? 0.5 : 1 / Math.Sqrt(count / shape[0]);
        if (name.EndsWith("model.norm.weight") || name.EndsWith("language_model.norm.weight") || name.EndsWith("text_model.norm.weight")) { mean = 4; std = 0.4; }
        var values = new float[count];
        for (long i = 0; i < count; i++) values[i] = mean + (float)(std * Normal());
        return values;
    }

    static float[] Rounded(float[] values, GgmlType type)
    {
        if (type == GgmlType.F32) return values;
        var bytes = new byte[GgmlTypes.RowBytes(type, values.Length)];
        Quantize.Row(type, values, bytes);
        var result = new float[values.Length];
        Dequantize.Row(type, bytes, result);
        return result;
    }

    /// <summary>A Hugging Face tensor (values, row-major shape) → the GGUF tensor (values, ggml dimensions) of a row.</summary>
    static (float[] Values, long[] Dimensions) Apply(Row row, float[] values, long[] shape, string architecture)
    {
        long[] Reversed(long[] s) => s.Reverse().ToArray();
        switch (row.Transform)
        {
            case Transform.PermuteQ or Transform.PermuteK when architecture == "llama":
            {
                // LlamaModel.permute: reshape(heads, 2, rows/heads/2, ...).swapaxes(1, 2): row (h, j, i) → (h, i, j).
                int heads = row.Transform == Transform.PermuteQ ? TextHeads : TextKvHeads;
                long rows = shape[0], columns = shape.Length > 1 ? shape[1] : 1, half = rows / heads / 2;
                var result = new float[values.Length];
                for (int h = 0; h < heads; h++)
                    for (int j = 0; j < 2; j++)
                        for (long i = 0; i < half; i++)
                            Array.Copy(values, (h * 2 * half + j * half + i) * columns, result, (h * 2 * half + i * 2 + j) * columns, columns);
                return (result, Reversed(shape));
            }
            case Transform.Q or Transform.K or Transform.V:
            {
                long rows = shape[0] / 3, columns = shape.Length > 1 ? shape[1] : 1;
                int part = row.Transform - Transform.Q;
                long[] sliced = shape.Length > 1 ? [rows, columns] : [rows];
                return (values.AsSpan((int)(part * rows * columns), (int)(rows * columns)).ToArray(), Reversed(sliced));
            }
            case Transform.Frame0 or Transform.Frame1:
            {
                int frame = row.Transform - Transform.Frame0;
                long outerCount = shape[0] * shape[1], area = shape[3] * shape[4];
                var result = new float[outerCount * area];
                for (long o = 0; o < outerCount; o++) Array.Copy(values, (o * 2 + frame) * area, result, o * area, area);
                return (result, Reversed([shape[0], shape[1], shape[3], shape[4]]));
            }
            default:
                return (values, Reversed(shape));
        }
    }

    /// <summary>Writes the Hugging Face folder and the GGUF pair of one case; returns (folder, text GGUF, mmproj GGUF).</summary>
    static (string Folder, string Text, string Mmproj) Write(string name, string root)
    {
        var (tokens, types, merges) = Vocab();
        var c = Build(name, tokens.Length);
        string folder = Path.Combine(root, "hf"), textPath = Path.Combine(root, "text.gguf"), mmprojPath = Path.Combine(root, "mmproj.gguf");
        Directory.CreateDirectory(folder);
        // Values as the checkpoint's dtype holds them, so the GGUF's f32 vectors (the converter keeps norms and biases
        // in f32) hold the same numbers.
        var values = c.Tensors.ToDictionary(t => t.Name, t => Rounded(Values(t.Name, t.Shape), c.Type));
        var shapes = c.Tensors.ToDictionary(t => t.Name, t => t.Shape);

        // The Hugging Face side: shards in tensor order, an index when there are several.
        var map = new Dictionary<string, string>();
        for (int s = 0; s < c.Shards; s++)
        {
            string file = c.Shards == 1 ? "model.safetensors" : $"model-{s + 1:D5}-of-{c.Shards:D5}.safetensors";
            var writer = new SafetensorsWriter();
            for (int i = s; i < c.Tensors.Count; i += c.Shards)
            {
                var (tensor, shape) = c.Tensors[i];
                writer.Add(tensor, c.Type, shape, values[tensor]);
                map[tensor] = file;
            }
            writer.Write(Path.Combine(folder, file), new Dictionary<string, string> { ["format"] = "pt" });
        }
        if (c.Shards > 1)
            File.WriteAllText(Path.Combine(folder, "model.safetensors.index.json"), JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = map }));
        File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(c.Config));
        File.WriteAllText(Path.Combine(folder, "preprocessor_config.json"), JsonSerializer.Serialize(c.Preprocessor));

        // The GGUF pair: every row whose Hugging Face tensor the checkpoint has.
        var text = new GgufWriter();
        string a = c.TextArchitecture;
        text.Add("general.architecture", a).Add($"{a}.block_count", (uint)TextLayers).Add($"{a}.context_length", 4096u)
            .Add($"{a}.embedding_length", (uint)TextWidth).Add($"{a}.feed_forward_length", (uint)TextFfn).Add($"{a}.attention.head_count", (uint)TextHeads)
            .Add($"{a}.attention.head_count_kv", (uint)TextKvHeads).Add($"{a}.rope.freq_base", c.TextTheta).Add($"{a}.attention.layer_norm_rms_epsilon", c.TextEps);
        if (c.Sections != null) text.Add($"{a}.rope.dimension_sections", GgufValue.Of(c.Sections));
        text.Add("tokenizer.ggml.model", "gpt2").Add("tokenizer.ggml.pre", "qwen2").Add("tokenizer.ggml.tokens", GgufValue.Of(tokens))
            .Add("tokenizer.ggml.token_type", GgufValue.Of(types)).Add("tokenizer.ggml.merges", GgufValue.Of(merges))
            .Add("tokenizer.ggml.bos_token_id", 256u + (uint)merges.Length).Add("tokenizer.ggml.eos_token_id", 256u + (uint)merges.Length + 2)
            .Add("tokenizer.ggml.add_bos_token", false);
        var mmproj = new GgufWriter();
        mmproj.Add("general.architecture", "clip").Add("clip.has_vision_encoder", true);
        c.Mmproj(mmproj);
        foreach (var row in c.Rows)
        {
            if (!values.TryGetValue(row.Hf, out var hfValues)) continue;
            var (ggufValues, dimensions) = Apply(row, hfValues, shapes[row.Hf], a);
            (row.Gguf.StartsWith("v.") || row.Gguf.StartsWith("mm.") ? mmproj : text).AddTensor(row.Gguf, dimensions.Length == 1 ? GgmlType.F32 : c.Type, dimensions, ggufValues);
        }
        text.Write(textPath);
        mmproj.Write(mmprojPath);
        using (var model = ModelLoader.Load(textPath)) HuggingFaceTests.WriteTokenizer(model.Vocabulary, folder);
        return (folder, textPath, mmprojPath);
    }

    public static TheoryData<string> Families => new() { "llava-onevision", "llava-onevision-new-layout", "idefics3", "smolvlm", "qwen2-vl", "qwen2.5-vl" };

    static string Json(object value) => JsonSerializer.Serialize(value, new JsonSerializerOptions { IncludeFields = true });

    /// <summary>
    /// The folder loads to the GGUF pair's configs, the same prompt chunks (text tokens and image embeddings of both test
    /// images, bit for bit) and the same greedy continuation.
    /// </summary>
    [Theory]
    [MemberData(nameof(Families))]
    public void FolderGivesWhatTheGgufPairGives(string family)
    {
        using var dir = new TempDirectory();
        var (folder, textPath, mmprojPath) = Write(family, dir.Path);

        using var ggufText = ModelLoader.Load(textPath);
        using var hfText = ModelLoader.Load(folder);
        using var ggufVision = VisionModel.Load(mmprojPath);
        using var hfVision = VisionModel.Load(folder);

        Assert.Equal(Json(ggufVision.Config), Json(hfVision.Config));
        Assert.Equal(ggufText.Config with { RopeMode = RopeMode.NeoX, RopeSections = null }, hfText.Config with { RopeSections = null });
        Assert.Equal(ggufText.Config.RopeSections, hfText.Config.RopeSections);
        if (family.StartsWith("qwen")) Assert.Equal(new[] { 2, 3, 3, 0 }, hfText.Config.RopeSections!);
        Assert.Equal(ggufVision.ImageNewline, hfVision.ImageNewline);

        foreach (string image in Images)
        {
            var picture = ImageReader.Read(TestData.File_($"vision/images/{image}.ppm"));
            string prompt = $"look: {MediaPrompt.Marker} describe the image";
            var expected = MediaPrompt.Build(ggufText, ggufVision, prompt, [picture]).Chunks;
            var actual = MediaPrompt.Build(hfText, hfVision, prompt, [picture]).Chunks;
            Assert.Equal(expected.Count, actual.Count);
            Assert.Contains(actual, chunk => chunk is EmbeddingChunk);
            for (int i = 0; i < expected.Count; i++)
            {
                if (expected[i] is TextChunk t) Assert.Equal(t.Tokens, Assert.IsType<TextChunk>(actual[i]).Tokens);
                else
                {
                    var e = (EmbeddingChunk)expected[i];
                    var h = Assert.IsType<EmbeddingChunk>(actual[i]);
                    Assert.Equal((e.Width, e.GridColumns, e.Rows.Length), (h.Width, h.GridColumns, h.Rows.Length));
                    for (int k = 0; k < e.Rows.Length; k++)
                        Assert.True(BitConverter.SingleToInt32Bits(e.Rows[k]) == BitConverter.SingleToInt32Bits(h.Rows[k]),
                            $"{family} {image} chunk {i} value {k}: gguf {e.Rows[k]} vs folder {h.Rows[k]}");
                }
            }

            int[] Greedy(DecoderModel model, IReadOnlyList<PromptChunk> chunks)
            {
                using var state = model.CreateState(512);
                return Generator.Generate(model, state, chunks, 8, new Sampler(SamplingOptions.Greedy)).Select(t => t.Id).ToArray();
            }
            var ids = Greedy(ggufText, expected);
            Assert.Equal(ids, Greedy(hfText, actual));
            Assert.NotEmpty(ids);
        }
    }

    /// <summary>The mmproj keys the folder gives are the keys the converter writes (a spot check of the table itself).</summary>
    [Fact]
    public void Qwen2VlFeedForwardKeyIsTheTextWidthAsTheConverterWritesIt()
    {
        using var dir = new TempDirectory();
        var (folder, _, _) = Write("qwen2-vl", dir.Path);
        var keys = HuggingFaceVision.MmprojKeys(folder);
        Assert.Equal((long)TextWidth, keys["clip.vision.feed_forward_length"].AsInt64());
        Assert.Equal("qwen2vl_merger", keys["clip.projector_type"].AsString());
        Assert.Equal(560L, keys["clip.vision.image_size"].AsInt64());
    }

    /// <summary>LLaVA's feature layer counts from the end and cuts the blocks; Qwen2.5-VL's full-attention blocks must be evenly spaced.</summary>
    [Fact]
    public void FeatureLayerAndWindowPatternFollowTheConverter()
    {
        using var dir = new TempDirectory();
        var (folder, _, _) = Write("llava-onevision", dir.Path);
        string configPath = Path.Combine(folder, "config.json");
        File.WriteAllText(configPath, File.ReadAllText(configPath).Replace("\"vision_feature_layer\":-1", "\"vision_feature_layer\":-2"));
        var keys = HuggingFaceVision.MmprojKeys(folder);
        Assert.Equal(1L, keys["clip.vision.block_count"].AsInt64());
        Assert.Equal(new[] { 1 }, keys["clip.vision.feature_layer"].AsArray().AsInt32s());
        using (var vision = VisionModel.Load(folder)) Assert.Equal(1, vision.Config.BlockCount);

        using var dir2 = new TempDirectory();
        var (qwen, _, _) = Write("qwen2.5-vl", dir2.Path);
        configPath = Path.Combine(qwen, "config.json");
        Assert.Equal(2L, HuggingFaceVision.MmprojKeys(qwen)["clip.vision.n_wa_pattern"].AsInt64());
        File.WriteAllText(configPath, File.ReadAllText(configPath).Replace("\"fullatt_block_indexes\":[1,3]", "\"fullatt_block_indexes\":[1,2]"));
        var e = Assert.Throws<ModelFormatException>(() => VisionModel.Load(qwen));
        Assert.Equal($"{configPath}: field 'vision_config.fullatt_block_indexes' = [1, 2] is not one full-attention block in every 2", e.Message);
    }

    /// <summary>-m FOLDER --image runs without --mmproj: the folder is its own vision source.</summary>
    [Fact]
    public void GenerateTakesTheFoldersVisionTower()
    {
        using var dir = new TempDirectory();
        var (folder, _, _) = Write("llava-onevision", dir.Path);
        var stderr = new StringWriter();
        int code = CliRunner.Run(CliApp.BuildRoot(),
            ["generate", "-m", folder, "--image", TestData.File_("vision/images/pattern_64x64.png"), "-p", "describe", "-n", "2", "--temp", "0"], stderr);
        Assert.True(code == 0, stderr.ToString());
    }

    /// <summary>A vision-language folder without vision_config: one line naming config.json and the field, exit code 2.</summary>
    [Theory]
    [InlineData("llava-onevision")]
    [InlineData("qwen2-vl")]
    public void MissingVisionConfigIsOneLineAndExitCode2(string family)
    {
        using var dir = new TempDirectory();
        var (folder, _, _) = Write(family, dir.Path);
        string configPath = Path.Combine(folder, "config.json");
        var config = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(File.ReadAllText(configPath))!;
        config.Remove("vision_config");
        File.WriteAllText(configPath, JsonSerializer.Serialize(config));

        var stderr = new StringWriter();
        Assert.Equal(2, CliRunner.Run(CliApp.BuildRoot(),
            ["generate", "-m", folder, "--image", TestData.File_("vision/images/pattern_64x64.png"), "-p", "describe", "-n", "1"], stderr));
        string[] lines = stderr.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Contains($"{configPath}: field 'vision_config' is missing", lines[0]);

        var e = Assert.Throws<ModelFormatException>(() => VisionModel.Load(folder));
        Assert.StartsWith($"{configPath}: field 'vision_config' is missing", e.Message);
    }

    /// <summary>A tensor the table needs and the checkpoint lacks is named by its Hugging Face name.</summary>
    [Fact]
    public void MissingTowerTensorIsNamedByItsHuggingFaceName()
    {
        using var dir = new TempDirectory();
        var (folder, _, _) = Write("idefics3", dir.Path);
        string path = Path.Combine(folder, "model.safetensors");
        using (var file = SafetensorsFile.Open(path))
        {
            var writer = new SafetensorsWriter();
            foreach (var t in file.Tensors.Values.Where(t => t.Name != "model.vision_model.encoder.layers.1.self_attn.k_proj.weight"))
            {
                var v = new float[t.ElementCount];
                Dequantize.Row(t.Type, file.TensorData(t), v);
                writer.Add(t.Name, t.Type, t.Shape, v);
            }
            writer.Write(path + ".new");
        }
        File.Move(path + ".new", path, overwrite: true);
        var e = Assert.Throws<ModelFormatException>(() => VisionModel.Load(folder));
        Assert.Equal($"{folder}: tensor 'model.vision_model.encoder.layers.1.self_attn.k_proj.weight': required tensor is missing (the mmproj's v.blk.1.attn_k.weight)", e.Message);
    }
}
