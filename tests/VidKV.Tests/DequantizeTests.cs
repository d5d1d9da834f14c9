using System.Buffers.Binary;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// Every block type dequantised from hand-built blocks whose logical contents (scales, mins, quants) are chosen first
/// and placed into bytes following ggml's block layouts; the expected values come straight from those contents.
/// </summary>
public class DequantizeTests
{
    static void PutHalf(byte[] b, int offset, float value) => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(offset), BitConverter.HalfToUInt16Bits((Half)value));

    static void Check(GgmlType type, byte[] block, float[] expected)
    {
        Assert.Equal(GgmlTypes.BlockBytes(type), block.Length);
        Assert.Equal(GgmlTypes.BlockSize(type), expected.Length);
        // Two blocks in a row: the second is the first again, so a wrong stride shows up.
        var actual = new float[expected.Length * 2];
        Dequantize.Row(type, [.. block, .. block], actual);
        for (int i = 0; i < actual.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i % expected.Length]) <= 1e-6f * Math.Max(1, Math.Abs(expected[i % expected.Length])),
                $"{type}[{i}]: got {actual[i]}, expected {expected[i % expected.Length]}");
    }

    [Fact]
    public void F16AndBF16()
    {
        float[] values = [1f, -2f, 0.5f, 65504f, MathF.Pow(2, -24), 0f, -0.333251953125f];
        var f16 = new byte[values.Length * 2];
        for (int i = 0; i < values.Length; i++) PutHalf(f16, 2 * i, values[i]);
        var got = new float[values.Length];
        Dequantize.Row(GgmlType.F16, f16, got);
        Assert.Equal(values, got);

        ushort[] bf16 = [0x3F80, 0xC000, 0x7F80, 0x0000, 0x3EAB];
        float[] want = [1f, -2f, float.PositiveInfinity, 0f, BitConverter.Int32BitsToSingle(0x3EAB << 16)];
        var bytes = new byte[bf16.Length * 2];
        for (int i = 0; i < bf16.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2 * i), bf16[i]);
        got = new float[bf16.Length];
        Dequantize.Row(GgmlType.BF16, bytes, got);
        Assert.Equal(want, got);
        Assert.Equal((ushort)0x3F80, Quantize.ToBF16(1.0f));
        Assert.Equal((ushort)0x3F81, Quantize.ToBF16(BitConverter.Int32BitsToSingle(0x3F80_8001))); // rounds up past half
        Assert.Equal((ushort)0x3F80, Quantize.ToBF16(BitConverter.Int32BitsToSingle(0x3F80_8000))); // ties to even
    }

    [Fact]
    public void Q4_0AndQ4_1()
    {
        var b = new byte[18];
        PutHalf(b, 0, 0.25f);
        var want = new float[32];
        for (int j = 0; j < 16; j++)
        {
            b[2 + j] = (byte)(j | ((15 - j) << 4));
            want[j] = (j - 8) * 0.25f;
            want[j + 16] = (15 - j - 8) * 0.25f;
        }
        Check(GgmlType.Q4_0, b, want);

        b = new byte[20];
        PutHalf(b, 0, 0.5f);
        PutHalf(b, 2, -1f);
        for (int j = 0; j < 16; j++)
        {
            b[4 + j] = (byte)(j | ((15 - j) << 4));
            want[j] = j * 0.5f - 1f;
            want[j + 16] = (15 - j) * 0.5f - 1f;
        }
        Check(GgmlType.Q4_1, b, want);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Q5_0AndQ5_1(bool withMin)
    {
        var type = withMin ? GgmlType.Q5_1 : GgmlType.Q5_0;
        var b = new byte[GgmlTypes.BlockBytes(type)];
        int header = withMin ? 4 : 2;
        PutHalf(b, 0, 0.5f);
        if (withMin) PutHalf(b, 2, 2f);
        var v = Enumerable.Range(0, 32).Select(j => j * 7 % 32).ToArray();
        uint qh = 0;
        for (int j = 0; j < 16; j++)
        {
            b[header + 4 + j] = (byte)((v[j] & 15) | ((v[j + 16] & 15) << 4));
            qh |= (uint)(v[j] >> 4) << j;
            qh |= (uint)(v[j + 16] >> 4) << (j + 16);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(header), qh);
        Check(type, b, v.Select(q => withMin ? q * 0.5f + 2f : (q - 16) * 0.5f).ToArray());
    }

    [Fact]
    public void Q8_0AndQ8_K()
    {
        var b = new byte[34];
        PutHalf(b, 0, 0.125f);
        for (int j = 0; j < 32; j++) b[2 + j] = (byte)(sbyte)(j * 8 - 128);
        Check(GgmlType.Q8_0, b, Enumerable.Range(0, 32).Select(j => (j * 8 - 128) * 0.125f).ToArray());

        b = new byte[292];
        BinaryPrimitives.WriteSingleLittleEndian(b, 0.5f);
        for (int j = 0; j < 256; j++) b[4 + j] = (byte)(sbyte)(j - 128);
        Check(GgmlType.Q8_K, b, Enumerable.Range(0, 256).Select(j => 0.5f * (j - 128)).ToArray());
    }

    /// <summary>Element e of a Q2_K/Q3_K block: its 2-bit field lives in qs[32·half + 16·group + l] at bits 2·shift.</summary>
    static (int Byte, int Shift, int Half) TwoBitSlot(int e)
    {
        int half = e / 128, r = e % 128, shift = r / 32, group = r % 32 / 16, l = r % 16;
        return (32 * half + 16 * group + l, 2 * shift, half);
    }

    [Fact]
    public void Q2_K()
    {
        var rng = new Random(2);
        var b = new byte[84];
        float d = 0.5f, dmin = 0.25f;
        int[] scale = Enumerable.Range(0, 16).Select(_ => rng.Next(16)).ToArray(), min = Enumerable.Range(0, 16).Select(_ => rng.Next(16)).ToArray();
        for (int s = 0; s < 16; s++) b[s] = (byte)(scale[s] | (min[s] << 4));
        var want = new float[256];
        for (int e = 0; e < 256; e++)
        {
            int q = rng.Next(4), s = e / 16;
            var (at, shift, _) = TwoBitSlot(e);
            b[16 + at] |= (byte)(q << shift);
            want[e] = d * scale[s] * q - dmin * min[s];
        }
        PutHalf(b, 80, d);
        PutHalf(b, 82, dmin);
        Check(GgmlType.Q2_K, b, want);
    }

    [Fact]
    public void Q3_K()
    {
        var rng = new Random(3);
        var b = new byte[110];
        float d = 0.75f;
        int[] scale = Enumerable.Range(0, 16).Select(_ => rng.Next(64)).ToArray(); // stored 6-bit, effective scale − 32
        for (int s = 0; s < 16; s++)
        {
            int low = scale[s] & 15, high = scale[s] >> 4;
            if (s < 8) b[96 + s] |= (byte)low; else b[96 + s - 8] |= (byte)(low << 4);
            b[96 + 8 + s % 4] |= (byte)(high << (2 * (s / 4)));
        }
        var want = new float[256];
        for (int e = 0; e < 256; e++)
        {
            int value = rng.Next(-4, 4), u = value + 4, s = e / 16;
            var (at, shift, half) = TwoBitSlot(e);
            b[32 + at] |= (byte)((u & 3) << shift);
            if ((u & 4) != 0) b[at - 32 * half] |= (byte)(1 << (4 * half + shift / 2));
            want[e] = d * (scale[s] - 32) * value;
        }
        PutHalf(b, 108, d);
        Check(GgmlType.Q3_K, b, want);
    }

    /// <summary>Packs eight 6-bit (scale, min) pairs the way Q4_K/Q5_K store them in 12 bytes.</summary>
    static void PackScaleMin(byte[] b, int offset, int[] scale, int[] min)
    {
        for (int j = 0; j < 4; j++)
        {
            b[offset + j] = (byte)(scale[j] | ((scale[j + 4] >> 4) << 6));
            b[offset + j + 4] = (byte)(min[j] | ((min[j + 4] >> 4) << 6));
            b[offset + j + 8] = (byte)((scale[j + 4] & 15) | ((min[j + 4] & 15) << 4));
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Q4_KAndQ5_K(bool fiveBit)
    {
        var type = fiveBit ? GgmlType.Q5_K : GgmlType.Q4_K;
        var rng = new Random(fiveBit ? 5 : 4);
        var b = new byte[GgmlTypes.BlockBytes(type)];
        float d = 0.5f, dmin = 0.125f;
        PutHalf(b, 0, d);
        PutHalf(b, 2, dmin);
        int[] scale = Enumerable.Range(0, 8).Select(_ => rng.Next(64)).ToArray(), min = Enumerable.Range(0, 8).Select(_ => rng.Next(64)).ToArray();
        PackScaleMin(b, 4, scale, min);
        int qs = fiveBit ? 48 : 16;
        var want = new float[256];
        for (int e = 0; e < 256; e++)
        {
            int chunk = e / 64, r = e % 64, sub = e / 32, q = rng.Next(fiveBit ? 32 : 16);
            int at = chunk * 32 + r % 32;
            b[qs + at] |= (byte)((q & 15) << (r < 32 ? 0 : 4));
            if (fiveBit && q >= 16) b[16 + r % 32] |= (byte)(1 << (2 * chunk + (r < 32 ? 0 : 1)));
            want[e] = d * scale[sub] * q - dmin * min[sub];
        }
        Check(type, b, want);
    }

    [Fact]
    public void Q6_K()
    {
        var rng = new Random(6);
        var b = new byte[210];
        float d = 0.0625f;
        var scale = Enumerable.Range(0, 16).Select(_ => rng.Next(-128, 128)).ToArray();
        for (int s = 0; s < 16; s++) b[192 + s] = (byte)(sbyte)scale[s];
        PutHalf(b, 208, d);
        var want = new float[256];
        for (int e = 0; e < 256; e++)
        {
            int half = e / 128, r = e % 128, quarter = r / 32, l = r % 32, q = rng.Next(64);
            int ql = half * 64 + l + (quarter % 2 == 1 ? 32 : 0);
            b[ql] |= (byte)((q & 15) << (quarter >= 2 ? 4 : 0));
            b[128 + half * 32 + l] |= (byte)((q >> 4) << (2 * quarter));
            want[e] = d * scale[half * 8 + quarter * 2 + l / 16] * (q - 32);
        }
        Check(GgmlType.Q6_K, b, want);
    }

    [Fact]
    public void RowRejectsPartialBlocksAndShortSources()
    {
        Assert.Throws<ArgumentException>(() => Dequantize.Row(GgmlType.Q8_0, new byte[34], new float[31]));
        Assert.Throws<ArgumentException>(() => Dequantize.Row(GgmlType.Q4_K, new byte[143], new float[256]));
    }
}
