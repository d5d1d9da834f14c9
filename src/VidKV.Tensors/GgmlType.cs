namespace VidKV.Tensors;

/// <summary>Element types of tensor data, numbered as in ggml (and therefore as stored in GGUF files).</summary>
public enum GgmlType : uint
{
    /// <summary>32-bit IEEE floats, one per element.</summary>
    F32 = 0,
    /// <summary>16-bit IEEE half floats, one per element.</summary>
    F16 = 1,
    /// <summary>4-bit blocks of 32 with one f16 scale.</summary>
    Q4_0 = 2,
    /// <summary>4-bit blocks of 32 with an f16 scale and an f16 minimum.</summary>
    Q4_1 = 3,
    /// <summary>5-bit blocks of 32 (high bits packed apart) with one f16 scale.</summary>
    Q5_0 = 6,
    /// <summary>5-bit blocks of 32 (high bits packed apart) with an f16 scale and an f16 minimum.</summary>
    Q5_1 = 7,
    /// <summary>8-bit blocks of 32 with one f16 scale.</summary>
    Q8_0 = 8,
    /// <summary>8-bit blocks of 32 with an f16 scale and the f16 of scale times the block's sum (a matmul operand in ggml; VidKV does not read it).</summary>
    Q8_1 = 9,
    /// <summary>2-bit super-blocks of 256: 16 groups of 16 with 4-bit scales and minimums, f16 super-scale and super-minimum.</summary>
    Q2_K = 10,
    /// <summary>3-bit super-blocks of 256: 16 groups of 16 with 6-bit scales and one f16 super-scale.</summary>
    Q3_K = 11,
    /// <summary>4-bit super-blocks of 256: 8 groups of 32 with 6-bit scales and minimums, f16 super-scale and super-minimum.</summary>
    Q4_K = 12,
    /// <summary>5-bit super-blocks of 256: 8 groups of 32 with 6-bit scales and minimums, f16 super-scale and super-minimum.</summary>
    Q5_K = 13,
    /// <summary>6-bit super-blocks of 256: 16 groups of 16 with 8-bit scales and one f16 super-scale.</summary>
    Q6_K = 14,
    /// <summary>8-bit super-blocks of 256 with one f32 scale and 16 per-group sums (ggml's dot-product operand for the K-quants).</summary>
    Q8_K = 15,
    /// <summary>bfloat16 (the top 16 bits of an f32), one per element.</summary>
    BF16 = 30,
}

/// <summary>Block geometry of each <see cref="GgmlType"/>: how many elements a block holds and how many bytes it takes.</summary>
internal static class GgmlTypes
{
    /// <summary>Elements per super-block of the K-quants.</summary>
    public const int QK_K = 256;

    /// <summary>True when VidKV can read (dequantise) this type.</summary>
    public static bool IsSupported(GgmlType type) => type switch
    {
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1
            or GgmlType.Q8_0 or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.Q8_K => true,
        _ => false,
    };

    /// <summary>Elements per block (1 for plain float types).</summary>
    public static int BlockSize(GgmlType type) => type switch
    {
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 => 1,
        GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.Q8_1 => 32,
        GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.Q8_K => QK_K,
        _ => throw new NotSupportedException($"unknown ggml type {(uint)type}"),
    };

    /// <summary>Bytes per block.</summary>
    public static int BlockBytes(GgmlType type) => type switch
    {
        GgmlType.F32 => 4,
        GgmlType.F16 or GgmlType.BF16 => 2,
        GgmlType.Q4_0 => 2 + 16,
        GgmlType.Q4_1 => 2 + 2 + 16,
        GgmlType.Q5_0 => 2 + 4 + 16,
        GgmlType.Q5_1 => 2 + 2 + 4 + 16,
        GgmlType.Q8_0 => 2 + 32,
        GgmlType.Q8_1 => 2 + 2 + 32,
        GgmlType.Q2_K => QK_K / 16 + QK_K / 4 + 2 + 2,
        GgmlType.Q3_K => QK_K / 8 + QK_K / 4 + 12 + 2,
        GgmlType.Q4_K => 2 + 2 + 12 + QK_K / 2,
        GgmlType.Q5_K => 2 + 2 + 12 + QK_K / 8 + QK_K / 2,
        GgmlType.Q6_K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        GgmlType.Q8_K => 4 + QK_K + QK_K / 16 * 2,
        _ => throw new NotSupportedException($"unknown ggml type {(uint)type}"),
    };

    /// <summary>Bytes taken by <paramref name="elementCount"/> elements (a multiple of the block size).</summary>
    public static long RowBytes(GgmlType type, long elementCount) => elementCount / BlockSize(type) * BlockBytes(type);

    /// <summary>Lower-case name as llama.cpp prints it (f32, q8_0, q4_k, ...).</summary>
    public static string Name(GgmlType type) => type.ToString().ToLowerInvariant();

    /// <summary>Parses a name such as "q8_0" or "F16".</summary>
    public static bool TryParse(string name, out GgmlType type) => Enum.TryParse(name, ignoreCase: true, out type) && Enum.IsDefined(type);
}
