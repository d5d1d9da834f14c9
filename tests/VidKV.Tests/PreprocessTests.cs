using System.Runtime.InteropServices;
using System.Text;
using VidKV.Formats;
using VidKV.Models;

namespace VidKV.Tests;

/// <summary>
/// Image preprocessing against llama.cpp (vision/README.md "1. Preprocessing"): the u8 entries and the normalised f32
/// tower inputs bit for bit, and the resize filters against plain re-statements of llama.cpp's formulas.
/// </summary>
public class PreprocessTests
{
    public static TheoryData<string, string> Cases => new()
    {
        { "tiny-idefics3-random", "gradient_97x61" },
        { "tiny-idefics3-random", "pattern_64x64" },
        { "tiny-llava-siglip-random", "gradient_97x61" },
        { "tiny-llava-siglip-random", "pattern_64x64" },
        { "tiny-llava-clip-random", "gradient_97x61" },
        { "tiny-llava-clip-random", "pattern_64x64" },
    };

    static VisionConfig Config(string model)
    {
        using var file = GgufFile.Open(TestData.File_($"vision/models/{model}.mmproj.gguf"));
        return VisionConfig.FromGguf(file);
    }

    /// <summary>A binary PPM: <c>P6</c>, width, height, maxval 255, one whitespace byte, then RGB rows.</summary>
    static RgbImage ReadPpm(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        int pos = 0;
        string Token()
        {
            while (char.IsWhiteSpace((char)bytes[pos])) pos++;
            int start = pos;
            while (!char.IsWhiteSpace((char)bytes[pos])) pos++;
            return Encoding.ASCII.GetString(bytes, start, pos - start);
        }
        Assert.Equal("P6", Token());
        int width = int.Parse(Token()), height = int.Parse(Token());
        Assert.Equal("255", Token());
        pos++; // the single whitespace byte before the raster
        Assert.Equal(3 * width * height, bytes.Length - pos);
        return new RgbImage(width, height, bytes[pos..]);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EntriesMatchLlamaCppBytes(string model, string image)
    {
        var config = Config(model);
        var input = ReadPpm(TestData.File_($"vision/images/{image}.ppm"));
        var json = TestData.Json($"vision/reference/{model}.{image}.json");
        byte[] expected = File.ReadAllBytes(TestData.File_($"vision/reference/{model}.{image}.preproc.u8.bin"));

        var result = ImagePreprocessor.Preprocess(config, input);

        var entries = json.GetProperty("entries").EnumerateArray().ToArray();
        Assert.Equal(entries.Length, result.Entries.Count);
        Assert.Equal(json.GetProperty("grid_x").GetInt32(), result.GridColumns);
        Assert.Equal(json.GetProperty("grid_y").GetInt32(), result.GridRows);
        Assert.Equal(json.GetProperty("has_overview").GetBoolean(), result.HasOverview);
        for (int i = 0; i < entries.Length; i++)
        {
            var entry = result.Entries[i];
            Assert.Equal(entries[i].GetProperty("width").GetInt32(), entry.Width);
            Assert.Equal(entries[i].GetProperty("height").GetInt32(), entry.Height);
            string role = entries[i].GetProperty("role").GetString()!;
            if (role == "overview") Assert.True(result.HasOverview && i == entries.Length - 1, $"the overview is entry {i} of {entries.Length}");
            if (role.StartsWith("slice_r"))
            {
                int r = int.Parse(role[7..role.IndexOf("_c")]), c = int.Parse(role[(role.IndexOf("_c") + 2)..]);
                Assert.Equal(i, r * result.GridColumns + c);
            }
            int offset = entries[i].GetProperty("preproc_u8_byte_offset").GetInt32();
            AssertBytes(expected.AsSpan(offset, entries[i].GetProperty("preproc_n_bytes").GetInt32()), entry.Pixels, $"entry {i} ({role})");
        }
        AssertBytes(expected, result.Entries.SelectMany(e => e.Pixels).ToArray(), "all entries");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void NormalizedEntriesMatchLlamaCppFloats(string model, string image)
    {
        var config = Config(model);
        var input = ReadPpm(TestData.File_($"vision/images/{image}.ppm"));
        float[] expected = MemoryMarshal.Cast<byte, float>(File.ReadAllBytes(TestData.File_($"vision/reference/{model}.{image}.preproc.f32.bin"))).ToArray();

        var result = ImagePreprocessor.Preprocess(config, input);
        var actual = new List<float>();
        foreach (var entry in result.Entries)
        {
            int w = entry.Width, h = entry.Height;
            var planar = new float[3 * w * h];
            ImagePreprocessor.Normalize(config, entry, planar);
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    for (int c = 0; c < 3; c++)
                        actual.Add(planar[(c * h + y) * w + x]);
        }
        Assert.Equal(expected.Length, actual.Count);
        AssertBytes(MemoryMarshal.AsBytes(expected.AsSpan()), MemoryMarshal.AsBytes(CollectionsMarshal.AsSpan(actual)), "normalised entries (f32 bits)");
    }

    [Fact]
    public void NormalizeIsTheFloat32Formula()
    {
        var config = Config("tiny-llava-clip-random");
        var rng = new Random(7);
        var image = RandomImage(rng, 5, 3);
        var planar = new float[3 * 5 * 3];
        ImagePreprocessor.Normalize(config, image, planar);
        for (int y = 0; y < 3; y++)
            for (int x = 0; x < 5; x++)
                for (int c = 0; c < 3; c++)
                {
                    float expected = ((float)image.Pixel(x, y)[c] / 255f - config.ImageMean[c]) / config.ImageStd[c];
                    Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(planar[(c * 3 + y) * 5 + x]));
                }
        Assert.Throws<ArgumentException>(() => ImagePreprocessor.Normalize(config, image, new float[3 * 5 * 3 + 1]));
    }

    // ---- the resize filters against plain re-statements of llama.cpp's formulas (tools/mtmd/mtmd-image.cpp) ----

    public static TheoryData<int, int, int, int> ResizeSizes => new()
    {
        { 7, 5, 13, 9 },     // up
        { 13, 9, 5, 3 },     // down
        { 97, 61, 64, 64 },  // down in x, up in y
        { 61, 97, 192, 121 },
        { 9, 11, 9, 4 },     // one side unchanged
        { 1, 1, 5, 3 },      // 1-pixel source
        { 1, 7, 3, 1 },      // 1-pixel column to a 1-pixel row
        { 5, 1, 1, 1 },      // to one pixel
        { 3, 3, 1, 5 },
        { 2, 2, 3, 3 },
        { 17, 3, 5, 17 },
    };

    [Theory]
    [MemberData(nameof(ResizeSizes))]
    public void BilinearMatchesTheFormula(int sw, int sh, int tw, int th)
    {
        var image = RandomImage(new Random(sw * 1000 + sh * 10 + tw), sw, sh);
        AssertBytes(ReferenceBilinear(image, tw, th).Pixels, ImageResize.Bilinear(image, tw, th).Pixels, $"bilinear {sw}×{sh} → {tw}×{th}");
    }

    [Theory]
    [MemberData(nameof(ResizeSizes))]
    public void BicubicMatchesTheFormula(int sw, int sh, int tw, int th)
    {
        var image = RandomImage(new Random(sw * 1000 + sh * 10 + th), sw, sh);
        AssertBytes(ReferenceBicubic(image, tw, th).Pixels, ImageResize.Bicubic(image, tw, th).Pixels, $"bicubic {sw}×{sh} → {tw}×{th}");
    }

    [Fact]
    public void BicubicOvershootIsClampedAndBilinearTruncates()
    {
        // A hard edge: the cubic over- and undershoots, which the clamp must catch (0 and 255 appear, nothing wraps).
        var edge = new RgbImage(4, 1, [0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255]);
        var up = ImageResize.Bicubic(edge, 16, 1);
        AssertBytes(ReferenceBicubic(edge, 16, 1).Pixels, up.Pixels, "edge");
        Assert.Contains((byte)0, up.Pixels);
        Assert.Contains((byte)255, up.Pixels);
        // Align-corners: 2 → 3 pixels puts the middle one halfway; 0.5, 127.5 and 1.5 truncate to 0, 127 and 1.
        var pair = new RgbImage(2, 1, [0, 0, 0, 1, 255, 3]);
        var mid = ImageResize.Bilinear(pair, 3, 1);
        Assert.Equal(new byte[] { 0, 0, 0, 0, 127, 1, 1, 255, 3 }, mid.Pixels);
    }

    [Fact]
    public void ResizeCopiesAtTheSameSizeAndPadsCentred()
    {
        var rng = new Random(3);
        var image = RandomImage(rng, 97, 61);

        var copy = ImageResize.Resize(image, 97, 61, ResizeAlgorithm.Bicubic, ResizePadding.Ceil, (1, 2, 3));
        Assert.NotSame(image.Pixels, copy.Pixels);
        Assert.Equal(image.Pixels, copy.Pixels);

        // The README's three PAD_CEIL cases: inner size and offset.
        foreach (var (tw, th, nw, nh) in new[] { (192, 128, 192, 121), (128, 64, 102, 64), (64, 64, 64, 41) })
        {
            Assert.Equal((nw, nh), ImageResize.CeilFit(97, 61, tw, th));
            var color = ((byte)122, (byte)116, (byte)104);
            var padded = ImageResize.Resize(image, tw, th, ResizeAlgorithm.Bicubic, ResizePadding.Ceil, color);
            var inner = ReferenceBicubic(image, nw, nh);
            int ox = (tw - nw) / 2, oy = (th - nh) / 2;
            for (int y = 0; y < th; y++)
                for (int x = 0; x < tw; x++)
                {
                    var p = padded.Pixel(x, y).ToArray();
                    bool inside = x >= ox && x < ox + nw && y >= oy && y < oy + nh;
                    var want = inside ? inner.Pixel(x - ox, y - oy).ToArray() : new byte[] { 122, 116, 104 };
                    Assert.True(want.AsSpan().SequenceEqual(p), $"{tw}×{th}: pixel ({x}, {y})");
                }
        }

        var stretched = ImageResize.Resize(image, 64, 64, ResizeAlgorithm.Bilinear, ResizePadding.None);
        Assert.Equal(ReferenceBilinear(image, 64, 64).Pixels, stretched.Pixels);

        var crop = ImageResize.Crop(image, 10, 20, 7, 5);
        for (int y = 0; y < 5; y++)
            for (int x = 0; x < 7; x++)
                Assert.True(image.Pixel(10 + x, 20 + y).SequenceEqual(crop.Pixel(x, y)));
        Assert.Throws<ArgumentOutOfRangeException>(() => ImageResize.Crop(image, 91, 0, 7, 5));
    }

    // ---- Qwen-VL smart resize ----

    /// <summary>
    /// The size rule, restated. Source: Hugging Face transformers, models/qwen2_vl/image_processing_qwen2_vl.py
    /// <c>smart_resize(height, width, factor=28, min_pixels, max_pixels)</c>:
    /// <code>
    /// h_bar = round(height / factor) * factor;  w_bar = round(width / factor) * factor
    /// if h_bar * w_bar > max_pixels:  beta = sqrt(height * width / max_pixels)
    ///     h_bar = max(factor, floor(height / beta / factor) * factor)   (w_bar likewise)
    /// elif h_bar * w_bar &lt; min_pixels:  beta = sqrt(min_pixels / (height * width))
    ///     h_bar = ceil(height * beta / factor) * factor                 (w_bar likewise)
    /// </code>
    /// llama.cpp (tools/mtmd/mtmd-image.cpp <c>calc_size_preserved_ratio</c>, which mtmd uses for Qwen2/2.5-VL) differs,
    /// and llama.cpp is what this follows: everything in float32, round = roundf (half AWAY from zero; Python's round is
    /// half to even), bounds ≤ 0 are off, and where HF raises (a side below the factor, an aspect ratio above 200)
    /// llama.cpp clamps the first rounding to at least the factor and goes on. Its default bounds are 8 … 4096 merged
    /// tokens of patch²·merge² pixels each (clip.cpp <c>set_limit_image_tokens(8, 4096)</c>), not HF's preprocessor_config values.
    /// </summary>
    static (int W, int H) ReferenceSmartResize(int width, int height, int factor, int minPixels, int maxPixels)
    {
        float f = factor;
        int Round(float x) => (int)MathF.Round(x / f, MidpointRounding.AwayFromZero) * factor;
        int Floor(float x) => (int)MathF.Floor(x / f) * factor;
        int Ceil(float x) => (int)MathF.Ceiling(x / f) * factor;
        int h = Math.Max(factor, Round(height)), w = Math.Max(factor, Round(width));
        if (maxPixels > 0 && h * w > maxPixels)
        {
            float beta = MathF.Sqrt((float)height * width / maxPixels);
            h = Math.Max(factor, Floor(height / beta));
            w = Math.Max(factor, Floor(width / beta));
        }
        else if (minPixels > 0 && h * w < minPixels)
        {
            float beta = MathF.Sqrt(minPixels / ((float)height * width));
            h = Ceil(height * beta);
            w = Ceil(width * beta);
        }
        return (w, h);
    }

    static VisionConfig QwenConfig(int minPixels, int maxPixels) => new()
    {
        Projector = VisionProjector.Qwen2VL,
        ImageSize = 56, PatchSize = 14, MergeFactor = 2, // factor 28
        EmbeddingLength = 64, FeedForwardLength = 128, BlockCount = 1, HeadCount = 4, HeadDim = 16, NormEps = 1e-6f,
        ImageMean = [0.48145466f, 0.4578275f, 0.40821073f], ImageStd = [0.26862954f, 0.26130258f, 0.27577711f],
        Activation = VisionActivation.QuickGelu,
        MinPixels = minPixels, MaxPixels = maxPixels,
    };

    [Fact]
    public void QwenSmartResizeFollowsLlamaCpp()
    {
        const int factor = 28, min = 4 * 28 * 28, max = 1280 * 28 * 28;
        var config = QwenConfig(min, max);

        // Hand-worked cases.
        Assert.Equal((84, 56), ImagePreprocessor.SmartResize(config, 70, 42));     // 2.5 → 3, 1.5 → 2 (HF's round-half-even: 56×56)
        Assert.Equal((56, 56), ImagePreprocessor.SmartResize(config, 14, 14));     // 28×28 < min: β = √(3136/196) = 4 → 56
        Assert.Equal((1316, 728), ImagePreprocessor.SmartResize(config, 1920, 1080)); // 1932×1092 > max: β ≈ 1.4375, ⌊47.7⌋, ⌊26.8⌋
        Assert.Equal((4004, 28), ImagePreprocessor.SmartResize(config, 4000, 30));   // no ratio limit in llama.cpp
        Assert.Equal((112, 84), ImagePreprocessor.SmartResize(QwenConfig(8 * 784, 4096 * 784), 97, 61));

        var rng = new Random(11);
        for (int n = 0; n < 2000; n++)
        {
            int w = 1 + (int)Math.Pow(2, rng.NextDouble() * 12), h = 1 + (int)Math.Pow(2, rng.NextDouble() * 12);
            var (rw, rh) = ImagePreprocessor.SmartResize(config, w, h);
            Assert.Equal(ReferenceSmartResize(w, h, factor, min, max), (rw, rh));
            Assert.True(rw % factor == 0 && rh % factor == 0 && rw >= factor && rh >= factor, $"{w}×{h} → {rw}×{rh}");
            Assert.True((long)rw * rh <= max || rw == factor || rh == factor, $"{w}×{h} → {rw}×{rh} above max");
            Assert.True((long)rw * rh >= min, $"{w}×{h} → {rw}×{rh} below min");
            if (rw >= 2 * factor && rh >= 2 * factor)
            {
                // Each side is off its exact scaled length by less than one factor: the aspect ratio moves by at most that much.
                double bound = Math.Log(rw / (double)(rw - factor)) + Math.Log(rh / (double)(rh - factor)) + 1e-6;
                Assert.True(Math.Abs(Math.Log((double)rw / rh) - Math.Log((double)w / h)) <= bound, $"{w}×{h} → {rw}×{rh} distorts the aspect ratio");
            }
        }
    }

    [Fact]
    public void QwenEntryIsTheSmartResizedImageBilinearPaddedOnBlack()
    {
        var config = QwenConfig(8 * 784, 4096 * 784);
        var image = ReadPpm(TestData.File_("vision/images/gradient_97x61.ppm"));
        var result = ImagePreprocessor.Preprocess(config, image);
        Assert.Equal((0, 0, false), (result.GridColumns, result.GridRows, result.HasOverview));
        var entry = Assert.Single(result.Entries);
        Assert.Equal((112, 84), (entry.Width, entry.Height));

        // PAD_CEIL: s = min(112/97, 84/61) = 112/97 → inner 112 × ⌈61·s⌉ = 71, pasted at (0, 6) on black.
        var inner = ReferenceBilinear(image, 112, 71);
        for (int y = 0; y < 84; y++)
            for (int x = 0; x < 112; x++)
            {
                var want = y >= 6 && y < 77 ? inner.Pixel(x, y - 6).ToArray() : new byte[3];
                Assert.True(want.AsSpan().SequenceEqual(entry.Pixel(x, y)), $"pixel ({x}, {y})");
            }

        var planar = new float[3 * 112 * 84];
        ImagePreprocessor.Normalize(config, entry, planar); // a non-square entry normalises like any other
        Assert.Equal(((float)entry.Pixel(5, 40)[1] / 255f - config.ImageMean[1]) / config.ImageStd[1], planar[112 * 84 + 40 * 112 + 5]);

        // An image already of the target size is copied.
        var exact = RandomImage(new Random(5), 112, 84);
        Assert.Equal(exact.Pixels, Assert.Single(ImagePreprocessor.Preprocess(config, exact).Entries).Pixels);
    }

    [Fact]
    public void PinpointChoiceFollowsLlavaUhd()
    {
        (int, int)[] pinpoints = [(64, 128), (128, 64), (128, 128), (192, 64), (64, 192)];
        Assert.Equal((128, 64), ImagePreprocessor.SelectBestResolution(97, 61, pinpoints));    // README
        Assert.Equal((128, 128), ImagePreprocessor.SelectBestResolution(100, 100, pinpoints));
        Assert.Equal((64, 192), ImagePreprocessor.SelectBestResolution(30, 200, pinpoints));
        // Equal effective resolution (the whole image fits both): the smaller waste wins, then the first.
        Assert.Equal((128, 64), ImagePreprocessor.SelectBestResolution(60, 30, [(128, 128), (128, 64), (64, 128)]));
        Assert.Equal((64, 128), ImagePreprocessor.SelectBestResolution(30, 30, [(64, 128), (128, 64)]));
    }

    // ---- helpers ----

    static RgbImage RandomImage(Random rng, int width, int height)
    {
        var pixels = new byte[3 * width * height];
        rng.NextBytes(pixels);
        return new RgbImage(width, height, pixels);
    }

    /// <summary>llama.cpp's bilinear, one output byte at a time, exactly as README "Bilinear" states it.</summary>
    static RgbImage ReferenceBilinear(RgbImage src, int tw, int th)
    {
        int sw = src.Width, sh = src.Height;
        float xr = tw > 1 ? (float)(sw - 1) / (tw - 1) : 0f;
        float yr = th > 1 ? (float)(sh - 1) / (th - 1) : 0f;
        var dst = new RgbImage(tw, th);
        for (int y = 0; y < th; y++)
            for (int x = 0; x < tw; x++)
            {
                float px = x * xr, py = y * yr;
                int x0 = Math.Min((int)px, sw - 1), y0 = Math.Min((int)py, sh - 1);
                int x1 = Math.Min(x0 + 1, sw - 1), y1 = Math.Min(y0 + 1, sh - 1);
                float xf = px - x0, yf = py - y0;
                for (int c = 0; c < 3; c++)
                {
                    float p00 = src.Pixel(x0, y0)[c], p10 = src.Pixel(x1, y0)[c], p01 = src.Pixel(x0, y1)[c], p11 = src.Pixel(x1, y1)[c];
                    float top = p00 + (p10 - p00) * xf;
                    float bottom = p01 + (p11 - p01) * xf;
                    float v = top + (bottom - top) * yf;
                    dst.Pixel(x, y)[c] = (byte)(int)v;
                }
            }
        return dst;
    }

    /// <summary>llama.cpp's bicubic, one output byte at a time, exactly as README "Bicubic" states it.</summary>
    static RgbImage ReferenceBicubic(RgbImage src, int tw, int th)
    {
        int sw = src.Width, sh = src.Height;
        float tx = (float)sw / tw, ty = (float)sh / th;
        var dst = new RgbImage(tw, th);
        var column = new float[4];
        for (int i = 0; i < th; i++)
            for (int j = 0; j < tw; j++)
            {
                int x = (int)(tx * j), y = (int)(ty * i);
                float dx = tx * j - x, dy = ty * i - y;
                for (int c = 0; c < 3; c++)
                {
                    for (int jj = 0; jj < 4; jj++)
                    {
                        int yy = Math.Clamp(y - 1 + jj, 0, sh - 1);
                        float P(int k) => src.Pixel(Math.Clamp(x + k, 0, sw - 1), yy)[c];
                        float d0 = P(-1) - P(0), d2 = P(1) - P(0), d3 = P(2) - P(0), a0 = P(0);
                        float a1 = (float)(-1.0 / 3 * d0 + d2 - 1.0 / 6 * d3);
                        float a2 = (float)(0.5 * d0 + 0.5 * d2);
                        float a3 = (float)(-1.0 / 6 * d0 - 0.5 * d2 + 1.0 / 6 * d3);
                        column[jj] = a0 + a1 * dx + a2 * dx * dx + a3 * dx * dx * dx;
                    }
                    {
                        float d0 = column[0] - column[1], d2 = column[2] - column[1], d3 = column[3] - column[1], a0 = column[1];
                        float a1 = (float)(-1.0 / 3 * d0 + d2 - 1.0 / 6 * d3);
                        float a2 = (float)(0.5 * d0 + 0.5 * d2);
                        float a3 = (float)(-1.0 / 6 * d0 - 0.5 * d2 + 1.0 / 6 * d3);
                        float cc = a0 + a1 * dy + a2 * dy * dy + a3 * dy * dy * dy;
                        dst.Pixel(j, i)[c] = (byte)Math.Clamp(MathF.Round(cc, MidpointRounding.AwayFromZero), 0f, 255f);
                    }
                }
            }
        return dst;
    }

    static void AssertBytes(ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} bytes, expected {expected.Length}");
        int i = expected.CommonPrefixLength(actual);
        Assert.True(i == expected.Length, $"{what}: first difference at byte {i}: {(i < actual.Length ? actual[i] : 0)}, expected {(i < expected.Length ? expected[i] : 0)}");
    }
}
