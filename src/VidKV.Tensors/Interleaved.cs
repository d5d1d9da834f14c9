using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Q4_0, Q8_0, Q4_K and Q6_K weights repacked at load time with 16 rows interleaved (what llama.cpp calls a runtime repack,
/// as its <c>block_q4_0x8</c>). Per group of 16 rows and per block of 32 columns: the 16 f16 scales (32 bytes), then
/// vectors of 64 bytes, vector p holding the p-th 4-byte word of every row's quants — four for Q4_0 (288 bytes in all,
/// the same as 16 GGUF blocks), eight for Q8_0 (544 bytes), whose bytes are stored plus 128 (unsigned). Q4_K keeps
/// its super-blocks of 256 columns (see <see cref="BlockBytes"/>); each of its sub-blocks becomes one block of the
/// prefill tiles.
/// <para>
/// A Q4_0 word's low nibbles are columns 4p … 4p+3 and its high nibbles columns 16+4p …; a Q8_0 word's high and low
/// nibbles are the two planes of <see cref="IntegerTiles"/> for columns 4p …. One AND (or a shift and an AND) gives
/// 16 rows × 4 columns of unsigned nibbles for vpmaddubsw against 4 broadcast activations, and the int16 sums of a
/// block cannot saturate (see <see cref="IntegerTiles"/>). Decoding finishes a block for 16 rows with one vpmaddwd
/// (two for Q8_0), one convert and one FMA, where the row-at-a-time kernels (<see cref="QuantizedDot"/>) spend those
/// per row; the weights stream once, in order. Prefill repacks from this layout into <see cref="IntegerTiles"/>' planes.
/// </para>
/// </summary>
internal static unsafe class Interleaved
{
    /// <summary>Rows per interleaved group.</summary>
    public const int Group = 16;

    /// <summary>Whether this machine repacks <paramref name="type"/> (Q4_0, Q8_0, Q4_K and Q6_K with AVX-512BW).</summary>
    public static bool Supports(GgmlType type) => Avx512BW.IsSupported && type is GgmlType.Q4_0 or GgmlType.Q8_0 or GgmlType.Q4_K or GgmlType.Q6_K;

    /// <summary>Quant words (of 4 bytes) per row and block: 4 for Q4_0, 8 for Q8_0, 32 for a Q4_K super-block.</summary>
    static int Words(GgmlType type) => type switch { GgmlType.Q8_0 => 8, GgmlType.Q4_K => 32, _ => 4 };

    /// <summary>
    /// Bytes of one group's block: 16 f16 scales and a 64-byte vector per quant word. A Q4_K super-block (256 columns)
    /// has 16 f16 d, 16 f16 dmin, its 12 packed scale bytes as 12 vectors of 16 (byte k of every row), then the words:
    /// 2304 bytes, as 16 GGUF blocks.
    /// </summary>
    /// Q6_K is widened to one byte per weight, q ∈ [0, 63] (1.3× its file bytes, to spare decode the unpacking of
    /// low nibbles and 2-bit highs that bounded its row kernel at ~8 GB/s): 16 f16 d, the 16 int8 scales as 16
    /// vectors of 16 (scale k of every row), then 64 word vectors of 4 columns: 4384 bytes.
    public static int BlockBytes(GgmlType type) => type switch { GgmlType.Q4_K => 2304, GgmlType.Q6_K => 4384, _ => 32 + 64 * Words(type) };

    /// <summary>Columns per block of <paramref name="type"/>: 256 for the K-quants, else 32.</summary>
    public static int BlockColumns(GgmlType type) => type is GgmlType.Q4_K or GgmlType.Q6_K ? 256 : 32;

    /// <summary>Offset of the quant words in a block.</summary>
    static int WordsOffset(GgmlType type) => type switch { GgmlType.Q4_K => 256, GgmlType.Q6_K => 288, _ => 32 };

    /// <summary>Bytes of the interleaved copy of <paramref name="rows"/> rows (a whole number of groups) of <paramref name="blocks"/> blocks.</summary>
    public static long Bytes(GgmlType type, int rows, int blocks) => (long)(rows / Group) * blocks * BlockBytes(type);

    /// <summary>Repacks groups [<paramref name="firstGroup"/>, <paramref name="endGroup"/>) of GGUF rows into <paramref name="destination"/>.</summary>
    public static void Repack(GgmlType type, byte* source, int rowBytes, int blocks, byte* destination, int firstGroup, int endGroup)
    {
        int blockBytes = BlockBytes(type), sourceBlock = (int)GgmlTypes.BlockBytes(type);
        for (int g = firstGroup; g < endGroup; g++)
            for (int r = 0; r < Group; r++)
            {
                byte* row = source + (long)(g * Group + r) * rowBytes;
                for (int b = 0; b < blocks; b++)
                    Move(type, row + b * sourceBlock, destination + ((long)g * blocks + b) * blockBytes, r, toInterleaved: true);
            }
    }

    /// <summary>
    /// Row <paramref name="row"/> of a widened Q6_K copy as f32, d·sc·(q − 32) straight from its bytes (prefill's f32
    /// tiles; going back to the GGUF form first cost more than the product saved).
    /// </summary>
    public static void DequantizeRowQ6_K(byte* interleaved, int blocks, int row, float* destination)
    {
        const int BlockBytes = 4384;
        byte* group = interleaved + (long)(row / Group) * blocks * BlockBytes;
        int r = row % Group;
        for (int b = 0; b < blocks; b++)
        {
            byte* source = group + (long)b * BlockBytes;
            float d = (float)BitConverter.UInt16BitsToHalf(((ushort*)source)[r]);
            float* y = destination + 256 * b;
            for (int k = 0; k < 16; k++)
            {
                var scale = Vector128.Create(d * (sbyte)source[32 + 16 * k + r]);
                for (int w = 4 * k; w < 4 * k + 4; w++)
                {
                    uint q = *(uint*)(source + 288 + 64 * w + 4 * r);
                    var values = Vector128.Create((int)(q & 0xFF), (int)(q >> 8 & 0xFF), (int)(q >> 16 & 0xFF), (int)(q >> 24)) - Vector128.Create(32);
                    (Vector128.ConvertToSingle(values) * scale).Store(y + 4 * w);
                }
            }
        }
    }

    /// <summary>Row <paramref name="row"/> back in its GGUF form into <paramref name="destination"/>.</summary>
    public static void ReadRow(GgmlType type, byte* interleaved, int blocks, int row, byte* destination)
    {
        int blockBytes = BlockBytes(type), sourceBlock = (int)GgmlTypes.BlockBytes(type);
        byte* group = interleaved + (long)(row / Group) * blocks * blockBytes;
        for (int b = 0; b < blocks; b++)
            Move(type, destination + b * sourceBlock, group + (long)b * blockBytes, row % Group, toInterleaved: false);
    }

    /// <summary>Copies row <paramref name="r"/>'s share of one block between its GGUF form and the interleaved block.</summary>
    static void Move(GgmlType type, byte* block, byte* target, int r, bool toInterleaved)
    {
        int words = Words(type), wordsAt = WordsOffset(type);
        uint offset = type == GgmlType.Q8_0 ? 0x80808080u : 0;
        // Scales: Q4_K d and dmin at 0 and 32 and its 12 packed scale bytes as vectors at 64; the others one f16 at 0.
        if (type == GgmlType.Q4_K)
        {
            Swap16(block, target + 2 * r, toInterleaved);
            Swap16(block + 2, target + 32 + 2 * r, toInterleaved);
            for (int k = 0; k < 12; k++)
                if (toInterleaved) target[64 + 16 * k + r] = block[4 + k]; else block[4 + k] = target[64 + 16 * k + r];
        }
        else if (type == GgmlType.Q6_K)
        {
            MoveQ6_K(block, target, r, toInterleaved);
            return;
        }
        else Swap16(block, target + 2 * r, toInterleaved);
        uint* packed = (uint*)(block + (type == GgmlType.Q4_K ? 16 : 2));
        uint* vectors = (uint*)(target + wordsAt);
        for (int p = 0; p < words; p++)
            if (toInterleaved) vectors[p * Group + r] = packed[p] ^ offset; else packed[p] = vectors[p * Group + r] ^ offset;
    }

    /// <summary>
    /// Q6_K (GGUF: ql[128], qh[64], scales[16], d): column c of a half (128 columns) takes its low nibble from ql byte
    /// c % 64 (the high nibble for c ≥ 64) and its 2-bit high from qh byte c % 32, shifted by 2·(c / 32) — the layout
    /// of <see cref="Dequantize"/>'s Q6_K. The interleaved block holds q itself, column c at word c / 4.
    /// </summary>
    static void MoveQ6_K(byte* block, byte* target, int r, bool toInterleaved)
    {
        Swap16(block + 208, target + 2 * r, toInterleaved);
        for (int k = 0; k < 16; k++)
            if (toInterleaved) target[32 + 16 * k + r] = block[192 + k]; else block[192 + k] = target[32 + 16 * k + r];
        byte* words = target + WordsOffset(GgmlType.Q6_K);
        if (!toInterleaved) new Span<byte>(block, 192).Clear();
        for (int c = 0; c < 256; c++)
        {
            int half = c / 128, column = c % 128;
            byte* ql = block + 64 * half + column % 64, qh = block + 128 + 32 * half + column % 32;
            int lowShift = column >= 64 ? 4 : 0, highShift = 2 * (column / 32);
            byte* q = words + (c / 4) * 64 + r * 4 + c % 4;
            if (toInterleaved) *q = (byte)(((*ql >> lowShift) & 15) | (((*qh >> highShift) & 3) << 4));
            else
            {
                *ql |= (byte)((*q & 15) << lowShift);
                *qh |= (byte)((*q >> 4) << highShift);
            }
        }
    }

    static void Swap16(byte* gguf, byte* interleaved, bool toInterleaved)
    {
        if (toInterleaved) *(ushort*)interleaved = *(ushort*)gguf; else *(ushort*)gguf = *(ushort*)interleaved;
    }

    /// <summary>
    /// y[g·16 + r] = Σ_c w(g·16 + r, c)·x(c) for the groups [<paramref name="firstGroup"/>, <paramref name="endGroup"/>)
    /// and one token's quantised activations: quants <paramref name="xq"/>, per-block scales <paramref name="xd"/>
    /// pre-multiplied by 2^112 (the f16 scales widen as d·2^−112, see <see cref="HalfDot"/>) and integer sums
    /// <paramref name="xs"/>.
    /// </summary>
    /// <remarks>For Q4_K, <paramref name="blocks"/> counts super-blocks and <paramref name="sums"/> (not
    /// <paramref name="xs"/>) holds d_x·Σq per block of 32, also pre-multiplied by 2^112.</remarks>
    public static void Dot(GgmlType type, byte* interleaved, int blocks, int firstGroup, int endGroup, sbyte* xq, float* xd, int* xs, float* sums, float* y)
    {
        if (type == GgmlType.Q8_0) DotQ8_0(interleaved, blocks, firstGroup, endGroup, xq, xd, xs, y);
        else if (type == GgmlType.Q4_K) DotQ4_K(interleaved, blocks, firstGroup, endGroup, xq, xd, sums, y);
        else if (type == GgmlType.Q6_K) DotQ6_K(interleaved, blocks, firstGroup, endGroup, xq, xd, xs, y);
        else DotQ4_0(interleaved, blocks, firstGroup, endGroup, xq, xd, xs, y);
    }

    /// <summary>
    /// Q4_K: per super-block, the 6-bit scales and mins of all 16 rows come out of the 12 byte vectors at once (the
    /// unpacking of <see cref="Dequantize.ScaleMinK4"/>, lane-wise); each block of 32 columns is 8 vpmaddubsw steps on
    /// nibbles (int16 sums ≤ 30 480, as Q4_0), then Σ += d·sc·d_x·Σq·x − dmin·m·d_x·Σq_x for 16 rows.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static void DotQ4_K(byte* interleaved, int blocks, int firstGroup, int endGroup, sbyte* xq, float* xd, float* sums, float* y)
    {
        const int BlockBytes = 2304;
        var nibble = Vector512.Create((byte)15);
        var ones = Vector512.Create((short)1);
        var signAndMagnitude = Vector512.Create(unchecked((int)0x8FFFFFFF));
        for (int g = firstGroup; g < endGroup; g++)
        {
            byte* p = interleaved + (long)g * blocks * BlockBytes;
            var acc0 = Vector512<float>.Zero;
            var acc1 = Vector512<float>.Zero;
            for (int b = 0; b < blocks; b++, p += BlockBytes)
            {
                var d = Scales(p, signAndMagnitude);
                var dmin = Scales(p + 32, signAndMagnitude);
                byte* s = p + 64;
                // Blocks 2i and 2i+1 share their words (low and high nibbles): each word vector is loaded once for both.
                for (int i = 0; i < 4; i++)
                {
                    var (scale0, min0) = ScaleMin(s, 2 * i);
                    var (scale1, min1) = ScaleMin(s, 2 * i + 1);
                    byte* words = p + 256 + 512 * i;
                    int block = 8 * b + 2 * i;
                    sbyte* x = xq + 32 * block;
                    Vector512<short> c0 = default, c1 = default;
                    for (int w = 0; w < 8; w++)
                    {
                        var v = Vector512.Load(words + 64 * w);
                        c0 += Avx512BW.MultiplyAddAdjacent(v & nibble, Vector512.Create(*(int*)(x + 4 * w)).AsSByte());
                        c1 += Avx512BW.MultiplyAddAdjacent(High(v, nibble), Vector512.Create(*(int*)(x + 32 + 4 * w)).AsSByte());
                    }
                    acc0 = FinishQ4_K(acc0, c0, scale0, min0, d, dmin, xd[block], sums[block], ones);
                    acc1 = FinishQ4_K(acc1, c1, scale1, min1, d, dmin, xd[block + 1], sums[block + 1], ones);
                }
            }
            (acc0 + acc1).Store(y + g * Group);
        }
    }

    /// <summary>
    /// Block <paramref name="j"/>'s 6-bit scale and min of all 16 rows (<see cref="Dequantize.ScaleMinK4"/>, one byte per
    /// row): j &lt; 4 reads bytes j and j+4; j ≥ 4 adds the top bits of j−4 and j.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static (Vector128<byte> Scale, Vector128<byte> Min) ScaleMin(byte* s, int j)
    {
        var six = Vector128.Create((byte)63);
        var four = Vector128.Create((byte)15);
        if (j < 4) return (Vector128.Load(s + 16 * j) & six, Vector128.Load(s + 16 * (j + 4)) & six);
        var low = Vector128.Load(s + 16 * (j + 4));
        var scale = (low & four) | (Vector128.ShiftRightLogical(Vector128.Load(s + 16 * (j - 4)).AsUInt16(), 6).AsByte() & Vector128.Create((byte)3)) << 4;
        var min = (Vector128.ShiftRightLogical(low.AsUInt16(), 4).AsByte() & four) | (Vector128.ShiftRightLogical(Vector128.Load(s + 16 * j).AsUInt16(), 6).AsByte() & Vector128.Create((byte)3)) << 4;
        return (scale, min);
    }

    /// <summary>acc + d·sc·d_x·Σ(q·x) − dmin·m·(d_x·Σq_x) for 16 rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> FinishQ4_K(Vector512<float> acc, Vector512<short> c, Vector128<byte> scale, Vector128<byte> min,
        Vector512<float> d, Vector512<float> dmin, float xd, float sum, Vector512<short> ones)
    {
        var dot = Avx512F.ConvertToVector512Single(Avx512BW.MultiplyAddAdjacent(c, ones));
        var sc = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(scale));
        var m = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(min));
        acc = Avx512F.FusedMultiplyAdd(dot, d * sc * Vector512.Create(xd), acc);
        return Avx512F.FusedMultiplyAddNegated(dmin * m, Vector512.Create(sum), acc);
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

    /// <summary>
    /// Q6_K from its widened copy: q ∈ [0, 63] times an activation sums to at most 16 002 per pair, so int16 sums hold
    /// two steps; each pair of steps goes through vpmaddwd with the row's scale (int16, in both halves of its lane), so
    /// the two 16-column sub-blocks of an activation block add up in int32 and convert once; the −32 comes off as
    /// 32·sc·Σq_x per 16 columns (<paramref name="xs"/>: sums of 16 quants).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static void DotQ6_K(byte* interleaved, int blocks, int firstGroup, int endGroup, sbyte* xq, float* xd, int* xs, float* y)
    {
        const int BlockBytes = 4384;
        var signAndMagnitude = Vector512.Create(unchecked((int)0x8FFFFFFF));
        var lowHalf = Vector512.Create(0xFFFF);
        for (int g = firstGroup; g < endGroup; g++)
        {
            byte* p = interleaved + (long)g * blocks * BlockBytes;
            var acc = Vector512<float>.Zero;
            for (int b = 0; b < blocks; b++, p += BlockBytes)
            {
                var d = Scales(p, signAndMagnitude);
                byte* words = p + 288;
                for (int block = 0; block < 8; block++)
                {
                    Vector512<int> sum = default;
                    for (int sub = 0; sub < 2; sub++)
                    {
                        int k = 2 * block + sub;
                        var scale = Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(p + 32 + 16 * k)));
                        var pairs = (scale & lowHalf) | Vector512.ShiftLeft(scale, 16); // sc in both int16 lanes of each row
                        byte* w = words + 64 * 4 * k;
                        sbyte* x = xq + 256 * b + 16 * k;
                        var c0 = Avx512BW.MultiplyAddAdjacent(Vector512.Load(w), Vector512.Create(*(int*)x).AsSByte())
                            + Avx512BW.MultiplyAddAdjacent(Vector512.Load(w + 64), Vector512.Create(*(int*)(x + 4)).AsSByte());
                        var c1 = Avx512BW.MultiplyAddAdjacent(Vector512.Load(w + 128), Vector512.Create(*(int*)(x + 8)).AsSByte())
                            + Avx512BW.MultiplyAddAdjacent(Vector512.Load(w + 192), Vector512.Create(*(int*)(x + 12)).AsSByte());
                        sum += Avx512BW.MultiplyAddAdjacent(c0, pairs.AsInt16()) + Avx512BW.MultiplyAddAdjacent(c1, pairs.AsInt16())
                            - scale * Vector512.Create(32 * xs[16 * b + k]);
                    }
                    acc = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(sum), d * Vector512.Create(xd[8 * b + block]), acc);
                }
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
    public static void PackTile(GgmlType type, byte* interleaved, int blocks, int group, bool secondGroup, byte* packed, float* scales, float* mins)
    {
        if (type == GgmlType.Q4_K)
        {
            PackTileQ4_K(interleaved, blocks, group, secondGroup, packed, scales, mins);
            return;
        }
        if (type == GgmlType.Q6_K)
        {
            PackTileQ6_K(interleaved, blocks, group, secondGroup, packed, scales);
            return;
        }
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
                    for (int step = 0; step < 8 * IntegerTiles.Planes(type); step++) Vector512<byte>.Zero.Store(target + step * 128);
                    Vector512<float>.Zero.Store(s);
                    continue;
                }
                HalfDot.WidenF16((ushort*)source, s, Group);
                for (int word = 0; word < words; word++)
                {
                    var w = Vector512.Load(source + 32 + 64 * word);
                    if (type == GgmlType.Q8_0 && IntegerTiles.Planes(type) == 1)
                    {
                        w.Store(target + word * 128); // the copy's offset bytes are VNNI's one plane as they are
                        continue;
                    }
                    // Q4_0: low nibbles are step `word`, high nibbles step word + 4. Q8_0: high nibbles are plane 0
                    // (steps 0–7), low nibbles plane 1 (steps 8–15).
                    int lowStep = type == GgmlType.Q8_0 ? word + 8 : word, highStep = type == GgmlType.Q8_0 ? word : word + 4;
                    (w & nibble).Store(target + lowStep * 128);
                    High(w, nibble).Store(target + highStep * 128);
                }
            }
        }
    }

    /// <summary>
    /// <see cref="PackTile"/> for Q6_K (<paramref name="blocks"/> counts super-blocks; VNNI only): each 16 columns
    /// become one <see cref="IntegerTiles"/> block of 4 steps — the widened copy's word vectors as they are — with the
    /// scale d·sc per row.
    /// </summary>
    static void PackTileQ6_K(byte* interleaved, int blocks, int group, bool secondGroup, byte* packed, float* scales)
    {
        const int BlockBytes = 4384;
        for (int half = 0; half < 2; half++)
        {
            byte* source = interleaved + (long)(group + half) * blocks * BlockBytes;
            for (int sb = 0; sb < blocks; sb++, source += BlockBytes)
                for (int k = 0; k < 16; k++)
                {
                    int block = 16 * sb + k;
                    byte* target = packed + (long)block * 512 + half * 64;
                    float* s = scales + block * IntegerTiles.Rows + half * Group;
                    if (half == 1 && !secondGroup)
                    {
                        for (int step = 0; step < 4; step++) Vector512<byte>.Zero.Store(target + step * 128);
                        Vector512<float>.Zero.Store(s);
                        continue;
                    }
                    for (int r = 0; r < Group; r++) s[r] = (float)BitConverter.UInt16BitsToHalf(((ushort*)source)[r]) * (sbyte)source[32 + 16 * k + r];
                    for (int step = 0; step < 4; step++) Vector512.Load(source + 288 + 64 * (4 * k + step)).Store(target + step * 128);
                }
        }
    }

    /// <summary>
    /// <see cref="PackTile"/> for Q4_K (<paramref name="blocks"/> counts super-blocks): each sub-block of 32 columns
    /// becomes one <see cref="IntegerTiles"/> block of nibbles, its scale d·sc and min dmin·m per row.
    /// </summary>
    static void PackTileQ4_K(byte* interleaved, int blocks, int group, bool secondGroup, byte* packed, float* scales, float* mins)
    {
        const int BlockBytes = 2304;
        var nibble = Vector512.Create((byte)15);
        Span<byte> bytes = stackalloc byte[12];
        for (int half = 0; half < 2; half++)
        {
            byte* source = interleaved + (long)(group + half) * blocks * BlockBytes;
            for (int sb = 0; sb < blocks; sb++, source += BlockBytes)
                for (int j = 0; j < 8; j++)
                {
                    int block = 8 * sb + j;
                    byte* target = packed + (long)block * 1024 + half * 64;
                    float* s = scales + block * IntegerTiles.Rows + half * Group, m = mins + block * IntegerTiles.Rows + half * Group;
                    if (half == 1 && !secondGroup)
                    {
                        for (int step = 0; step < 8; step++) Vector512<byte>.Zero.Store(target + step * 128);
                        Vector512<float>.Zero.Store(s);
                        Vector512<float>.Zero.Store(m);
                        continue;
                    }
                    for (int r = 0; r < Group; r++)
                    {
                        for (int k = 0; k < 12; k++) bytes[k] = source[64 + 16 * k + r];
                        var (sc, mn) = Dequantize.ScaleMinK4(j, bytes);
                        s[r] = (float)BitConverter.UInt16BitsToHalf(((ushort*)source)[r]) * sc;
                        m[r] = (float)BitConverter.UInt16BitsToHalf(((ushort*)(source + 32))[r]) * mn;
                    }
                    byte* words = source + 256 + 512 * (j >> 1);
                    for (int w = 0; w < 8; w++)
                    {
                        var v = Vector512.Load(words + 64 * w);
                        ((j & 1) == 0 ? v & nibble : High(v, nibble)).Store(target + w * 128);
                    }
                }
        }
    }
}
