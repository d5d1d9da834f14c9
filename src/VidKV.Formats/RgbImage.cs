namespace VidKV.Formats;

/// <summary>
/// An 8-bit RGB image: <see cref="Width"/> × <see cref="Height"/> pixels, rows top to bottom, three bytes (R, G, B) per
/// pixel with no padding — the form every vision preprocessor starts from (llama.cpp's <c>clip_image_u8</c>).
/// </summary>
public sealed class RgbImage
{
    /// <summary>Wraps <paramref name="pixels"/> (not copied): <paramref name="width"/> · <paramref name="height"/> · 3 bytes.</summary>
    public RgbImage(int width, int height, byte[] pixels)
    {
        if (width <= 0 || height <= 0) throw new ArgumentException($"image size {width}×{height} is not positive");
        ArgumentNullException.ThrowIfNull(pixels);
        if (pixels.LongLength != 3L * width * height)
            throw new ArgumentException($"a {width}×{height} RGB image needs {3L * width * height} bytes, got {pixels.LongLength}");
        Width = width;
        Height = height;
        Pixels = pixels;
    }

    /// <summary>A black image (every byte zero) of the given size.</summary>
    public RgbImage(int width, int height) : this(width, height, new byte[checked(3 * width * height)]) { }

    /// <summary>Pixels per row.</summary>
    public int Width { get; }
    /// <summary>Rows.</summary>
    public int Height { get; }
    /// <summary>R, G, B bytes of each pixel, rows top to bottom.</summary>
    public byte[] Pixels { get; }

    /// <summary>The three bytes of pixel (<paramref name="x"/>, <paramref name="y"/>).</summary>
    public Span<byte> Pixel(int x, int y) => Pixels.AsSpan(3 * (y * Width + x), 3);

    /// <summary>Writes the image as a binary PPM (P6, maxval 255): the bytes <see cref="ImageReader"/> and llama.cpp's tools read back exactly.</summary>
    public void WritePpm(string path)
    {
        using var file = File.Create(path);
        file.Write(System.Text.Encoding.ASCII.GetBytes($"P6\n{Width} {Height}\n255\n"));
        file.Write(Pixels);
    }
}
