using VidKV.Formats;

namespace VidKV.Models;

/// <summary>
/// An image cut into what the vision tower encodes: <see cref="Entries"/> in embedding order (the slices row-major, then
/// the overview), each still 8-bit RGB (<see cref="ImagePreprocessor.Normalize"/> makes the tower's input of one).
/// </summary>
/// <param name="Entries">The entries in the order their embeddings follow each other: slices row by row, then the overview.</param>
/// <param name="GridColumns">Slices per row; 0 when the image is not sliced.</param>
/// <param name="GridRows">Rows of slices; 0 when the image is not sliced.</param>
/// <param name="HasOverview">Whether the last entry is an overview (the whole image at the tower's size) rather than a single image.</param>
public sealed record PreprocessedImage(IReadOnlyList<RgbImage> Entries, int GridColumns, int GridRows, bool HasOverview);

/// <summary>
/// Image preprocessing exactly as llama.cpp's mtmd does it per projector (tools/mtmd/mtmd-image.cpp, with the
/// per-projector resize settings of tools/mtmd/clip.cpp <c>load_hparams</c>, at 3f545bec): the same sizes, the same
/// resampling filters and the same bytes, then the same float32 normalisation.
/// <list type="bullet">
/// <item><c>idefics3</c> (<c>mtmd_image_preprocessor_idefics3</c>): the refined image is scaled so its longest edge is
/// <see cref="VisionConfig.LongestEdge"/>, each side rounded up to a multiple of <see cref="VisionConfig.ImageSize"/>
/// (bicubic, PAD_CEIL on black), cut into image-size slices row-major; the overview is a bilinear stretch of the whole
/// image to the tower's size; slices first, overview last.</item>
/// <item><c>mlp</c> with grid pinpoints (<c>mtmd_image_preprocessor_llava_uhd</c>): an image that fits the tower's size
/// becomes only the overview (bilinear stretch); a larger one is also fitted into the best pinpoint (LLaVA-NeXT's
/// <c>select_best_resolution</c>: most effective pixels, then least waste), bicubic PAD_CEIL on black, and sliced.</item>
/// <item><c>mlp</c> without pinpoints (<c>mtmd_image_preprocessor_fixed_size</c>, LLaVA-1.5): one entry, bicubic
/// PAD_CEIL on (122, 116, 104).</item>
/// <item><c>qwen2vl_merger</c> / <c>qwen2.5vl_merger</c> (<c>mtmd_image_preprocessor_dyn_size</c>): one entry of the
/// smart-resized size (<see cref="SmartResize"/>), bilinear PAD_CEIL on black — llama.cpp keeps the aspect ratio and pads
/// where Hugging Face's processor stretches.</item>
/// </list>
/// </summary>
public static class ImagePreprocessor
{
    /// <summary>The pad colour of the fixed-size LLaVA-1.5 path (clip.cpp sets it for the <c>mlp</c> family): the CLIP mean as bytes.</summary>
    static readonly (byte, byte, byte) LlavaPadColor = (122, 116, 104);

    /// <summary>Cuts <paramref name="image"/> into the entries llama.cpp would encode for <paramref name="config"/>'s projector.</summary>
    public static PreprocessedImage Preprocess(VisionConfig config, RgbImage image)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(image);
        int size = config.ImageSize;
        switch (config.Projector)
        {
            case VisionProjector.Idefics3:
            {
                // mtmd_image_preprocessor_idefics3: refined size from calc_size_preserved_ratio aligned to image_size;
                // the overview and refined resizes use clip_hparams' defaults (_ov bilinear PAD_NONE, _rf bicubic PAD_CEIL black).
                var (rw, rh) = PreservedRatioSize(image.Width, image.Height, size,
                    Math.Max(0, config.MinPixels), Math.Max(0, config.MaxPixels), config.LongestEdge);
                int columns = (int)MathF.Ceiling((float)rw / size), rows = (int)MathF.Ceiling((float)rh / size);
                return Sliced(image, size, (rw, rh), columns, rows);
            }
            case VisionProjector.Mlp when config.GridPinpoints.Length > 0:
            {
                // mtmd_image_preprocessor_llava_uhd. clip.cpp's "llava-1.6 default params" branch runs only when there
                // are NO pinpoints, so this path keeps the defaults: overview bilinear PAD_NONE, refined bicubic PAD_CEIL black.
                if (image.Width <= size && image.Height <= size)
                    return new PreprocessedImage([ImageResize.Resize(image, size, size, ResizeAlgorithm.Bilinear, ResizePadding.None)], 0, 0, true);
                var (bw, bh) = SelectBestResolution(image.Width, image.Height, config.GridPinpoints);
                return Sliced(image, size, (bw, bh), bw / size, bh / size);
            }
            case VisionProjector.Mlp:
                // mtmd_image_preprocessor_fixed_size with the mlp settings: bicubic (default), PAD_CEIL, (122, 116, 104).
                return new PreprocessedImage([ImageResize.Resize(image, size, size, ResizeAlgorithm.Bicubic, ResizePadding.Ceil, LlavaPadColor)], 0, 0, false);
            case VisionProjector.Qwen2VL or VisionProjector.Qwen25VL:
            {
                // mtmd_image_preprocessor_dyn_size: clip.cpp sets bilinear for Qwen-VL and leaves PAD_CEIL, black.
                var (w, h) = SmartResize(config, image.Width, image.Height);
                return new PreprocessedImage([ImageResize.Resize(image, w, h, ResizeAlgorithm.Bilinear, ResizePadding.Ceil)], 0, 0, false);
            }
            default:
                throw new NotSupportedException($"no preprocessing for projector {config.Projector}");
        }
    }

    /// <summary>
    /// Qwen2-VL / Qwen2.5-VL's target size (llama.cpp's <c>img_tool::calc_size_preserved_ratio</c> as
    /// <c>mtmd_image_preprocessor_dyn_size</c> calls it): both sides multiples of patch size · merge factor, the pixel
    /// count within <see cref="VisionConfig.MinPixels"/> … <see cref="VisionConfig.MaxPixels"/> (bounds ≤ 0 are off),
    /// the aspect ratio kept as far as the rounding allows. See <see cref="PreservedRatioSize"/> for the arithmetic.
    /// </summary>
    public static (int Width, int Height) SmartResize(VisionConfig config, int width, int height)
    {
        ArgumentNullException.ThrowIfNull(config);
        return PreservedRatioSize(width, height, config.PatchSize * config.MergeFactor, Math.Max(0, config.MinPixels), Math.Max(0, config.MaxPixels), 0);
    }

    /// <summary>
    /// llama.cpp's <c>calc_size_preserved_ratio</c> (its "smart_resize"), all in float32 with roundf (half away from zero),
    /// f = <paramref name="align"/>: with a longest edge L &gt; 0, s = min(L/w, L/h) and each side ⌈side·s/f⌉·f; else
    /// each side max(f, round(side/f)·f). Then if the area exceeds <paramref name="maxPixels"/> (&gt; 0):
    /// β = √(h·w/max), sides max(f, ⌊side/β/f⌋·f); else if it is below <paramref name="minPixels"/> (&gt; 0):
    /// β = √(min/(h·w)), sides ⌈side·β/f⌉·f.
    /// </summary>
    internal static (int Width, int Height) PreservedRatioSize(int width, int height, int align, int minPixels, int maxPixels, int longestEdge)
    {
        if (align <= 0) throw new ArgumentOutOfRangeException(nameof(align), $"alignment {align} is not positive");
        if (width <= 0 || height <= 0) throw new ArgumentOutOfRangeException(nameof(width), $"image size {width}×{height} is not positive");
        float f = align;
        int RoundBy(float x) => (int)MathF.Round(x / f, MidpointRounding.AwayFromZero) * align;
        int CeilBy(float x) => (int)MathF.Ceiling(x / f) * align;
        int FloorBy(float x) => (int)MathF.Floor(x / f) * align;

        int w, h;
        if (longestEdge > 0)
        {
            float scale = MathF.Min((float)longestEdge / width, (float)longestEdge / height);
            w = CeilBy(width * scale);
            h = CeilBy(height * scale);
        }
        else
        {
            w = Math.Max(align, RoundBy(width));
            h = Math.Max(align, RoundBy(height));
        }

        if (maxPixels > 0 && (long)w * h > maxPixels)
        {
            float beta = MathF.Sqrt((float)height * width / maxPixels);
            h = Math.Max(align, FloorBy(height / beta));
            w = Math.Max(align, FloorBy(width / beta));
        }
        else if (minPixels > 0 && (long)w * h < minPixels)
        {
            float beta = MathF.Sqrt(minPixels / ((float)height * width));
            h = CeilBy(height * beta);
            w = CeilBy(width * beta);
        }
        return (w, h);
    }

    /// <summary>
    /// llava-uhd's <c>select_best_resolution</c>: for each candidate (file order) the image scaled to fit it,
    /// s = min(cw/w, ch/h) (float32), gives effective = min(⌊w·s⌋·⌊h·s⌋, w·h) and wasted = cw·ch − effective; the most
    /// effective wins, ties to the least wasted, full ties to the first.
    /// </summary>
    internal static (int Width, int Height) SelectBestResolution(int width, int height, IReadOnlyList<(int Width, int Height)> candidates)
    {
        (int, int) best = default;
        int bestEffective = 0, leastWasted = int.MaxValue;
        foreach (var (cw, ch) in candidates)
        {
            float scale = MathF.Min((float)cw / width, (float)ch / height);
            int effective = Math.Min((int)(width * scale) * (int)(height * scale), width * height);
            int wasted = cw * ch - effective;
            if (effective > bestEffective || (effective == bestEffective && wasted < leastWasted))
            {
                bestEffective = effective;
                leastWasted = wasted;
                best = (cw, ch);
            }
        }
        if (best == default) throw new ArgumentException($"no grid pinpoint fits a {width}×{height} image");
        return best;
    }

    /// <summary>
    /// llava-uhd's <c>slice_image</c> as idefics3 and llava-uhd with pinpoints use it: the overview is a bilinear stretch to
    /// size × size; the refined image a bicubic PAD_CEIL resize on black, cut row-major into size × size slices (smaller
    /// at the right and bottom edges when the refined size is no multiple); slices, then the overview.
    /// </summary>
    static PreprocessedImage Sliced(RgbImage image, int size, (int Width, int Height) refined, int columns, int rows)
    {
        var overview = ImageResize.Resize(image, size, size, ResizeAlgorithm.Bilinear, ResizePadding.None);
        var refinedImage = ImageResize.Resize(image, refined.Width, refined.Height, ResizeAlgorithm.Bicubic, ResizePadding.Ceil);
        var entries = new List<RgbImage>();
        for (int y = 0; y < refined.Height; y += size)
            for (int x = 0; x < refined.Width; x += size)
                entries.Add(ImageResize.Crop(refinedImage, x, y, Math.Min(size, refined.Width - x), Math.Min(size, refined.Height - y)));
        entries.Add(overview);
        return new PreprocessedImage(entries, columns, rows, true);
    }

    /// <summary>
    /// Writes the tower's input for one entry into <paramref name="planar"/> (3 · width · height floats): planes R, G, B,
    /// each [height][width], value ((float)byte / 255 − mean[c]) / std[c] in float32 — llama.cpp's
    /// <c>clip_image_f32::from_u8</c> and <c>normalize</c> (tools/mtmd/clip-impl.h), laid out as ggml's <c>inp_raw</c>
    /// (ne = [W, H, 3]).
    /// </summary>
    public static void Normalize(VisionConfig config, RgbImage entry, Span<float> planar)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(entry);
        int pixels = entry.Width * entry.Height;
        if (planar.Length != 3 * pixels)
            throw new ArgumentException($"planar holds {planar.Length} floats, a {entry.Width}×{entry.Height} entry needs {3 * pixels}", nameof(planar));

        // The value depends only on the byte and the channel: a table per channel gives the same bits.
        Span<float> table = stackalloc float[3 * 256];
        for (int c = 0; c < 3; c++)
        {
            float mean = config.ImageMean[c], std = config.ImageStd[c];
            for (int b = 0; b < 256; b++) table[256 * c + b] = ((float)b / 255f - mean) / std;
        }

        byte[] src = entry.Pixels;
        Span<float> r = planar[..pixels], g = planar.Slice(pixels, pixels), bl = planar.Slice(2 * pixels, pixels);
        for (int i = 0; i < pixels; i++)
        {
            r[i] = table[src[3 * i]];
            g[i] = table[256 + src[3 * i + 1]];
            bl[i] = table[512 + src[3 * i + 2]];
        }
    }
}
