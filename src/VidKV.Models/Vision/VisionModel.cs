using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using VidKV.Formats;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// A vision tower and its projector from an <c>mmproj</c> file: images (preprocessed entries, <see cref="ImagePreprocessor"/>)
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
    readonly WeightMatrix patchKernel; // [embedding, 3·patch²] fp16, a copy this model owns
    readonly byte* patchKernelData;
    readonly float[]? patchBias, classEmbedding;
    readonly float[] positions; // [positions, embedding]
    readonly Norm? preNorm, postNorm;
    readonly Block[] blocks;
    readonly int[] featureLayers; // inputs of these blocks (0 = the tower's input), and the output when it is listed
    readonly int blocksToRun;
    readonly Linear? mlpIn, mlpOut, shuffleProjection;

    VisionModel(VisionConfig config, IWeightSource weights)
    {
        Config = config;
        this.weights = weights;
        int e = config.EmbeddingLength, p = config.PatchSize, patchArea = 3 * p * p;
        Path = weights.Path;
        try
        {
            // The kernel as fp16 whatever its stored type: ggml's im2col for conv_2d is F16, so llama.cpp multiplies fp16 values.
            var stored = weights.Flattened("v.patch_embd.weight", e, patchArea);
            patchKernelData = (byte*)NativeMemory.AlignedAlloc((nuint)((long)e * patchArea * 2), 64);
            var row = new float[patchArea];
            for (int r = 0; r < e; r++)
            {
                stored.DequantizeRow(r, row);
                var half = new Span<Half>(patchKernelData + (long)r * patchArea * 2, patchArea);
                for (int c = 0; c < patchArea; c++) half[c] = (Half)row[c];
            }
            patchKernel = new WeightMatrix("v.patch_embd.weight", GgmlType.F16, e, patchArea, patchKernelData);
            patchBias = weights.Contains("v.patch_embd.bias") ? weights.Vector("v.patch_embd.bias", e) : null;
            classEmbedding = weights.Contains("v.class_embd") ? weights.Vector("v.class_embd", e) : null;
            int positionCount = config.PatchesPerSide * config.PatchesPerSide + (classEmbedding != null ? 1 : 0);
            positions = weights.Vector("v.position_embd.weight", positionCount * e);
            preNorm = LayerNorm("v.pre_ln");
            postNorm = LayerNorm("v.post_ln");

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
                    mlpIn = new Linear(weights.Matrix("mm.0.weight", w0, stacked), weights.Vector("mm.0.bias", w0), ForwardPhase.Other);
                    if (weights.Contains("mm.2.weight"))
                    {
                        var w2 = Rows("mm.2.weight");
                        mlpOut = new Linear(weights.Matrix("mm.2.weight", w2, w0), weights.Vector("mm.2.bias", w2), ForwardPhase.Other);
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
                    shuffleProjection = new Linear(weights.Matrix("mm.model.fc.weight", Rows("mm.model.fc.weight"), e * s * s), null, ForwardPhase.Other);
                    OutputLength = shuffleProjection.Outputs;
                    TokensPerEntry = config.PatchesPerSide / s * (config.PatchesPerSide / s);
                    break;
                }
                default:
                    throw ModelFormatException.InFile(Path, $"projector {config.Projector} is not supported yet");
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Opens an mmproj GGUF; a file that is not one, or whose tensors do not fit its keys, throws <see cref="ModelFormatException"/>.</summary>
    public static VisionModel Load(string path)
    {
        var file = GgufFile.Open(path);
        try
        {
            return new VisionModel(VisionConfig.FromGguf(file), new GgufWeights(file));
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>The tower's and projector's hyper-parameters.</summary>
    public VisionConfig Config { get; }
    /// <summary>The file the model was loaded from.</summary>
    public string Path { get; }
    /// <summary>Width of the output rows: the text model's embedding length it was trained with.</summary>
    public int OutputLength { get; }
    /// <summary>Output rows per encoded entry of <see cref="VisionConfig.ImageSize"/>².</summary>
    public int TokensPerEntry { get; }

    Norm? LayerNorm(string prefix) => weights.Contains(prefix + ".weight")
        ? Norm.Layer(weights.Vector(prefix + ".weight", Config.EmbeddingLength), weights.Contains(prefix + ".bias") ? weights.Vector(prefix + ".bias", Config.EmbeddingLength) : null, Config.NormEps)
        : null;

    /// <summary>Rows of a linear weight (its output width), read from the file so a projector's widths need no key.</summary>
    int Rows(string name) => weights is GgufWeights g && g.File.FindTensor(name) is { Shape.Length: 2 } t ? (int)t.Shape[1]
        : throw ModelFormatException.AtTensor(Path, name, "required 2-D tensor is missing");

    Block LoadBlock(int index)
    {
        var c = Config;
        int e = c.EmbeddingLength, f = c.FeedForwardLength, inner = c.HeadCount * c.HeadDim;
        string p = $"v.blk.{index}.";
        Linear Project(string name, int rows, int columns, ForwardPhase phase) =>
            new(weights.Matrix(p + name + ".weight", rows, columns), weights.Contains(p + name + ".bias") ? weights.Vector(p + name + ".bias", rows) : null, phase);
        Norm BlockNorm(string name) => Norm.Layer(weights.Vector(p + name + ".weight", e), weights.Contains(p + name + ".bias") ? weights.Vector(p + name + ".bias", e) : null, c.NormEps);

        var attention = new SelfAttention(Project("attn_q", inner, e, ForwardPhase.QkvProjection), Project("attn_k", inner, e, ForwardPhase.QkvProjection),
            Project("attn_v", inner, e, ForwardPhase.QkvProjection), Project("attn_out", e, inner, ForwardPhase.OutputProjection), c.HeadCount, c.HeadCount, c.HeadDim, null);
        // Legacy LLaVA converters swapped the names of fc1 and fc2; llama.cpp swaps them back when ffn_down reads n_embd.
        bool swapped = weights is GgufWeights g && g.File.FindTensor(p + "ffn_down.weight") is { } down && down.Shape[0] == e;
        var up = swapped ? Project("ffn_down", f, e, ForwardPhase.GateUp) : Project("ffn_up", f, e, ForwardPhase.GateUp);
        var downProjection = swapped ? Project("ffn_up", e, f, ForwardPhase.Down) : Project("ffn_down", e, f, ForwardPhase.Down);
        FeedForward feedForward = c.Activation switch
        {
            VisionActivation.Gelu => new GeluFeedForward(up, downProjection),
            VisionActivation.QuickGelu => new GeluFeedForward(up, downProjection, quick: true),
            _ => throw ModelFormatException.InFile(Path, $"a SiLU feed-forward in a {c.Projector} tower is not supported"),
        };
        return new Block(BlockNorm("ln1"), attention, BlockNorm("ln2"), feedForward);
    }

    /// <summary>
    /// Encodes one preprocessed entry: <paramref name="pixels"/> normalised f32 in planes [3][size][size]
    /// (<see cref="ImagePreprocessor.Normalize"/>), <paramref name="output"/> [<see cref="TokensPerEntry"/>,
    /// <see cref="OutputLength"/>]. <paramref name="buffers"/> are reused across calls (one per caller).
    /// </summary>
    public void Encode(ReadOnlySpan<float> pixels, Span<float> output, Activations buffers, ForwardProfile? profile = null)
    {
        var c = Config;
        int e = c.EmbeddingLength, side = c.PatchesPerSide, patches = side * side, first = classEmbedding != null ? 1 : 0, rows = patches + first;
        if (pixels.Length != 3 * c.ImageSize * c.ImageSize)
            throw new ArgumentException($"pixels hold {pixels.Length} values, a {c.ImageSize}² entry needs {3 * c.ImageSize * c.ImageSize}");
        if (output.Length < TokensPerEntry * OutputLength)
            throw new ArgumentException($"output holds {output.Length} values, {TokensPerEntry} rows of {OutputLength} are needed");

        Span<float> x = buffers.X(rows * e), h = buffers.H(rows * e);
        EmbedPatches(pixels, x.Slice(first * e, patches * e), buffers);
        if (classEmbedding != null) classEmbedding.CopyTo(x);
        TensorPrimitives.Add(x, positions.AsSpan(0, rows * e), x);
        preNorm?.Apply(x, x, rows, profile);

        int stacks = featureLayers.Length, stacked = e * Math.Max(1, stacks);
        Span<float> stack = stacks > 0 ? buffers.Gate(rows * stacked) : default;
        for (int i = 0; i < blocksToRun; i++)
        {
            Stack(i, x, stack);
            var block = blocks[i];
            block.AttentionNorm.Apply(x, h, rows, profile);
            block.Attention.Forward(h, rows, buffers, default, default, i, default, default, profile);
            block.FeedForwardNorm.AddThenApply(x, h, h, rows, profile);
            block.FeedForward.Forward(h, rows, buffers, profile);
            TensorPrimitives.Add(x, h, x);
        }
        postNorm?.Apply(x, x, rows, profile);
        Stack(blocksToRun, x, stack);
        ReadOnlySpan<float> features = stacks > 0 ? stack : x;

        if (mlpIn != null)
        {
            // LLaVA keeps the patch rows (the class token's row 0 goes), then mm.0 → GELU → mm.2.
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

        void Stack(int layer, Span<float> x, Span<float> stack)
        {
            for (int k = 0; k < stacks; k++)
            {
                if (featureLayers[k] != layer) continue;
                for (int r = 0; r < rows; r++) x.Slice(r * e, e).CopyTo(stack.Slice(r * stacked + k * e, e));
            }
        }
    }

    /// <summary>
    /// The patch convolution (stride = kernel = patch) as one product: each patch's 3·p² pixels in (channel, ky, kx)
    /// order, rounded to fp16 as ggml's im2col does, times the fp16 kernel; then the bias.
    /// </summary>
    void EmbedPatches(ReadOnlySpan<float> pixels, Span<float> destination, Activations buffers)
    {
        var c = Config;
        int p = c.PatchSize, size = c.ImageSize, side = c.PatchesPerSide, area = 3 * p * p, e = c.EmbeddingLength;
        Span<float> columns = buffers.Up(side * side * area);
        for (int py = 0; py < side; py++)
            for (int px = 0; px < side; px++)
            {
                var patch = columns.Slice((py * side + px) * area, area);
                for (int ch = 0; ch < 3; ch++)
                    for (int ky = 0; ky < p; ky++)
                    {
                        var source = pixels.Slice(ch * size * size + (py * p + ky) * size + px * p, p);
                        var target = patch.Slice((ch * p + ky) * p, p);
                        for (int kx = 0; kx < p; kx++) target[kx] = (float)(Half)source[kx];
                    }
            }
        patchKernel.MatMul(columns, side * side, destination);
        if (patchBias != null)
            for (int r = 0; r < side * side; r++) TensorPrimitives.Add(destination.Slice(r * e, e), patchBias, destination.Slice(r * e, e));
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

    /// <summary>Frees the fp16 patch kernel and the file mapping.</summary>
    public void Dispose()
    {
        if (patchKernelData != null) NativeMemory.AlignedFree(patchKernelData);
        weights.Dispose();
    }
}
