using VidKV.Formats;

namespace VidKV.Video;

/// <summary>
/// Shrinks frames that did not come through ffmpeg (image folders, pushed frames) to a <see cref="FrameSampling"/>'s
/// size limit by area averaging, the filter ffmpeg's <c>scale=flags=area</c> applies to decoded video. Only ever
/// shrinks; the model's preprocessor does its own resizing after this.
/// </summary>
internal static class FrameScaler
{
    public static RgbImage FitWithin(RgbImage image, FrameSampling sampling)
    {
        if (!sampling.LimitsSize) return image;
        var (width, height) = sampling.FitSize(image.Width, image.Height);
        return width == image.Width && height == image.Height ? image : AreaResize(image, width, height);
    }

    /// <summary>Each output pixel is the mean of the source area it covers, partial pixels weighted by their overlap.</summary>
    public static RgbImage AreaResize(RgbImage source, int width, int height)
    {
        var result = new RgbImage(width, height);
        double scaleX = (double)source.Width / width, scaleY = (double)source.Height / height;
        Span<double> sums = stackalloc double[3];
        for (int y = 0; y < height; y++)
        {
            double top = y * scaleY, bottom = top + scaleY;
            for (int x = 0; x < width; x++)
            {
                double left = x * scaleX, right = left + scaleX, area = 0;
                sums.Clear();
                for (int sy = (int)top; sy < Math.Min(source.Height, (int)Math.Ceiling(bottom)); sy++)
                {
                    double weightY = Math.Min(bottom, sy + 1) - Math.Max(top, sy);
                    for (int sx = (int)left; sx < Math.Min(source.Width, (int)Math.Ceiling(right)); sx++)
                    {
                        double weight = weightY * (Math.Min(right, sx + 1) - Math.Max(left, sx));
                        var pixel = source.Pixel(sx, sy);
                        for (int c = 0; c < 3; c++) sums[c] += weight * pixel[c];
                        area += weight;
                    }
                }
                var target = result.Pixel(x, y);
                for (int c = 0; c < 3; c++) target[c] = (byte)Math.Clamp(Math.Round(sums[c] / area), 0, 255);
            }
        }
        return result;
    }
}
