using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Prefill products of Q4_0, Q4_K and Q8_0 weights with 8-bit quantised activations on AVX-512BW, here without VNNI
/// (.NET 10 exposes no vpdpbusd on Zen 4: <c>AvxVnni</c> needs the VEX form Zen 4 lacks and <c>Avx10v1</c> needs
/// AVX10); where the CPU has AVX512_VNNI the same tiles run on <see cref="VnniTiles"/>' emitted kernel instead, and
/// so do Q6_K's (blocks of 16 columns, <see cref="Q6_K"/>).
/// <para>
/// A tile of 32 weight rows is repacked once into unsigned nibble planes laid out for vpmaddubsw: per block of 32
/// columns and per step of 4 columns, one 64-byte vector holds 16 rows × 4 columns (two vectors for the 32 rows). A
/// token's 4 activations at that step are broadcast to every row, and vpmaddubsw (u8 weight × s8 activation, adjacent
/// pairs summed to int16) adds into an int16 accumulator per token and 16 rows. Because the weights are nibbles
/// (≤ 15) and the activations |q| ≤ 127, a pair is at most 3 810 and the 8 steps of a block at most 30 480 —
/// below 32 767, so the accumulators never saturate and no vpmaddwd is needed until the block ends. Then one vpmaddwd
/// with ones gives each row's int32 block sum, the weight offset comes off as offset·Σq_x, and one FMA applies
/// d_w·d_x. Measured on this machine (one thread, 4864 × 896 × 512 tokens, repacking excluded): 2.7× the f32 panel
/// kernel's MACs per second (vpmaddubsw and FMA share the same two pipes; the nibble trick makes one of them
/// do 64 MACs where an FMA does 16).
/// </para>
/// <para>
/// Q4_0 is one plane: q ∈ [0, 15], value = q − 8. Q4_K is one plane per sub-block of 32 with a scale and a min per
/// row (value = d·sc·q − dmin·m). Q8_0 is two planes of its offset byte u = w + 128 = 16·h + l
/// (h, l ∈ [0, 15]): Σ w·x = 16·Σ h·x + Σ l·x − 128·Σ x. Integer sums are exact, so the result equals the
/// quantised-activation reference up to the order of the f32 additions across blocks.
/// </para>
/// </summary>
internal static unsafe class IntegerTiles
{
    /// <summary>Rows per tile: two vectors of 16.</summary>
    public const int Rows = 32;
    /// <summary>Tokens per kernel call; callers pad the activations to a multiple of this with zero rows.</summary>
    public const int Tokens = 4;
    const int Block = 32;

    /// <summary>
    /// Whether this machine runs the integer tiles for <paramref name="type"/>: Q4_0, Q8_0 and Q4_K with AVX-512BW;
    /// Q6_K only on the VNNI kernel (its 6-bit values would saturate vpmaddubsw's int16 sums).
    /// </summary>
    public static bool Supports(GgmlType type) =>
        Avx512BW.IsSupported && (type is GgmlType.Q4_0 or GgmlType.Q8_0 or GgmlType.Q4_K || (type == GgmlType.Q6_K && VnniTiles.IsSupported));

    /// <summary>Columns per tile block: 32, or 16 for Q6_K (a scale per 16 columns).</summary>
    public static int BlockColumns(GgmlType type) => type == GgmlType.Q6_K ? 16 : Block;

    /// <summary>
    /// Planes per weight: 1 for Q4_0 and Q4_K; for Q8_0 2 nibble planes, or 1 plane of offset bytes where the VNNI
    /// kernel runs (<see cref="VnniTiles"/>: int32 sums cannot saturate).
    /// </summary>
    public static int Planes(GgmlType type) => type == GgmlType.Q8_0 && !VnniTiles.IsSupported ? 2 : 1;

    /// <summary>Bytes of one packed tile of <paramref name="blocks"/> blocks.</summary>
    public static int PackedBytes(GgmlType type, int blocks) => blocks * Planes(type) * Rows * BlockColumns(type);

    /// <summary>
    /// Repacks <paramref name="rows"/> ≤ 32 weight rows (row stride <paramref name="rowBytes"/>) into
    /// <paramref name="packed"/> ([block][plane][step][16-row half][16 × 4 bytes]) and their block scales into
    /// <paramref name="scales"/> ([block][32]); Q4_K also its block mins (dmin·m) into <paramref name="mins"/>. Rows past
    /// <paramref name="rows"/> are packed as zeros with scale 0.
    /// </summary>
    public static void Pack(GgmlType type, byte* weights, int rowBytes, int rows, int blocks, byte* packed, float* scales, float* mins)
    {
        if (type == GgmlType.Q6_K)
        {
            PackQ6_K(weights, rowBytes, rows, blocks, packed, scales);
            return;
        }
        int planes = Planes(type), blockBytes = planes * Rows * Block;
        for (int r = 0; r < Rows; r++)
        {
            int half = r >> 4, lane = (r & 15) * 4;
            byte* row = weights + (long)r * rowBytes;
            for (int b = 0; b < blocks; b++)
            {
                // A row's 32 columns of one plane as 8 words of 4 columns: word s goes to step s of its half.
                uint* target = (uint*)(packed + (long)b * blockBytes + half * 64 + lane);
                if (r >= rows)
                {
                    for (int s = 0; s < 8 * planes; s++) target[s * 32] = 0;
                    scales[b * Rows + r] = 0;
                    if (mins != null) mins[b * Rows + r] = 0;
                    continue;
                }
                if (type == GgmlType.Q4_K)
                {
                    // Block b is sub-block b % 8 of super-block b / 8: nibbles of words 8·(j/2) … (low for even j).
                    int j = b % 8;
                    byte* super = row + (b / 8) * 144;
                    var (sc, m) = Dequantize.ScaleMinK4(j, new ReadOnlySpan<byte>(super + 4, 12));
                    scales[b * Rows + r] = (float)BitConverter.UInt16BitsToHalf(*(ushort*)super) * sc;
                    mins[b * Rows + r] = (float)BitConverter.UInt16BitsToHalf(*(ushort*)(super + 2)) * m;
                    var q = Vector256.Load(super + 16 + 32 * (j / 2));
                    var nibbles = ((j & 1) == 0 ? q : Vector256.ShiftRightLogical(q.AsUInt16(), 4).AsByte()) & Vector256.Create((byte)15);
                    var words = nibbles.AsUInt32();
                    for (int s = 0; s < 8; s++) target[s * 32] = words.GetElement(s);
                }
                else if (type == GgmlType.Q4_0)
                {
                    byte* block = row + b * 18;
                    scales[b * Rows + r] = (float)BitConverter.UInt16BitsToHalf(*(ushort*)block);
                    var qs = Vector128.Load(block + 2);
                    var low = (qs & Vector128.Create((byte)15)).AsUInt32();
                    var high = (Vector128.ShiftRightLogical(qs.AsUInt16(), 4).AsByte() & Vector128.Create((byte)15)).AsUInt32();
                    for (int s = 0; s < 4; s++) { target[s * 32] = low.GetElement(s); target[(s + 4) * 32] = high.GetElement(s); }
                }
                else
                {
                    byte* block = row + b * 34;
                    scales[b * Rows + r] = (float)BitConverter.UInt16BitsToHalf(*(ushort*)block);
                    var u = Vector256.Load(block + 2) ^ Vector256.Create((byte)0x80);
                    if (planes == 1)
                    {
                        var bytes = u.AsUInt32();
                        for (int s = 0; s < 8; s++) target[s * 32] = bytes.GetElement(s);
                        continue;
                    }
                    var high = (Vector256.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & Vector256.Create((byte)15)).AsUInt32();
                    var low = (u & Vector256.Create((byte)15)).AsUInt32();
                    for (int s = 0; s < 8; s++) { target[s * 32] = high.GetElement(s); target[(s + 8) * 32] = low.GetElement(s); }
                }
            }
        }
    }

    /// <summary>
    /// <see cref="Pack"/> for Q6_K rows as stored (GGUF: ql[128], qh[64], scales[16], d per 256 columns; the
    /// interleaved copy packs through <see cref="Interleaved.PackTile"/> instead): blocks of 16 columns, q ∈ [0, 63]
    /// one byte each, scale d·sc; the −32 comes off in the kernel as 32·Σq_x.
    /// </summary>
    static void PackQ6_K(byte* weights, int rowBytes, int rows, int blocks, byte* packed, float* scales)
    {
        byte* q = stackalloc byte[256];
        for (int r = 0; r < Rows; r++)
        {
            uint* target = (uint*)(packed + (r >> 4) * 64 + (r & 15) * 4);
            for (int b = 0; b < blocks; b += 16)
            {
                byte* block = weights + (long)r * rowBytes + (b / 16) * 210;
                if (r < rows) Dequantize.Q6_KQuants(block, q);
                float d = r < rows ? (float)BitConverter.UInt16BitsToHalf(*(ushort*)(block + 208)) : 0;
                for (int k = 0; k < 16; k++)
                {
                    scales[(b + k) * Rows + r] = d * (r < rows ? (sbyte)block[192 + k] : 0);
                    for (int s = 0; s < 4; s++) target[(b + k) * 128 + s * 32] = r < rows ? *(uint*)(q + 16 * k + 4 * s) : 0;
                }
            }
        }
    }

    /// <summary>
    /// y[t·ldy + r] (+)= Σ_c w(r, c)·x(t, c) over <paramref name="count"/> blocks, for <paramref name="groups"/> × 4
    /// tokens and the 32 rows of one packed Q4_0 tile (<paramref name="packed"/> and <paramref name="scales"/> at the
    /// first of those blocks). <paramref name="xq"/>: token 0's quants at that block (token t at t·<paramref name="columns"/>);
    /// <paramref name="xd"/>, <paramref name="xs"/>: the tokens' per-block scales and integer quant sums there, token t
    /// at t·<paramref name="blocks"/>. With <paramref name="accumulate"/> the sums add to what y holds.
    /// </summary>
    /// <remarks>
    /// Q4_K runs here too (<paramref name="mins"/> not null): its nibbles carry no offset, and each block's
    /// −dmin·m·Σx comes off as mins ⊙ <paramref name="xsum"/> (d_x·Σq per token and block).
    /// </remarks>
    public static void Q4_0(byte* packed, float* scales, float* mins, sbyte* xq, float* xd, int* xs, float* xsum, int columns, int blocks, int count, int groups, float* y, int ldy, bool accumulate)
    {
        if (VnniTiles.IsSupported)
        {
            VnniTiles.Q4_0(packed, scales, mins, xq, xd, xs, xsum, columns, blocks, count, groups, y, ldy, accumulate);
            return;
        }
        for (int g = 0; g < groups; g++)
        {
            int t = g * Tokens;
            Q4_0Bw(packed, scales, mins, xq + (long)t * columns, xd + t * blocks, xs + t * blocks, xsum == null ? null : xsum + t * blocks, columns, blocks, count, y + (long)t * ldy, ldy, accumulate);
        }
    }

    /// <summary><see cref="Q4_0"/> on AVX-512BW (vpmaddubsw into int16 sums).</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    internal static void Q4_0Bw(byte* packed, float* scales, float* mins, sbyte* xq, float* xd, int* xs, float* xsum, int columns, int blocks, int count, float* y, int ldy, bool accumulate)
    {
        Load(y, ldy, accumulate, out var a0, out var b0, out var a1, out var b1, out var a2, out var b2, out var a3, out var b3);
        var ones = Vector512.Create((short)1);
        nint stride = columns;
        for (int b = 0; b < count; b++, packed += 1024, xq += Block)
        {
            Vector512<short> c0 = default, c1 = default, c2 = default, c3 = default, e0 = default, e1 = default, e2 = default, e3 = default;
            for (int s = 0; s < 8; s++)
            {
                var w = Vector512.Load(packed + s * 128);
                var u = Vector512.Load(packed + s * 128 + 64);
                sbyte* x = xq + 4 * s;
                var v = Vector512.Create(*(int*)x).AsSByte(); c0 += Avx512BW.MultiplyAddAdjacent(w, v); e0 += Avx512BW.MultiplyAddAdjacent(u, v);
                v = Vector512.Create(*(int*)(x + stride)).AsSByte(); c1 += Avx512BW.MultiplyAddAdjacent(w, v); e1 += Avx512BW.MultiplyAddAdjacent(u, v);
                v = Vector512.Create(*(int*)(x + 2 * stride)).AsSByte(); c2 += Avx512BW.MultiplyAddAdjacent(w, v); e2 += Avx512BW.MultiplyAddAdjacent(u, v);
                v = Vector512.Create(*(int*)(x + 3 * stride)).AsSByte(); c3 += Avx512BW.MultiplyAddAdjacent(w, v); e3 += Avx512BW.MultiplyAddAdjacent(u, v);
            }
            var d0 = Vector512.Load(scales + b * Rows);
            var d1 = Vector512.Load(scales + b * Rows + 16);
            if (mins == null)
            {
                Finish(ref a0, ref b0, Avx512BW.MultiplyAddAdjacent(c0, ones), Avx512BW.MultiplyAddAdjacent(e0, ones), d0, d1, xd[b], 8 * xs[b]);
                Finish(ref a1, ref b1, Avx512BW.MultiplyAddAdjacent(c1, ones), Avx512BW.MultiplyAddAdjacent(e1, ones), d0, d1, xd[blocks + b], 8 * xs[blocks + b]);
                Finish(ref a2, ref b2, Avx512BW.MultiplyAddAdjacent(c2, ones), Avx512BW.MultiplyAddAdjacent(e2, ones), d0, d1, xd[2 * blocks + b], 8 * xs[2 * blocks + b]);
                Finish(ref a3, ref b3, Avx512BW.MultiplyAddAdjacent(c3, ones), Avx512BW.MultiplyAddAdjacent(e3, ones), d0, d1, xd[3 * blocks + b], 8 * xs[3 * blocks + b]);
            }
            else
            {
                var m0 = Vector512.Load(mins + b * Rows);
                var m1 = Vector512.Load(mins + b * Rows + 16);
                FinishWithMins(ref a0, ref b0, Avx512BW.MultiplyAddAdjacent(c0, ones), Avx512BW.MultiplyAddAdjacent(e0, ones), d0, d1, m0, m1, xd[b], xsum[b]);
                FinishWithMins(ref a1, ref b1, Avx512BW.MultiplyAddAdjacent(c1, ones), Avx512BW.MultiplyAddAdjacent(e1, ones), d0, d1, m0, m1, xd[blocks + b], xsum[blocks + b]);
                FinishWithMins(ref a2, ref b2, Avx512BW.MultiplyAddAdjacent(c2, ones), Avx512BW.MultiplyAddAdjacent(e2, ones), d0, d1, m0, m1, xd[2 * blocks + b], xsum[2 * blocks + b]);
                FinishWithMins(ref a3, ref b3, Avx512BW.MultiplyAddAdjacent(c3, ones), Avx512BW.MultiplyAddAdjacent(e3, ones), d0, d1, m0, m1, xd[3 * blocks + b], xsum[3 * blocks + b]);
            }
        }
        Store(y, ldy, a0, b0, a1, b1, a2, b2, a3, b3);
    }

    /// <summary>a += Σ·d_w·d_x − m_w·(d_x·Σq_x) for both 16-row halves (Q4_K: scale and min per row and block).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void FinishWithMins(ref Vector512<float> a, ref Vector512<float> b, Vector512<int> low, Vector512<int> high,
        Vector512<float> d0, Vector512<float> d1, Vector512<float> m0, Vector512<float> m1, float xd, float xsum)
    {
        var dx = Vector512.Create(xd);
        var sx = Vector512.Create(xsum);
        a = Avx512F.FusedMultiplyAddNegated(m0, sx, Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(low), d0 * dx, a));
        b = Avx512F.FusedMultiplyAddNegated(m1, sx, Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(high), d1 * dx, b));
    }

    /// <summary>As <see cref="Q4_0"/> for a packed Q8_0 tile (two planes: high nibbles, then low nibbles).</summary>
    public static void Q8_0(byte* packed, float* scales, sbyte* xq, float* xd, int* xs, int columns, int blocks, int count, int groups, float* y, int ldy, bool accumulate)
    {
        if (VnniTiles.IsSupported)
        {
            VnniTiles.Q8_0(packed, scales, xq, xd, xs, columns, blocks, count, groups, y, ldy, accumulate);
            return;
        }
        for (int g = 0; g < groups; g++)
        {
            int t = g * Tokens;
            Q8_0Bw(packed, scales, xq + (long)t * columns, xd + t * blocks, xs + t * blocks, columns, blocks, count, y + (long)t * ldy, ldy, accumulate);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    internal static void Q8_0Bw(byte* packed, float* scales, sbyte* xq, float* xd, int* xs, int columns, int blocks, int count, float* y, int ldy, bool accumulate)
    {
        Load(y, ldy, accumulate, out var a0, out var b0, out var a1, out var b1, out var a2, out var b2, out var a3, out var b3);
        var ones = Vector512.Create((short)1);
        var sixteen = Vector512.Create((short)16);
        nint stride = columns;
        for (int b = 0; b < count; b++, packed += 2048, xq += Block)
        {
            // Both planes in one pass: each broadcast activation meets four weight vectors (high and low plane × two
            // halves); 16 int16 accumulators, 8 outputs and 4 weights fit the 32 registers.
            Vector512<short> c0 = default, c1 = default, c2 = default, c3 = default, e0 = default, e1 = default, e2 = default, e3 = default;
            Vector512<short> l0 = default, l1 = default, l2 = default, l3 = default, m0 = default, m1 = default, m2 = default, m3 = default;
            for (int s = 0; s < 8; s++)
            {
                var w = Vector512.Load(packed + s * 128);
                var u = Vector512.Load(packed + s * 128 + 64);
                var wl = Vector512.Load(packed + 1024 + s * 128);
                var ul = Vector512.Load(packed + 1024 + s * 128 + 64);
                sbyte* x = xq + 4 * s;
                var v = Vector512.Create(*(int*)x).AsSByte();
                c0 += Avx512BW.MultiplyAddAdjacent(w, v); e0 += Avx512BW.MultiplyAddAdjacent(u, v);
                l0 += Avx512BW.MultiplyAddAdjacent(wl, v); m0 += Avx512BW.MultiplyAddAdjacent(ul, v);
                v = Vector512.Create(*(int*)(x + stride)).AsSByte();
                c1 += Avx512BW.MultiplyAddAdjacent(w, v); e1 += Avx512BW.MultiplyAddAdjacent(u, v);
                l1 += Avx512BW.MultiplyAddAdjacent(wl, v); m1 += Avx512BW.MultiplyAddAdjacent(ul, v);
                v = Vector512.Create(*(int*)(x + 2 * stride)).AsSByte();
                c2 += Avx512BW.MultiplyAddAdjacent(w, v); e2 += Avx512BW.MultiplyAddAdjacent(u, v);
                l2 += Avx512BW.MultiplyAddAdjacent(wl, v); m2 += Avx512BW.MultiplyAddAdjacent(ul, v);
                v = Vector512.Create(*(int*)(x + 3 * stride)).AsSByte();
                c3 += Avx512BW.MultiplyAddAdjacent(w, v); e3 += Avx512BW.MultiplyAddAdjacent(u, v);
                l3 += Avx512BW.MultiplyAddAdjacent(wl, v); m3 += Avx512BW.MultiplyAddAdjacent(ul, v);
            }
            var d0 = Vector512.Load(scales + b * Rows);
            var d1 = Vector512.Load(scales + b * Rows + 16);
            Finish(ref a0, ref b0, Combine(c0, l0, sixteen, ones), Combine(e0, m0, sixteen, ones), d0, d1, xd[b], 128 * xs[b]);
            Finish(ref a1, ref b1, Combine(c1, l1, sixteen, ones), Combine(e1, m1, sixteen, ones), d0, d1, xd[blocks + b], 128 * xs[blocks + b]);
            Finish(ref a2, ref b2, Combine(c2, l2, sixteen, ones), Combine(e2, m2, sixteen, ones), d0, d1, xd[2 * blocks + b], 128 * xs[2 * blocks + b]);
            Finish(ref a3, ref b3, Combine(c3, l3, sixteen, ones), Combine(e3, m3, sixteen, ones), d0, d1, xd[3 * blocks + b], 128 * xs[3 * blocks + b]);
        }
        Store(y, ldy, a0, b0, a1, b1, a2, b2, a3, b3);
    }

    /// <summary>
    /// As <see cref="Q4_0"/> for a packed Q6_K tile (VNNI only): blocks of 16 columns, so <paramref name="xd"/> and
    /// <paramref name="xs"/> hold each token's activation scale and Σq per 16 columns (<paramref name="blocks"/> of
    /// them per token) and the offset is 32·Σq.
    /// </summary>
    public static void Q6_K(byte* packed, float* scales, sbyte* xq, float* xd, int* xs, int columns, int blocks, int count, int groups, float* y, int ldy, bool accumulate)
    {
        if (!VnniTiles.IsSupported) throw new InvalidOperationException("Q6_K integer tiles need the VNNI kernel.");
        VnniTiles.Q6_K(packed, scales, xq, xd, xs, columns, blocks, count, groups, y, ldy, accumulate);
    }

    /// <summary>16·Σ high + Σ low as int32 (a Q8_0 block's offset byte from its two nibble planes).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<int> Combine(Vector512<short> high, Vector512<short> low, Vector512<short> sixteen, Vector512<short> ones) =>
        Avx512BW.MultiplyAddAdjacent(high, sixteen) + Avx512BW.MultiplyAddAdjacent(low, ones);

    /// <summary>a += (Σ − bias)·d_w·d_x for both 16-row halves of one token's block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Finish(ref Vector512<float> a, ref Vector512<float> b, Vector512<int> low, Vector512<int> high,
        Vector512<float> d0, Vector512<float> d1, float xd, int bias)
    {
        var offset = Vector512.Create(bias);
        var dx = Vector512.Create(xd);
        a = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(low - offset), d0 * dx, a);
        b = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(high - offset), d1 * dx, b);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Load(float* y, int ldy, bool accumulate, out Vector512<float> a0, out Vector512<float> b0, out Vector512<float> a1, out Vector512<float> b1,
        out Vector512<float> a2, out Vector512<float> b2, out Vector512<float> a3, out Vector512<float> b3)
    {
        if (!accumulate)
        {
            a0 = b0 = a1 = b1 = a2 = b2 = a3 = b3 = default;
            return;
        }
        a0 = Vector512.Load(y); b0 = Vector512.Load(y + 16); y += ldy;
        a1 = Vector512.Load(y); b1 = Vector512.Load(y + 16); y += ldy;
        a2 = Vector512.Load(y); b2 = Vector512.Load(y + 16); y += ldy;
        a3 = Vector512.Load(y); b3 = Vector512.Load(y + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Store(float* y, int ldy, Vector512<float> a0, Vector512<float> b0, Vector512<float> a1, Vector512<float> b1,
        Vector512<float> a2, Vector512<float> b2, Vector512<float> a3, Vector512<float> b3)
    {
        a0.Store(y); b0.Store(y + 16); y += ldy;
        a1.Store(y); b1.Store(y + 16); y += ldy;
        a2.Store(y); b2.Store(y + 16); y += ldy;
        a3.Store(y); b3.Store(y + 16);
    }

    /// <summary>Σq of each run of 16 quants (Q6_K's scales cover 16 columns).</summary>
    public static void BlockSums16(sbyte* quants, int runs, int* sums)
    {
        for (int i = 0; i < runs; i++)
        {
            var q = Vector128.Load(quants + 16 * i);
            sums[i] = Vector128.Sum(Vector128.WidenLower(q).AsInt16() + Vector128.WidenUpper(q).AsInt16());
        }
    }

    /// <summary>Σq of each block of 32 quants (the activations' integer sums the weight offsets need).</summary>
    public static void BlockSums(sbyte* quants, int blocks, int* sums)
    {
        for (int b = 0; b < blocks; b++)
        {
            var q = Vector256.Load(quants + b * Block);
            var pairs = Avx2.MultiplyAddAdjacent(Vector256.Create((byte)1), q);
            sums[b] = Vector256.Sum(Avx2.MultiplyAddAdjacent(pairs, Vector256.Create((short)1)));
        }
    }
}
