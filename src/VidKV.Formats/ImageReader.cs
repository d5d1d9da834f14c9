using MetadataExtractor;
using MetadataExtractor.Formats.Exif;
using MetadataExtractor.Formats.Jpeg;
using MetadataExtractor.Formats.Png;
using StbImageSharp;

namespace VidKV.Formats;

/// <summary>
/// Reads a PNG, JPEG, BMP or binary PPM/PGM image into an <see cref="RgbImage"/>, turned upright by its EXIF
/// orientation.
/// </summary>
/// <remarks>
/// PNG, JPEG and BMP are decoded by StbImageSharp, a C# port of stb_image: the decoder llama.cpp's mtmd uses
/// (<c>stbi_load_from_memory(buf, len, &amp;nx, &amp;ny, &amp;nc, 3)</c>), so the pixels are the ones llama.cpp gets
/// from the same file, with the same request for three components (grey is replicated, alpha dropped, 16-bit samples
/// keep their high byte). The port leaves out stb's PNM loader; the few lines here for P6 (RGB) and P5 (grey) with
/// maximum value 255 give the bytes stb gives for them. Other kinds stb knows (GIF, TGA, PSD, HDR) are refused, and so
/// is a JPEG cut off before its end marker, which stb (and so llama.cpp) would decode with the missing part grey.
/// Unlike llama.cpp, which ignores metadata, the EXIF Orientation tag of a JPEG or PNG (read with MetadataExtractor) is
/// applied, as Hugging Face's <c>load_image</c> does with PIL's <c>exif_transpose</c>, so a phone photo arrives
/// upright. A damaged Exif block is ignored: the pixels decoded, and metadata only advises.
/// </remarks>
public static class ImageReader
{
    enum Kind { Unknown, Png, Jpeg, Bmp, Pnm }

    /// <summary>Reads and decodes the image file at <paramref name="path"/> (named so in error messages).</summary>
    /// <exception cref="FileNotFoundException">the file does not exist</exception>
    /// <exception cref="ImageFormatException">the file is empty, not a supported image, truncated or corrupt</exception>
    public static RgbImage Read(string path) => Decode(File.ReadAllBytes(path), path);

    /// <summary>Decodes the bytes of an image file.</summary>
    /// <param name="data">the whole file</param>
    /// <param name="name">the file's name, used in error messages</param>
    /// <exception cref="ImageFormatException">the data is empty, not a supported image, truncated or corrupt</exception>
    public static RgbImage Decode(byte[] data, string name)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (data.Length == 0) throw new ImageFormatException(name, "empty file");
        var kind = Detect(data);
        var image = kind switch
        {
            Kind.Unknown => throw new ImageFormatException(name, "not a PNG, JPEG, BMP or PPM image"),
            Kind.Pnm => DecodePnm(data, name),
            _ => DecodeWithStb(data, name),
        };
        if (kind == Kind.Jpeg && !JpegReachesEnd(data))
            throw new ImageFormatException(name, "truncated or corrupt image data (no end-of-image marker after the last scan)");
        return kind is Kind.Jpeg or Kind.Png ? Orient(image, ReadOrientation(data, kind)) : image;
    }

    /// <summary>
    /// The image as displayed for EXIF orientation <paramref name="orientation"/> (TIFF tag 274): 2 mirrors left to
    /// right, 3 turns 180°, 4 mirrors top to bottom, 5 transposes, 6 turns 90° clockwise, 7 transposes across the other
    /// diagonal, 8 turns 90° anticlockwise; 5–8 swap width and height. 1 or any other value returns the image itself.
    /// </summary>
    internal static RgbImage Orient(RgbImage image, int orientation)
    {
        if (orientation is < 2 or > 8) return image;
        int width = image.Width, height = image.Height;
        var result = orientation >= 5 ? new RgbImage(height, width) : new RgbImage(width, height);
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                // Where the stored pixel (x, y) is shown.
                var (shownX, shownY) = orientation switch
                {
                    2 => (width - 1 - x, y),
                    3 => (width - 1 - x, height - 1 - y),
                    4 => (x, height - 1 - y),
                    5 => (y, x),
                    6 => (height - 1 - y, x),
                    7 => (height - 1 - y, width - 1 - x),
                    _ => (y, width - 1 - x),
                };
                image.Pixel(x, y).CopyTo(result.Pixel(shownX, shownY));
            }
        return result;
    }

    static Kind Detect(ReadOnlySpan<byte> data)
    {
        if (data.StartsWith((ReadOnlySpan<byte>)[0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A])) return Kind.Png;
        if (data.StartsWith((ReadOnlySpan<byte>)[0xFF, 0xD8, 0xFF])) return Kind.Jpeg;
        if (data.StartsWith("BM"u8)) return Kind.Bmp;
        if (data.StartsWith("P6"u8) || data.StartsWith("P5"u8)) return Kind.Pnm;
        return Kind.Unknown;
    }

    static RgbImage DecodeWithStb(byte[] data, string name)
    {
        ImageResult result;
        try
        {
            result = ImageResult.FromMemory(data, ColorComponents.RedGreenBlue);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // stb reports failure as InvalidOperationException(reason); its reason is one process-wide field, so two
            // images failing at the same moment could swap reasons (the files are still both refused).
            throw new ImageFormatException(name, $"truncated or corrupt image data ({Reason(e.Message)})", e);
        }
        return new RgbImage(result.Width, result.Height, result.Data);
    }

    /// <summary>stb's failure reason as one printable line.</summary>
    static string Reason(string message)
    {
        // The port reports an unknown critical PNG chunk as its four type bytes followed by 21 NULs, where stb_image
        // says "XXXX PNG chunk not known"; a cut-off PNG usually ends so, its last chunk type read as zeros.
        if (message.Length == 25 && message.AsSpan(4).IndexOfAnyExcept('\0') < 0) message = $"PNG chunk '{message[..4]}' not known";
        return string.Concat(message.Select(c => c is >= ' ' and <= '~' ? c.ToString() : $"\\x{(int)c:X2}"));
    }

    /// <summary>
    /// Whether the JPEG's segments and entropy-coded scans lead to an EOI marker. stb_image reads past the end of the
    /// data as zeros, so it decodes a cut-off JPEG without complaint (the missing part grey); this walk catches that.
    /// Segments are skipped by their lengths (an Exif thumbnail's own EOI is not seen), and bytes after EOI (a motion
    /// photo's video) are allowed.
    /// </summary>
    static bool JpegReachesEnd(ReadOnlySpan<byte> data)
    {
        int i = 2; // after SOI
        while (i + 1 < data.Length)
        {
            if (data[i] != 0xFF) return false;
            byte marker = data[i + 1];
            if (marker == 0xD9) return true;                              // EOI
            if (marker == 0xFF) { i++; continue; }                          // fill byte
            if (marker is 0x01 or (>= 0xD0 and <= 0xD7)) { i += 2; continue; } // TEM, RSTn: no length
            if (i + 3 >= data.Length) return false;
            i += 2 + (data[i + 2] << 8 | data[i + 3]);
            if (marker != 0xDA) continue;
            // After a scan header (SOS) comes entropy-coded data up to the next marker other than FF00 (a stuffed FF)
            // and RSTn.
            while (i + 1 < data.Length && (data[i] != 0xFF || data[i + 1] is 0x00 or (>= 0xD0 and <= 0xD7))) i++;
        }
        return false;
    }

    /// <summary>Binary PPM (P6) or PGM (P5) with maximum value 255: header numbers separated by whitespace and
    /// '#' comments, one whitespace byte, then the samples, rows top to bottom.</summary>
    static RgbImage DecodePnm(byte[] data, string name)
    {
        int position = 2;
        int width = PnmNumber(data, ref position, name, "width");
        int height = PnmNumber(data, ref position, name, "height");
        int maxValue = PnmNumber(data, ref position, name, "maximum value");
        if (maxValue != 255) throw new ImageFormatException(name, $"PPM maximum value {maxValue} is not supported (only 255)");
        if (position == data.Length || !IsPnmSpace(data[position])) throw new ImageFormatException(name, "bad PPM header: no whitespace before the pixel data");
        position++;
        int channels = data[1] == '6' ? 3 : 1;
        long sampleCount = (long)width * height * channels;
        if (data.Length - position < sampleCount)
            throw new ImageFormatException(name, $"truncated PPM pixel data: {width}×{height} needs {sampleCount} bytes, the file has {data.Length - position}");
        var samples = data.AsSpan(position, (int)sampleCount);
        if (channels == 3) return new RgbImage(width, height, samples.ToArray());
        var image = new RgbImage(width, height);
        for (int i = 0; i < samples.Length; i++) image.Pixels.AsSpan(3 * i, 3).Fill(samples[i]);
        return image;
    }

    static int PnmNumber(byte[] data, ref int position, string name, string field)
    {
        while (position < data.Length && (IsPnmSpace(data[position]) || data[position] == '#'))
            if (data[position] == '#')
                while (position < data.Length && data[position] != '\n' && data[position] != '\r') position++;
            else position++;
        long value = 0;
        int start = position;
        while (position < data.Length && char.IsAsciiDigit((char)data[position]) && value <= int.MaxValue)
            value = 10 * value + data[position++] - '0';
        if (position == start || value is 0 or > int.MaxValue)
            throw new ImageFormatException(name, $"bad PPM header: {field} is not a positive number");
        return (int)value;
    }

    static bool IsPnmSpace(byte b) => b is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r' or 0x0B or 0x0C;

    /// <summary>The EXIF Orientation of IFD0 (1 when absent or unreadable).</summary>
    static int ReadOrientation(byte[] data, Kind kind)
    {
        try
        {
            using var stream = new MemoryStream(data, writable: false);
            var directories = kind == Kind.Jpeg
                ? JpegMetadataReader.ReadMetadata(stream, [new ExifReader()])
                : PngMetadataReader.ReadMetadata(stream);
            var ifd0 = directories.OfType<ExifIfd0Directory>().FirstOrDefault();
            return ifd0 != null && ifd0.TryGetInt32(ExifDirectoryBase.TagOrientation, out int orientation) ? orientation : 1;
        }
        catch (Exception e) when (e is ImageProcessingException or IOException)
        {
            return 1;
        }
    }
}
