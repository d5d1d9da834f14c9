using System.Text;
using VidKV.Cli;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

public sealed class TempDirectory : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("vidkv-test-").FullName;
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() => Directory.Delete(Path, recursive: true);
}

public class GgufTests
{
    [Theory]
    [InlineData(2u)]
    [InlineData(3u)]
    public void MetadataOfEveryTypeRoundTrips(uint version)
    {
        using var dir = new TempDirectory();
        var nested = new GgufArray(GgufValueType.Array, new[]
        {
            new GgufArray(GgufValueType.Int32, new[] { 1, -2, 3 }),
            new GgufArray(GgufValueType.String, new[] { "a", "ünï", "" }),
        });
        var values = new (string Key, GgufValue Value)[]
        {
            ("u8", new(GgufValueType.UInt8, (byte)200)), ("i8", new(GgufValueType.Int8, (sbyte)-100)),
            ("u16", new(GgufValueType.UInt16, (ushort)60000)), ("i16", new(GgufValueType.Int16, (short)-30000)),
            ("u32", new(GgufValueType.UInt32, 4000000000u)), ("i32", new(GgufValueType.Int32, -2000000000)),
            ("f32", new(GgufValueType.Float32, 1.5f)), ("bool", new(GgufValueType.Bool, true)),
            ("str", new(GgufValueType.String, "héllo 日本 😀")), ("u64", new(GgufValueType.UInt64, ulong.MaxValue)),
            ("i64", new(GgufValueType.Int64, long.MinValue)), ("f64", new(GgufValueType.Float64, Math.PI)),
            ("arr.f32", GgufValue.Of(new[] { 1f, 2.5f, -3f })), ("arr.bool", new(GgufValueType.Array, new GgufArray(GgufValueType.Bool, new[] { true, false }))),
            ("arr.nested", new(GgufValueType.Array, nested)), ("arr.empty", GgufValue.Of(Array.Empty<string>())),
        };
        var writer = new GgufWriter { Version = version };
        foreach (var (k, v) in values) writer.Add(k, v);
        writer.Write(dir.File("m.gguf"));

        using var file = GgufFile.Open(dir.File("m.gguf"));
        Assert.Equal(version, file.Version);
        Assert.Equal(values.Select(v => v.Key), file.MetadataList.Select(kv => kv.Key));
        foreach (var (k, v) in values)
        {
            var got = file.Metadata[k];
            Assert.Equal(v.Type, got.Type);
            if (v.Value is GgufArray a) AssertArrayEqual(a, got.AsArray());
            else Assert.Equal(v.Value, got.Value);
        }
    }

    static void AssertArrayEqual(GgufArray want, GgufArray got)
    {
        Assert.Equal(want.ElementType, got.ElementType);
        Assert.Equal(want.Length, got.Length);
        for (int i = 0; i < want.Length; i++)
        {
            object? w = want.Items.GetValue(i), g = got.Items.GetValue(i);
            if (w is GgufArray wa) AssertArrayEqual(wa, (GgufArray)g!);
            else Assert.Equal(w, g);
        }
    }

    [Theory]
    [InlineData(32)]
    [InlineData(64)]
    [InlineData(256)]
    public void TensorsHonourAlignmentAndRoundTrip(int alignment)
    {
        using var dir = new TempDirectory();
        var rng = new Random(alignment);
        var data = Enumerable.Range(0, 96 * 3).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var writer = new GgufWriter().Add("general.alignment", (uint)alignment);
        foreach (var type in new[] { GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0 })
            writer.AddTensor("t." + GgmlTypes.Name(type), type, [96, 3], data);
        writer.AddTensor("odd", GgmlType.F32, [7], data[..7]);
        writer.Write(dir.File("t.gguf"));

        using var file = GgufFile.Open(dir.File("t.gguf"));
        Assert.Equal(alignment, file.Alignment);
        Assert.Equal(0, file.DataOffset % alignment);
        foreach (var t in file.Tensors)
        {
            Assert.Equal(0, t.Offset % alignment);
            var values = new float[t.ElementCount];
            Dequantize.Row(t.Type, file.TensorData(t), values);
            // Per-type bound: exact for f32, 2^-11 relative for f16, 2^-8 for bf16, half a step for q8_0, a whole step for q4_0 (its range -8..7 clips the side opposite the largest value).
            float tolerance = t.Type switch { GgmlType.F32 => 0, GgmlType.F16 => 1e-3f, GgmlType.BF16 => 8e-3f, GgmlType.Q8_0 => 1f / 127 * 0.51f + 1e-3f, _ => 1f / 8 + 2e-3f };
            for (int i = 0; i < values.Length; i++) Assert.True(Math.Abs(values[i] - data[i]) <= tolerance, $"{t.Name}[{i}]: {values[i]} vs {data[i]}");
        }
    }

    /// <summary>
    /// The Q4_K writer (for benchmark models) against its stated bound: every element within half a step of its
    /// sub-block (d·sc/2) plus dmin, read back through the reference dequantiser; the packed 6-bit scales and mins
    /// come back as written (a wrong bit layout would miss the bound by whole steps).
    /// </summary>
    [Fact]
    public void Q4_KQuantiserMeetsItsBound()
    {
        var rng = new Random(3);
        foreach (float spread in new[] { 0.02f, 1f, 300f })
        {
            float[] x = Enumerable.Range(0, 256 * 5).Select(i => (float)((rng.NextDouble() * 2 - 1) * spread * (i / 32 % 3 + 1))).ToArray();
            x[0] = 0; x[40] = spread * 7; // a zero and an outlier sub-block
            var bytes = new byte[GgmlTypes.RowBytes(GgmlType.Q4_K, x.Length)];
            Quantize.Row(GgmlType.Q4_K, x, bytes);
            var back = new float[x.Length];
            Dequantize.Row(GgmlType.Q4_K, bytes, back);
            for (int sb = 0; sb < 5; sb++)
            {
                var block = bytes.AsSpan(sb * 144, 144);
                float d = (float)BitConverter.ToHalf(block), dmin = (float)BitConverter.ToHalf(block[2..]);
                for (int j = 0; j < 8; j++)
                {
                    var (sc, _) = Dequantize.ScaleMinK4(j, block.Slice(4, 12));
                    float bound = d * sc / 2 + dmin + 1e-6f * spread;
                    for (int l = 0; l < 32; l++)
                    {
                        int i = 256 * sb + 32 * j + l;
                        Assert.True(Math.Abs(back[i] - x[i]) <= bound, $"spread {spread} element {i}: {back[i]} vs {x[i]} (bound {bound})");
                    }
                }
            }
        }
    }

    /// <summary>The Q6_K writer against its stated bound (half a step, d·sc/2, per sub-block of 16), read back through the reference dequantiser.</summary>
    [Fact]
    public void Q6_KQuantiserMeetsItsBound()
    {
        var rng = new Random(4);
        foreach (float spread in new[] { 0.02f, 1f, 300f })
        {
            float[] x = Enumerable.Range(0, 256 * 3).Select(i => (float)((rng.NextDouble() * 2 - 1) * spread * (i / 16 % 4 + 1))).ToArray();
            x[5] = 0; x[300] = -spread * 9;
            var bytes = new byte[GgmlTypes.RowBytes(GgmlType.Q6_K, x.Length)];
            Quantize.Row(GgmlType.Q6_K, x, bytes);
            var back = new float[x.Length];
            Dequantize.Row(GgmlType.Q6_K, bytes, back);
            for (int i = 0; i < x.Length; i++)
            {
                var block = bytes.AsSpan(i / 256 * 210, 210);
                float d = (float)BitConverter.ToHalf(block[208..]), bound = d * (sbyte)block[192 + i % 256 / 16] / 2 + 1e-6f * spread;
                Assert.True(Math.Abs(back[i] - x[i]) <= bound, $"spread {spread} element {i}: {back[i]} vs {x[i]} (bound {bound})");
            }
        }
    }

    // ---- bad input: each case is one line naming the file and where, and exit code 2 from the CLI ----

    static string WriteValidModel(TempDirectory dir, string architecture = "qwen2")
    {
        string path = dir.File("model.gguf");
        RandomModel.Write(path, RandomModelShape.Tiny with { Architecture = architecture }, GgmlType.Q8_0);
        return path;
    }

    static long Find(byte[] haystack, byte[] needle)
    {
        for (long i = 0; i + needle.Length <= haystack.Length; i++)
            if (haystack.AsSpan((int)i, needle.Length).SequenceEqual(needle)) return i;
        throw new InvalidOperationException("pattern not found");
    }

    /// <summary>Offset of the type field of a tensor's info (after its name and dimensions).</summary>
    static long TensorTypeOffset(byte[] bytes, string tensor, int dims)
    {
        byte[] name = Encoding.UTF8.GetBytes(tensor);
        long at = Find(bytes, [.. BitConverter.GetBytes((ulong)name.Length), .. name]);
        return at + 8 + name.Length + 4 + 8L * dims;
    }

    public static TheoryData<string, string> BadInputs => new()
    {
        { "missing", "file not found" },
        { "magic", "not a GGUF file" },
        { "truncated-header", "truncated header" },
        { "truncated-data", "runs past the end of the file" },
        { "tensor-past-end", "runs past the end of the file" },
        { "unknown-type", "unknown or unsupported block type 99" },
        { "architecture", "architecture 'gptneox' is not supported" },
        { "invalid-utf8", "not valid UTF-8" },
    };

    static string MakeBadFile(TempDirectory dir, string kind)
    {
        string path = WriteValidModel(dir, kind == "architecture" ? "gptneox" : "qwen2");
        byte[] bytes = File.ReadAllBytes(path);
        switch (kind)
        {
            case "missing": return dir.File("does-not-exist.gguf");
            case "magic": bytes[0] = (byte)'X'; break;
            case "truncated-header": bytes = bytes[..2000]; break;
            case "truncated-data": bytes = bytes[..(bytes.Length - 100)]; break;
            case "tensor-past-end":
                BitConverter.GetBytes((ulong)1 << 40).CopyTo(bytes, TensorTypeOffset(bytes, "blk.1.ffn_down.weight", 2) + 4);
                break;
            case "unknown-type":
                BitConverter.GetBytes(99u).CopyTo(bytes, TensorTypeOffset(bytes, "blk.0.attn_q.weight", 2));
                break;
            case "invalid-utf8":
                bytes[Find(bytes, "RANDOM WEIGHTS"u8.ToArray())] = 0xFF;
                break;
            case "architecture": break;
        }
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Theory]
    [MemberData(nameof(BadInputs))]
    public void BadFileIsOneClearLineAndExitCode2(string kind, string problem)
    {
        using var dir = new TempDirectory();
        string path = MakeBadFile(dir, kind);

        var error = Assert.Throws<ModelFormatException>(() => { using var m = ModelLoader.Load(path); });
        Assert.StartsWith(path + ": ", error.Message);
        Assert.Contains(problem, error.Message);
        if (kind is "truncated-data" or "tensor-past-end" or "unknown-type") Assert.Contains("tensor '", error.Message);
        if (kind is "magic" or "truncated-header" or "invalid-utf8") Assert.Contains("offset ", error.Message);

        var stderr = new StringWriter();
        int code = CliRunner.Run(CliApp.BuildRoot(), ["generate", "-m", path, "-n", "1"], stderr);
        Assert.Equal(2, code);
        string[] lines = stderr.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Equal($"vidkv: error: {error.Message}", lines[0].TrimEnd('\r'));
    }

    [Fact]
    public void InvalidCommandLineExitsWith2()
    {
        var stderr = new StringWriter();
        Assert.Equal(2, CliRunner.Run(CliApp.BuildRoot(), ["generate", "--n-predict", "many"], stderr));
        Assert.Contains("many", stderr.ToString());
    }
}
