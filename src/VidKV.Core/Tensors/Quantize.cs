using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace VidKV.Tensors;

/// <summary>
/// Reference quantisers (f32 → stored type) with ggml's rounding rules, used by the GGUF writer and by tests.
/// </summary>
public static class Quantize
{
    /// <summary>True when <see cref="Row"/> can produce this type.</summary>
    public static bool CanQuantize(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0;

    /// <summary>Quantises <paramref name="source"/> (a whole number of blocks) into <paramref name="destination"/>.</summary>
    public static void Row(GgmlType type, ReadOnlySpan<float> source, Span<byte> destination)
    {
        int blockSize = GgmlTypes.BlockSize(type), blockBytes = GgmlTypes.BlockBytes(type);
        if (source.Length % blockSize != 0) throw new ArgumentException($"{source.Length} elements is not a whole number of {GgmlTypes.Name(type)} blocks");
        int blocks = source.Length / blockSize;
        if (destination.Length < blocks * blockBytes) throw new ArgumentException("destination too small");
        switch (type)
        {
            case GgmlType.F32:
                MemoryMarshal.AsBytes(source).CopyTo(destination);
                return;
            case GgmlType.F16:
                {
                    Span<ushort> h = MemoryMarshal.Cast<byte, ushort>(destination[..(source.Length * 2)]);
                    for (int i = 0; i < source.Length; i++) h[i] = BitConverter.HalfToUInt16Bits((Half)source[i]);
                    return;
                }
            case GgmlType.BF16:
                {
                    Span<ushort> h = MemoryMarshal.Cast<byte, ushort>(destination[..(source.Length * 2)]);
                    for (int i = 0; i < source.Length; i++) h[i] = ToBF16(source[i]);
                    return;
                }
            case GgmlType.Q8_0:
                for (int b = 0; b < blocks; b++) Q8_0(source.Slice(b * 32, 32), destination.Slice(b * blockBytes, blockBytes));
                return;
            case GgmlType.Q4_0:
                for (int b = 0; b < blocks; b++) Q4_0(source.Slice(b * 32, 32), destination.Slice(b * blockBytes, blockBytes));
                return;
            default:
                throw new NotSupportedException($"quantisation to {GgmlTypes.Name(type)} is not supported");
        }
    }

    /// <summary>f32 → bf16, round to nearest even; NaN stays a quiet NaN.</summary>
    public static ushort ToBF16(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    // d = max|x| / 127, q = round(x / d).
    static void Q8_0(ReadOnlySpan<float> x, Span<byte> block)
    {
        float amax = 0;
        foreach (float v in x) amax = MathF.Max(amax, MathF.Abs(v));
        float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
        BinaryPrimitives.WriteUInt16LittleEndian(block, BitConverter.HalfToUInt16Bits((Half)d));
        for (int j = 0; j < 32; j++) block[2 + j] = (byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
    }

    // d = (value of largest magnitude) / -8, q = clamp(trunc(x / d + 8.5), 0, 15).
    static void Q4_0(ReadOnlySpan<float> x, Span<byte> block)
    {
        float amax = 0, max = 0;
        foreach (float v in x)
        {
            if (MathF.Abs(v) > amax) { amax = MathF.Abs(v); max = v; }
        }
        float d = max / -8f, id = d != 0 ? 1f / d : 0f;
        BinaryPrimitives.WriteUInt16LittleEndian(block, BitConverter.HalfToUInt16Bits((Half)d));
        for (int j = 0; j < 16; j++)
        {
            int lo = Math.Min(15, (int)(sbyte)(x[j] * id + 8.5f));
            int hi = Math.Min(15, (int)(sbyte)(x[j + 16] * id + 8.5f));
            block[2 + j] = (byte)(lo | (hi << 4));
        }
    }
}
