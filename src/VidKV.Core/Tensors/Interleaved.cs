using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Q4_0 and Q8_0 weights repacked at load time with 16 rows interleaved (what llama.cpp calls a runtime repack, as its
/// <c>block_q4_0x8</c>). Per group of 16 rows and per block of 32 columns: the 16 f16 scales (32 bytes), then vectors
/// of 64 bytes, vector p holding the p-th 4-byte word of every row's quants — four for Q4_0 (288 bytes in all, the
/// same as 16 GGUF blocks), eight for Q8_0 (544 bytes), whose bytes are stored plus 128 (unsigned).
/// <para>
/// A Q4_0 word's low nibbles are columns 4p … 4p+3 and its high nibbles columns 16+4p …; a Q8_0 word's high and low
/// nibbles are the two planes of <see cref="IntegerTiles"/> for columns 4p …. One AND (or a shift and an AND) gives
/// 16 rows × 4 columns of unsigned nibbles for vpmaddubsw against 4 broadcast activations, and the int16 sums of a
/// block cannot saturate (see <see cref="IntegerTiles"/>). Decoding finishes a block for 16 rows with one vpmaddwd
/// (two for Q8_0), one convert and one FMA, where the row-at-a-time kernels (<see cref="QuantizedDot"/>) spend those
/// per row; the weights stream once, in order. Prefill repacks from this layout into <see cref="IntegerTiles"/>' planes.
/// </para>
/// </summary>
public static unsafe class Interleaved
{
    /// <summary>Rows per interleaved group.</summary>
    public const int Group = 16;

    /// <summary>Whether this machine repacks <paramref name="type"/> (Q4_0 and Q8_0 with AVX-512BW).</summary>
    public static bool Supports(GgmlType type) => Avx512BW.IsSupported && type is GgmlType.Q4_0 or GgmlType.Q8_0;

    /// <summary>Quant words (of 4 bytes) per row and block: 4 for Q4_0, 8 for Q8_0.</summary>
    static int Words(GgmlType type) => type == GgmlType.Q8_0 ? 8 : 4;

    /// <summary>Bytes of one group's block: 16 f16 scales and a 64-byte vector per quant word.</summary>
    public static int BlockBytes(GgmlType type) => 32 + 64 * Words(type);

    /// <summary>Bytes of the interleaved copy of <paramref name="rows"/> rows (a whole number of groups) of <paramref name="blocks"/> blocks.</summary>
    public static long Bytes(GgmlType type, int rows, int blocks) => (long)(rows / Group) * blocks * BlockBytes(type);

    /// <summary>Repacks groups [<paramref name="firstGroup"/>, <paramref name="endGroup"/>) of GGUF rows into <paramref name="destination"/>.</summary>
    public static void Repack(GgmlType type, byte* source, int rowBytes, int blocks, byte* destination, int firstGroup, int endGroup)
    {
        int words = Words(type), blockBytes = BlockBytes(type), sourceBlock = 2 + 4 * words;
        uint offset = type == GgmlType.Q8_0 ? 0x80808080u : 0;
        for (int g = firstGroup; g < endGroup; g++)
        {
            byte* group = destination + (long)g * blocks * blockBytes;
            for (int r = 0; r < Group; r++)
            {
                byte* row = source + (long)(g * Group + r) * rowBytes;
                for (int b = 0; b < blocks; b++)
                {
                    byte* target = group + (long)b * blockBytes, block = row + b * sourceBlock;
                    ((ushort*)target)[r] = *(ushort*)block;
                    for (int p = 0; p < words; p++) ((uint*)(target + 32))[p * Group + r] = ((uint*)(block + 2))[p] ^ offset;
                }
            }
        }
    }

    /// <summary>Row <paramref name="row"/> back in its GGUF form into <paramref name="destination"/>.</summary>
    public static void ReadRow(GgmlType type, byte* interleaved, int blocks, int row, byte* destination)
    {
        int words = Words(type), blockBytes = BlockBytes(type), r = row % Group;
        uint offset = type == GgmlType.Q8_0 ? 0x80808080u : 0;
        byte* group = interleaved + (long)(row / Group) * blocks * blockBytes;
        for (int b = 0; b < blocks; b++)
        {
            byte* source = group + (long)b * blockBytes, block = destination + b * (2 + 4 * words);
            *(ushort*)block = ((ushort*)source)[r];
            for (int p = 0; p < words; p++) ((uint*)(block + 2))[p] = ((uint*)(source + 32))[p * Group + r] ^ offset;
        }
    }

    /// <summary>
    /// y[g·16 + r] = Σ_c w(g·16 + r, c)·x(c) for the groups [<paramref name="firstGroup"/>, <paramref name="endGroup"/>)
    /// and one token's quantised activations: quants <paramref name="xq"/>, per-block scales <paramref name="xd"/>
    /// pre-multiplied by 2^112 (the f16 scales widen as d·2^−112, see <see cref="HalfDot"/>) and integer sums
    /// <paramref name="xs"/>.
    /// </summary>
    public static void Dot(GgmlType type, byte* interleaved, int blocks, int firstGroup, int endGroup, sbyte* xq, float* xd, int* xs, float* y)
    {
        if (type == GgmlType.Q8_0) DotQ8_0(interleaved, blocks, firstGroup, endGroup, xq, xd, xs, y);
        else DotQ4_0(interleaved, blocks, firstGroup, endGroup, xq, xd, xs, y);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static void DotQ4_0(byte* interleaved, int blocks, int firstGroup, int endGroup, sbyte* xq, float* xd, int* xs, float* y)
    {
        const int BlockBytes = 288;
        var nibble = Vector512.Create((byte)15);
        var ones = Vector512.Create((short)1);
        var signAndMagnitude = Vector512.Create(unchecked((int)0x8FFFFFFF));
        for (int g = firstGroup; g < endGroup; g++)
        {
            byte* p = interleaved + (long)g * blocks * BlockBytes;
            var acc0 = Vector512<float>.Zero;
            var acc1 = Vector512<float>.Zero;
            int b = 0;
            for (; b + 2 <= blocks; b += 2, p += 2 * BlockBytes)
            {
                acc0 = BlockQ4_0(p, xq + b * 32, xd[b], xs[b], acc0, nibble, ones, signAndMagnitude);
                acc1 = BlockQ4_0(p + BlockBytes, xq + b * 32 + 32, xd[b + 1], xs[b + 1], acc1, nibble, ones, signAndMagnitude);
            }
            if (b < blocks) acc0 = BlockQ4_0(p, xq + b * 32, xd[b], xs[b], acc0, nibble, ones, signAndMagnitude);
            (acc0 + acc1).Store(y + g * Group);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> BlockQ4_0(byte* p, sbyte* x, float xd, int xs, Vector512<float> acc, Vector512<byte> nibble, Vector512<short> ones, Vector512<int> signAndMagnitude)
    {
        var w0 = Vector512.Load(p + 32); var w1 = Vector512.Load(p + 96); var w2 = Vector512.Load(p + 160); var w3 = Vector512.Load(p + 224);
        var c = Avx512BW.MultiplyAddAdjacent(w0 & nibble, Vector512.Create(*(int*)x).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(High(w0, nibble), Vector512.Create(*(int*)(x + 16)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(w1 & nibble, Vector512.Create(*(int*)(x + 4)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(High(w1, nibble), Vector512.Create(*(int*)(x + 20)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(w2 & nibble, Vector512.Create(*(int*)(x + 8)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(High(w2, nibble), Vector512.Create(*(int*)(x + 24)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(w3 & nibble, Vector512.Create(*(int*)(x + 12)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(High(w3, nibble), Vector512.Create(*(int*)(x + 28)).AsSByte());
        var sums = Avx512BW.MultiplyAddAdjacent(c, ones) - Vector512.Create(8 * xs);
        return Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(sums), Scales(p, signAndMagnitude) * Vector512.Create(xd), acc);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static void DotQ8_0(byte* interleaved, int blocks, int firstGroup, int endGroup, sbyte* xq, float* xd, int* xs, float* y)
    {
        const int BlockBytes = 544;
        var nibble = Vector512.Create((byte)15);
        var ones = Vector512.Create((short)1);
        var sixteen = Vector512.Create((short)16);
        var signAndMagnitude = Vector512.Create(unchecked((int)0x8FFFFFFF));
        for (int g = firstGroup; g < endGroup; g++)
        {
            byte* p = interleaved + (long)g * blocks * BlockBytes;
            var acc = Vector512<float>.Zero;
            for (int b = 0; b < blocks; b++, p += BlockBytes)
            {
                sbyte* x = xq + b * 32;
                Vector512<short> high = default, low = default;
                for (int word = 0; word < 8; word++)
                {
                    var u = Vector512.Load(p + 32 + 64 * word);
                    var v = Vector512.Create(*(int*)(x + 4 * word)).AsSByte();
                    high += Avx512BW.MultiplyAddAdjacent(High(u, nibble), v);
                    low += Avx512BW.MultiplyAddAdjacent(u & nibble, v);
                }
                var sums = Avx512BW.MultiplyAddAdjacent(high, sixteen) + Avx512BW.MultiplyAddAdjacent(low, ones) - Vector512.Create(128 * xs[b]);
                acc = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(sums), Scales(p, signAndMagnitude) * Vector512.Create(xd[b]), acc);
            }
            acc.Store(y + g * Group);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<byte> High(Vector512<byte> w, Vector512<byte> nibble) => Vector512.ShiftRightLogical(w.AsUInt16(), 4).AsByte() & nibble;

    /// <summary>The block's 16 f16 scales as d·2^−112 (sign extension, shift, mask; exact for finite values).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Scales(byte* p, Vector512<int> signAndMagnitude) =>
        Avx512F.And(Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Vector256.Load((short*)p)), 13), signAndMagnitude).AsSingle();

    /// <summary>
    /// <see cref="IntegerTiles"/>' packed planes and f32 scales for the 32 rows of groups <paramref name="group"/> and
    /// <paramref name="group"/> + 1 (a missing second group packs as zeros).
    /// </summary>
    public static void PackTile(GgmlType type, byte* interleaved, int blocks, int group, bool secondGroup, byte* packed, float* scales)
    {
        var nibble = Vector512.Create((byte)15);
        int words = Words(type), blockBytes = BlockBytes(type), packedBlock = IntegerTiles.PackedBytes(type, 1);
        for (int half = 0; half < 2; half++)
        {
            byte* source = interleaved + (long)(group + half) * blocks * blockBytes;
            for (int b = 0; b < blocks; b++, source += blockBytes)
            {
                byte* target = packed + (long)b * packedBlock + half * 64;
                float* s = scales + b * IntegerTiles.Rows + half * Group;
                if (half == 1 && !secondGroup)
                {
                    for (int step = 0; step < 2 * words; step++) Vector512<byte>.Zero.Store(target + step * 128);
                    Vector512<float>.Zero.Store(s);
                    continue;
                }
                HalfDot.WidenF16((ushort*)source, s, Group);
                for (int word = 0; word < words; word++)
                {
                    var w = Vector512.Load(source + 32 + 64 * word);
                    // Q4_0: low nibbles are step `word`, high nibbles step word + 4. Q8_0: high nibbles are plane 0
                    // (steps 0–7), low nibbles plane 1 (steps 8–15).
                    int lowStep = type == GgmlType.Q8_0 ? word + 8 : word, highStep = type == GgmlType.Q8_0 ? word : word + 4;
                    (w & nibble).Store(target + lowStep * 128);
                    High(w, nibble).Store(target + highStep * 128);
                }
            }
        }
    }
}
