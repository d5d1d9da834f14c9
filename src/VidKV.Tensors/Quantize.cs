using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace VidKV.Tensors;

/// <summary>
/// Reference quantisers (f32 → stored type) with ggml's rounding rules, used by the GGUF writer and by tests.
/// </summary>
internal static class Quantize
{
    /// <summary>True when <see cref="Row"/> can produce this type.</summary>
    public static bool CanQuantize(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K;

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
                    // Vectorised, the same bits as (Half)x element by element (round to nearest even).
                    System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<byte, Half>(destination[..(source.Length * 2)]));
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
            case GgmlType.Q4_K:
                for (int b = 0; b < blocks; b++) Q4_K(source.Slice(b * 256, 256), destination.Slice(b * blockBytes, blockBytes));
                return;
            case GgmlType.Q6_K:
                for (int b = 0; b < blocks; b++) Q6_K(source.Slice(b * 256, 256), destination.Slice(b * blockBytes, blockBytes));
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

    /// <summary>
    /// Q4_K, a plain min/max quantiser (not llama-quantize's iterative search, which lowers the error further): per
    /// sub-block of 32 the range [min(x, 0), max(x)] in 15 steps; scales and mins as 6-bit multiples of d = max step/63
    /// and dmin = max |min|/63, rounded up so nothing clips by more than dmin; then q = round((x + dmin·m) / (d·sc)).
    /// Error per element ≤ d·sc/2 + dmin (tested). Enough for benchmark models of the K-quant layout.
    /// </summary>
    static void Q4_K(ReadOnlySpan<float> x, Span<byte> block)
    {
        Span<float> step = stackalloc float[8], offset = stackalloc float[8];
        float maxStep = 0, maxOffset = 0;
        for (int j = 0; j < 8; j++)
        {
            float lo = 0, hi = 0;
            for (int l = 0; l < 32; l++) { lo = MathF.Min(lo, x[32 * j + l]); hi = MathF.Max(hi, x[32 * j + l]); }
            step[j] = (hi - lo) / 15f;
            offset[j] = -lo;
            maxStep = MathF.Max(maxStep, step[j]);
            maxOffset = MathF.Max(maxOffset, offset[j]);
        }
        float d = (float)(Half)(maxStep / 63f), dmin = (float)(Half)(maxOffset / 63f);
        Span<byte> sc = stackalloc byte[8], m = stackalloc byte[8];
        for (int j = 0; j < 8; j++)
        {
            sc[j] = (byte)(d > 0 ? Math.Clamp((int)MathF.Ceiling(step[j] / d), 0, 63) : 0);
            m[j] = (byte)(dmin > 0 ? Math.Clamp((int)MathF.Ceiling(offset[j] / dmin), 0, 63) : 0);
        }
        BinaryPrimitives.WriteUInt16LittleEndian(block, BitConverter.HalfToUInt16Bits((Half)d));
        BinaryPrimitives.WriteUInt16LittleEndian(block[2..], BitConverter.HalfToUInt16Bits((Half)dmin));
        // The inverse of Dequantize.ScaleMinK4: sub-blocks 0–3 keep 6 bits in bytes 0–7, 4–7 split 4 + 2 bits.
        for (int j = 0; j < 4; j++)
        {
            block[4 + j] = (byte)(sc[j] | (sc[j + 4] >> 4) << 6);
            block[4 + j + 4] = (byte)(m[j] | (m[j + 4] >> 4) << 6);
            block[4 + j + 8] = (byte)((sc[j + 4] & 0xF) | (m[j + 4] & 0xF) << 4);
        }
        for (int j = 0; j < 8; j++)
        {
            float scale = d * sc[j], min = dmin * m[j], inverse = scale > 0 ? 1f / scale : 0f;
            for (int l = 0; l < 32; l++)
            {
                int q = Math.Clamp((int)MathF.Round((x[32 * j + l] + min) * inverse), 0, 15);
                // Sub-blocks 2c and 2c+1 share 32 bytes: low nibbles, then high nibbles.
                ref byte target = ref block[16 + 32 * (j / 2) + l];
                target = (j & 1) == 0 ? (byte)((target & 0xF0) | q) : (byte)((target & 0x0F) | q << 4);
            }
        }
    }

    /// <summary>
    /// Q6_K, a plain quantiser for benchmark models: per sub-block of 16 a step of max|x|/31, as an int8 multiple of
    /// d = largest step/127 rounded up (so q − 32 stays within [−32, 31]), then q = round(x / (d·sc)) + 32. Error per
    /// element ≤ d·sc/2 (tested). Packed as ggml lays Q6_K out: ql (low nibbles), qh (2-bit highs), scales, d.
    /// </summary>
    static void Q6_K(ReadOnlySpan<float> x, Span<byte> block)
    {
        Span<float> step = stackalloc float[16];
        float maxStep = 0;
        for (int k = 0; k < 16; k++)
        {
            float amax = 0;
            for (int l = 0; l < 16; l++) amax = MathF.Max(amax, MathF.Abs(x[16 * k + l]));
            step[k] = amax / 31f;
            maxStep = MathF.Max(maxStep, step[k]);
        }
        float d = (float)(Half)(maxStep / 127f);
        block[..192].Clear();
        for (int k = 0; k < 16; k++)
        {
            int sc = d > 0 ? Math.Clamp((int)MathF.Ceiling(step[k] / d), 0, 127) : 0;
            block[192 + k] = (byte)(sbyte)sc;
            float inverse = sc > 0 ? 1f / (d * sc) : 0f;
            for (int l = 0; l < 16; l++)
            {
                int c = 16 * k + l, q = Math.Clamp((int)MathF.Round(x[c] * inverse) + 32, 0, 63);
                // Column c of half c/128: low nibble in ql[64·half + c%64] (high nibble for c%128 ≥ 64), 2-bit high in
                // qh[32·half + c%32] at bits 2·((c%128)/32).
                int half = c / 128, column = c % 128;
                block[64 * half + column % 64] |= (byte)((q & 15) << (column >= 64 ? 4 : 0));
                block[128 + 32 * half + column % 32] |= (byte)((q >> 4) << (2 * (column / 32)));
            }
        }
        BinaryPrimitives.WriteUInt16LittleEndian(block[208..], BitConverter.HalfToUInt16Bits((Half)d));
    }
}
