using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using VidKV.Formats;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// A vision tower and its projector from an <c>mmproj</c> file: images (preprocessed entries)
/// in, rows of the text model's embedding width out — what replaces an image's placeholder tokens.
/// <para>
/// The tower is a ViT built from the decoder's blocks: a patch convolution (as a product of the patches with the
/// kernel), learned position embeddings, an optional class token (CLIP) and pre-LayerNorm, pre-norm blocks of
/// bidirectional <see cref="SelfAttention"/> and a GELU / quick-GELU <see cref="GeluFeedForward"/>, an optional
/// post-LayerNorm, LLaVA's <c>feature_layer</c> selection. Projectors: LLaVA's <c>mlp2x_gelu</c> (Liu et al., 2023,
/// "Improved Baselines with Visual Instruction Tuning") and Idefics3's pixel shuffle + linear (Laurençon et al., 2024,
/// "Building and better understanding vision-language models").
/// </para>
/// <para>
/// Where llama.cpp's ggml rounds, this rounds the same way so embeddings agree to ~1e-4 rather than ~2e-3: the patch
/// convolution multiplies fp16-rounded pixels with an fp16 kernel (ggml's F16 im2col) and GELU reads ggml's fp16 tables
/// (<see cref="Kernels.Gelu"/>). One deliberate difference: CLIP's class token goes first with position row 0, as in
/// Hugging Face, where llama.cpp appends it last (ggml-org/llama.cpp#25814).
/// </para>
/// </summary>
public sealed unsafe class VisionModel : IDisposable
{
    sealed record Block(Norm AttentionNorm, SelfAttention Attention, Norm FeedForwardNorm, FeedForward FeedForward);

    readonly IWeightSource weights;
    readonly WeightMatrix patchKernel; // [embedding, 3·patch² (× 2 frames for Qwen-VL)] fp16, a copy this model owns
    readonly byte* patchKernelData;
    readonly int patchFrames; // 2 for Qwen-VL's temporal patch (two 2-D kernels), else 1
    readonly float[]? patchBias, classEmbedding;
    readonly float[]? positions; // learned [positions, embedding]; none in Qwen-VL (2-D RoPE)
    readonly Rope? rope; // Qwen-VL's 2-D RoPE: NeoX pairs over a whole head
    QwenLayout? layout; // the last image size's patch order, windows and output order
    readonly Norm? preNorm, postNorm;
    readonly Block[] blocks;
    readonly int[] featureLayers; // inputs of these blocks (0 = the tower's input), and the output when it is listed
    readonly int blocksToRun;
    readonly Linear? mlpIn, mlpOut, shuffleProjection;
    readonly List<WeightMatrix> matrices = []; // every matrix of the tower and projector, as loaded

    /// <summary>A matrix of the file, recorded so that loading can pack its prefill tiles and <see cref="Dispose"/> free them.</summary>
    WeightMatrix Matrix(string name, int rows, int columns)
    {
        var matrix = weights.Matrix(name, rows, columns);
        matrices.Add(matrix);
        return matrix;
    }

    VisionModel(VisionConfig config, IWeightSource weights, bool exact)
    {
        Config = config;
        Exact = exact;
        this.weights = weights;
        int e = config.EmbeddingLength, p = config.PatchSize, patchArea = 3 * p * p;
        Path = weights.Path;
        try
        {
            // The kernel as fp16 whatever its stored type: ggml's im2col for conv_2d is F16, so llama.cpp multiplies fp16
            // values. Qwen-VL's Conv3D over two frames is two 2-D kernels; one row holds both, one product sums them.
            string[] kernels = IsQwen && weights.Contains("v.patch_embd.weight.1") ? ["v.patch_embd.weight", "v.patch_embd.weight.1"] : ["v.patch_embd.weight"];
            patchFrames = kernels.Length;
            int columns = patchArea * patchFrames;
            patchKernelData = (byte*)NativeMemory.AlignedAlloc((nuint)((long)e * columns * 2), 64);
            var row = new float[patchArea];
            for (int k = 0; k < kernels.Length; k++)
            {
                var stored = weights.Flattened(kernels[k], e, patchArea);
                for (int r = 0; r < e; r++)
                {
                    stored.DequantizeRow(r, row);
                    var half = new Span<Half>(patchKernelData + ((long)r * columns + k * patchArea) * 2, patchArea);
                    for (int c = 0; c < patchArea; c++) half[c] = (Half)row[c];
                }
            }
            patchKernel = new WeightMatrix("v.patch_embd.weight", GgmlType.F16, e, columns, patchKernelData);
            patchBias = weights.Contains("v.patch_embd.bias") ? weights.Vector("v.patch_embd.bias", e) : null;
            classEmbedding = weights.Contains("v.class_embd") ? weights.Vector("v.class_embd", e) : null;
            if (IsQwen)
            {
                if (patchBias != null || classEmbedding != null) throw ModelFormatException.InFile(Path, "a Qwen-VL tower has no patch bias or class embedding");
                if (config.HeadDim % 4 != 0) throw ModelFormatException.InFile(Path, $"head size {config.HeadDim} is not a multiple of 4 (2-D RoPE)");
                rope = new Rope(RopeMode.NeoX, config.HeadDim, 10000f);
            }
            else
            {
                int positionCount = config.PatchesPerSide * config.PatchesPerSide + (classEmbedding != null ? 1 : 0);
                positions = weights.Vector("v.position_embd.weight", positionCount * e);
            }
            preNorm = TowerNorm("v.pre_ln");
            postNorm = TowerNorm("v.post_ln");

            blocks = new Block[config.BlockCount];
            for (int i = 0; i < blocks.Length; i++) blocks[i] = LoadBlock(i);

            // llama.cpp (clip_graph_llava): run up to the deepest feature layer, else all blocks but the last; a
            // SigLIP tower (idefics3) runs them all.
            featureLayers = config.Projector == VisionProjector.Mlp ? config.FeatureLayers : [];
            blocksToRun = config.Projector != VisionProjector.Mlp ? blocks.Length
                : featureLayers.Length > 0 ? featureLayers.Max() : blocks.Length - 1;
            if (blocksToRun > blocks.Length || featureLayers.Any(l => l < 0))
                throw ModelFormatException.InFile(Path, $"clip.vision.feature_layer [{string.Join(", ", featureLayers)}] is outside the {blocks.Length} blocks");

            switch (config.Projector)
            {
                case VisionProjector.Mlp:
                {
                    int stacked = e * Math.Max(1, featureLayers.Length);
                    var w0 = Rows("mm.0.weight");
                    mlpIn = new Linear(Matrix("mm.0.weight", w0, stacked), weights.Vector("mm.0.bias", w0), ForwardPhase.Other);
                    if (weights.Contains("mm.2.weight"))
                    {
                        var w2 = Rows("mm.2.weight");
                        mlpOut = new Linear(Matrix("mm.2.weight", w2, w0), weights.Vector("mm.2.bias", w2), ForwardPhase.Other);
                    }
                    OutputLength = (mlpOut ?? mlpIn).Outputs;
                    TokensPerEntry = config.PatchesPerSide * config.PatchesPerSide;
                    break;
                }
                case VisionProjector.Idefics3:
                {
                    int s = config.MergeFactor;
                    if (s < 1 || config.PatchesPerSide % s != 0)
                        throw ModelFormatException.InFile(Path, $"scale factor {s} does not divide the {config.PatchesPerSide} patches per side");
                    shuffleProjection = new Linear(Matrix("mm.model.fc.weight", Rows("mm.model.fc.weight"), e * s * s), null, ForwardPhase.Other);
                    OutputLength = shuffleProjection.Outputs;
                    TokensPerEntry = config.PatchesPerSide / s * (config.PatchesPerSide / s);
                    break;
                }
                default: // Qwen2-VL / Qwen2.5-VL: 2×2 neighbouring patches concatenated, mm.0 → GELU → mm.2
                {
                    if (config.MergeFactor != 2) throw ModelFormatException.InFile(Path, $"spatial merge {config.MergeFactor} is not supported (2)");
                    var w0 = Rows("mm.0.weight");
                    mlpIn = new Linear(Matrix("mm.0.weight", w0, 4 * e), weights.Vector("mm.0.bias", w0), ForwardPhase.Other);
                    var w2 = Rows("mm.2.weight");
                    mlpOut = new Linear(Matrix("mm.2.weight", w2, w0), weights.Vector("mm.2.bias", w2), ForwardPhase.Other);
                    OutputLength = w2;
                    TokensPerEntry = config.PatchesPerSide / 2 * (config.PatchesPerSide / 2);
                    break;
                }
            }
            ImageNewline = weights.Contains("v.image_newline") ? weights.Vector("v.image_newline", OutputLength) : null;
            // Every product of a tower multiplies a whole entry's patches, so integer weights are packed into their
            // prefill tiles once here instead of tile by tile in every pass; a GGUF mapping then gives the stored rows' pages back.
            foreach (var matrix in matrices) matrix.PackTiles(releaseStoredPages: weights is GgufWeights, roundF16ToBf16: !exact);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// Opens an mmproj GGUF, or the vision tower and projector of a Hugging Face vision-language folder (or one of its
    /// .safetensors files) as llama.cpp's converter would have written them into an mmproj (see
    /// <see cref="HuggingFaceVision"/>); a file that is not one, or whose tensors do not fit its keys, throws
    /// <see cref="ModelFormatException"/>.
    /// </summary>
    /// <param name="path">the mmproj GGUF, or the Hugging Face folder or file</param>
    /// <param name="exact">
    /// Keep the attention in f32 and F16 matrices at f16 for a tower stored in 16 bits or fewer too (see
    /// <see cref="Exact"/>); the default multiplies those in bf16.
    /// </param>
    public static VisionModel Load(string path, bool exact = false)
    {
        if (HuggingFaceVision.FolderOf(path) is { } folder)
        {
            var (config, source) = HuggingFaceVision.Open(folder);
            return new VisionModel(config, source, exact); // the constructor disposes the source when it throws
        }
        var file = GgufFile.Open(path);
        try
        {
            return new VisionModel(VisionConfig.FromGguf(file), new GgufWeights(file), exact);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Whether every product runs at the precision of llama.cpp's non-flash graph: f32 attention, F16 matrices times f32
    /// activations. Otherwise (the default) a tower whose matrices are stored in 16 bits or fewer (F16, BF16, Q8_0, …)
    /// attends in bf16, and its F16 matrices are rounded to bf16 at load and multiply bf16 activations
    /// (<see cref="Bf16Tiles"/>, twice the f32 FMAs' rate where the CPU has AVX512_BF16): its products already round
    /// their activations to 8–11 bits, and llama.cpp's default flash attention rounds queries, keys and values to f16.
    /// On llama.cpp's reference towers the bf16 attention is 1.1e-3 (relative L2) from the non-flash output where
    /// llama.cpp's own flash output is 5–6e-4. An F32 tower is exact either way.
    /// </summary>
    public bool Exact { get; }

    /// <summary>The tower's and projector's hyper-parameters.</summary>
    public VisionConfig Config { get; }
    /// <summary>The file the model was loaded from.</summary>
    public string Path { get; }
    /// <summary>Width of the output rows: the text model's embedding length it was trained with.</summary>
    public int OutputLength { get; }
    /// <summary>LLaVA's learned row after a video's frames (<c>v.image_newline</c>); null when the file has none.</summary>
    public float[]? ImageNewline { get; }
    /// <summary>Output rows per encoded entry of <see cref="VisionConfig.ImageSize"/>².</summary>
    public int TokensPerEntry { get; }

    /// <summary>Whether the tower is Qwen-VL's (2-D RoPE, any size in whole 2×2 patch groups, patch merger).</summary>
    bool IsQwen => Config.Projector is VisionProjector.Qwen2VL or VisionProjector.Qwen25VL;

    /// <summary>The tower's norm named <paramref name="prefix"/>, if the file has it: RMSNorm in Qwen2.5-VL, LayerNorm elsewhere.</summary>
    Norm? TowerNorm(string prefix)
    {
        if (!weights.Contains(prefix + ".weight")) return null;
        var weight = weights.Vector(prefix + ".weight", Config.EmbeddingLength);
        if (Config.Projector == VisionProjector.Qwen25VL) return Norm.Rms(weight, Config.NormEps);
        return Norm.Layer(weight, weights.Contains(prefix + ".bias") ? weights.Vector(prefix + ".bias", Config.EmbeddingLength) : null, Config.NormEps);
    }

    /// <summary>Rows of a linear weight (its output width), read from the file so a projector's widths need no key.</summary>
    int Rows(string name) => weights.Dimensions(name) is { Length: 2 } d ? (int)d[1]
        : throw ModelFormatException.AtTensor(Path, name, "required 2-D tensor is missing");

    Block LoadBlock(int index)
    {
        var c = Config;
        // The feed-forward width comes from the tensors, as in llama.cpp: Qwen2-VL's converter writes the text model's
        // width as clip.vision.feed_forward_length (conversion/qwenvl.py renames vision hidden_size to intermediate_size).
        int e = c.EmbeddingLength, inner = c.HeadCount * c.HeadDim;
        string p = $"v.blk.{index}.";
        Linear Project(string name, int rows, int columns, ForwardPhase phase) =>
            new(Matrix(p + name + ".weight", rows, columns), weights.Contains(p + name + ".bias") ? weights.Vector(p + name + ".bias", rows) : null, phase);
        Norm BlockNorm(string name) => TowerNorm(p + name) ?? throw ModelFormatException.AtTensor(Path, p + name + ".weight", "required tensor is missing");

        var query = Project("attn_q", inner, e, ForwardPhase.QkvProjection);
        var attention = new SelfAttention(query, Project("attn_k", inner, e, ForwardPhase.QkvProjection),
            Project("attn_v", inner, e, ForwardPhase.QkvProjection), Project("attn_out", e, inner, ForwardPhase.OutputProjection), c.HeadCount, c.HeadCount, c.HeadDim, rope)
        {
            Bf16Attention = !Exact && query.Weight.Type != GgmlType.F32,
        };
        if (weights.Contains(p + "ffn_gate.weight"))
        {
            // Qwen2.5-VL: SwiGLU with biases (llama.cpp's build_ffn with a gate and FFN_SILU).
            if (c.Activation != VisionActivation.Silu) throw ModelFormatException.InFile(Path, $"{p}ffn_gate with {c.Activation} is not supported (SiLU)");
            int f = Rows(p + "ffn_up.weight");
            return new Block(BlockNorm("ln1"), attention, BlockNorm("ln2"),
                new SwiGluFeedForward(Project("ffn_gate", f, e, ForwardPhase.GateUp), Project("ffn_up", f, e, ForwardPhase.GateUp), Project("ffn_down", e, f, ForwardPhase.Down)));
        }
        // Legacy LLaVA converters swapped the names of fc1 and fc2; llama.cpp swaps them back when ffn_down reads n_embd.
        bool swapped = weights.Dimensions(p + "ffn_down.weight") is { } down && down[0] == e;
        int width = Rows(p + (swapped ? "ffn_down.weight" : "ffn_up.weight"));
        var up = swapped ? Project("ffn_down", width, e, ForwardPhase.GateUp) : Project("ffn_up", width, e, ForwardPhase.GateUp);
        var downProjection = swapped ? Project("ffn_up", e, width, ForwardPhase.Down) : Project("ffn_down", e, width, ForwardPhase.Down);
        FeedForward feedForward = c.Activation switch
        {
            VisionActivation.Gelu => new GeluFeedForward(up, downProjection),
            VisionActivation.QuickGelu => new GeluFeedForward(up, downProjection, quick: true),
            _ => throw ModelFormatException.InFile(Path, $"a SiLU feed-forward in a {c.Projector} tower is not supported"),
        };
        return new Block(BlockNorm("ln1"), attention, BlockNorm("ln2"), feedForward);
    }

    /// <summary>
    /// Encodes one preprocessed square entry of <see cref="VisionConfig.ImageSize"/>²: <paramref name="pixels"/>
    /// normalised f32 in planes [3][size][size] (the preprocessor's normalised planes), <paramref name="output"/>
    /// [<see cref="TokensPerEntry"/>, <see cref="OutputLength"/>]. <paramref name="buffers"/> are reused across calls
    /// (one per caller).
    /// </summary>
    public void Encode(ReadOnlySpan<float> pixels, Span<float> output, Activations buffers, ForwardProfile? profile = null) =>
        Encode(pixels, Config.ImageSize, Config.ImageSize, output, buffers, profile);

    /// <summary>
    /// One preprocessed entry (<see cref="ImagePreprocessor.Preprocess"/>) normalised and encoded: its rows
    /// [<see cref="TokensFor"/>, <see cref="OutputLength"/>], a new array.
    /// </summary>
    public float[] EncodeEntry(RgbImage entry, Activations buffers)
    {
        var planar = new float[3 * entry.Width * entry.Height];
        ImagePreprocessor.Normalize(Config, entry, planar);
        var rows = new float[TokensFor(entry.Width, entry.Height) * OutputLength];
        Encode(planar, entry.Width, entry.Height, rows, buffers);
        return rows;
    }

    /// <summary>Output rows for an entry of <paramref name="width"/> × <paramref name="height"/> pixels (Qwen-VL takes any size in whole 2×2 patch groups; the others their square).</summary>
    public int TokensFor(int width, int height)
    {
        CheckSize(width, height);
        return IsQwen ? width / Config.PatchSize / 2 * (height / Config.PatchSize / 2) : TokensPerEntry;
    }

    /// <summary>Qwen-VL's output grid of an entry: merged tokens per row and per column (the image's M-RoPE h/w extent).</summary>
    public (int Columns, int Rows) OutputGrid(int width, int height)
    {
        CheckSize(width, height);
        return IsQwen ? (width / Config.PatchSize / 2, height / Config.PatchSize / 2) : (TokensPerEntry, 1);
    }

    /// <summary>
    /// Encodes one preprocessed entry of <paramref name="width"/> × <paramref name="height"/> pixels (planes [3][h][w])
    /// into <paramref name="output"/> [<see cref="TokensFor"/>, <see cref="OutputLength"/>]. Qwen-VL's temporal patch
    /// takes two frames: <paramref name="secondFrame"/> (same size) for a video pair, else the image twice.
    /// </summary>
    public void Encode(ReadOnlySpan<float> pixels, int width, int height, Span<float> output, Activations buffers, ForwardProfile? profile = null,
        ReadOnlySpan<float> secondFrame = default)
    {
        int tokens = TokensFor(width, height);
        if (output.Length < tokens * OutputLength)
            throw new ArgumentException($"output holds {output.Length} values, {tokens} rows of {OutputLength} are needed");
        profile?.Start();
        var features = Tower(pixels, width, height, buffers, profile, secondFrame);
        Project(features, tokens, output, buffers, profile);
    }

    /// <summary>
    /// The projector alone: the tower's rows (<see cref="Tower(ReadOnlySpan{float}, Activations, ForwardProfile?)"/>'s
    /// output, <paramref name="tokens"/> output rows' worth) into <paramref name="output"/>.
    /// </summary>
    internal void Project(ReadOnlySpan<float> features, int tokens, Span<float> output, Activations buffers, ForwardProfile? profile = null)
    {
        var c = Config;
        int e = c.EmbeddingLength;
        if (IsQwen)
        {
            // Each run of 4 rows is one 2×2 group (the order EmbedPatches gave them): [tokens, 4·e] → mm.0 → GELU → mm.2,
            // then back from window order to raster order.
            var l = layout!;
            Span<float> hidden = buffers.Up(tokens * mlpIn!.Outputs);
            mlpIn.Forward(features, tokens, hidden, profile);
            Kernels.Gelu(hidden, hidden);
            Span<float> merged = l.Windows.Length > 2 ? buffers.Gate(tokens * OutputLength) : output;
            mlpOut!.Forward(hidden, tokens, merged, profile);
            if (l.Windows.Length > 2)
                for (int t = 0; t < tokens; t++) merged.Slice(l.GroupOfCell[t] * OutputLength, OutputLength).CopyTo(output.Slice(t * OutputLength, OutputLength));
            return;
        }
        int side = c.PatchesPerSide, patches = side * side, first = classEmbedding != null ? 1 : 0;
        if (mlpIn != null)
        {
            // LLaVA keeps the patch rows (the class token's row 0 goes), then mm.0 → GELU → mm.2.
            int stacked = e * Math.Max(1, featureLayers.Length);
            var patchRows = features.Slice(first * stacked, patches * stacked);
            Span<float> hidden = mlpOut != null ? buffers.Up(patches * mlpIn.Outputs) : output;
            mlpIn.Forward(patchRows, patches, hidden, profile);
            Kernels.Gelu(hidden, hidden);
            mlpOut?.Forward(hidden, patches, output, profile);
        }
        else
        {
            int s = c.MergeFactor, merged = side / s;
            Span<float> shuffled = buffers.Up(TokensPerEntry * e * s * s);
            PixelShuffle(features, side, e, s, shuffled);
            shuffleProjection!.Forward(shuffled, merged * merged, output, profile);
        }
    }

    /// <summary>
    /// Rows of one video frame (an entry of <see cref="VisionConfig.ImageSize"/>²): for a LLaVA projector (OneVision),
    /// the encoded rows pooled 2×2 by <see cref="VideoPooling"/> (27² → 14² for SigLIP so400m/14 at 384), as Hugging
    /// Face's OneVision does for video; for the others the entry's rows as <see cref="Encode(ReadOnlySpan{float}, Span{float}, Activations, ForwardProfile?)"/>.
    /// </summary>
    public int VideoFrameTokens => Config.Projector == VisionProjector.Mlp ? VideoPooling.PooledSide(Config.PatchesPerSide) * VideoPooling.PooledSide(Config.PatchesPerSide) : TokensPerEntry;

    /// <summary>Encodes one video frame into <paramref name="output"/> [<see cref="VideoFrameTokens"/>, <see cref="OutputLength"/>].</summary>
    public void EncodeVideoFrame(ReadOnlySpan<float> pixels, Span<float> output, Activations buffers, ForwardProfile? profile = null)
    {
        if (Config.Projector != VisionProjector.Mlp)
        {
            Encode(pixels, output, buffers, profile);
            return;
        }
        var rows = buffers.Frame(TokensPerEntry * OutputLength);
        Encode(pixels, rows, buffers, profile);
        VideoPooling.Pool(rows, Config.PatchesPerSide, OutputLength, output);
    }

    /// <summary>
    /// Multiply-add FLOPs (2 per product term) of one encoder + projector pass over a <paramref name="width"/> ×
    /// <paramref name="height"/> entry: the patch product, each block's q/k/v/output and MLP products, attention's
    /// q·kᵀ and p·v over its window or all rows, and the projector's products.
    /// </summary>
    public double FlopsPerEntry(int width, int height)
    {
        CheckSize(width, height);
        var c = Config;
        long e = c.EmbeddingLength, inner = (long)c.HeadCount * c.HeadDim, f = c.FeedForwardLength;
        long patches = width / c.PatchSize * (height / c.PatchSize), rows = patches + (classEmbedding != null ? 1 : 0);
        double flops = 2.0 * patches * e * patchKernel.Columns;
        long attentionPairs = rows * rows;
        long windowPairs = attentionPairs;
        if (IsQwen && c.WindowAttentionPattern > 0)
        {
            var l = layout is { } known && known.Width == width && known.Height == height ? known : new QwenLayout(c, width, height);
            windowPairs = 0;
            for (int w = 0; w + 1 < l.Windows.Length; w++) windowPairs += (long)(l.Windows[w + 1] - l.Windows[w]) * (l.Windows[w + 1] - l.Windows[w]);
        }
        for (int i = 0; i < blocksToRun; i++)
        {
            bool full = c.WindowAttentionPattern == 0 || (i + 1) % c.WindowAttentionPattern == 0;
            int mlpMatrices = blocks[i].FeedForward is SwiGluFeedForward ? 3 : 2;
            flops += 2.0 * rows * (4 * e * inner + mlpMatrices * e * f) + 4.0 * (full ? attentionPairs : windowPairs) * inner;
        }
        int tokens = TokensFor(width, height);
        if (shuffleProjection != null) flops += 2.0 * tokens * shuffleProjection.Inputs * shuffleProjection.Outputs;
        if (mlpIn != null) flops += 2.0 * tokens * mlpIn.Inputs * mlpIn.Outputs + (mlpOut != null ? 2.0 * tokens * mlpOut.Inputs * mlpOut.Outputs : 0);
        return flops;
    }

    /// <summary>Storage type of the tower's largest matrices (the first block's MLP up projection).</summary>
    public GgmlType WeightType => blocks.Length > 0 && blocks[0].FeedForward is GeluFeedForward g ? g.Up.Weight.Type
        : blocks.Length > 0 && blocks[0].FeedForward is SwiGluFeedForward s ? s.Up.Weight.Type : GgmlType.F32;

    void CheckSize(int width, int height)
    {
        var c = Config;
        if (IsQwen ? width <= 0 || height <= 0 || width % (2 * c.PatchSize) != 0 || height % (2 * c.PatchSize) != 0 : width != c.ImageSize || height != c.ImageSize)
            throw new ArgumentException(IsQwen
                ? $"a {width}×{height} entry is not whole 2×2 groups of {c.PatchSize}-pixel patches"
                : $"a {width}×{height} entry is not the tower's {c.ImageSize}×{c.ImageSize}");
    }

    /// <summary>
    /// The ViT alone: the rows the projector reads ([rows, embedding · feature layers], the class token's row first
    /// when there is one; Qwen-VL's in its 2×2-group, window order), in <paramref name="buffers"/>.
    /// </summary>
    internal ReadOnlySpan<float> Tower(ReadOnlySpan<float> pixels, Activations buffers, ForwardProfile? profile = null) =>
        Tower(pixels, Config.ImageSize, Config.ImageSize, buffers, profile, default);

    ReadOnlySpan<float> Tower(ReadOnlySpan<float> pixels, int width, int height, Activations buffers, ForwardProfile? profile, ReadOnlySpan<float> secondFrame)
    {
        var c = Config;
        CheckSize(width, height);
        if (pixels.Length != 3 * width * height || !secondFrame.IsEmpty && secondFrame.Length != pixels.Length)
            throw new ArgumentException($"pixels hold {pixels.Length} values, a {width}×{height} entry needs {3 * width * height}");
        int e = c.EmbeddingLength, patches = width / c.PatchSize * (height / c.PatchSize), first = classEmbedding != null ? 1 : 0, rows = patches + first;

        Span<float> x = buffers.X(rows * e), h = buffers.H(rows * e);
        ReadOnlySpan<int> windows = default;
        Span<float> cos = default, sin = default;
        if (IsQwen)
        {
            var l = layout = layout is { } known && known.Width == width && known.Height == height ? known : new QwenLayout(c, width, height);
            windows = l.Windows;
            int pairs = c.HeadDim / 2;
            cos = buffers.RopeCos(rows * pairs);
            sin = buffers.RopeSin(rows * pairs);
            for (int r = 0; r < rows; r++) Kernels.VisionRopeAngles(l.PatchY[r], l.PatchX[r], c.HeadDim, 10000f, cos.Slice(r * pairs, pairs), sin.Slice(r * pairs, pairs));
            EmbedPatches(pixels, secondFrame.IsEmpty ? pixels : secondFrame, width, l.PatchY, l.PatchX, x, buffers);
        }
        else
        {
            EmbedPatches(pixels, pixels, width, null, null, x.Slice(first * e, patches * e), buffers);
            if (classEmbedding != null) classEmbedding.CopyTo(x);
            TensorPrimitives.Add(x, positions.AsSpan(0, rows * e), x);
        }
        preNorm?.Apply(x, x, rows, profile);

        Span<float> stack = featureLayers.Length > 0 ? buffers.Gate(rows * e * featureLayers.Length) : default;
        for (int i = 0; i < blocksToRun; i++)
        {
            StackFeatures(i, x, rows, stack);
            var block = blocks[i];
            // Qwen2.5-VL: every n-th block attends over the whole image, the others within their windows.
            bool full = c.WindowAttentionPattern == 0 || (i + 1) % c.WindowAttentionPattern == 0;
            block.AttentionNorm.Apply(x, h, rows, profile);
            block.Attention.Forward(h, rows, buffers, cos, sin, i, default, default, full ? default : windows, profile);
            block.FeedForwardNorm.AddThenApply(x, h, h, rows, profile);
            block.FeedForward.Forward(h, rows, buffers, profile);
            TensorPrimitives.Add(x, h, x);
        }
        postNorm?.Apply(x, x, rows, profile);
        StackFeatures(blocksToRun, x, rows, stack);
        return featureLayers.Length > 0 ? stack : x;
    }

    /// <summary>Copies the rows into their slot of the feature stack when <paramref name="layer"/> is a feature layer (LLaVA's <c>feature_layer</c>).</summary>
    void StackFeatures(int layer, ReadOnlySpan<float> x, int rows, Span<float> stack)
    {
        int e = Config.EmbeddingLength, stacked = e * featureLayers.Length;
        for (int k = 0; k < featureLayers.Length; k++)
        {
            if (featureLayers[k] != layer) continue;
            for (int r = 0; r < rows; r++) x.Slice(r * e, e).CopyTo(stack.Slice(r * stacked + k * e, e));
        }
    }

    /// <summary>
    /// The patch convolution (stride = kernel = patch) as one product: each patch's 3·p² pixels in (channel, ky, kx)
    /// order — twice for Qwen-VL's two-frame kernel — rounded to fp16 as ggml's im2col does, times the fp16 kernel; then
    /// the bias. Patches go in raster order, or in the order <paramref name="patchY"/>/<paramref name="patchX"/> give.
    /// </summary>
    void EmbedPatches(ReadOnlySpan<float> frame0, ReadOnlySpan<float> frame1, int width, int[]? patchY, int[]? patchX, Span<float> destination, Activations buffers)
    {
        var c = Config;
        int p = c.PatchSize, area = 3 * p * p, columns = area * patchFrames, e = c.EmbeddingLength;
        int perRow = width / p, count = destination.Length / e, height = frame0.Length / 3 / width, plane = width * height;
        Span<float> im2col = buffers.Up(count * columns);
        for (int r = 0; r < count; r++)
        {
            int py = patchY?[r] ?? r / perRow, px = patchX?[r] ?? r % perRow;
            for (int f = 0; f < patchFrames; f++)
            {
                var source = f == 0 ? frame0 : frame1;
                var patch = im2col.Slice(r * columns + f * area, area);
                for (int ch = 0; ch < 3; ch++)
                    for (int ky = 0; ky < p; ky++)
                    {
                        var from = source.Slice(ch * plane + (py * p + ky) * width + px * p, p);
                        var to = patch.Slice((ch * p + ky) * p, p);
                        for (int kx = 0; kx < p; kx++) to[kx] = (float)(Half)from[kx];
                    }
            }
        }
        patchKernel.MatMul(im2col, count, destination);
        if (patchBias != null) Linear.AddBias(destination, count, patchBias);
    }

    /// <summary>
    /// Idefics3's pixel shuffle (space to depth) of a side × side grid of <paramref name="width"/>-wide rows by
    /// <paramref name="scale"/>: output row ys·(side/s) + xs holds, at feature dy·s·width + dx·width + c, channel c of
    /// patch (s·ys + dy, s·xs + dx) (Hugging Face's <c>Idefics3Connector.pixel_shuffle</c>; ggml's permutes give the same).
    /// </summary>
    internal static void PixelShuffle(ReadOnlySpan<float> source, int side, int width, int scale, Span<float> destination)
    {
        int merged = side / scale;
        for (int ys = 0; ys < merged; ys++)
            for (int xs = 0; xs < merged; xs++)
            {
                var row = destination.Slice((ys * merged + xs) * width * scale * scale, width * scale * scale);
                for (int dy = 0; dy < scale; dy++)
                    for (int dx = 0; dx < scale; dx++)
                        source.Slice(((scale * ys + dy) * side + scale * xs + dx) * width, width).CopyTo(row.Slice((dy * scale + dx) * width, width));
            }
    }

    /// <summary>
    /// Qwen-VL's patch order for one image size (llama.cpp clip.cpp's qwen2vl/qwen2.5vl inputs): the four patches of
    /// each 2×2 group together, (0,0) (0,1) (1,0) (1,1); groups in raster order, or — with window attention — window by
    /// window (windows of <see cref="VisionConfig.WindowSize"/> pixels over the merged grid, raster order, cells raster
    /// within), so each window is a contiguous run of rows.
    /// </summary>
    sealed class QwenLayout
    {
        public QwenLayout(VisionConfig c, int width, int height)
        {
            Width = width;
            Height = height;
            int columns = width / c.PatchSize / 2, rows = height / c.PatchSize / 2;
            int window = c.WindowAttentionPattern > 0 ? Math.Max(1, c.WindowSize / c.PatchSize / 2) : Math.Max(columns, rows);
            PatchY = new int[4 * columns * rows];
            PatchX = new int[PatchY.Length];
            GroupOfCell = new int[columns * rows];
            var windows = new List<int> { 0 };
            int group = 0;
            for (int wy = 0; wy < rows; wy += window)
                for (int wx = 0; wx < columns; wx += window)
                {
                    for (int y = wy; y < Math.Min(wy + window, rows); y++)
                        for (int x = wx; x < Math.Min(wx + window, columns); x++)
                        {
                            GroupOfCell[y * columns + x] = group;
                            for (int k = 0; k < 4; k++)
                            {
                                PatchY[4 * group + k] = 2 * y + k / 2;
                                PatchX[4 * group + k] = 2 * x + k % 2;
                            }
                            group++;
                        }
                    windows.Add(4 * group);
                }
            Windows = [.. windows];
        }

        public int Width { get; }
        public int Height { get; }
        /// <summary>Patch row and column of each tower row.</summary>
        public int[] PatchY { get; }
        /// <summary>Patch column of each tower row.</summary>
        public int[] PatchX { get; }
        /// <summary>Row boundaries of the attention windows (one window over all without window attention).</summary>
        public int[] Windows { get; }
        /// <summary>The group (output row before reordering) of each merged cell in raster order.</summary>
        public int[] GroupOfCell { get; }
    }

    /// <summary>Frees the fp16 patch kernel, the prefill tiles and the file mapping.</summary>
    public void Dispose()
    {
        foreach (var matrix in matrices) matrix.Dispose();
        if (patchKernelData != null) NativeMemory.AlignedFree(patchKernelData);
        weights.Dispose();
    }
}
