using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace VidKV.Tensors;

/// <summary>
/// Converts rows of stored tensor data of any supported <see cref="GgmlType"/> to f32.
/// Block layouts follow ggml's <c>block_q*</c> structs byte for byte (little-endian, f16 scales).
/// </summary>
internal static class Dequantize
{
    /// <summary>Dequantises <paramref name="destination"/>.Length elements from <paramref name="source"/> (whole blocks).</summary>
    public static void Row(GgmlType type, ReadOnlySpan<byte> source, Span<float> destination)
    {
        int blockSize = GgmlTypes.BlockSize(type);
        int blockBytes = GgmlTypes.BlockBytes(type);
        if (destination.Length % blockSize != 0)
            throw new ArgumentException($"{destination.Length} elements is not a whole number of {GgmlTypes.Name(type)} blocks of {blockSize}");
        long needed = (long)destination.Length / blockSize * blockBytes;
        if (source.Length < needed)
            throw new ArgumentException($"{GgmlTypes.Name(type)} row of {destination.Length} elements needs {needed} bytes, got {source.Length}");

        switch (type)
        {
            case GgmlType.F32:
                MemoryMarshal.Cast<byte, float>(source[..(int)needed]).CopyTo(destination);
                return;
            case GgmlType.F16:
                TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(source[..(int)needed]), destination);
                return;
            case GgmlType.BF16:
                BF16(MemoryMarshal.Cast<byte, ushort>(source[..(int)needed]), destination);
                return;
        }

        int blocks = destination.Length / blockSize;
        for (int b = 0; b < blocks; b++)
        {
            ReadOnlySpan<byte> block = source.Slice(b * blockBytes, blockBytes);
            Span<float> y = destination.Slice(b * blockSize, blockSize);
            switch (type)
            {
                case GgmlType.Q4_0: Q4_0(block, y); break;
                case GgmlType.Q4_1: Q4_1(block, y); break;
                case GgmlType.Q5_0: Q5_0(block, y); break;
                case GgmlType.Q5_1: Q5_1(block, y); break;
                case GgmlType.Q8_0: Q8_0(block, y); break;
                case GgmlType.Q2_K: Q2_K(block, y); break;
                case GgmlType.Q3_K: Q3_K(block, y); break;
                case GgmlType.Q4_K: Q4_K(block, y); break;
                case GgmlType.Q5_K: Q5_K(block, y); break;
                case GgmlType.Q6_K: Q6_K(block, y); break;
                case GgmlType.Q8_K: Q8_K(block, y); break;
                default: throw new NotSupportedException($"dequantisation of {GgmlTypes.Name(type)} is not supported");
            }
        }
    }

    internal static float Half(ReadOnlySpan<byte> b, int offset) => (float)BitConverter.UInt16BitsToHalf(BinaryPrimitives.ReadUInt16LittleEndian(b[offset..]));

    /// <summary>bf16 is the upper half of an f32.</summary>
    public static void BF16(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        for (int i = 0; i < destination.Length; i++) destination[i] = BitConverter.Int32BitsToSingle(source[i] << 16);
    }

    // Q4_0: f16 d; u8 qs[16]. Element j (j < 16) is the low nibble of qs[j], element j + 16 the high nibble; x = (q - 8) d.
    static void Q4_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0);
        ReadOnlySpan<byte> qs = b.Slice(2, 16);
        for (int j = 0; j < 16; j++)
        {
            y[j] = ((qs[j] & 0xF) - 8) * d;
            y[j + 16] = ((qs[j] >> 4) - 8) * d;
        }
    }

    // Q4_1: f16 d, f16 m; u8 qs[16]; x = q d + m.
    static void Q4_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0), m = Half(b, 2);
        ReadOnlySpan<byte> qs = b.Slice(4, 16);
        for (int j = 0; j < 16; j++)
        {
            y[j] = (qs[j] & 0xF) * d + m;
            y[j + 16] = (qs[j] >> 4) * d + m;
        }
    }

    // Q5_0: f16 d; u32 qh (fifth bits, bit j for element j); u8 qs[16]; x = (q - 16) d.
    static void Q5_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0);
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(b[2..]);
        ReadOnlySpan<byte> qs = b.Slice(6, 16);
        for (int j = 0; j < 16; j++)
        {
            int lo = (qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = (lo - 16) * d;
            y[j + 16] = (hi - 16) * d;
        }
    }

    // Q5_1: f16 d, f16 m; u32 qh; u8 qs[16]; x = q d + m.
    static void Q5_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0), m = Half(b, 2);
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(b[4..]);
        ReadOnlySpan<byte> qs = b.Slice(8, 16);
        for (int j = 0; j < 16; j++)
        {
            int lo = (qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = lo * d + m;
            y[j + 16] = hi * d + m;
        }
    }

    // Q8_0: f16 d; i8 qs[32]; x = q d.
    static void Q8_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0);
        ReadOnlySpan<sbyte> qs = MemoryMarshal.Cast<byte, sbyte>(b.Slice(2, 32));
        for (int j = 0; j < 32; j++) y[j] = qs[j] * d;
    }

    // Q2_K: u8 scales[16] (low nibble scale, high nibble min), u8 qs[64] (2 bits each), f16 d, f16 dmin.
    // Each 128-element half uses 32 bytes of qs four times with shifts 0,2,4,6; each shift covers two 16-element groups.
    static void Q2_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        ReadOnlySpan<byte> scales = b[..16];
        ReadOnlySpan<byte> qs = b.Slice(16, 64);
        float d = Half(b, 80), dmin = Half(b, 82);
        int scaleIndex = 0, o = 0;
        for (int half = 0; half < 2; half++)
        {
            ReadOnlySpan<byte> q = qs.Slice(32 * half, 32);
            for (int shift = 0; shift < 8; shift += 2)
            {
                for (int group = 0; group < 2; group++)
                {
                    byte sc = scales[scaleIndex++];
                    float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
                    for (int l = 0; l < 16; l++) y[o++] = dl * ((q[16 * group + l] >> shift) & 3) - ml;
                }
            }
        }
    }

    // Q3_K: u8 hmask[32], u8 qs[64], u8 scales[12] (sixteen 6-bit signed scales, offset 32), f16 d.
    // The third bit comes from hmask; a clear bit subtracts 4.
    static void Q3_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        ReadOnlySpan<byte> hmask = b[..32];
        ReadOnlySpan<byte> qs = b.Slice(32, 64);
        ReadOnlySpan<byte> packed = b.Slice(96, 12);
        float d = Half(b, 108);
        Span<int> scales = stackalloc int[16];
        for (int i = 0; i < 16; i++)
        {
            int low = i < 8 ? packed[i] & 0xF : packed[i - 8] >> 4;
            int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
            scales[i] = (low | (high << 4)) - 32;
        }
        int scaleIndex = 0, o = 0, bit = 0;
        for (int half = 0; half < 2; half++)
        {
            ReadOnlySpan<byte> q = qs.Slice(32 * half, 32);
            for (int shift = 0; shift < 8; shift += 2, bit++)
            {
                for (int group = 0; group < 2; group++)
                {
                    float dl = d * scales[scaleIndex++];
                    for (int l = 0; l < 16; l++)
                    {
                        int k = 16 * group + l;
                        int value = ((q[k] >> shift) & 3) - ((hmask[k] >> bit & 1) != 0 ? 0 : 4);
                        y[o++] = dl * value;
                    }
                }
            }
        }
    }

    /// <summary>Unpacks the j-th 6-bit (scale, min) pair of the 12-byte K-quant scale array (Q4_K, Q5_K).</summary>
    public static (int Scale, int Min) ScaleMinK4(int j, ReadOnlySpan<byte> q) => j < 4
        ? (q[j] & 63, q[j + 4] & 63)
        : ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4));

    // Q4_K: f16 d, f16 dmin, u8 scales[12], u8 qs[128]. Eight groups of 32; each 32 bytes of qs give a low-nibble and a high-nibble group.
    static void Q4_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0), dmin = Half(b, 2);
        ReadOnlySpan<byte> scales = b.Slice(4, 12);
        ReadOnlySpan<byte> qs = b.Slice(16, 128);
        for (int chunk = 0; chunk < 4; chunk++)
        {
            var (s1, m1) = ScaleMinK4(2 * chunk, scales);
            var (s2, m2) = ScaleMinK4(2 * chunk + 1, scales);
            float d1 = d * s1, min1 = dmin * m1, d2 = d * s2, min2 = dmin * m2;
            ReadOnlySpan<byte> q = qs.Slice(32 * chunk, 32);
            Span<float> o = y.Slice(64 * chunk, 64);
            for (int l = 0; l < 32; l++)
            {
                o[l] = d1 * (q[l] & 0xF) - min1;
                o[l + 32] = d2 * (q[l] >> 4) - min2;
            }
        }
    }

    // Q5_K: f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]. Like Q4_K with a fifth bit from qh (two bits per 64-element chunk).
    static void Q5_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0), dmin = Half(b, 2);
        ReadOnlySpan<byte> scales = b.Slice(4, 12);
        ReadOnlySpan<byte> qh = b.Slice(16, 32);
        ReadOnlySpan<byte> qs = b.Slice(48, 128);
        for (int chunk = 0; chunk < 4; chunk++)
        {
            var (s1, m1) = ScaleMinK4(2 * chunk, scales);
            var (s2, m2) = ScaleMinK4(2 * chunk + 1, scales);
            float d1 = d * s1, min1 = dmin * m1, d2 = d * s2, min2 = dmin * m2;
            ReadOnlySpan<byte> q = qs.Slice(32 * chunk, 32);
            Span<float> o = y.Slice(64 * chunk, 64);
            int bitLow = 2 * chunk, bitHigh = 2 * chunk + 1;
            for (int l = 0; l < 32; l++)
            {
                o[l] = d1 * ((q[l] & 0xF) + (((qh[l] >> bitLow) & 1) << 4)) - min1;
                o[l + 32] = d2 * ((q[l] >> 4) + (((qh[l] >> bitHigh) & 1) << 4)) - min2;
            }
        }
    }

    // Q6_K: u8 ql[128] (low 4 bits), u8 qh[64] (high 2 bits), i8 scales[16], f16 d; x = d * scale * (q - 32).
    static void Q6_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        ReadOnlySpan<byte> qlAll = b[..128];
        ReadOnlySpan<byte> qhAll = b.Slice(128, 64);
        ReadOnlySpan<sbyte> scAll = MemoryMarshal.Cast<byte, sbyte>(b.Slice(192, 16));
        float d = Half(b, 208);
        for (int half = 0; half < 2; half++)
        {
            ReadOnlySpan<byte> ql = qlAll.Slice(64 * half, 64);
            ReadOnlySpan<byte> qh = qhAll.Slice(32 * half, 32);
            ReadOnlySpan<sbyte> sc = scAll.Slice(8 * half, 8);
            Span<float> o = y.Slice(128 * half, 128);
            for (int l = 0; l < 32; l++)
            {
                int s = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                o[l] = d * sc[s] * q1;
                o[l + 32] = d * sc[s + 2] * q2;
                o[l + 64] = d * sc[s + 4] * q3;
                o[l + 96] = d * sc[s + 6] * q4;
            }
        }
    }

    /// <summary>A Q6_K block's 256 quants q ∈ [0, 63] (value = d·sc·(q − 32)), in column order, as bytes.</summary>
    public static unsafe void Q6_KQuants(byte* block, byte* q)
    {
        for (int half = 0; half < 2; half++)
        {
            byte* ql = block + 64 * half, qh = block + 128 + 32 * half, o = q + 128 * half;
            for (int l = 0; l < 32; l++)
            {
                o[l] = (byte)((ql[l] & 0xF) | ((qh[l] & 3) << 4));
                o[l + 32] = (byte)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                o[l + 64] = (byte)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                o[l + 96] = (byte)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
            }
        }
    }

    // Q8_K: f32 d, i8 qs[256], i16 bsums[16] (sums of 16-element groups, unused here); x = q d.
    static void Q8_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = BinaryPrimitives.ReadSingleLittleEndian(b);
        ReadOnlySpan<sbyte> qs = MemoryMarshal.Cast<byte, sbyte>(b.Slice(4, 256));
        for (int j = 0; j < 256; j++) y[j] = d * qs[j];
    }
}
