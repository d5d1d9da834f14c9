using VidKV.Formats;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// The vision half of a <see cref="RandomVisionShape"/>: the <c>clip.vision.*</c> hyper-parameters of an mmproj file
/// (see <see cref="VisionConfig"/> for their meaning). The projector's output width is the text model's embedding length.
/// </summary>
internal sealed record VisionTowerShape
{
    public required VisionProjector Projector { get; init; }
    public required int ImageSize { get; init; }
    public required int PatchSize { get; init; }
    public required int Width { get; init; }
    public required int Blocks { get; init; }
    public required int Heads { get; init; }
    public required int FeedForward { get; init; }
    public required float NormEps { get; init; }
    public required float[] ImageMean { get; init; }
    public required float[] ImageStd { get; init; }
    public required VisionActivation Activation { get; init; }
    /// <summary>Idefics3's pixel-shuffle scale factor or Qwen-VL's spatial merge; 1 for none.</summary>
    public int MergeFactor { get; init; } = 1;
    /// <summary>Idefics3's <c>clip.vision.preproc_image_size</c>; 0 for none.</summary>
    public int LongestEdge { get; init; }
    /// <summary>LLaVA's <c>clip.vision.feature_layer</c>; empty for none.</summary>
    public int[] FeatureLayers { get; init; } = [];
    /// <summary>LLaVA's <c>clip.vision.image_grid_pinpoints</c>, flat (width, height) pairs; empty for none.</summary>
    public int[] GridPinpoints { get; init; } = [];
    /// <summary>Qwen2.5-VL's <c>clip.vision.n_wa_pattern</c>; 0 for none.</summary>
    public int WindowAttentionPattern { get; init; }

    /// <summary>Qwen-VL towers: RMSNorm (2.5) or LayerNorm (2), no position embeddings, a two-frame patch kernel.</summary>
    public bool IsQwen => Projector is VisionProjector.Qwen2VL or VisionProjector.Qwen25VL;
}

/// <summary>
/// A vision-language model's shape: a text GGUF (<see cref="Text"/>) and an mmproj GGUF (<see cref="Vision"/>) whose
/// projector writes rows of the text model's embedding width, as llama.cpp's mtmd requires.
/// </summary>
internal sealed record RandomVisionShape(string Name, RandomModelShape Text, VisionTowerShape Vision)
{
    static readonly float[] Half3 = [0.5f, 0.5f, 0.5f];
    // OpenAI CLIP's statistics, which Qwen2-VL's and Qwen2.5-VL's preprocessor_config.json use.
    static readonly float[] ClipMean = [0.48145466f, 0.4578275f, 0.40821073f];
    static readonly float[] ClipStd = [0.26862954f, 0.26130258f, 0.27577711f];

    /// <summary>SmolVLM's vocabulary: SmolVLM2's added tokens (<c>&lt;fake_token_around_image&gt;</c>, <c>&lt;global-img&gt;</c>, <c>&lt;row_r_col_c&gt;</c>, <c>&lt;image&gt;</c>, <c>&lt;end_of_utterance&gt;</c>), "\n\n" for mtmd's overview prefix, SmolVLM's template (llama.cpp's <c>smolvlm</c>).</summary>
    public static SyntheticVocabularyOptions SmolVlmVocabulary { get; } = new()
    {
        SpecialTokens =
        [
            "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>", "<image>",
            .. Enumerable.Range(1, 6).SelectMany(r => Enumerable.Range(1, 6).Select(c => $"<row_{r}_col_{c}>")),
        ],
        ExtraTokens = ["ĊĊ"],
        // SmolVLM2's template in substance: <|im_start|> as BOS, "User: …<end_of_utterance>\n", "Assistant:" (llama.cpp
        // detects it by <|im_start|> together with <end_of_utterance>).
        ChatTemplate = "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}{% if message['content'] is string %}{{ ': ' + message['content'] }}"
            + "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}{% for part in message['content'] %}"
            + "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
            + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
        Bos = "<|im_start|>",
        Eos = "<end_of_utterance>",
        Padding = "<|im_end|>",
    };

    /// <summary>LLaVA-OneVision's vocabulary: Qwen2's ChatML tokens plus <c>&lt;image&gt;</c> and <c>&lt;video&gt;</c>; a ChatML template (llama.cpp's <c>chatml</c>).</summary>
    public static SyntheticVocabularyOptions LlavaVocabulary { get; } = new()
    {
        SpecialTokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        ChatTemplate = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}{% if message['content'] is string %}{{ message['content'] }}"
            + "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\\n' }}{% elif part['type'] == 'video' %}{{ '<video>\\n' }}"
            + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        Bos = "<|endoftext|>",
        Eos = "<|im_end|>",
        Padding = "<|endoftext|>",
    };

    /// <summary>Qwen2-VL / Qwen2.5-VL's vocabulary: ChatML plus the vision markers mtmd wraps images in; a Qwen-VL ChatML template (llama.cpp's <c>chatml</c>).</summary>
    public static SyntheticVocabularyOptions QwenVlVocabulary { get; } = new()
    {
        SpecialTokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"],
        ChatTemplate = "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
            + "{{ '<|im_start|>' + message['role'] + '\\n' }}{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
            + "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% elif part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
            + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        Bos = "<|endoftext|>",
        Eos = "<|im_end|>",
        Padding = "<|endoftext|>",
    };

    /// <summary>
    /// SmolVLM2-256M (HuggingFaceTB/SmolVLM2-256M-Video-Instruct). Vision: SigLIP-B/16 at 512 (google/siglip-base-patch16-512:
    /// 12 blocks, width 768, 12 heads, FFN 3072, patch 16, GELU tanh, LayerNorm eps 1e-6, mean/std 0.5), idefics3 pixel
    /// shuffle by <c>scale_factor</c> 4 (32² patches → 64 tokens), <c>mm.model.fc</c> 12288 → 576; preproc_image_size 2048 =
    /// the preprocessor_config's <c>size.longest_edge</c> (its <c>max_image_size.longest_edge</c> 512 is the tile).
    /// Text: SmolLM2-135M's shape (HuggingFaceTB/SmolLM2-135M config.json: llama, 30 layers, 576, 9 heads, 3 KV heads,
    /// FFN 1536, rope base 100000, RMS eps 1e-5, 8192 context) with SmolVLM2's 49280 tokens. The output is NOT tied here:
    /// SmolLM2-135M ties it, but SmolVLM2-256M's model.safetensors (1.03 GB of F32) holds ~257 M parameters, which only an
    /// untied lm_head (+28 M) makes add up (tied: ~228 M).
    /// </summary>
    public static readonly RandomVisionShape SmolVlm2_256M = new("smolvlm2-256m",
        new RandomModelShape("smolvlm2-256m-text", "llama", 30, 576, 9, 3, 1536, 49280, false, false, 8192, 100000f, 1e-5f) { Vocabulary = SmolVlmVocabulary },
        new VisionTowerShape
        {
            Projector = VisionProjector.Idefics3, ImageSize = 512, PatchSize = 16, Width = 768, Blocks = 12, Heads = 12, FeedForward = 3072,
            NormEps = 1e-6f, ImageMean = Half3, ImageStd = Half3, Activation = VisionActivation.Gelu, MergeFactor = 4, LongestEdge = 2048,
        });

    /// <summary>
    /// LLaVA-OneVision-0.5B (llava-hf/llava-onevision-qwen2-0.5b-ov-hf). Vision: SigLIP so400m/14 at 384 with the last of
    /// its 27 blocks removed, as the checkpoint ships it (vision_config: 26 layers, width 1152, 16 heads, FFN 4304,
    /// patch 14 → 27×27 = 729 patches, eps 1e-6, mean/std 0.5), <c>vision_feature_layer</c> −1, which llama.cpp's LLaVA
    /// converter (tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py) writes as block_count 26 and
    /// <c>feature_layer</c> [26] (run all 26 blocks, no post-LayerNorm: the converter drops it); <c>mlp</c> projector
    /// <c>mm.0</c> 1152 → 896, GELU, <c>mm.2</c> 896 → 896; anyres pinpoints = OneVision's grid list, 384·(1…6) ×
    /// 384·(1…6) in the config's order. <c>clip.use_gelu</c> is true (SigLIP's tanh GELU; the legacy converter would write
    /// false for <c>gelu_pytorch_tanh</c>). Text: Qwen2-0.5B (<see cref="RandomModelShape.Qwen2_0_5B"/>).
    /// </summary>
    public static readonly RandomVisionShape LlavaOneVision_0_5B = new("llava-onevision-0.5b",
        RandomModelShape.Qwen2_0_5B with { Name = "llava-onevision-0.5b-text", Vocabulary = LlavaVocabulary },
        new VisionTowerShape
        {
            Projector = VisionProjector.Mlp, ImageSize = 384, PatchSize = 14, Width = 1152, Blocks = 26, Heads = 16, FeedForward = 4304,
            NormEps = 1e-6f, ImageMean = Half3, ImageStd = Half3, Activation = VisionActivation.Gelu, FeatureLayers = [26],
            GridPinpoints = [.. Enumerable.Range(1, 6).SelectMany(a => Enumerable.Range(1, 6).SelectMany(b => new[] { 384 * a, 384 * b }))],
        });

    /// <summary>
    /// Qwen2.5-VL-3B (Qwen/Qwen2.5-VL-3B-Instruct config.json). Vision: 32 blocks, width 1280, 16 heads, SwiGLU FFN 3420
    /// with biases, RMSNorm eps 1e-6, patch 14 with temporal patch 2 (a Conv3D llama.cpp stores as two 2-D kernels
    /// <c>v.patch_embd.weight</c> and <c>.weight.1</c>, no bias), window attention with full attention at blocks 7, 15, 23,
    /// 31 (<c>n_wa_pattern</c> 8; window 112 px is llama.cpp's built-in default, not a key), 2×2 merger
    /// (<c>v.post_ln</c> RMSNorm, <c>mm.0</c> 5120 → 5120, GELU, <c>mm.2</c> 5120 → 2048), CLIP mean/std, image_size 560
    /// (the converter's default: the config has none). Text: Qwen2.5-3B as llama.cpp's <c>qwen2vl</c> (36 layers, 2048,
    /// 16 heads, 2 KV heads, FFN 11008, vocab 151936, tied, rope base 1e6, RMS eps 1e-6, 128000 context, M-RoPE
    /// sections [16, 24, 24, 0]).
    /// </summary>
    public static readonly RandomVisionShape Qwen25Vl_3B = new("qwen2.5-vl-3b",
        new RandomModelShape("qwen2.5-vl-3b-text", "qwen2vl", 36, 2048, 16, 2, 11008, 151936, true, true, 128000, 1e6f, 1e-6f)
        {
            RopeSections = [16, 24, 24, 0], Vocabulary = QwenVlVocabulary,
        },
        new VisionTowerShape
        {
            Projector = VisionProjector.Qwen25VL, ImageSize = 560, PatchSize = 14, Width = 1280, Blocks = 32, Heads = 16, FeedForward = 3420,
            NormEps = 1e-6f, ImageMean = ClipMean, ImageStd = ClipStd, Activation = VisionActivation.Silu, MergeFactor = 2, WindowAttentionPattern = 8,
        });

    // The tiny shapes: a few patches per entry, ViT width 64–128, text width 64 (= the projector's output).

    static RandomModelShape TinyText(string name, string architecture, SyntheticVocabularyOptions vocabulary) => architecture switch
    {
        "llama" => new RandomModelShape(name, "llama", 2, 64, 4, 2, 128, 2048, false, false, 2048, 100000f, 1e-5f) { Vocabulary = vocabulary },
        "qwen2" => RandomModelShape.Tiny with { Name = name, Vocabulary = vocabulary },
        // Head dim 16: 8 rotary pairs split 2:3:3 like Qwen2-VL's 16:24:24 of 64.
        _ => new RandomModelShape(name, architecture, 2, 64, 4, 2, 128, 2048, true, true, 4096, 1e6f, 1e-6f) { RopeSections = [2, 3, 3, 0], Vocabulary = vocabulary },
    };

    /// <summary>SmolVLM-like: SigLIP ViT 128 wide, 2 blocks, 4 heads, 64 px at patch 16 (4×4 patches), pixel shuffle 2 → 4 tokens of 64; llama text.</summary>
    public static readonly RandomVisionShape TinyIdefics3 = new("tiny-idefics3", TinyText("tiny-idefics3-text", "llama", SmolVlmVocabulary),
        new VisionTowerShape
        {
            Projector = VisionProjector.Idefics3, ImageSize = 64, PatchSize = 16, Width = 128, Blocks = 2, Heads = 4, FeedForward = 256,
            NormEps = 1e-6f, ImageMean = Half3, ImageStd = Half3, Activation = VisionActivation.Gelu, MergeFactor = 2, LongestEdge = 256,
        });

    /// <summary>
    /// LLaVA-OneVision-like: SigLIP ViT 128 wide, 3 blocks all run (<c>feature_layer</c> [3]), 4 heads, FFN 272 (like
    /// 4304, not a whole number of 32-wide Q8_0 blocks), 48 px at patch 14 (3×3 patches and 6 pixels the convolution does
    /// not reach, as 27 patches of 14 leave of 384), pinpoints 48·(1…2) × 48·(1…2), mlp 128 → 64 → 64; qwen2 text.
    /// </summary>
    public static readonly RandomVisionShape TinyLlava = new("tiny-llava", TinyText("tiny-llava-text", "qwen2", LlavaVocabulary),
        new VisionTowerShape
        {
            Projector = VisionProjector.Mlp, ImageSize = 48, PatchSize = 14, Width = 128, Blocks = 3, Heads = 4, FeedForward = 272,
            NormEps = 1e-6f, ImageMean = Half3, ImageStd = Half3, Activation = VisionActivation.Gelu, FeatureLayers = [3],
            GridPinpoints = [48, 48, 48, 96, 96, 48, 96, 96],
        });

    /// <summary>Qwen2-VL-like: ViT 64 wide, 2 blocks, 4 heads, LayerNorm, quick-GELU FFN 256, 56 px at patch 14 (4×4 patches), 2×2 merger 256 → 256 → 64; qwen2vl text.</summary>
    public static readonly RandomVisionShape TinyQwen2Vl = new("tiny-qwen2vl", TinyText("tiny-qwen2vl-text", "qwen2vl", QwenVlVocabulary),
        new VisionTowerShape
        {
            Projector = VisionProjector.Qwen2VL, ImageSize = 56, PatchSize = 14, Width = 64, Blocks = 2, Heads = 4, FeedForward = 256,
            NormEps = 1e-6f, ImageMean = ClipMean, ImageStd = ClipStd, Activation = VisionActivation.QuickGelu, MergeFactor = 2,
        });

    /// <summary>Qwen2.5-VL-like: ViT 64 wide, 4 blocks (full attention at 1 and 3: <c>n_wa_pattern</c> 2), 4 heads, RMSNorm, SwiGLU FFN 112, 56 px at patch 14, 2×2 merger 256 → 256 → 64; qwen2vl text.</summary>
    public static readonly RandomVisionShape TinyQwen25Vl = new("tiny-qwen25vl", TinyText("tiny-qwen25vl-text", "qwen2vl", QwenVlVocabulary),
        new VisionTowerShape
        {
            Projector = VisionProjector.Qwen25VL, ImageSize = 56, PatchSize = 14, Width = 64, Blocks = 4, Heads = 4, FeedForward = 112,
            NormEps = 1e-6f, ImageMean = ClipMean, ImageStd = ClipStd, Activation = VisionActivation.Silu, MergeFactor = 2, WindowAttentionPattern = 2,
        });

    public static IReadOnlyList<RandomVisionShape> All { get; } = [SmolVlm2_256M, LlavaOneVision_0_5B, Qwen25Vl_3B, TinyIdefics3, TinyLlava, TinyQwen2Vl, TinyQwen25Vl];

    public static RandomVisionShape? Find(string name) => All.FirstOrDefault(s => s.Name.Equals(name, StringComparison.OrdinalIgnoreCase));
}

/// <summary>
/// Writes a vision-language model with random weights: <c>DIR/model.gguf</c> (the text decoder, by
/// <see cref="RandomModel"/>) and <c>DIR/mmproj.gguf</c> (the vision tower and projector), with the keys, key types,
/// tensor names and ggml shapes llama.cpp loads (tools/mtmd/clip.cpp <c>load_hparams</c> / <c>load_tensors</c> and
/// clip-impl.h at 3f545bec; src/llama-model.cpp for the text side).
/// <para>
/// Init as <see cref="RandomModel"/>: linear weights ~ N(0, 1/fan_in) (patch kernels: fan_in 3·p², 2·3·p² for Qwen's two
/// temporal halves), biases 0.1·N, norm weights 1 + 0.1·N, LayerNorm biases 0.1·N, position embeddings std 0.5;
/// deterministic from the seed (the mmproj's streams are salted apart from the text model's).
/// </para>
/// <para>
/// Tensor types follow llama.cpp's converters: linear weights take the file's type (a Q8_0 row that is not a whole number
/// of 32-value blocks, such as SigLIP so400m's 4304 or Qwen2.5-VL's 3420, falls back to F16 as convert_hf_to_gguf does on
/// a QuantError); norms, biases and 1-D tensors are F32. Patch kernel and position embeddings: idefics3 F32 always
/// (SmolVLMModel forces ".embeddings." to F32; ggml's add would not take F16 positions there); LLaVA (the legacy converter)
/// F16 kernel always and F16 positions unless the file is F32 (LLaVA reads positions with get_rows, which takes F16);
/// Qwen-VL kernels F16 in F16 files, else F32 (MmprojModel.tensor_force_quant).
/// </para>
/// </summary>
internal static class RandomVisionModel
{
    public static readonly GgmlType[] WritableTypes = [GgmlType.F32, GgmlType.F16, GgmlType.Q8_0];
    public const string TextFileName = "model.gguf";
    public const string ProjectorFileName = "mmproj.gguf";
    const ulong ProjectorSalt = 0x6D6D70726F6A0000UL; // "mmproj"

    /// <summary>Writes <c>directory/model.gguf</c> and <c>directory/mmproj.gguf</c>; returns their paths.</summary>
    public static (string Text, string Projector) Write(string directory, RandomVisionShape shape, GgmlType type, ulong seed = 42)
    {
        if (!WritableTypes.Contains(type))
            throw new ArgumentException($"type {GgmlTypes.Name(type)} is not supported for random vision models ({string.Join(", ", WritableTypes.Select(GgmlTypes.Name))})");
        if (File.Exists(directory)) throw new IOException($"{directory} is a file: a vision model is written as a directory holding {TextFileName} and {ProjectorFileName}");
        Directory.CreateDirectory(directory);
        string text = Path.Combine(directory, TextFileName), projector = Path.Combine(directory, ProjectorFileName);
        RandomModel.Write(text, shape.Text, type, seed);
        WriteProjector(projector, shape, type, seed);
        return (text, projector);
    }

    /// <summary>Writes the mmproj file alone.</summary>
    public static void WriteProjector(string path, RandomVisionShape shape, GgmlType type, ulong seed = 42) =>
        WriteProjector(path, shape, type, w => new RandomTensors(w, seed, ProjectorSalt),
            $"VidKV random {shape.Name} mmproj {GgmlTypes.Name(type)} (RANDOM WEIGHTS, not a trained model)",
            $"random-weight {VisionConfig.TypeName(shape.Vision.Projector)} vision tower and projector of the {shape.Name} shape");

    /// <summary>Writes the mmproj file with tensors from <paramref name="fill"/>, with <c>general.name</c> <paramref name="name"/> and <c>general.description</c> <paramref name="description"/>.</summary>
    public static void WriteProjector(string path, RandomVisionShape shape, GgmlType type, Func<GgufWriter, ITensorFill> fill, string name, string description)
    {
        var v = shape.Vision;
        int e = v.Width, f = v.FeedForward, p = v.PatchSize, output = shape.Text.Embedding, side = v.ImageSize / v.PatchSize;
        if (e % v.Heads != 0 || v.ImageSize < p) throw new ArgumentException($"shape {shape.Name}: width {e}, {v.Heads} heads, image {v.ImageSize}, patch {p} do not make a ViT");
        // clip.cpp swaps ffn_up and ffn_down when ffn_down's rows read n_embd (legacy naming), so FFN = width cannot be told apart.
        if (f == e) throw new ArgumentException($"shape {shape.Name}: an FFN as wide as the ViT ({f}) would be read as swapped by llama.cpp");

        var w = new GgufWriter();
        w.Add("general.architecture", "clip");
        w.Add("general.type", "mmproj");
        w.Add("general.name", name);
        w.Add("general.description", description);
        w.Add("general.file_type", RandomModel.FileType(type));
        w.Add("clip.has_vision_encoder", true);
        w.Add("clip.projector_type", VisionConfig.TypeName(v.Projector));
        w.Add("clip.vision.projection_dim", (uint)output);
        w.Add("clip.vision.image_size", (uint)v.ImageSize);
        w.Add("clip.vision.patch_size", (uint)p);
        w.Add("clip.vision.embedding_length", (uint)e);
        w.Add("clip.vision.feed_forward_length", (uint)f);
        w.Add("clip.vision.block_count", (uint)v.Blocks);
        w.Add("clip.vision.attention.head_count", (uint)v.Heads);
        w.Add("clip.vision.attention.layer_norm_epsilon", v.NormEps);
        w.Add("clip.vision.image_mean", GgufValue.Of(v.ImageMean));
        w.Add("clip.vision.image_std", GgufValue.Of(v.ImageStd));
        switch (v.Activation)
        {
            case VisionActivation.Gelu: w.Add("clip.use_gelu", true); break;
            case VisionActivation.Silu: w.Add("clip.use_silu", true); break;
            // Quick GELU: neither key (Qwen2-VL's converter writes none).
        }
        switch (v.Projector)
        {
            case VisionProjector.Idefics3:
                w.Add("clip.vision.projector.scale_factor", (uint)v.MergeFactor);
                w.Add("clip.vision.preproc_image_size", (uint)v.LongestEdge);
                break;
            case VisionProjector.Mlp:
                if (v.FeatureLayers.Length > 0) w.Add("clip.vision.feature_layer", GgufValue.Of(v.FeatureLayers));
                if (v.GridPinpoints.Length > 0) w.Add("clip.vision.image_grid_pinpoints", GgufValue.Of(v.GridPinpoints));
                break;
            default:
                w.Add("clip.vision.spatial_merge_size", (uint)v.MergeFactor);
                if (v.Projector == VisionProjector.Qwen25VL) w.Add("clip.vision.n_wa_pattern", (uint)v.WindowAttentionPattern);
                break;
        }

        var random = fill(w);
        void Linear(string name, int rows, int columns, bool bias = true)
        {
            var t = type == GgmlType.Q8_0 && columns % GgmlTypes.BlockSize(GgmlType.Q8_0) != 0 ? GgmlType.F16 : type;
            random.Matrix(name + ".weight", [columns, rows], t, 1f / MathF.Sqrt(columns));
            if (bias) random.Vector(name + ".bias", rows, 0f, 0.1f);
        }
        bool rms = v.Projector == VisionProjector.Qwen25VL;
        void Norm(string name)
        {
            random.Vector(name + ".weight", e, 1f, 0.1f);
            if (!rms) random.Vector(name + ".bias", e, 0f, 0.1f);
        }

        // Patch embedding (ggml ne [p, p, 3, width]) and position embeddings.
        if (v.IsQwen)
        {
            var kernel = type == GgmlType.F16 ? GgmlType.F16 : GgmlType.F32;
            float std = 1f / MathF.Sqrt(2 * 3 * p * p);
            random.Matrix("v.patch_embd.weight", [p, p, 3, e], kernel, std);
            random.Matrix("v.patch_embd.weight.1", [p, p, 3, e], kernel, std);
        }
        else
        {
            bool idefics = v.Projector == VisionProjector.Idefics3;
            var kernel = idefics ? GgmlType.F32 : GgmlType.F16;
            var positions = idefics || type == GgmlType.F32 ? GgmlType.F32 : GgmlType.F16;
            random.Matrix("v.patch_embd.weight", [p, p, 3, e], kernel, 1f / MathF.Sqrt(3 * p * p));
            random.Vector("v.patch_embd.bias", e, 0f, 0.1f);
            random.Matrix("v.position_embd.weight", [e, side * side], positions, 0.5f);
        }

        for (int i = 0; i < v.Blocks; i++)
        {
            string b = $"v.blk.{i}.";
            Norm(b + "ln1");
            Linear(b + "attn_q", e, e);
            Linear(b + "attn_k", e, e);
            Linear(b + "attn_v", e, e);
            Linear(b + "attn_out", e, e);
            Norm(b + "ln2");
            if (v.Activation == VisionActivation.Silu) Linear(b + "ffn_gate", f, e);
            Linear(b + "ffn_up", f, e);
            Linear(b + "ffn_down", e, f);
        }

        switch (v.Projector)
        {
            case VisionProjector.Idefics3:
                Norm("v.post_ln");
                Linear("mm.model.fc", output, e * v.MergeFactor * v.MergeFactor, bias: false);
                break;
            case VisionProjector.Mlp:
                Linear("mm.0", output, e * Math.Max(1, v.FeatureLayers.Length));
                Linear("mm.2", output, output);
                break;
            default:
            {
                int merged = e * v.MergeFactor * v.MergeFactor;
                Norm("v.post_ln");
                Linear("mm.0", merged, merged);
                Linear("mm.2", output, merged);
                break;
            }
        }

        string? directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (directory != null) Directory.CreateDirectory(directory);
        string temporary = path + ".partial";
        w.Write(temporary);
        File.Move(temporary, path, overwrite: true);
    }
}
