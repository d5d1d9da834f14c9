using VidKV.Cli;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;
using VidKV.Text;

namespace VidKV.Tests;

/// <summary>
/// <c>vidkv model random</c> for vision-language shapes: the tiny pairs open in VidKV, and hold the keys (with llama.cpp's
/// types) and tensors (names, ggml shapes) that llama.cpp's clip.cpp and llama-model.cpp load, derived here from their
/// rules rather than from the writer. The real-size shapes are only checked as records (writing them takes gigabytes).
/// </summary>
public class RandomVisionModelTests
{
    public static TheoryData<string> TinyShapes => new() { "tiny-idefics3", "tiny-llava", "tiny-qwen2vl", "tiny-qwen25vl" };

    static (string Text, string Projector) WriteTiny(TempDirectory dir, string name, GgmlType type = GgmlType.Q8_0, ulong seed = 42) =>
        RandomVisionModel.Write(dir.File(name), RandomVisionShape.Find(name)!, type, seed);

    /// <summary>
    /// A tower stored in 16 bits or fewer attends in bf16 unless loaded exact, and an F16 one multiplies its matrices
    /// in bf16 too; an F32 tower is exact either way. An F16 tower's output moves by at most 2^−7 of its norm (bf16's
    /// unit roundoff 2^−9 on weights, activations, queries, keys and values, over two blocks and the projector: measured
    /// 4.8–5.9e-3, where the F16 weights themselves move it 5–7e-4 from the F32 tower's), a Q8_0 tower's by less than
    /// storing the weights in Q8_0 moved it from the F32 tower's (its int8 activations amplify any change alike:
    /// measured 1.3–1.6e-2 against 1.5–1.8e-2).
    /// </summary>
    [Theory]
    [InlineData("tiny-idefics3", GgmlType.Q8_0)]
    [InlineData("tiny-qwen25vl", GgmlType.Q8_0)]
    [InlineData("tiny-llava", GgmlType.F16)]
    [InlineData("tiny-idefics3", GgmlType.F16)]
    [InlineData("tiny-llava", GgmlType.F32)]
    public void TowersOfSixteenBitsOrFewerAttendInBf16UnlessExact(string name, GgmlType type)
    {
        using var dir = new TempDirectory();
        float[] Encode(GgmlType stored, bool exact)
        {
            var (_, projectorPath) = RandomVisionModel.Write(dir.File($"{name}-{stored}-{exact}"), RandomVisionShape.Find(name)!, stored, seed: 42);
            using var model = VisionModel.Load(projectorPath, exact);
            Assert.Equal(exact, model.Exact);
            var c = model.Config;
            var pixels = new float[3 * c.ImageSize * c.ImageSize];
            for (int i = 0; i < pixels.Length; i++) pixels[i] = MathF.Sin(i * 0.37f);
            var output = new float[model.TokensPerEntry * model.OutputLength];
            model.Encode(pixels, output, new Activations());
            return output;
        }
        static double Relative(float[] a, float[] b) => Math.Sqrt(a.Zip(b, (x, y) => (double)(x - y) * (x - y)).Sum() / b.Sum(x => (double)x * x));
        float[] fast = Encode(type, exact: false), exact = Encode(type, exact: true);
        if (type == GgmlType.F32 || !Bf16Tiles.Handles(2)) // every tiny head width is even
        {
            Assert.Equal(exact, fast);
            return;
        }
        Assert.NotEqual(exact, fast);
        double moved = Relative(fast, exact), bound = type == GgmlType.F16 ? 1.0 / 128 : Relative(exact, Encode(GgmlType.F32, exact: true));
        Assert.True(moved <= bound, $"bf16 products moved the output by {moved:E2} of its norm (bound {bound:E2})");
    }

    [Theory]
    [InlineData("tiny-idefics3")]
    [InlineData("tiny-llava")]
    public void IdeficsAndLlavaPairsOpenAndEncode(string name)
    {
        using var dir = new TempDirectory();
        var (textPath, projectorPath) = WriteTiny(dir, name);
        using var vision = VisionModel.Load(projectorPath);
        using var text = ModelLoader.Load(textPath);
        Assert.Equal(text.Config.EmbeddingLength, vision.OutputLength);
        Assert.Equal(64, vision.OutputLength);

        var c = vision.Config;
        var pixels = new float[3 * c.ImageSize * c.ImageSize];
        for (int i = 0; i < pixels.Length; i++) pixels[i] = MathF.Sin(i * 0.37f);
        var output = new float[vision.TokensPerEntry * vision.OutputLength];
        vision.Encode(pixels, output, new Activations());
        Assert.All(output, v => Assert.True(float.IsFinite(v)));
        Assert.Contains(output, v => Math.Abs(v) > 1e-3f);
        Assert.Equal(c.Projector == VisionProjector.Idefics3 ? 4 : 9, vision.TokensPerEntry);
    }

    [Theory]
    [MemberData(nameof(TinyShapes))]
    public void ProjectorFileHoldsTheKeysAndTensorsClipCppLoads(string name)
    {
        using var dir = new TempDirectory();
        var shape = RandomVisionShape.Find(name)!;
        var (_, projectorPath) = WriteTiny(dir, name);
        using var file = GgufFile.Open(projectorPath);

        // Keys: clip.cpp reads integers with gguf_get_val_u32, eps as f32, mean/std as f32 arrays, feature_layer and
        // pinpoints as int32 arrays.
        Assert.Equal("clip", file.Get("general.architecture")!.AsString());
        Assert.Equal(GgufValueType.Bool, file.Get("clip.has_vision_encoder")!.Type);
        Assert.True(file.Get("clip.has_vision_encoder")!.AsBool());
        foreach (string key in (string[])["projection_dim", "image_size", "patch_size", "embedding_length", "feed_forward_length", "block_count", "attention.head_count"])
            Assert.Equal(GgufValueType.UInt32, file.Get("clip.vision." + key)?.Type);
        Assert.Equal(GgufValueType.Float32, file.Get("clip.vision.attention.layer_norm_epsilon")?.Type);
        foreach (string key in (string[])["clip.vision.image_mean", "clip.vision.image_std"])
        {
            var array = file.Get(key)!.AsArray();
            Assert.Equal(GgufValueType.Float32, array.ElementType);
            Assert.Equal(3, array.Length);
        }
        foreach (var (key, value) in file.MetadataList.Where(kv => kv.Key.StartsWith("clip.", StringComparison.Ordinal)))
        {
            if (value.Type == GgufValueType.Array && key is "clip.vision.feature_layer" or "clip.vision.image_grid_pinpoints")
                Assert.Equal(GgufValueType.Int32, value.AsArray().ElementType);
            else if (value.IsInteger)
                Assert.True(value.Type == GgufValueType.UInt32, $"{key} is {value.Type}");
        }

        var c = VisionConfig.FromGguf(file);
        var v = shape.Vision;
        Assert.Equal(v.Projector, c.Projector);
        Assert.Equal((v.ImageSize, v.PatchSize, v.Width, v.FeedForward, v.Blocks, v.Heads), (c.ImageSize, c.PatchSize, c.EmbeddingLength, c.FeedForwardLength, c.BlockCount, c.HeadCount));
        Assert.Equal(v.Activation, c.Activation);
        Assert.Equal(v.MergeFactor, c.MergeFactor);
        Assert.Equal(v.WindowAttentionPattern, c.WindowAttentionPattern);
        Assert.Equal(v.FeatureLayers, c.FeatureLayers);
        Assert.Equal(v.GridPinpoints.Length / 2, c.GridPinpoints.Length);
        Assert.Equal(shape.Text.Embedding, VisionConfig.ProjectorOutputLength(file));
        Assert.Equal(shape.Text.Embedding, (int)file.Get("clip.vision.projection_dim")!.AsInt64());

        // Tensors: exactly what clip.cpp's load_tensors asks for (and the graph builders use) for this projector.
        var expected = ClipTensors(c, shape.Text.Embedding);
        var actual = file.Tensors.ToDictionary(t => t.Name, t => t.Shape);
        Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), actual.Keys.Order(StringComparer.Ordinal));
        foreach (var (tensor, ne) in expected) Assert.True(ne.SequenceEqual(actual[tensor]), $"{tensor}: [{string.Join(", ", actual[tensor])}], expected [{string.Join(", ", ne)}]");

        // Types: 1-D F32; linear weights Q8_0, or F16 where a row is not whole Q8_0 blocks; embeddings as the converters keep them.
        foreach (var t in file.Tensors)
        {
            var want = t.Shape.Length == 1 ? GgmlType.F32
                : t.Name.StartsWith("v.patch_embd.", StringComparison.Ordinal) ? c.Projector switch { VisionProjector.Idefics3 => GgmlType.F32, VisionProjector.Mlp => GgmlType.F16, _ => GgmlType.F32 }
                : t.Name == "v.position_embd.weight" ? (c.Projector == VisionProjector.Idefics3 ? GgmlType.F32 : GgmlType.F16)
                : t.Shape[0] % 32 == 0 ? GgmlType.Q8_0 : GgmlType.F16;
            Assert.True(want == t.Type, $"{t.Name} is {t.Type}, expected {want}");
        }
    }

    /// <summary>
    /// The mmproj tensors clip.cpp loads at 3f545bec (names from clip-impl.h's TN_*, ggml ne with ne0 first) for the
    /// towers these shapes use: SigLIP (idefics3: post-LayerNorm, <c>mm.model.fc</c> without bias; LLaVA: no post-LN,
    /// <c>mm.0</c>/<c>mm.2</c>), Qwen-VL (two patch kernels, no patch bias or positions, RMSNorm without bias in 2.5,
    /// SwiGLU <c>ffn_gate</c> in 2.5, <c>v.post_ln</c>, merger <c>mm.0</c> 4w → 4w and <c>mm.2</c> 4w → text).
    /// </summary>
    static Dictionary<string, long[]> ClipTensors(VisionConfig c, int output)
    {
        int e = c.EmbeddingLength, f = c.FeedForwardLength, p = c.PatchSize, n = c.PatchesPerSide * c.PatchesPerSide;
        bool qwen = c.Projector is VisionProjector.Qwen2VL or VisionProjector.Qwen25VL, rms = c.Projector == VisionProjector.Qwen25VL;
        var t = new Dictionary<string, long[]> { ["v.patch_embd.weight"] = [p, p, 3, e] };
        if (qwen) t["v.patch_embd.weight.1"] = [p, p, 3, e];
        else
        {
            t["v.patch_embd.bias"] = [e];
            t["v.position_embd.weight"] = [e, n];
        }
        void Norm(string name)
        {
            t[name + ".weight"] = [e];
            if (!rms) t[name + ".bias"] = [e];
        }
        void Linear(string name, int inputs, int outputs, bool bias = true)
        {
            t[name + ".weight"] = [inputs, outputs];
            if (bias) t[name + ".bias"] = [outputs];
        }
        for (int i = 0; i < c.BlockCount; i++)
        {
            string b = $"v.blk.{i}.";
            Norm(b + "ln1");
            Norm(b + "ln2");
            foreach (string a in (string[])["attn_q", "attn_k", "attn_v", "attn_out"]) Linear(b + a, e, e);
            Linear(b + "ffn_up", e, f);
            Linear(b + "ffn_down", f, e);
            if (c.Activation == VisionActivation.Silu) Linear(b + "ffn_gate", e, f);
        }
        switch (c.Projector)
        {
            case VisionProjector.Idefics3:
                Norm("v.post_ln");
                Linear("mm.model.fc", e * c.MergeFactor * c.MergeFactor, output, bias: false);
                break;
            case VisionProjector.Mlp:
                Linear("mm.0", e * Math.Max(1, c.FeatureLayers.Length), output);
                Linear("mm.2", output, output);
                break;
            default:
                Norm("v.post_ln");
                Linear("mm.0", 4 * e, 4 * e);
                Linear("mm.2", 4 * e, output);
                break;
        }
        return t;
    }

    [Theory]
    [MemberData(nameof(TinyShapes))]
    public void TextFileHoldsWhatLlamaModelLoadsAndTheFamilysSpecialTokens(string name)
    {
        using var dir = new TempDirectory();
        var shape = RandomVisionShape.Find(name)!;
        var (textPath, _) = WriteTiny(dir, name);
        using var file = GgufFile.Open(textPath);
        var s = shape.Text;
        string a = file.Get("general.architecture")!.AsString();
        Assert.Equal(s.Architecture, a);
        Assert.Equal((uint)s.Embedding, file.Get($"{a}.embedding_length")!.AsInt64());

        // llama-model.cpp's tensors for llama / qwen2 / qwen2vl (output.weight only when untied; q/k/v biases for the Qwens).
        int kv = s.KvHeads * (s.Embedding / s.Heads);
        var expected = new Dictionary<string, long[]> { ["token_embd.weight"] = [s.Embedding, s.Vocab], ["output_norm.weight"] = [s.Embedding] };
        if (!s.TiedOutput) expected["output.weight"] = [s.Embedding, s.Vocab];
        for (int l = 0; l < s.Layers; l++)
        {
            string b = $"blk.{l}.";
            expected[b + "attn_norm.weight"] = [s.Embedding];
            expected[b + "attn_q.weight"] = [s.Embedding, s.Embedding];
            expected[b + "attn_k.weight"] = [s.Embedding, kv];
            expected[b + "attn_v.weight"] = [s.Embedding, kv];
            if (a != "llama")
            {
                expected[b + "attn_q.bias"] = [s.Embedding];
                expected[b + "attn_k.bias"] = [kv];
                expected[b + "attn_v.bias"] = [kv];
            }
            expected[b + "attn_output.weight"] = [s.Embedding, s.Embedding];
            expected[b + "ffn_norm.weight"] = [s.Embedding];
            expected[b + "ffn_gate.weight"] = [s.Embedding, s.FeedForward];
            expected[b + "ffn_up.weight"] = [s.Embedding, s.FeedForward];
            expected[b + "ffn_down.weight"] = [s.FeedForward, s.Embedding];
        }
        Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), file.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal));
        foreach (var t in file.Tensors) Assert.Equal(expected[t.Name], t.Shape);

        if (a == "qwen2vl")
        {
            // llama_model_qwen2vl::load_arch_hparams: get_key_or_arr(rope.dimension_sections, 4) of int32.
            var sections = file.Get("qwen2vl.rope.dimension_sections")!.AsArray();
            Assert.Equal(GgufValueType.Int32, sections.ElementType);
            Assert.Equal([2, 3, 3, 0], sections.AsInt32s());
            Assert.Equal(s.Embedding / s.Heads / 2, sections.AsInt32s().Sum());
        }

        var vocabulary = Vocabulary.FromGguf(file);
        var tokenizer = Tokenizer.Create(vocabulary);
        string[] needed = shape.Vision.Projector switch
        {
            VisionProjector.Idefics3 => ["<fake_token_around_image>", "<global-img>", "<image>", "<row_1_col_1>", "<row_6_col_6>", "<end_of_utterance>", "<|im_start|>"],
            VisionProjector.Mlp => ["<|im_start|>", "<|im_end|>", "<image>"],
            _ => ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
        };
        foreach (string special in needed)
        {
            Assert.True(vocabulary.TryGetId(special, out int id), $"{special} is not in the vocabulary");
            Assert.Equal(TokenType.Control, vocabulary.Types[id]);
            Assert.Equal([id], tokenizer.Encode(special, addSpecial: false, parseSpecial: true));
        }
        if (shape.Vision.Projector == VisionProjector.Idefics3)
        {
            // mtmd looks up "\n\n" and "\n" by piece (lookup_token) for the overview's prefix and row ends.
            Assert.Single(tokenizer.Encode("\n\n", addSpecial: false));
            Assert.Single(tokenizer.Encode("\n", addSpecial: false));
            Assert.Equal(36, vocabulary.Tokens.Count(t => t.StartsWith("<row_", StringComparison.Ordinal)));
        }
        // llama.cpp's llm_chat_detect_template: SmolVLM by <|im_start|> with <end_of_utterance>, ChatML by <|im_start|> alone.
        string template = vocabulary.ChatTemplate!;
        Assert.Contains("<|im_start|>", template);
        Assert.Equal(shape.Vision.Projector == VisionProjector.Idefics3, template.Contains("<end_of_utterance>"));
        Assert.True(vocabulary.IsEndOfGeneration(vocabulary.EosId));
    }

    [Theory]
    [MemberData(nameof(TinyShapes))]
    public void SameSeedSameBytes(string name)
    {
        using var dir = new TempDirectory();
        var first = RandomVisionModel.Write(dir.File("a"), RandomVisionShape.Find(name)!, GgmlType.F16, seed: 7);
        var second = RandomVisionModel.Write(dir.File("b"), RandomVisionShape.Find(name)!, GgmlType.F16, seed: 7);
        var other = RandomVisionModel.Write(dir.File("c"), RandomVisionShape.Find(name)!, GgmlType.F16, seed: 8);
        Assert.Equal(File.ReadAllBytes(first.Text), File.ReadAllBytes(second.Text));
        Assert.Equal(File.ReadAllBytes(first.Projector), File.ReadAllBytes(second.Projector));
        Assert.NotEqual(File.ReadAllBytes(first.Projector), File.ReadAllBytes(other.Projector));
        Assert.NotEqual(File.ReadAllBytes(first.Text), File.ReadAllBytes(other.Text));
    }

    [Fact]
    public void CliWritesThePairAndInfoSummarisesTheProjector()
    {
        using var dir = new TempDirectory();
        string target = dir.File("tiny-idefics3");
        var error = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["model", "random", "--shape", "tiny-idefics3", "--type", "f16", "-o", target], error));
        Assert.True(File.Exists(Path.Combine(target, "model.gguf")), error.ToString());
        Assert.True(File.Exists(Path.Combine(target, "mmproj.gguf")));

        var output = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["model", "info", "-m", Path.Combine(target, "mmproj.gguf"), "--no-tensors"], error, output));
        string[] lines = output.ToString().ReplaceLineEndings("\n").Split('\n');
        Assert.StartsWith("  vision: idefics3 projector, image 64 px, patch 16 (4x4 patches), width 128, 2 blocks, 4 heads of 32, FFN 256 GELU", lines[1]);
        Assert.EndsWith("output width 64", lines[1]);
        Assert.StartsWith("  general.architecture", lines[2]);

        // A text model's info has no vision line; text shapes still write one file at -o FILE.
        string textFile = dir.File("tiny.gguf");
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["model", "random", "--shape", "tiny", "-o", textFile], error));
        output = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["model", "info", "-m", textFile, "--no-tensors"], error, output));
        Assert.DoesNotContain("vision:", output.ToString());

        // Vision pairs take f32, f16 and q8_0 only.
        Assert.Equal(2, CliRunner.Run(CliApp.BuildRoot(), ["model", "random", "--shape", "tiny-llava", "--type", "q4_0", "-o", dir.File("x")], error));
    }

    [Fact]
    public void RealShapesHaveTheirPublishedSizes()
    {
        var smol = RandomVisionShape.SmolVlm2_256M;
        Assert.Equal(768 * 16, smol.Vision.Width * smol.Vision.MergeFactor * smol.Vision.MergeFactor); // mm.model.fc [576, 768·16]
        Assert.Equal((576, 30, 49280), (smol.Text.Embedding, smol.Text.Layers, smol.Text.Vocab));
        Assert.Equal(64, (smol.Vision.ImageSize / smol.Vision.PatchSize / smol.Vision.MergeFactor) * (smol.Vision.ImageSize / smol.Vision.PatchSize / smol.Vision.MergeFactor));

        var ov = RandomVisionShape.LlavaOneVision_0_5B;
        Assert.Equal(27, ov.Vision.ImageSize / ov.Vision.PatchSize);
        Assert.Equal([26], ov.Vision.FeatureLayers);
        Assert.Equal(26, ov.Vision.Blocks);
        Assert.Equal(36 * 2, ov.Vision.GridPinpoints.Length);
        Assert.Equal([384, 384, 384, 768], ov.Vision.GridPinpoints[..4]);
        Assert.Equal(896, ov.Text.Embedding);

        var qwen = RandomVisionShape.Qwen25Vl_3B;
        int[] full = [.. Enumerable.Range(0, qwen.Vision.Blocks).Where(i => (i + 1) % qwen.Vision.WindowAttentionPattern == 0)];
        Assert.Equal([7, 15, 23, 31], full); // clip.cpp: full attention where (il + 1) % n_wa_pattern == 0
        Assert.Equal(2048, qwen.Text.Embedding);
        Assert.Equal(qwen.Text.Embedding / qwen.Text.Heads / 2, qwen.Text.RopeSections!.Sum());
        Assert.All(RandomVisionShape.All, s => Assert.NotEqual(s.Vision.Width, s.Vision.FeedForward));
    }
}
