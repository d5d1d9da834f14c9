using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Q4_0 weights repacked at load time with 16 rows interleaved (what llama.cpp calls a runtime repack, as its
/// <c>block_q4_0x8</c>): per group of 16 rows and per block of 32 columns, the 16 f16 scales (32 bytes) and then four
/// 64-byte vectors, vector p holding the p-th 4-byte word of every row's quants — 288 bytes, the same as 16 GGUF
/// blocks. A word's low nibbles are columns 4p … 4p+3 and its high nibbles columns 16+4p …, so one AND (or shift and
/// AND) gives 16 rows × 4 columns of unsigned nibbles ready for vpmaddubsw against 4 broadcast activations.
/// <para>
/// Decoding then finishes a block for 16 rows with one vpmaddwd, one convert and one FMA, where the row-at-a-time
/// kernel (<see cref="QuantizedDot.DotQ4_0"/>) spends those per row; the weights stream once, in order. Prefill repacks
/// from this layout into <see cref="IntegerTiles"/>' planes (an AND or a shift per vector).
/// </para>
/// </summary>
public static unsafe class InterleavedQ4_0
{
    /// <summary>Rows per interleaved group.</summary>
    public const int Group = 16;
    /// <summary>Bytes of one group's block: 16 f16 scales and 4 × 64 bytes of quants.</summary>
    public const int BlockBytes = 288;

    /// <summary>Whether this machine decodes Q4_0 from the interleaved layout (AVX-512BW).</summary>
    public static bool IsSupported => Avx512BW.IsSupported;

    /// <summary>Bytes of the interleaved copy of <paramref name="rows"/> rows of <paramref name="blocks"/> blocks (the last group padded with zero rows).</summary>
    public static long Bytes(int rows, int blocks) => (long)((rows + Group - 1) / Group) * blocks * BlockBytes;

    /// <summary>Repacks groups [<paramref name="firstGroup"/>, <paramref name="endGroup"/>) of GGUF Q4_0 rows into <paramref name="destination"/>.</summary>
    public static void Repack(byte* source, int rowBytes, int rows, int blocks, byte* destination, int firstGroup, int endGroup)
    {
        for (int g = firstGroup; g < endGroup; g++)
        {
            byte* group = destination + (long)g * blocks * BlockBytes;
            for (int r = 0; r < Group; r++)
            {
                int row = g * Group + r;
                byte* src = source + (long)row * rowBytes;
                for (int b = 0; b < blocks; b++)
                {
                    byte* target = group + (long)b * BlockBytes;
                    uint* words = (uint*)(target + 32);
                    if (row >= rows)
                    {
                        ((ushort*)target)[r] = 0;
                        for (int p = 0; p < 4; p++) words[p * Group + r] = 0;
                        continue;
                    }
                    byte* block = src + b * 18;
                    ((ushort*)target)[r] = *(ushort*)block;
                    for (int p = 0; p < 4; p++) words[p * Group + r] = ((uint*)(block + 2))[p];
                }
            }
        }
    }

    /// <summary>Row <paramref name="row"/> back in GGUF Q4_0 form (18 bytes per block) into <paramref name="destination"/>.</summary>
    public static void ReadRow(byte* interleaved, int blocks, int row, byte* destination)
    {
        byte* group = interleaved + (long)(row / Group) * blocks * BlockBytes;
        int r = row % Group;
        for (int b = 0; b < blocks; b++)
        {
            byte* source = group + (long)b * BlockBytes;
            byte* block = destination + b * 18;
            *(ushort*)block = ((ushort*)source)[r];
            for (int p = 0; p < 4; p++) ((uint*)(block + 2))[p] = ((uint*)(source + 32))[p * Group + r];
        }
    }

    /// <summary>
    /// y[g·16 + r] = Σ_c w(g·16 + r, c)·x(c) for the groups [<paramref name="firstGroup"/>, <paramref name="endGroup"/>)
    /// and one token's quantised activations: quants <paramref name="xq"/>, per-block scales <paramref name="xd"/>
    /// pre-multiplied by 2^112 (the f16 scales widen as d·2^−112, see <see cref="HalfDot"/>) and integer sums
    /// <paramref name="xs"/>. <paramref name="y"/> must have room for whole groups.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void Dot(byte* interleaved, int blocks, int firstGroup, int endGroup, sbyte* xq, float* xd, int* xs, float* y)
    {
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
                acc0 = Block(p, xq + b * 32, xd[b], xs[b], acc0, nibble, ones, signAndMagnitude);
                acc1 = Block(p + BlockBytes, xq + b * 32 + 32, xd[b + 1], xs[b + 1], acc1, nibble, ones, signAndMagnitude);
            }
            if (b < blocks) acc0 = Block(p, xq + b * 32, xd[b], xs[b], acc0, nibble, ones, signAndMagnitude);
            (acc0 + acc1).Store(y + g * Group);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Block(byte* p, sbyte* x, float xd, int xs, Vector512<float> acc, Vector512<byte> nibble, Vector512<short> ones, Vector512<int> signAndMagnitude)
    {
        var w0 = Vector512.Load(p + 32); var w1 = Vector512.Load(p + 96); var w2 = Vector512.Load(p + 160); var w3 = Vector512.Load(p + 224);
        var c = Avx512BW.MultiplyAddAdjacent(w0 & nibble, Vector512.Create(*(int*)x).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(Vector512.ShiftRightLogical(w0.AsUInt16(), 4).AsByte() & nibble, Vector512.Create(*(int*)(x + 16)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(w1 & nibble, Vector512.Create(*(int*)(x + 4)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(Vector512.ShiftRightLogical(w1.AsUInt16(), 4).AsByte() & nibble, Vector512.Create(*(int*)(x + 20)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(w2 & nibble, Vector512.Create(*(int*)(x + 8)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(Vector512.ShiftRightLogical(w2.AsUInt16(), 4).AsByte() & nibble, Vector512.Create(*(int*)(x + 24)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(w3 & nibble, Vector512.Create(*(int*)(x + 12)).AsSByte());
        c += Avx512BW.MultiplyAddAdjacent(Vector512.ShiftRightLogical(w3.AsUInt16(), 4).AsByte() & nibble, Vector512.Create(*(int*)(x + 28)).AsSByte());
        var sums = Avx512BW.MultiplyAddAdjacent(c, ones) - Vector512.Create(8 * xs);
        var scales = Avx512F.And(Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Vector256.Load((short*)p)), 13), signAndMagnitude).AsSingle();
        return Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(sums), scales * Vector512.Create(xd), acc);
    }

    /// <summary>
    /// <see cref="IntegerTiles"/>' packed planes and f32 scales for the 32 rows of groups <paramref name="group"/> and
    /// <paramref name="group"/> + 1 (a missing second group packs as zeros).
    /// </summary>
    public static void PackTile(byte* interleaved, int blocks, int group, bool secondGroup, byte* packed, float* scales)
    {
        var nibble = Vector512.Create((byte)15);
        for (int half = 0; half < 2; half++)
        {
            byte* source = interleaved + (long)(group + half) * blocks * BlockBytes;
            for (int b = 0; b < blocks; b++, source += BlockBytes)
            {
                byte* target = packed + (long)b * 1024 + half * 64;
                float* s = scales + b * IntegerTiles.Rows + half * Group;
                if (half == 1 && !secondGroup)
                {
                    for (int step = 0; step < 8; step++) Vector512<byte>.Zero.Store(target + step * 128);
                    Vector512<float>.Zero.Store(s);
                    continue;
                }
                HalfDot.WidenF16((ushort*)source, s, Group);
                for (int word = 0; word < 4; word++)
                {
                    var w = Vector512.Load(source + 32 + 64 * word);
                    (w & nibble).Store(target + word * 128);
                    (Vector512.ShiftRightLogical(w.AsUInt16(), 4).AsByte() & nibble).Store(target + (word + 4) * 128);
                }
            }
        }
    }
}
