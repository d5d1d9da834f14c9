using System.CommandLine;
using System.Security.Cryptography;
using StbImageWriteSharp;
using VidKV.Cli;
using VidKV.Formats;

namespace VidKV.Tests;

public class ImageReaderTests
{
    // Top-left, top-right, bottom-left, bottom-right colours of Quadrants.
    static readonly byte[] Red = [220, 30, 40], Blue = [30, 60, 210], Green = [40, 190, 60], White = [240, 240, 240];

    [Theory]
    [InlineData("gradient_97x61", 97, 61, "f22955a770a1c82c34ee343c0c581208233af4043f4c94f43af6d8a46c438b77")]
    [InlineData("pattern_64x64", 64, 64, "f7ca2e18576e87d2ee6f1c385313dd3898b8e36be10ad3736df9bf177ae82614")]
    public void SharedPpmAndPngDecodeToTheReferencePixels(string name, int width, int height, string rgbSha256)
    {
        string ppmPath = TestData.File_($"vision/images/{name}.ppm");
        var ppm = ImageReader.Read(ppmPath);
        var png = ImageReader.Read(TestData.File_($"vision/images/{name}.png"));
        Assert.Equal((width, height), (ppm.Width, ppm.Height));
        Assert.Equal((width, height), (png.Width, png.Height));
        Assert.Equal(File.ReadAllBytes(ppmPath)[13..], ppm.Pixels);
        Assert.Equal(ppm.Pixels, png.Pixels);
        Assert.Equal(rgbSha256, Convert.ToHexStringLower(SHA256.HashData(png.Pixels)));
    }

    [Fact]
    public void JpegDecodesToItsSizeAndColours()
    {
        var image = ImageReader.Decode(Jpeg(Quadrants(45, 29, 24, 16)), "q.jpg");
        Assert.Equal((45, 29), (image.Width, image.Height));
        AssertColour(Red, image, 10, 6);
        AssertColour(Blue, image, 36, 6);
        AssertColour(Green, image, 10, 23);
        AssertColour(White, image, 36, 23);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(13, 7)]
    [InlineData(6, 31)]
    public void PngBmpAndPpmOfRandomPixelsDecodeExactly(int width, int height)
    {
        var pixels = new byte[3 * width * height];
        new Random(width * 100 + height).NextBytes(pixels);
        Assert.Equal(pixels, ImageReader.Decode(Png(pixels, width, height, ColorComponents.RedGreenBlue), "r.png").Pixels);
        using var bmp = new MemoryStream();
        new ImageWriter().WriteBmp(pixels, width, height, ColorComponents.RedGreenBlue, bmp);
        Assert.Equal(pixels, ImageReader.Decode(bmp.ToArray(), "r.bmp").Pixels);
        byte[] ppm = [.. System.Text.Encoding.ASCII.GetBytes($"P6 {width}\t{height}\r\n255 "), .. pixels];
        var fromPpm = ImageReader.Decode(ppm, "r.ppm");
        Assert.Equal((width, height), (fromPpm.Width, fromPpm.Height));
        Assert.Equal(pixels, fromPpm.Pixels);
    }

    [Fact]
    public void GreyAndAlphaBecomeRgb()
    {
        byte[] grey = [0, 90, 255, 17, 200, 33];
        var fromGrey = ImageReader.Decode(Png(grey, 3, 2, ColorComponents.Grey), "grey.png");
        Assert.Equal(grey.SelectMany(g => new[] { g, g, g }), fromGrey.Pixels);

        byte[] rgba = [1, 2, 3, 0, 4, 5, 6, 128, 7, 8, 9, 255];
        var fromRgba = ImageReader.Decode(Png(rgba, 3, 1, ColorComponents.RedGreenBlueAlpha), "alpha.png");
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8, 9 }, fromRgba.Pixels);

        var fromPgm = ImageReader.Decode([.. "P5\n# a comment\n3 2\n255\n"u8, .. grey], "grey.pgm");
        Assert.Equal(fromGrey.Pixels, fromPgm.Pixels);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(6)]
    [InlineData(7)]
    [InlineData(8)]
    public void OrientationShowsEachStoredPixelWhereTheExifTableSays(int orientation)
    {
        // EXIF 2.32, tag 274 (Orientation): the side of the shown image on which the stored image's row 0 and
        // column 0 lie.
        var (row0, column0) = orientation switch
        {
            1 => ("top", "left"),
            2 => ("top", "right"),
            3 => ("bottom", "right"),
            4 => ("bottom", "left"),
            5 => ("left", "top"),
            6 => ("right", "top"),
            7 => ("right", "bottom"),
            _ => ("left", "bottom"),
        };
        const int width = 5, height = 3;
        var stored = new RgbImage(width, height);
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
                stored.Pixel(x, y)[0] = (byte)(10 * y + x);

        var shown = ImageReader.Orient(stored, orientation);
        bool rowsStandUp = row0 is "left" or "right";
        Assert.Equal(rowsStandUp ? (height, width) : (width, height), (shown.Width, shown.Height));
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                // Stored row y is y lines in from row 0's side; stored column x is x lines in from column 0's side.
                int shownX = 0, shownY = 0;
                Place(row0, y);
                Place(column0, x);
                Assert.Equal(10 * y + x, shown.Pixel(shownX, shownY)[0]);

                void Place(string side, int lines)
                {
                    if (side == "top") shownY = lines;
                    else if (side == "bottom") shownY = shown.Height - 1 - lines;
                    else if (side == "left") shownX = lines;
                    else shownX = shown.Width - 1 - lines;
                }
            }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(9)]
    public void UnknownOrientationLeavesTheImage(int orientation)
    {
        var image = new RgbImage(2, 3);
        Assert.Same(image, ImageReader.Orient(image, orientation));
    }

    [Fact]
    public void JpegWithExifOrientation6IsTurnedClockwise()
    {
        byte[] jpeg = Jpeg(Quadrants(32, 16, 16, 8));
        var stored = ImageReader.Decode(jpeg, "plain.jpg");
        var shown = ImageReader.Decode(WithExifOrientation(jpeg, 6), "turned.jpg");
        Assert.Equal((16, 32), (shown.Width, shown.Height));
        // Turned a quarter clockwise: the stored left side is on top, the bottom-left corner top left.
        AssertColour(Green, shown, 4, 8);
        AssertColour(Red, shown, 12, 8);
        AssertColour(White, shown, 4, 24);
        AssertColour(Blue, shown, 12, 24);
        // The same entropy-coded data, so exactly the stored pixels, moved.
        Assert.Equal(ImageReader.Orient(stored, 6).Pixels, shown.Pixels);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(7)]
    [InlineData(8)]
    public void JpegExifOrientationIsApplied(int orientation)
    {
        byte[] jpeg = Jpeg(Quadrants(32, 16, 16, 8));
        var stored = ImageReader.Decode(jpeg, "plain.jpg");
        var shown = ImageReader.Decode(WithExifOrientation(jpeg, orientation), "exif.jpg");
        var expected = ImageReader.Orient(stored, orientation);
        Assert.Equal((expected.Width, expected.Height), (shown.Width, shown.Height));
        Assert.Equal(expected.Pixels, shown.Pixels);
    }

    [Fact]
    public void JpegEndMarkerIsSoughtAfterTheScansOnly()
    {
        byte[] jpeg = Jpeg(Quadrants(45, 29, 24, 16));
        var expected = ImageReader.Decode(jpeg, "q.jpg").Pixels;
        // Bytes after EOI (a motion photo's video) are allowed.
        Assert.Equal(expected, ImageReader.Decode([.. jpeg, .. "trailing bytes"u8], "motion.jpg").Pixels);
        // An APP15 segment holding an embedded JPEG (its own SOI ... EOI) does not end the file early.
        byte[] withThumbnail = [.. jpeg[..2], 0xFF, 0xEF, 0, 8, 0xFF, 0xD8, 0xFF, 0xD9, 0xFF, 0xD9, .. jpeg[2..]];
        Assert.Equal(expected, ImageReader.Decode(withThumbnail, "thumb.jpg").Pixels);
        var error = Assert.Throws<ImageFormatException>(() => ImageReader.Decode(withThumbnail[..^2], "cut.jpg"));
        Assert.Equal("cut.jpg: truncated or corrupt image data (no end-of-image marker after the last scan)", error.Message);
    }

    [Theory]
    [InlineData("half.png", "truncated or corrupt image data (PNG chunk '")]
    [InlineData("half.jpg", "truncated or corrupt image data (")]
    [InlineData("gradient-half.png", "truncated or corrupt image data (")]
    [InlineData("garbage.png", "not a PNG, JPEG, BMP or PPM image")]
    [InlineData("empty.jpg", "empty file")]
    [InlineData("half.ppm", "truncated PPM pixel data: 45×29 needs 3915 bytes, the file has 1957")]
    [InlineData("bad-header.ppm", "bad PPM header: height is not a positive number")]
    [InlineData("deep.ppm", "PPM maximum value 65535 is not supported (only 255)")]
    public void CorruptFileFailsWithOneLineNamingIt(string name, string problem)
    {
        var image = Quadrants(45, 29, 24, 16);
        byte[] png = Png(image.Pixels, image.Width, image.Height, ColorComponents.RedGreenBlue), jpeg = Jpeg(image);
        byte[] ppm = [.. "P6\n45 29\n255\n"u8, .. image.Pixels];
        byte[] gradient = File.ReadAllBytes(TestData.File_("vision/images/gradient_97x61.png"));
        var garbage = new byte[1000];
        new Random(15).NextBytes(garbage);
        byte[] data = name switch
        {
            "half.png" => png[..(png.Length / 2)],
            "half.jpg" => jpeg[..(jpeg.Length / 2)],
            "gradient-half.png" => gradient[..(gradient.Length / 2)],
            "garbage.png" => garbage,
            "empty.jpg" => [],
            "half.ppm" => ppm[..(13 + image.Pixels.Length / 2)],
            "bad-header.ppm" => "P6\n45 x\n255\n"u8.ToArray(),
            _ => [.. "P6 1 1 65535\n"u8, 0, 1, 0, 2, 0, 3],
        };
        using var dir = new TempDirectory();
        string path = dir.File(name);
        File.WriteAllBytes(path, data);

        var error = Assert.Throws<ImageFormatException>(() => ImageReader.Read(path));
        Assert.StartsWith($"{path}: {problem}", error.Message);
        Assert.DoesNotContain(error.Message, char.IsControl);
    }

    [Fact]
    public void MissingFileIsFileNotFound()
    {
        using var dir = new TempDirectory();
        Assert.Throws<FileNotFoundException>(() => ImageReader.Read(dir.File("nothing.png")));
    }

    [Fact]
    public void CorruptImageIsAUserErrorExiting2()
    {
        using var dir = new TempDirectory();
        string path = dir.File("empty.png");
        File.WriteAllBytes(path, []);
        var root = new RootCommand();
        root.SetAction(_ => ImageReader.Read(path).Width);
        var stderr = new StringWriter();
        Assert.Equal(CliRunner.BadInput, CliRunner.Run(root, [], stderr));
        Assert.Equal($"vidkv: error: {path}: empty file", stderr.ToString().TrimEnd());
    }

    [Theory]
    [InlineData(2, 2, 11)]
    [InlineData(2, 2, 13)]
    [InlineData(3, 1, 0)]
    public void RawRgbOfTheWrongLengthIsRefused(int width, int height, int length)
    {
        Assert.Throws<ArgumentException>(() => new RgbImage(width, height, new byte[length]));
    }

    /// <summary>Four solid quadrants split at (<paramref name="splitX"/>, <paramref name="splitY"/>).</summary>
    static RgbImage Quadrants(int width, int height, int splitX, int splitY)
    {
        var image = new RgbImage(width, height);
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
                (y < splitY ? x < splitX ? Red : Blue : x < splitX ? Green : White).CopyTo(image.Pixel(x, y));
        return image;
    }

    static byte[] Jpeg(RgbImage image)
    {
        using var stream = new MemoryStream();
        // Quality above 90: stb_image_write keeps full-resolution chroma, so the colours stay in their quadrants.
        new ImageWriter().WriteJpg(image.Pixels, image.Width, image.Height, ColorComponents.RedGreenBlue, stream, 95);
        return stream.ToArray();
    }

    static byte[] Png(byte[] samples, int width, int height, ColorComponents components)
    {
        using var stream = new MemoryStream();
        new ImageWriter().WritePng(samples, width, height, components, stream);
        return stream.ToArray();
    }

    /// <summary>The JPEG with an APP1 Exif segment holding only IFD0's Orientation, right after SOI.</summary>
    static byte[] WithExifOrientation(byte[] jpeg, int orientation)
    {
        byte[] tiff =
        [
            (byte)'I', (byte)'I', 42, 0, 8, 0, 0, 0,         // little-endian TIFF header, IFD0 at offset 8
            1, 0,                                            // one entry:
            0x12, 0x01, 3, 0, 1, 0, 0, 0, (byte)orientation, 0, 0, 0, // tag 274 Orientation, SHORT, 1 value
            0, 0, 0, 0,                                      // no next IFD
        ];
        int length = 2 + 6 + tiff.Length;
        return [.. jpeg[..2], 0xFF, 0xE1, (byte)(length >> 8), (byte)length, .. "Exif\0\0"u8, .. tiff, .. jpeg[2..]];
    }

    static void AssertColour(byte[] expected, RgbImage image, int x, int y)
    {
        var pixel = image.Pixel(x, y);
        for (int c = 0; c < 3; c++)
            Assert.True(Math.Abs(pixel[c] - expected[c]) <= 12, $"pixel ({x}, {y}) is ({pixel[0]}, {pixel[1]}, {pixel[2]}), expected about ({expected[0]}, {expected[1]}, {expected[2]})");
    }
}
