using System.Runtime.InteropServices;
using VidKV.Models;
using Xunit;

namespace VidKV.Tests;

/// <summary>
/// Vision towers and projectors against llama.cpp's mtmd on the three tiny mmproj files of ../shared/testdata/vision:
/// each preprocessed entry llama.cpp encoded (<c>preproc.f32.bin</c>) gives the embedding rows it produced
/// (<c>embd.noflash.f32.bin</c>; for the CLIP tower the class-token-first file, see the testdata README's "CLS bug").
/// </summary>
public class VisionModelTests
{
    /// <summary>
    /// Final embeddings (values up to ~5): the towers agree with llama.cpp's last tower node to ~3e-5
    /// (<see cref="TowersMatchLlamaCppsLastTowerNode"/>), but the projector's GELU reads fp16 buckets: where a hidden
    /// value near ±4 (an fp16 step of 4e-3) lands in the neighbouring bucket, mm.2's weights (std 1/8) carry ~5e-4 into
    /// that row's outputs. Measured worst 7.6e-4; the README's exact-math implementation sits at ~2e-3.
    /// </summary>
    const float Tolerance = 1e-3f;

    [Theory]
    [InlineData("tiny-idefics3-random", "gradient_97x61")]
    [InlineData("tiny-idefics3-random", "pattern_64x64")]
    [InlineData("tiny-llava-siglip-random", "gradient_97x61")]
    [InlineData("tiny-llava-siglip-random", "pattern_64x64")]
    [InlineData("tiny-llava-clip-random", "gradient_97x61")]
    [InlineData("tiny-llava-clip-random", "pattern_64x64")]
    public void EntriesEncodeToLlamaCppsEmbeddings(string model, string image)
    {
        string name = $"{model}.{image}";
        var json = TestData.Json($"vision/reference/{name}.json");
        using var vision = VisionModel.Load(TestData.File_($"vision/models/{model}.mmproj.gguf"));
        int width = vision.OutputLength, size = vision.Config.ImageSize;
        Assert.Equal(json.GetProperty("n_embd").GetInt32(), width);

        var pixels = Floats($"vision/reference/{name}.preproc.f32.bin");
        bool clsFirst = vision.Config.Projector == VisionProjector.Mlp && model.Contains("clip");
        var expected = Floats($"vision/reference/{name}.{(clsFirst ? "embd.cls-first.numpy-emulated" : "embd.noflash")}.f32.bin");
        var buffers = new Activations();
        var output = new float[vision.TokensPerEntry * width];
        foreach (var entry in json.GetProperty("entries").EnumerateArray())
        {
            Assert.Equal(size, entry.GetProperty("width").GetInt32());
            Assert.Equal(vision.TokensPerEntry, entry.GetProperty("n_tokens").GetInt32());
            vision.Encode(Planar(pixels, entry, size), output, buffers);
            int row = entry.GetProperty("embd_row_offset").GetInt32();
            for (int i = 0; i < output.Length; i++)
            {
                float want = expected[row * width + i], diff = Math.Abs(output[i] - want);
                Assert.True(diff <= Tolerance, $"{name} entry {entry.GetProperty("role").GetString()}: row {i / width} feature {i % width}: {output[i]} vs {want}");
            }
        }
    }

    /// <summary>
    /// The ViT alone against the last tower node llama.cpp dumped for one entry (<c>intermediates.noflash.f32.bin</c>):
    /// idefics3's post-LayerNorm, the LLaVA SigLIP tower's last block. Only summation order and the odd fp16 GELU
    /// bucket differ. (The CLIP tower is left out: llama.cpp puts its class token last, see the README's "CLS bug".)
    /// </summary>
    [Theory]
    [InlineData("tiny-idefics3-random", "gradient_97x61", "norm_b")]
    [InlineData("tiny-idefics3-random", "pattern_64x64", "norm_b")]
    [InlineData("tiny-llava-siglip-random", "gradient_97x61", "layer_out-1")]
    [InlineData("tiny-llava-siglip-random", "pattern_64x64", "layer_out-1")]
    public void TowersMatchLlamaCppsLastTowerNode(string model, string image, string node)
    {
        string name = $"{model}.{image}";
        var json = TestData.Json($"vision/reference/{name}.json");
        using var vision = VisionModel.Load(TestData.File_($"vision/models/{model}.mmproj.gguf"));
        var intermediates = json.GetProperty("intermediates");
        var entry = json.GetProperty("entries")[intermediates.GetProperty("entry_index").GetInt32()];
        var features = vision.Tower(Planar(Floats($"vision/reference/{name}.preproc.f32.bin"), entry, vision.Config.ImageSize), new Activations()).ToArray();
        var expected = Node(name, intermediates, node);
        Assert.Equal(expected.Length, features.Length);
        for (int i = 0; i < features.Length; i++)
            Assert.True(Math.Abs(features[i] - expected[i]) <= 1e-4f, $"{name} {node}: row {i / 64} feature {i % 64}: {features[i]} vs {expected[i]}");
    }

    /// <summary>The pixel shuffle of llama.cpp's post-LayerNorm rows equals its <c>pixel_shuffle</c> node bit for bit.</summary>
    [Fact]
    public void PixelShuffleEqualsLlamaCppsNode()
    {
        const string name = "tiny-idefics3-random.gradient_97x61";
        var intermediates = TestData.Json($"vision/reference/{name}.json").GetProperty("intermediates");
        var input = Node(name, intermediates, "norm_b");
        var expected = Node(name, intermediates, "pixel_shuffle");
        var shuffled = new float[input.Length];
        VisionModel.PixelShuffle(input, 4, 64, 2, shuffled);
        Assert.Equal(expected, shuffled);
    }

    internal static float[] Node(string name, System.Text.Json.JsonElement intermediates, string node)
    {
        var all = Floats($"vision/reference/{name}.intermediates.noflash.f32.bin");
        var info = intermediates.GetProperty("nodes").EnumerateArray()
            .Last(n => n.GetProperty("name").GetString() == node && n.TryGetProperty("float_offset", out var o) && o.ValueKind == System.Text.Json.JsonValueKind.Number);
        return all.AsSpan(info.GetProperty("float_offset").GetInt32(), info.GetProperty("n_floats").GetInt32()).ToArray();
    }

    /// <summary>Entry <paramref name="entry"/> of a <c>preproc.f32.bin</c> ([H][W][3]) as planes [3][H][W].</summary>
    static float[] Planar(float[] pixels, System.Text.Json.JsonElement entry, int size)
    {
        var planar = new float[3 * size * size];
        int offset = entry.GetProperty("preproc_f32_float_offset").GetInt32();
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
                for (int c = 0; c < 3; c++)
                    planar[c * size * size + y * size + x] = pixels[offset + (y * size + x) * 3 + c];
        return planar;
    }

    /// <summary>Idefics3's pixel shuffle against its definition on a grid with distinct values (side 6, scale 3, width 5).</summary>
    [Fact]
    public void PixelShuffleMovesEachPatchWhereIdefics3PutsIt()
    {
        const int side = 6, width = 5, scale = 3;
        var source = Enumerable.Range(0, side * side * width).Select(i => (float)i).ToArray();
        var shuffled = new float[source.Length];
        VisionModel.PixelShuffle(source, side, width, scale, shuffled);
        int merged = side / scale;
        for (int ys = 0; ys < merged; ys++)
            for (int xs = 0; xs < merged; xs++)
                for (int dy = 0; dy < scale; dy++)
                    for (int dx = 0; dx < scale; dx++)
                        for (int c = 0; c < width; c++)
                        {
                            int patch = (scale * ys + dy) * side + scale * xs + dx;
                            int at = (ys * merged + xs) * width * scale * scale + dy * scale * width + dx * width + c;
                            Assert.Equal(patch * width + c, shuffled[at]);
                        }
    }

    internal static float[] Floats(string relative) => MemoryMarshal.Cast<byte, float>(File.ReadAllBytes(TestData.File_(relative))).ToArray();
}

/// <summary>LLaVA-OneVision's video-frame pooling against a plain f64 statement of PyTorch's bilinear (align_corners=False).</summary>
public class VideoPoolingTests
{
    [Theory]
    [InlineData(27, 7)]
    [InlineData(27, 1)]
    [InlineData(5, 3)]
    [InlineData(2, 4)]
    [InlineData(1, 2)]
    [InlineData(14, 5)]
    public void PoolingMatchesTorchsBilinear(int side, int width)
    {
        var random = new Random(side * 31 + width);
        var source = Enumerable.Range(0, side * side * width).Select(_ => (float)(random.NextDouble() * 8 - 4)).ToArray();
        int n = VideoPooling.PooledSide(side);
        Assert.Equal((int)Math.Ceiling(side / 2.0), n);
        var pooled = new float[n * n * width];
        VideoPooling.Pool(source, side, width, pooled);
        (int, int, double) Index(int o)
        {
            double s = Math.Max((double)side / n * (o + 0.5) - 0.5, 0);
            int i0 = (int)Math.Floor(s);
            return (i0, Math.Min(i0 + 1, side - 1), s - i0);
        }
        for (int oy = 0; oy < n; oy++)
            for (int ox = 0; ox < n; ox++)
            {
                var (y0, y1, ly) = Index(oy);
                var (x0, x1, lx) = Index(ox);
                for (int c = 0; c < width; c++)
                {
                    double V(int y, int x) => source[(y * side + x) * width + c];
                    double want = (1 - ly) * ((1 - lx) * V(y0, x0) + lx * V(y0, x1)) + ly * ((1 - lx) * V(y1, x0) + lx * V(y1, x1));
                    Assert.True(Math.Abs(pooled[(oy * n + ox) * width + c] - want) <= 1e-5, $"({oy},{ox}) channel {c}: {pooled[(oy * n + ox) * width + c]} vs {want}");
                }
            }
    }

    /// <summary>27 → 14: a linear ramp stays linear where no edge clamps (bilinear interpolation reproduces linear functions).</summary>
    [Fact]
    public void RampStaysLinearInside()
    {
        var source = new float[27 * 27];
        for (int y = 0; y < 27; y++) for (int x = 0; x < 27; x++) source[y * 27 + x] = 3 * x - 2 * y;
        var pooled = new float[14 * 14];
        VideoPooling.Pool(source, 27, 1, pooled);
        double step = 27.0 / 14;
        for (int oy = 1; oy < 13; oy++)
            for (int ox = 1; ox < 13; ox++)
                Assert.Equal(3 * (step * (ox + 0.5) - 0.5) - 2 * (step * (oy + 0.5) - 0.5), pooled[oy * 14 + ox], 4);
    }
}

/// <summary>The projectors alone, fed llama.cpp's own tower output: no tower difference to amplify.</summary>
public class ProjectorTests
{
    /// <summary>
    /// The last tower node llama.cpp dumped, through our projector, against llama.cpp's embeddings of that entry: only
    /// summation order differs (and the odd fp16 GELU bucket where an input sits on a boundary).
    /// </summary>
    [Theory]
    [InlineData("tiny-idefics3-random", "gradient_97x61", "norm_b")]
    [InlineData("tiny-llava-siglip-random", "gradient_97x61", "layer_out-1")]
    [InlineData("tiny-llava-siglip-random", "pattern_64x64", "layer_out-1")]
    public void ProjectorOfLlamaCppsTowerGivesItsEmbeddings(string model, string image, string node)
    {
        string name = $"{model}.{image}";
        var json = TestData.Json($"vision/reference/{name}.json");
        var intermediates = json.GetProperty("intermediates");
        var entry = json.GetProperty("entries")[intermediates.GetProperty("entry_index").GetInt32()];
        var tower = VisionModelTests.Node(name, intermediates, node);
        var expected = VisionModelTests.Floats($"vision/reference/{name}.embd.noflash.f32.bin");
        using var vision = VisionModel.Load(TestData.File_($"vision/models/{model}.mmproj.gguf"));
        var output = new float[vision.TokensPerEntry * vision.OutputLength];
        vision.Project(tower, vision.TokensPerEntry, output, new Activations());
        int offset = entry.GetProperty("embd_row_offset").GetInt32() * vision.OutputLength;
        int far = 0;
        for (int i = 0; i < output.Length; i++)
        {
            float diff = Math.Abs(output[i] - expected[offset + i]);
            Assert.True(diff <= 1e-3f, $"{name}: value {i}: {output[i]} vs {expected[offset + i]}");
            if (diff > 1e-5f) far++;
        }
        Assert.True(far <= output.Length / 20, $"{name}: {far} of {output.Length} values differ by more than 1e-5");
    }
}
