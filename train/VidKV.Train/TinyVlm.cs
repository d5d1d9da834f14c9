using TorchSharp;
using TorchSharp.Modules;
using VidKV.Models;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace VidKV.Train;

/// <summary>
/// Sizes of the tiny vision-language model: a SigLIP-style ViT with Idefics3's pixel shuffle and linear projector
/// (SmolVLM's design: Marafioti et al., 2025, "SmolVLM: Redefining small and efficient multimodal models") and a Llama
/// decoder — an architecture VidKV and llama.cpp's mtmd both run, in the shapes of <see cref="RandomVisionShape"/>.
/// </summary>
public sealed record TinyVlmConfig
{
    /// <summary>Side of the square frame the ViT sees, in pixels.</summary>
    public int ImageSize { get; init; } = 64;
    /// <summary>Side of one patch, in pixels.</summary>
    public int PatchSize { get; init; } = 8;
    /// <summary>Width of the ViT's rows.</summary>
    public int VisionWidth { get; init; } = 128;
    /// <summary>ViT blocks.</summary>
    public int VisionBlocks { get; init; } = 4;
    /// <summary>ViT attention heads.</summary>
    public int VisionHeads { get; init; } = 4;
    /// <summary>ViT feed-forward width.</summary>
    public int VisionFeedForward { get; init; } = 512;
    /// <summary>Idefics3's pixel-shuffle scale: patches merged per side into one token.</summary>
    public int MergeFactor { get; init; } = 2;
    /// <summary>Decoder layers.</summary>
    public int Layers { get; init; } = 4;
    /// <summary>Decoder width (the projector's output).</summary>
    public int Embedding { get; init; } = 256;
    /// <summary>Decoder attention heads.</summary>
    public int Heads { get; init; } = 4;
    /// <summary>Decoder key/value heads (grouped-query attention).</summary>
    public int KvHeads { get; init; } = 2;
    /// <summary>Decoder SwiGLU width.</summary>
    public int FeedForward { get; init; } = 768;
    /// <summary>Tokens in the vocabulary.</summary>
    public int Vocab { get; init; } = 512;
    /// <summary>RoPE base.</summary>
    public float RopeBase { get; init; } = 10000f;
    /// <summary>RMSNorm epsilon of the decoder.</summary>
    public float RmsEps { get; init; } = 1e-5f;
    /// <summary>LayerNorm epsilon of the ViT.</summary>
    public float VisionEps { get; init; } = 1e-6f;

    /// <summary>Patches per side of a frame.</summary>
    public int PatchesPerSide => ImageSize / PatchSize;
    /// <summary>Decoder rows one frame becomes.</summary>
    public int TokensPerFrame => PatchesPerSide / MergeFactor * (PatchesPerSide / MergeFactor);
    /// <summary>Width of one decoder head.</summary>
    public int HeadDim => Embedding / Heads;

    /// <summary>
    /// The writers' shape of this model (<see cref="RandomModel"/> and <see cref="RandomVisionModel"/> write trained
    /// values through it): a Llama text model with an untied output and SmolVLM's vocabulary layout, an idefics3 mmproj.
    /// </summary>
    internal RandomVisionShape ToShape(string name, SyntheticVocabularyOptions vocabulary, int contextLength = 1 << 17) =>
        new(name,
            new RandomModelShape(name + "-text", "llama", Layers, Embedding, Heads, KvHeads, FeedForward, Vocab, false, false, contextLength, RopeBase, RmsEps)
            {
                Vocabulary = vocabulary,
            },
            new VisionTowerShape
            {
                Projector = VisionProjector.Idefics3, ImageSize = ImageSize, PatchSize = PatchSize, Width = VisionWidth, Blocks = VisionBlocks,
                Heads = VisionHeads, FeedForward = VisionFeedForward, NormEps = VisionEps, ImageMean = [0.5f, 0.5f, 0.5f], ImageStd = [0.5f, 0.5f, 0.5f],
                Activation = VisionActivation.Gelu, MergeFactor = MergeFactor, LongestEdge = ImageSize,
            });
}

/// <summary>
/// The tiny VLM in TorchSharp: frames → ViT → pixel shuffle → projector rows, spliced with token embeddings into one
/// sequence for the Llama decoder. Parameters are named after the GGUF tensors they become (<see cref="Export"/>); the
/// arithmetic is the one VidKV and llama.cpp run (RoPE on adjacent pairs as llama.cpp's NORM mode, tanh GELU, SwiGLU).
/// </summary>
public sealed class TinyVlm : nn.Module
{
    readonly TinyVlmConfig config;
    // Vision.
    readonly Parameter patchWeight, patchBias, positions, postNormWeight, postNormBias, projector;
    readonly VisionBlock[] visionBlocks;
    // Text.
    readonly Parameter tokenEmbedding, outputNorm, output;
    readonly DecoderLayer[] layers;
    readonly Tensor inverseFrequencies;

    /// <summary>A model of <paramref name="config"/>'s sizes, initialised from <paramref name="seed"/>.</summary>
    public TinyVlm(TinyVlmConfig config, long seed = 1) : base("tiny_vlm")
    {
        this.config = config;
        using var generator = new Generator((ulong)seed);
        Parameter Normal(long[] shape, double std) => new(normal(0, std, shape, generator: generator));
        Parameter Filled(long[] shape, float value) => new(full(shape, value));
        int w = config.VisionWidth, p = config.PatchSize, d = config.Embedding;
        patchWeight = Normal([w, 3, p, p], 1 / Math.Sqrt(3 * p * p));
        patchBias = Filled([w], 0);
        // SigLIP's initialisation (1/√width): at 0.02 a fitted probe read an object's 3×3 region from its row 19–28 % of the time.
        positions = Normal([config.PatchesPerSide * config.PatchesPerSide, w], 1 / Math.Sqrt(w));
        visionBlocks = [.. Enumerable.Range(0, config.VisionBlocks).Select(_ => new VisionBlock(config, Normal))];
        postNormWeight = Filled([w], 1);
        postNormBias = Filled([w], 0);
        projector = Normal([d, w * config.MergeFactor * config.MergeFactor], 1 / Math.Sqrt(w * config.MergeFactor * config.MergeFactor));
        tokenEmbedding = Normal([config.Vocab, d], 1);
        layers = [.. Enumerable.Range(0, config.Layers).Select(_ => new DecoderLayer(config, Normal, Filled))];
        outputNorm = Filled([d], 1);
        output = Normal([config.Vocab, d], 1 / Math.Sqrt(d));
        int half = config.HeadDim / 2;
        inverseFrequencies = pow(config.RopeBase, -arange(0, half, dtype: float32) * 2 / config.HeadDim);
        RegisterComponents(); // fields only: the blocks in arrays are registered by name, as the GGUF numbers them
        for (int i = 0; i < visionBlocks.Length; i++) register_module($"v_blk_{i}", visionBlocks[i]);
        for (int i = 0; i < layers.Length; i++) register_module($"blk_{i}", layers[i]);
    }

    /// <summary>The sizes.</summary>
    public TinyVlmConfig Config => config;

    /// <summary>The tower's parameters (patch embedding, positions, ViT blocks, post-norm), without the projector.</summary>
    public IEnumerable<Parameter> TowerParameters() =>
        new[] { patchWeight, patchBias, positions, postNormWeight, postNormBias }.Concat(visionBlocks.SelectMany(b => b.parameters()));

    /// <summary>Every parameter but the tower's: the projector and the decoder.</summary>
    public IEnumerable<Parameter> LanguageParameters()
    {
        var tower = TowerParameters().ToHashSet(ReferenceEqualityComparer.Instance);
        return parameters().Where(p => !tower.Contains(p));
    }

    /// <summary>
    /// Frames [N, 3, size, size] of normalised pixels ((x/255 − 0.5)/0.5, planes as VidKV's preprocessor writes them) →
    /// decoder rows [N, <see cref="TinyVlmConfig.TokensPerFrame"/>, embedding].
    /// </summary>
    public Tensor EncodeFrames(Tensor frames)
    {
        var c = config;
        long n = frames.shape[0];
        int w = c.VisionWidth, side = c.PatchesPerSide, s = c.MergeFactor, merged = side / s;
        using var scope = NewDisposeScope();
        var x = F.conv2d(frames, patchWeight, patchBias, strides: [c.PatchSize, c.PatchSize]); // [N, w, side, side]
        x = x.flatten(2).transpose(1, 2) + positions;                                             // [N, side², w]
        foreach (var block in visionBlocks) x = block.Forward(x);
        x = F.layer_norm(x, [w], postNormWeight, postNormBias, c.VisionEps);
        // Idefics3's pixel shuffle: token (ys, xs) holds patches (s·ys + dy, s·xs + dx) in (dy, dx, channel) order.
        x = x.view(n, merged, s, merged, s, w).permute(0, 1, 3, 2, 4, 5).reshape(n, merged * merged, s * s * w);
        return matmul(x, projector.t()).MoveToOuterDisposeScope();
    }

    /// <summary>Token embeddings of <paramref name="tokens"/> (any shape).</summary>
    public Tensor EmbedTokens(Tensor tokens) => tokenEmbedding.index_select(0, tokens.flatten()).view([.. tokens.shape, config.Embedding]);

    /// <summary>
    /// The decoder over input rows <paramref name="inputs"/> [B, T, embedding] at RoPE positions
    /// <paramref name="positionIds"/> [B, T] (float32), causal; <paramref name="mask"/> (optional, [B, 1, T, T] additive,
    /// causal already in it) for packed or padded batches. Returns logits [B, T, vocab].
    /// </summary>
    public Tensor Decode(Tensor inputs, Tensor positionIds, Tensor? mask = null) => Decode(inputs, positionIds, mask, 0, out _);

    /// <summary>
    /// <see cref="Decode(Tensor, Tensor, Tensor?)"/>, also giving the rows after the first <paramref name="tapLayers"/>
    /// layers as <paramref name="tapped"/> [B, T, embedding] (what a training-only probe reads; 0: the inputs).
    /// </summary>
    public Tensor Decode(Tensor inputs, Tensor positionIds, Tensor? mask, int tapLayers, out Tensor tapped)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tapLayers);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tapLayers, layers.Length);
        using var scope = NewDisposeScope();
        var angles = positionIds.unsqueeze(-1) * inverseFrequencies; // [B, T, hd/2]
        var cos = angles.cos().unsqueeze(2);
        var sin = angles.sin().unsqueeze(2);
        var x = inputs;
        tapped = inputs;
        for (int i = 0; i < layers.Length; i++)
        {
            x = layers[i].Forward(x, cos, sin, mask);
            if (i + 1 == tapLayers) tapped = x.MoveToOuterDisposeScope();
        }
        x = RmsNorm(x, outputNorm, config.RmsEps);
        return matmul(x, output.t()).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Attention logits (q·k/√d, before any mask) of head <paramref name="head"/> of layer <paramref name="layer"/> from
    /// rows <paramref name="queries"/> to every row, given the layer's input rows <paramref name="input"/> [T, embedding]
    /// at positions <paramref name="positionIds"/> [T]: [queries, T]. What a training-only loss on where a head looks reads.
    /// </summary>
    public Tensor AttentionLogits(int layer, int head, Tensor input, Tensor positionIds, long[] queries) =>
        layers[layer].Logits(head, input, positionIds.unsqueeze(-1) * inverseFrequencies, queries);

    internal static Tensor RmsNorm(Tensor x, Tensor weight, float eps) => x * rsqrt(x.pow(2).mean([-1], keepdim: true) + eps) * weight;

    /// <summary>Rotates adjacent pairs (2i, 2i + 1) of each head's row by position · base^(−2i/d) (llama.cpp's NORM RoPE).</summary>
    internal static Tensor Rope(Tensor x, Tensor cos, Tensor sin)
    {
        var shape = x.shape;
        var pairs = x.view(shape[0], shape[1], shape[2], shape[3] / 2, 2);
        var a = pairs.select(-1, 0);
        var b = pairs.select(-1, 1);
        return stack([a * cos - b * sin, a * sin + b * cos], -1).view(shape);
    }

    /// <summary>
    /// Every parameter as the GGUF tensor it becomes, row-major with ggml's ne0 fastest (a torch [out, in] weight is
    /// ggml [in, out]: the same bytes), float32.
    /// </summary>
    public Dictionary<string, float[]> Export()
    {
        var tensors = new Dictionary<string, float[]>();
        void Add(string name, Tensor t) => tensors[name] = t.detach().contiguous().to(float32).data<float>().ToArray();
        Add("v.patch_embd.weight", patchWeight);
        Add("v.patch_embd.bias", patchBias);
        Add("v.position_embd.weight", positions);
        for (int i = 0; i < visionBlocks.Length; i++) visionBlocks[i].Export($"v.blk.{i}.", Add);
        Add("v.post_ln.weight", postNormWeight);
        Add("v.post_ln.bias", postNormBias);
        Add("mm.model.fc.weight", projector);
        Add("token_embd.weight", tokenEmbedding);
        for (int i = 0; i < layers.Length; i++) layers[i].Export($"blk.{i}.", Add);
        Add("output_norm.weight", outputNorm);
        Add("output.weight", output);
        return tensors;
    }

    /// <summary>One SigLIP block: pre-LayerNorm attention and a tanh-GELU MLP, both with biases.</summary>
    sealed class VisionBlock : nn.Module
    {
        readonly TinyVlmConfig c;
        readonly Parameter ln1w, ln1b, qw, qb, kw, kb, vw, vb, ow, ob, ln2w, ln2b, upw, upb, downw, downb;

        public VisionBlock(TinyVlmConfig config, Func<long[], double, Parameter> normal) : base("vision_block")
        {
            c = config;
            int w = config.VisionWidth, f = config.VisionFeedForward;
            double std = 1 / Math.Sqrt(w);
            ln1w = new Parameter(ones(w)); ln1b = new Parameter(zeros(w));
            qw = normal([w, w], std); qb = new Parameter(zeros(w));
            kw = normal([w, w], std); kb = new Parameter(zeros(w));
            vw = normal([w, w], std); vb = new Parameter(zeros(w));
            ow = normal([w, w], std / Math.Sqrt(2 * config.VisionBlocks)); ob = new Parameter(zeros(w));
            ln2w = new Parameter(ones(w)); ln2b = new Parameter(zeros(w));
            upw = normal([f, w], std); upb = new Parameter(zeros(f));
            downw = normal([w, f], 1 / Math.Sqrt(f) / Math.Sqrt(2 * config.VisionBlocks)); downb = new Parameter(zeros(w));
            RegisterComponents();
        }

        public Tensor Forward(Tensor x)
        {
            long n = x.shape[0], t = x.shape[1];
            int w = c.VisionWidth, heads = c.VisionHeads, hd = w / heads;
            var h = F.layer_norm(x, [w], ln1w, ln1b, c.VisionEps);
            Tensor Heads(Tensor y) => y.view(n, t, heads, hd).transpose(1, 2);
            var q = Heads(F.linear(h, qw, qb));
            var k = Heads(F.linear(h, kw, kb));
            var v = Heads(F.linear(h, vw, vb));
            var a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, w);
            x = x + F.linear(a, ow, ob);
            h = F.layer_norm(x, [w], ln2w, ln2b, c.VisionEps);
            return x + F.linear(F.gelu(F.linear(h, upw, upb), GELU.Approximate.tanh), downw, downb);
        }

        public void Export(string p, Action<string, Tensor> add)
        {
            add(p + "ln1.weight", ln1w); add(p + "ln1.bias", ln1b);
            add(p + "attn_q.weight", qw); add(p + "attn_q.bias", qb);
            add(p + "attn_k.weight", kw); add(p + "attn_k.bias", kb);
            add(p + "attn_v.weight", vw); add(p + "attn_v.bias", vb);
            add(p + "attn_out.weight", ow); add(p + "attn_out.bias", ob);
            add(p + "ln2.weight", ln2w); add(p + "ln2.bias", ln2b);
            add(p + "ffn_up.weight", upw); add(p + "ffn_up.bias", upb);
            add(p + "ffn_down.weight", downw); add(p + "ffn_down.bias", downb);
        }
    }

    /// <summary>One Llama layer: RMSNorm, grouped-query causal attention with RoPE, RMSNorm, SwiGLU; no biases.</summary>
    sealed class DecoderLayer : nn.Module
    {
        readonly TinyVlmConfig c;
        readonly Parameter attnNorm, q, k, v, o, ffnNorm, gate, up, down;

        public DecoderLayer(TinyVlmConfig config, Func<long[], double, Parameter> normal, Func<long[], float, Parameter> filled) : base("decoder_layer")
        {
            c = config;
            int d = config.Embedding, kv = config.KvHeads * config.HeadDim, f = config.FeedForward;
            double std = 1 / Math.Sqrt(d), residual = 1 / Math.Sqrt(2 * config.Layers);
            attnNorm = filled([d], 1);
            q = normal([d, d], std);
            k = normal([kv, d], std);
            v = normal([kv, d], std);
            o = normal([d, d], std * residual);
            ffnNorm = filled([d], 1);
            gate = normal([f, d], std);
            up = normal([f, d], std);
            down = normal([d, f], residual / Math.Sqrt(f));
            RegisterComponents();
        }

        public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask)
        {
            long b = x.shape[0], t = x.shape[1];
            int hd = c.HeadDim, heads = c.Heads, kvHeads = c.KvHeads;
            var h = RmsNorm(x, attnNorm, c.RmsEps);
            var qh = Rope(F.linear(h, q).view(b, t, heads, hd), cos, sin).transpose(1, 2);
            var kh = Rope(F.linear(h, k).view(b, t, kvHeads, hd), cos, sin).transpose(1, 2);
            var vh = F.linear(h, v).view(b, t, kvHeads, hd).transpose(1, 2);
            if (kvHeads != heads)
            {
                kh = kh.repeat_interleave(heads / kvHeads, dim: 1);
                vh = vh.repeat_interleave(heads / kvHeads, dim: 1);
            }
            var a = mask is null ? F.scaled_dot_product_attention(qh, kh, vh, is_casual: true) : F.scaled_dot_product_attention(qh, kh, vh, mask);
            x = x + F.linear(a.transpose(1, 2).reshape(b, t, heads * hd), o);
            h = RmsNorm(x, ffnNorm, c.RmsEps);
            return x + F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), down);
        }

        public Tensor Logits(int head, Tensor x, Tensor angles, long[] queries)
        {
            int hd = c.HeadDim, kvHead = head / (c.Heads / c.KvHeads);
            long t = x.shape[0];
            var h = RmsNorm(x, attnNorm, c.RmsEps);
            var cos = angles.cos().unsqueeze(1);
            var sin = angles.sin().unsqueeze(1);
            var index = tensor(queries);
            var qh = F.linear(h.index_select(0, index), q.narrow(0, head * hd, hd)).view(1, queries.Length, 1, hd);
            var kh = F.linear(h, k.narrow(0, kvHead * hd, hd)).view(1, t, 1, hd);
            qh = Rope(qh, cos.index_select(0, index).unsqueeze(0), sin.index_select(0, index).unsqueeze(0)).view(queries.Length, hd);
            kh = Rope(kh, cos.unsqueeze(0), sin.unsqueeze(0)).view(t, hd);
            return matmul(qh, kh.t()) / Math.Sqrt(hd);
        }

        public void Export(string p, Action<string, Tensor> add)
        {
            add(p + "attn_norm.weight", attnNorm);
            add(p + "attn_q.weight", q);
            add(p + "attn_k.weight", k);
            add(p + "attn_v.weight", v);
            add(p + "attn_output.weight", o);
            add(p + "ffn_norm.weight", ffnNorm);
            add(p + "ffn_gate.weight", gate);
            add(p + "ffn_up.weight", up);
            add(p + "ffn_down.weight", down);
        }
    }
}
