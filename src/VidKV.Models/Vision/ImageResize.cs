using VidKV.Formats;

namespace VidKV.Models;

/// <summary>The resampling filters of llama.cpp's image preprocessing (its own, not Pillow's or PyTorch's).</summary>
internal enum ResizeAlgorithm
{
    /// <summary>llama.cpp's align-corners bilinear with a truncating cast to u8.</summary>
    Bilinear,
    /// <summary>llama.cpp's Catmull-Rom-like bicubic (from ViT.cpp), rounded half away from zero and clamped.</summary>
    Bicubic,
}

/// <summary>How a resize to a target size treats a different aspect ratio.</summary>
internal enum ResizePadding
{
    /// <summary>Stretch: resample straight to the target size.</summary>
    None,
    /// <summary>Scale to fit keeping the aspect ratio (sizes rounded up, capped at the target), centre on a solid canvas.</summary>
    Ceil,
}

/// <summary>
/// The image operations of llama.cpp's <c>img_tool</c> (tools/mtmd/mtmd-image.cpp at 3f545bec), reproducing its u8
/// output byte for byte: the arithmetic is float32 as in C (no FMA contraction), except the bicubic coefficients, which
/// C computes in double (the literals are <c>double</c>) and stores as float.
/// </summary>
internal static class ImageResize
{
    /// <summary>
    /// <c>img_tool::resize</c>: a plain copy when <paramref name="source"/> already has the target size (no resampling,
    /// no padding); else with <see cref="ResizePadding.None"/> a resample to the target size, and with
    /// <see cref="ResizePadding.Ceil"/> a resample to (min(⌈w·s⌉, tw), min(⌈h·s⌉, th)) for s = min(tw/w, th/h) in float32,
    /// pasted at ((tw − nw)/2, (th − nh)/2) on a canvas of <paramref name="padColor"/>.
    /// </summary>
    public static RgbImage Resize(RgbImage source, int width, int height, ResizeAlgorithm algorithm, ResizePadding padding,
        (byte R, byte G, byte B) padColor = default)
    {
        CheckSize(width, height);
        if (source.Width == width && source.Height == height) return new RgbImage(width, height, (byte[])source.Pixels.Clone());
        if (padding == ResizePadding.None) return Resample(source, width, height, algorithm);

        var (innerWidth, innerHeight) = CeilFit(source.Width, source.Height, width, height);
        var inner = Resample(source, innerWidth, innerHeight, algorithm);
        var canvas = Filled(width, height, padColor);
        Paste(canvas, inner, (width - innerWidth) / 2, (height - innerHeight) / 2);
        return canvas;
    }

    /// <summary>The size PAD_CEIL resamples to before pasting: min(⌈w·s⌉, tw) × min(⌈h·s⌉, th), s = min(tw/w, th/h) (float32).</summary>
    public static (int Width, int Height) CeilFit(int sourceWidth, int sourceHeight, int width, int height)
    {
        float scale = MathF.Min((float)width / sourceWidth, (float)height / sourceHeight);
        return (Math.Min((int)MathF.Ceiling(sourceWidth * scale), width), Math.Min((int)MathF.Ceiling(sourceHeight * scale), height));
    }

    /// <summary>The <paramref name="width"/> × <paramref name="height"/> rectangle of <paramref name="source"/> at (<paramref name="x"/>, <paramref name="y"/>).</summary>
    public static RgbImage Crop(RgbImage source, int x, int y, int width, int height)
    {
        CheckSize(width, height);
        if (x < 0 || y < 0 || x + width > source.Width || y + height > source.Height)
            throw new ArgumentOutOfRangeException(nameof(x), $"crop {width}×{height} at ({x}, {y}) leaves the {source.Width}×{source.Height} image");
        var result = new RgbImage(width, height);
        for (int row = 0; row < height; row++)
            source.Pixels.AsSpan(3 * ((y + row) * source.Width + x), 3 * width).CopyTo(result.Pixels.AsSpan(3 * row * width));
        return result;
    }

    /// <summary>Resamples to exactly <paramref name="width"/> × <paramref name="height"/> with the given filter.</summary>
    public static RgbImage Resample(RgbImage source, int width, int height, ResizeAlgorithm algorithm) => algorithm switch
    {
        ResizeAlgorithm.Bilinear => Bilinear(source, width, height),
        ResizeAlgorithm.Bicubic => Bicubic(source, width, height),
        _ => throw new ArgumentOutOfRangeException(nameof(algorithm)),
    };

    /// <summary>
    /// llama.cpp's <c>resize_bilinear</c>: align-corners sampling, ratio r = (src − 1)/(dst − 1) (0 for a 1-pixel target),
    /// p = i·r, i0 = min(⌊p⌋, src − 1), i1 = min(i0 + 1, src − 1), f = p − i0; two lerps along x, one along y
    /// (lerp(a, b, t) = a + (b − a)·t, float32), then truncated to u8.
    /// </summary>
    public static RgbImage Bilinear(RgbImage source, int width, int height)
    {
        CheckSize(width, height);
        int sw = source.Width, sh = source.Height;
        float xRatio = width > 1 ? (float)(sw - 1) / (width - 1) : 0f;
        float yRatio = height > 1 ? (float)(sh - 1) / (height - 1) : 0f;

        // Per column: the byte offsets of the two source columns and the weight (the same for every row).
        var x0 = new int[width];
        var x1 = new int[width];
        var xf = new float[width];
        for (int x = 0; x < width; x++)
        {
            float px = x * xRatio;
            int i0 = Math.Min((int)px, sw - 1);
            x0[x] = 3 * i0;
            x1[x] = 3 * Math.Min(i0 + 1, sw - 1);
            xf[x] = px - i0;
        }

        var result = new RgbImage(width, height);
        byte[] src = source.Pixels, dst = result.Pixels;
        for (int y = 0; y < height; y++)
        {
            float py = y * yRatio;
            int j0 = Math.Min((int)py, sh - 1), j1 = Math.Min(j0 + 1, sh - 1);
            float yf = py - j0;
            int row0 = 3 * j0 * sw, row1 = 3 * j1 * sw, o = 3 * y * width;
            for (int x = 0; x < width; x++)
            {
                float f = xf[x];
                for (int c = 0; c < 3; c++)
                {
                    float top = Lerp(src[row0 + x0[x] + c], src[row0 + x1[x] + c], f);
                    float bottom = Lerp(src[row1 + x0[x] + c], src[row1 + x1[x] + c], f);
                    dst[o++] = (byte)(int)Lerp(top, bottom, yf);
                }
            }
        }
        return result;
    }

    /// <summary>
    /// llama.cpp's <c>resize_bicubic</c> (adapted there from ViT.cpp): t = src/dst (float32); output (j, i) reads around
    /// x = ⌊t·j⌋ with dx = t·j − x (and y, dy likewise), coordinates clamped to the image. Along each of the rows
    /// y − 1 … y + 2, with p(k) = pixel at x + k: d0 = p(−1) − p(0), d2 = p(1) − p(0), d3 = p(2) − p(0),
    /// a1 = −d0/3 + d2 − d3/6, a2 = d0/2 + d2/2, a3 = −d0/6 − d2/2 + d3/6 (computed in double, stored as float),
    /// C = p(0) + a1·dx + a2·dx·dx + a3·dx·dx·dx (float32, left to right); then the same across the four C with dy, rounded
    /// half away from zero and clamped to 0…255.
    /// </summary>
    public static RgbImage Bicubic(RgbImage source, int width, int height)
    {
        CheckSize(width, height);
        int sw = source.Width, sh = source.Height;
        float tx = (float)sw / width, ty = (float)sh / height;

        // Per column: byte offsets of the four source columns x − 1 … x + 2 (clamped) and dx.
        var columns = new int[4 * width];
        var dxs = new float[width];
        for (int j = 0; j < width; j++)
        {
            int x = (int)(tx * j);
            dxs[j] = tx * j - x;
            for (int k = 0; k < 4; k++) columns[4 * j + k] = 3 * Math.Clamp(x - 1 + k, 0, sw - 1);
        }

        var result = new RgbImage(width, height);
        byte[] src = source.Pixels, dst = result.Pixels;
        Span<int> rows = stackalloc int[4];
        Span<float> cs = stackalloc float[4];
        for (int i = 0; i < height; i++)
        {
            int y = (int)(ty * i);
            float dy = ty * i - y;
            for (int k = 0; k < 4; k++) rows[k] = 3 * sw * Math.Clamp(y - 1 + k, 0, sh - 1);
            int o = 3 * i * width;
            for (int j = 0; j < width; j++)
            {
                float dx = dxs[j];
                int cm1 = columns[4 * j], c0 = columns[4 * j + 1], c1 = columns[4 * j + 2], c2 = columns[4 * j + 3];
                for (int c = 0; c < 3; c++)
                {
                    for (int k = 0; k < 4; k++)
                    {
                        int r = rows[k] + c;
                        cs[k] = Cubic(src[r + cm1], src[r + c0], src[r + c1], src[r + c2], dx);
                    }
                    float v = Cubic(cs[0], cs[1], cs[2], cs[3], dy);
                    dst[o++] = (byte)Math.Clamp(MathF.Round(v, MidpointRounding.AwayFromZero), 0f, 255f);
                }
            }
        }
        return result;
    }

    /// <summary>The 1-D cubic through p(−1), p(0), p(1), p(2) at offset <paramref name="t"/> from p(0), with llama.cpp's precisions.</summary>
    static float Cubic(float pm1, float p0, float p1, float p2, float t)
    {
        float d0 = pm1 - p0, d2 = p1 - p0, d3 = p2 - p0;
        float a1 = (float)(-1.0 / 3 * d0 + d2 - 1.0 / 6 * d3);
        float a2 = (float)(1.0 / 2 * d0 + 1.0 / 2 * d2);
        float a3 = (float)(-1.0 / 6 * d0 - 1.0 / 2 * d2 + 1.0 / 6 * d3);
        return p0 + a1 * t + a2 * t * t + a3 * t * t * t;
    }

    static float Lerp(float start, float end, float t) => start + (end - start) * t;

    /// <summary>An image of one colour.</summary>
    public static RgbImage Filled(int width, int height, (byte R, byte G, byte B) color)
    {
        var image = new RgbImage(width, height);
        if (color != default)
        {
            var p = image.Pixels;
            for (int i = 0; i < p.Length; i += 3)
            {
                p[i] = color.R;
                p[i + 1] = color.G;
                p[i + 2] = color.B;
            }
        }
        return image;
    }

    /// <summary>Copies <paramref name="source"/> into <paramref name="canvas"/> with its top-left corner at (<paramref name="x"/>, <paramref name="y"/>); pixels falling outside are dropped.</summary>
    public static void Paste(RgbImage canvas, RgbImage source, int x, int y)
    {
        int left = Math.Max(0, -x), right = Math.Min(source.Width, canvas.Width - x);
        if (right <= left) return;
        for (int row = Math.Max(0, -y); row < source.Height && row + y < canvas.Height; row++)
            source.Pixels.AsSpan(3 * (row * source.Width + left), 3 * (right - left))
                .CopyTo(canvas.Pixels.AsSpan(3 * ((row + y) * canvas.Width + x + left)));
    }

    static void CheckSize(int width, int height)
    {
        if (width <= 0 || height <= 0) throw new ArgumentOutOfRangeException(nameof(width), $"target size {width}×{height} is not positive");
    }
}
