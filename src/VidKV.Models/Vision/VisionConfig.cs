using VidKV.Formats;

namespace VidKV.Models;

/// <summary>The projector families VidKV runs (llama.cpp's <c>clip.projector_type</c> names in brackets).</summary>
public enum VisionProjector
{
    /// <summary>LLaVA's two-layer MLP with GELU between (<c>mlp</c>): LLaVA-1.5 (CLIP), LLaVA-OneVision (SigLIP, anyres pinpoints).</summary>
    Mlp,
    /// <summary>Idefics3 / SmolVLM: pixel shuffle by the scale factor, then one linear layer (<c>idefics3</c>).</summary>
    Idefics3,
    /// <summary>Qwen2-VL: 2×2 patch merger, LayerNorm, MLP (<c>qwen2vl_merger</c>).</summary>
    Qwen2VL,
    /// <summary>Qwen2.5-VL: as Qwen2-VL with RMSNorm, window attention and SwiGLU blocks (<c>qwen2.5vl_merger</c>).</summary>
    Qwen25VL,
}

/// <summary>The activation of a ViT block's MLP (llama.cpp: <c>clip.use_gelu</c>, <c>clip.use_silu</c>, else quick GELU).</summary>
public enum VisionActivation
{
    /// <summary>GELU, tanh form.</summary>
    Gelu,
    /// <summary>x · σ(1.702·x) (CLIP).</summary>
    QuickGelu,
    /// <summary>SiLU (Qwen2.5-VL's SwiGLU blocks).</summary>
    Silu,
}

/// <summary>
/// Hyper-parameters of a vision tower and its projector, read from an <c>mmproj</c> GGUF's <c>clip.*</c> keys with
/// llama.cpp's defaults per projector (tools/mtmd/clip.cpp <c>load_hparams</c> at 3f545bec).
/// </summary>
public sealed record VisionConfig
{
    /// <summary>The projector family.</summary>
    public required VisionProjector Projector { get; init; }
    /// <summary>Side of the square image the tower is trained on (<c>clip.vision.image_size</c>).</summary>
    public required int ImageSize { get; init; }
    /// <summary>Side of one patch in pixels.</summary>
    public required int PatchSize { get; init; }
    /// <summary>Width of the ViT's residual stream.</summary>
    public required int EmbeddingLength { get; init; }
    /// <summary>Width of the ViT's MLP hidden layer.</summary>
    public required int FeedForwardLength { get; init; }
    /// <summary>ViT blocks in the file.</summary>
    public required int BlockCount { get; init; }
    /// <summary>Attention heads per block.</summary>
    public required int HeadCount { get; init; }
    /// <summary>Elements per head.</summary>
    public required int HeadDim { get; init; }
    /// <summary>LayerNorm (or RMSNorm) epsilon.</summary>
    public required float NormEps { get; init; }
    /// <summary>Per-channel mean subtracted from the [0, 1] pixels.</summary>
    public required float[] ImageMean { get; init; }
    /// <summary>Per-channel standard deviation the pixels are divided by.</summary>
    public required float[] ImageStd { get; init; }
    /// <summary>The MLP activation of the blocks.</summary>
    public required VisionActivation Activation { get; init; }
    /// <summary>Patches merged per side by the projector (idefics3's pixel-shuffle scale, Qwen-VL's spatial merge); 1 for none.</summary>
    public int MergeFactor { get; init; } = 1;
    /// <summary>Idefics3's longest edge of the refined image (<c>clip.vision.preproc_image_size</c>); 0 when absent.</summary>
    public int LongestEdge { get; init; }
    /// <summary>Blocks whose output the projector reads (LLaVA's <c>feature_layer</c>); empty for the last block.</summary>
    public int[] FeatureLayers { get; init; } = [];
    /// <summary>LLaVA anyres candidate resolutions (width, height), in file order; empty when absent.</summary>
    public (int Width, int Height)[] GridPinpoints { get; init; } = [];
    /// <summary>Qwen2.5-VL: every n-th block attends fully, the others within windows (<c>clip.vision.n_wa_pattern</c>); 0 when absent.</summary>
    public int WindowAttentionPattern { get; init; }
    /// <summary>Qwen2.5-VL's attention window side in pixels (<c>clip.vision.window_size</c>, 112 when absent); 0 for other towers.</summary>
    public int WindowSize { get; init; }
    /// <summary>Qwen-VL's smart resize: fewest pixels of the resized image (−1 when unset).</summary>
    public int MinPixels { get; init; } = -1;
    /// <summary>Qwen-VL's smart resize: most pixels of the resized image (−1 when unset).</summary>
    public int MaxPixels { get; init; } = -1;

    /// <summary>
    /// Patches per side of an <see cref="ImageSize"/> square: the stride-p convolution's output, so pixels past the last
    /// whole patch are not read (SigLIP so400m/14 at 384: 27 patches of 14 cover 378 pixels), as in llama.cpp.
    /// </summary>
    public int PatchesPerSide => ImageSize / PatchSize;

    /// <summary>llama.cpp's <c>clip.projector_type</c> string of a projector.</summary>
    internal static string TypeName(VisionProjector projector) => projector switch
    {
        VisionProjector.Mlp => "mlp",
        VisionProjector.Idefics3 => "idefics3",
        VisionProjector.Qwen2VL => "qwen2vl_merger",
        _ => "qwen2.5vl_merger",
    };

    /// <summary>
    /// Width of the rows the projector writes, read from its last matrix (<c>mm.model.fc</c>, <c>mm.2</c> or
    /// <c>mm.0</c>); 0 when the file has none of them.
    /// </summary>
    internal static int ProjectorOutputLength(GgufFile file)
    {
        foreach (string name in (string[])["mm.model.fc.weight", "mm.2.weight", "mm.0.weight"])
            if (file.FindTensor(name) is { Shape.Length: 2 } t) return (int)t.Shape[1];
        return 0;
    }

    /// <summary>
    /// One line for <c>vidkv model info</c>: projector, image and patch size, ViT width, blocks, heads, activation, what
    /// the projector merges and its output width (<paramref name="outputLength"/>; 0 when unknown).
    /// </summary>
    internal string Summary(int outputLength)
    {
        var parts = new List<string>
        {
            $"{TypeName(Projector)} projector",
            $"image {ImageSize} px",
            $"patch {PatchSize} ({PatchesPerSide}x{PatchesPerSide} patches)",
            $"width {EmbeddingLength}",
            $"{BlockCount} blocks",
            $"{HeadCount} heads of {HeadDim}",
            $"FFN {FeedForwardLength} {Activation switch { VisionActivation.Gelu => "GELU", VisionActivation.QuickGelu => "quick-GELU", _ => "SwiGLU" }}",
        };
        if (Projector == VisionProjector.Idefics3) parts.Add($"pixel shuffle {MergeFactor}" + (LongestEdge > 0 ? $", longest edge {LongestEdge}" : ""));
        if (Projector is VisionProjector.Qwen2VL or VisionProjector.Qwen25VL) parts.Add($"merge {MergeFactor}x{MergeFactor}");
        if (WindowAttentionPattern > 0) parts.Add($"full attention every {WindowAttentionPattern} blocks");
        if (FeatureLayers.Length > 0) parts.Add($"feature layers [{string.Join(", ", FeatureLayers)}]");
        if (GridPinpoints.Length > 0) parts.Add($"{GridPinpoints.Length} pinpoints");
        parts.Add(outputLength > 0 ? $"output width {outputLength}" : "output width unknown");
        return string.Join(", ", parts);
    }

    /// <summary>Reads the <c>clip.*</c> keys of an mmproj file; a missing or ill-typed key throws naming it.</summary>
    internal static VisionConfig FromGguf(GgufFile file) => FromKeys(file.Path, file.Metadata);

    /// <summary>
    /// Reads <c>clip.*</c> keys from any source of them: an mmproj file, or the keys llama.cpp's converter would write
    /// for a Hugging Face folder (<see cref="HuggingFaceVision"/>); <paramref name="path"/> names the source in messages.
    /// </summary>
    internal static VisionConfig FromKeys(string path, IReadOnlyDictionary<string, GgufValue> keys)
    {
        var file = new KeyTable(keys);
        if (file.Get("clip.has_vision_encoder") is { } hasVision && !hasVision.AsBool())
            throw ModelFormatException.InFile(path, "clip.has_vision_encoder is false: not a vision projector file");
        string typeName = (file.Get("clip.projector_type") ?? file.Get("clip.vision.projector_type"))?.AsString()
            ?? throw ModelFormatException.InFile(path, "key 'clip.projector_type' is missing: not an mmproj file");
        var projector = typeName switch
        {
            "mlp" => VisionProjector.Mlp,
            "idefics3" => VisionProjector.Idefics3,
            "qwen2vl_merger" => VisionProjector.Qwen2VL,
            "qwen2.5vl_merger" => VisionProjector.Qwen25VL,
            _ => throw ModelFormatException.InFile(path, $"clip.projector_type '{typeName}' is not supported (mlp, idefics3, qwen2vl_merger, qwen2.5vl_merger)"),
        };

        int Int(string key, int? fallback = null)
        {
            var v = file.Get(key);
            if (v == null) return fallback ?? throw ModelFormatException.InFile(path, $"key '{key}' is missing");
            if (!v.IsInteger) throw ModelFormatException.InFile(path, $"key '{key}' is {v.Type}, expected an integer");
            long n = v.AsInt64();
            if (n < 0 || n > int.MaxValue) throw ModelFormatException.InFile(path, $"key '{key}' = {n} is out of range");
            return (int)n;
        }
        float[] Floats(string key)
        {
            var v = file.Get(key) ?? throw ModelFormatException.InFile(path, $"key '{key}' is missing");
            float[] values = v.Type == GgufValueType.Array ? v.AsArray().AsSingles() : [];
            if (values.Length < 3) throw ModelFormatException.InFile(path, $"key '{key}' must be an array of at least 3 floats");
            return values[..3];
        }
        int[] Ints(string key) => file.Get(key) is { Type: GgufValueType.Array } v ? v.AsArray().AsInt32s() : [];
        bool Flag(string key) => file.Get(key)?.AsBool() ?? false;

        int embedding = Int("clip.vision.embedding_length"), heads = Int("clip.vision.attention.head_count");
        int imageSize = Int("clip.vision.image_size"), patchSize = Int("clip.vision.patch_size");
        if (heads == 0 || patchSize == 0 || imageSize < patchSize)
            throw ModelFormatException.InFile(path, $"image size {imageSize}, patch size {patchSize} and {heads} heads do not make a ViT");
        int headDim = Int("clip.vision.attention.head_dim", embedding / heads);
        float eps = (float)(file.Get("clip.vision.attention.layer_norm_epsilon")?.AsDouble()
            ?? throw ModelFormatException.InFile(path, "key 'clip.vision.attention.layer_norm_epsilon' is missing"));
        if (Flag("clip.use_gelu") && Flag("clip.use_silu")) throw ModelFormatException.InFile(path, "clip.use_gelu and clip.use_silu are both true");
        var activation = Flag("clip.use_gelu") ? VisionActivation.Gelu : Flag("clip.use_silu") ? VisionActivation.Silu : VisionActivation.QuickGelu;

        int[] flat = Ints("clip.vision.image_grid_pinpoints");
        if (flat.Length % 2 != 0) throw ModelFormatException.InFile(path, $"clip.vision.image_grid_pinpoints has {flat.Length} values, not (width, height) pairs");
        var pinpoints = new (int, int)[flat.Length / 2];
        for (int i = 0; i < pinpoints.Length; i++) pinpoints[i] = (flat[2 * i], flat[2 * i + 1]);

        var config = new VisionConfig
        {
            Projector = projector,
            ImageSize = imageSize,
            PatchSize = patchSize,
            EmbeddingLength = embedding,
            FeedForwardLength = Int("clip.vision.feed_forward_length"),
            BlockCount = Int("clip.vision.block_count"),
            HeadCount = heads,
            HeadDim = headDim,
            NormEps = eps,
            ImageMean = Floats("clip.vision.image_mean"),
            ImageStd = Floats("clip.vision.image_std"),
            Activation = activation,
            FeatureLayers = Ints("clip.vision.feature_layer"),
            GridPinpoints = pinpoints,
        };
        switch (projector)
        {
            case VisionProjector.Idefics3:
                return config with { MergeFactor = Int("clip.vision.projector.scale_factor", 1), LongestEdge = Int("clip.vision.preproc_image_size", 0) };
            case VisionProjector.Qwen2VL or VisionProjector.Qwen25VL:
            {
                int merge = Int("clip.vision.spatial_merge_size", 2);
                int area = patchSize * patchSize * merge * merge; // llama.cpp: 8 to 4096 merged tokens per image
                return config with
                {
                    MergeFactor = merge,
                    WindowAttentionPattern = projector == VisionProjector.Qwen25VL ? Int("clip.vision.n_wa_pattern") : 0,
                    WindowSize = projector == VisionProjector.Qwen25VL ? Int("clip.vision.window_size", 112) : 0,
                    MinPixels = 8 * area,
                    MaxPixels = 4096 * area,
                };
            }
            default:
                return config;
        }
    }

    sealed class KeyTable(IReadOnlyDictionary<string, GgufValue> keys)
    {
        public GgufValue? Get(string key) => keys.GetValueOrDefault(key);
    }
}
