using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Small dense products for attention and page scoring: a row-major C (+)= A·B where A has a handful of rows (query
/// heads × tokens) and each vector load of B feeds all of them, and the transpose that lets keys be B.
/// </summary>
internal static unsafe class SmallMatrix
{
    /// <summary>
    /// destination[c, r] = source[r, c] for r &lt; roundUp(rows, 16), c &lt; columns. Source rows are
    /// <paramref name="columns"/> floats and the source must have room for roundUp(rows, 16) of them: the rows past
    /// <paramref name="rows"/> are set to zero, so whole 16×16 blocks can be transposed in registers.
    /// </summary>
    public static void Transpose(float* source, int rows, int columns, float* destination, int destinationStride)
    {
        int padded = (rows + 15) & ~15;
        new Span<float>(source + rows * columns, (padded - rows) * columns).Clear();
        for (int r = 0; r < padded; r += 16)
            TransposeStrided(source + r * columns, columns, 16, columns, destination + r, destinationStride);
    }

    /// <summary>
    /// destination[c, r] = source[r·sourceStride + c] for r &lt; 16, c &lt; columns, where only the first
    /// <paramref name="rows"/> (≤ 16) source rows are read and the rest are written as zeros: a transpose that reads its
    /// rows in place (e.g. one head's keys inside [tokens, heads × headDim]) and never writes the source.
    /// </summary>
    public static void TransposeStrided(float* source, long sourceStride, int rows, int columns, float* destination, int destinationStride)
    {
        int c = 0;
        if (Avx512F.IsSupported && rows == 16 && sourceStride <= int.MaxValue)
            for (; c + 16 <= columns; c += 16)
                Transpose16(source + c, (int)sourceStride, destination + c * destinationStride, destinationStride);
        for (; c < columns; c++)
        {
            float* column = destination + (long)c * destinationStride;
            for (int r = 0; r < rows; r++) column[r] = source[r * sourceStride + c];
            for (int r = rows; r < 16; r++) column[r] = 0;
        }
    }

    /// <summary>In-register transpose of a 16×16 block of floats: unpack pairs, then pairs of pairs, then two 128-bit lane shuffles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Transpose16(float* source, int sourceStride, float* destination, int destinationStride)
    {
        // Stage 1: t[2i], t[2i+1] interleave rows 2i and 2i+1 (elements 0,1 and 2,3 of each 128-bit lane).
        var t0 = Avx512F.UnpackLow(Vector512.Load(source), Vector512.Load(source + sourceStride));
        var t1 = Avx512F.UnpackHigh(Vector512.Load(source), Vector512.Load(source + sourceStride));
        var t2 = Avx512F.UnpackLow(Vector512.Load(source + 2 * sourceStride), Vector512.Load(source + 3 * sourceStride));
        var t3 = Avx512F.UnpackHigh(Vector512.Load(source + 2 * sourceStride), Vector512.Load(source + 3 * sourceStride));
        var t4 = Avx512F.UnpackLow(Vector512.Load(source + 4 * sourceStride), Vector512.Load(source + 5 * sourceStride));
        var t5 = Avx512F.UnpackHigh(Vector512.Load(source + 4 * sourceStride), Vector512.Load(source + 5 * sourceStride));
        var t6 = Avx512F.UnpackLow(Vector512.Load(source + 6 * sourceStride), Vector512.Load(source + 7 * sourceStride));
        var t7 = Avx512F.UnpackHigh(Vector512.Load(source + 6 * sourceStride), Vector512.Load(source + 7 * sourceStride));
        var t8 = Avx512F.UnpackLow(Vector512.Load(source + 8 * sourceStride), Vector512.Load(source + 9 * sourceStride));
        var t9 = Avx512F.UnpackHigh(Vector512.Load(source + 8 * sourceStride), Vector512.Load(source + 9 * sourceStride));
        var t10 = Avx512F.UnpackLow(Vector512.Load(source + 10 * sourceStride), Vector512.Load(source + 11 * sourceStride));
        var t11 = Avx512F.UnpackHigh(Vector512.Load(source + 10 * sourceStride), Vector512.Load(source + 11 * sourceStride));
        var t12 = Avx512F.UnpackLow(Vector512.Load(source + 12 * sourceStride), Vector512.Load(source + 13 * sourceStride));
        var t13 = Avx512F.UnpackHigh(Vector512.Load(source + 12 * sourceStride), Vector512.Load(source + 13 * sourceStride));
        var t14 = Avx512F.UnpackLow(Vector512.Load(source + 14 * sourceStride), Vector512.Load(source + 15 * sourceStride));
        var t15 = Avx512F.UnpackHigh(Vector512.Load(source + 14 * sourceStride), Vector512.Load(source + 15 * sourceStride));
        // Stage 2: u[4k + c] holds, in 128-bit lane L, rows 4k..4k+3 of column 4L + c.
        var u0 = Avx512F.UnpackLow(t0.AsDouble(), t2.AsDouble()).AsSingle();
        var u1 = Avx512F.UnpackHigh(t0.AsDouble(), t2.AsDouble()).AsSingle();
        var u2 = Avx512F.UnpackLow(t1.AsDouble(), t3.AsDouble()).AsSingle();
        var u3 = Avx512F.UnpackHigh(t1.AsDouble(), t3.AsDouble()).AsSingle();
        var u4 = Avx512F.UnpackLow(t4.AsDouble(), t6.AsDouble()).AsSingle();
        var u5 = Avx512F.UnpackHigh(t4.AsDouble(), t6.AsDouble()).AsSingle();
        var u6 = Avx512F.UnpackLow(t5.AsDouble(), t7.AsDouble()).AsSingle();
        var u7 = Avx512F.UnpackHigh(t5.AsDouble(), t7.AsDouble()).AsSingle();
        var u8 = Avx512F.UnpackLow(t8.AsDouble(), t10.AsDouble()).AsSingle();
        var u9 = Avx512F.UnpackHigh(t8.AsDouble(), t10.AsDouble()).AsSingle();
        var u10 = Avx512F.UnpackLow(t9.AsDouble(), t11.AsDouble()).AsSingle();
        var u11 = Avx512F.UnpackHigh(t9.AsDouble(), t11.AsDouble()).AsSingle();
        var u12 = Avx512F.UnpackLow(t12.AsDouble(), t14.AsDouble()).AsSingle();
        var u13 = Avx512F.UnpackHigh(t12.AsDouble(), t14.AsDouble()).AsSingle();
        var u14 = Avx512F.UnpackLow(t13.AsDouble(), t15.AsDouble()).AsSingle();
        var u15 = Avx512F.UnpackHigh(t13.AsDouble(), t15.AsDouble()).AsSingle();
        // Stages 3 and 4: gather lane L of u[c], u[4+c], u[8+c], u[12+c] into output column 4L + c.
        StoreColumns(u0, u4, u8, u12, destination, destinationStride);
        StoreColumns(u1, u5, u9, u13, destination + destinationStride, destinationStride);
        StoreColumns(u2, u6, u10, u14, destination + 2 * destinationStride, destinationStride);
        StoreColumns(u3, u7, u11, u15, destination + 3 * destinationStride, destinationStride);
    }

    /// <summary>Columns c, 4+c, 8+c, 12+c (at <paramref name="destination"/> + 0, 4, 8, 12 strides) from the four stage-2 vectors of column c.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void StoreColumns(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> e, float* destination, int stride)
    {
        var even = Avx512F.Shuffle4x128(a, b, 0x88); // a0 a2 b0 b2
        var odd = Avx512F.Shuffle4x128(a, b, 0xDD);  // a1 a3 b1 b3
        var evenHigh = Avx512F.Shuffle4x128(c, e, 0x88);
        var oddHigh = Avx512F.Shuffle4x128(c, e, 0xDD);
        Avx512F.Shuffle4x128(even, evenHigh, 0x88).Store(destination);              // lane 0
        Avx512F.Shuffle4x128(odd, oddHigh, 0x88).Store(destination + 4 * stride);   // lane 1
        Avx512F.Shuffle4x128(even, evenHigh, 0xDD).Store(destination + 8 * stride); // lane 2
        Avx512F.Shuffle4x128(odd, oddHigh, 0xDD).Store(destination + 12 * stride);  // lane 3
    }

    /// <summary>Columns of one panel of <see cref="MultiplyPairs"/>.</summary>
    public const int PairPanelColumns = 16;

    /// <summary>
    /// One panel of an integer product with float scales: c[r, j] = rowScale[r] · columnScale[j] · Σ_p a[r, p] · b[p, j]
    /// for r &lt; rows and j &lt; 16, where each a[r, p] is an int32 packing two int16 (low, high) and each b[p, j] is the
    /// int16 pair at b + 32p + 2j. The pairs multiply and add in 32 bits (vpmaddwd: 32 products per 512-bit
    /// instruction, twice the f32 FMA rate), so the caller keeps |Σ| below 2³¹ by its choice of ranges. Results go
    /// to c + r·ldc + j.
    /// </summary>
    public static void MultiplyPairs(int* a, int lda, int rows, short* b, int pairs, float* rowScale, float* columnScale, float* c, int ldc)
    {
        for (int r = 0; r < rows; r += 8)
        {
            int m = Math.Min(8, rows - r);
            if (m == 8) PairBlock<Eight>(a + r * lda, lda, m, b, pairs, rowScale + r, columnScale, c + r * ldc, ldc);
            else if (m > 4) PairBlock<Seven>(a + r * lda, lda, m, b, pairs, rowScale + r, columnScale, c + r * ldc, ldc);
            else PairBlock<Four>(a + r * lda, lda, m, b, pairs, rowScale + r, columnScale, c + r * ldc, ldc);
        }
    }

    /// <summary><see cref="MultiplyPairs"/> for up to <typeparamref name="TLanes"/>.Count rows; missing rows repeat the last.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PairBlock<TLanes>(int* a, int lda, int m, short* b, int pairs, float* rowScale, float* columnScale, float* c, int ldc)
        where TLanes : struct, ILanes
    {
        int* a0 = a, a1 = a + Math.Min(1, m - 1) * lda, a2 = a + Math.Min(2, m - 1) * lda, a3 = a + Math.Min(3, m - 1) * lda;
        int* a4 = a + Math.Min(4, m - 1) * lda, a5 = a + Math.Min(5, m - 1) * lda, a6 = a + Math.Min(6, m - 1) * lda, a7 = a + Math.Min(7, m - 1) * lda;
        if (Vector512.IsHardwareAccelerated && Avx512BW.IsSupported)
        {
            Vector512<int> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
            short* bp = b;
            for (int p = 0; p < pairs; p++, bp += 2 * PairPanelColumns)
            {
                var v = Vector512.Load(bp);
                s0 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a0[p]).AsInt16());
                s1 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a1[p]).AsInt16());
                s2 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a2[p]).AsInt16());
                s3 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a3[p]).AsInt16());
                if (TLanes.Count > 4)
                {
                    s4 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a4[p]).AsInt16());
                    s5 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a5[p]).AsInt16());
                    s6 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a6[p]).AsInt16());
                }
                if (TLanes.Count > 7) s7 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a7[p]).AsInt16());
            }
            var cs = Vector512.Load(columnScale);
            StoreScaled(s0, cs * rowScale[0], c, ldc, 0, m);
            StoreScaled(s1, cs * rowScale[Math.Min(1, m - 1)], c, ldc, 1, m);
            StoreScaled(s2, cs * rowScale[Math.Min(2, m - 1)], c, ldc, 2, m);
            StoreScaled(s3, cs * rowScale[Math.Min(3, m - 1)], c, ldc, 3, m);
            if (TLanes.Count > 4)
            {
                StoreScaled(s4, cs * rowScale[Math.Min(4, m - 1)], c, ldc, 4, m);
                StoreScaled(s5, cs * rowScale[Math.Min(5, m - 1)], c, ldc, 5, m);
                StoreScaled(s6, cs * rowScale[Math.Min(6, m - 1)], c, ldc, 6, m);
            }
            if (TLanes.Count > 7) StoreScaled(s7, cs * rowScale[7], c, ldc, 7, m);
            return;
        }
        if (Avx2.IsSupported)
        {
            // Two passes of 8 columns: sixteen 256-bit accumulators would not leave registers for the operands.
            int* sums = stackalloc int[8 * 8];
            for (int half = 0; half < 2; half++)
            {
                Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
                short* bp = b + 16 * half;
                for (int p = 0; p < pairs; p++, bp += 2 * PairPanelColumns)
                {
                    var v = Vector256.Load(bp);
                    s0 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a0[p]).AsInt16());
                    s1 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a1[p]).AsInt16());
                    s2 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a2[p]).AsInt16());
                    s3 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a3[p]).AsInt16());
                    if (TLanes.Count > 4)
                    {
                        s4 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a4[p]).AsInt16());
                        s5 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a5[p]).AsInt16());
                        s6 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a6[p]).AsInt16());
                    }
                    if (TLanes.Count > 7) s7 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a7[p]).AsInt16());
                }
                s0.Store(sums); s1.Store(sums + 8); s2.Store(sums + 16); s3.Store(sums + 24);
                if (TLanes.Count > 4) { s4.Store(sums + 32); s5.Store(sums + 40); s6.Store(sums + 48); }
                if (TLanes.Count > 7) s7.Store(sums + 56);
                for (int r = 0; r < m; r++)
                    for (int j = 0; j < 8; j++)
                        c[r * ldc + 8 * half + j] = sums[r * 8 + j] * (rowScale[r] * columnScale[8 * half + j]);
            }
            return;
        }
        for (int r = 0; r < m; r++)
            for (int j = 0; j < PairPanelColumns; j++)
            {
                int sum = 0;
                for (int p = 0; p < pairs; p++)
                {
                    int packed = a[r * lda + p];
                    sum += (short)packed * b[p * 2 * PairPanelColumns + 2 * j] + (packed >> 16) * b[p * 2 * PairPanelColumns + 2 * j + 1];
                }
                c[r * ldc + j] = sum * (rowScale[r] * columnScale[j]);
            }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void StoreScaled(Vector512<int> sums, Vector512<float> scale, float* c, int ldc, int row, int m)
    {
        if (row < m) (Vector512.ConvertToSingle(sums) * scale).Store(c + row * ldc);
    }

    interface ILanes { static abstract int Count { get; } }
    struct Four : ILanes { public static int Count => 4; }
    struct Seven : ILanes { public static int Count => 7; }
    struct Eight : ILanes { public static int Count => 8; }

    /// <summary>
    /// c[r, 0..n) = (accumulate ? c[r, 0..n) : 0) + Σ_k a[r, k] · b[k, 0..n) for r &lt; rows: a small row-major
    /// product where each vector load of b feeds the FMAs of up to eight rows of a (the attention lanes).
    /// </summary>
    public static void Multiply(float* a, int lda, int rows, float* b, int ldb, int k, int n, float* c, int ldc, bool accumulate)
    {
        for (int r = 0; r < rows; r += 8)
        {
            int m = Math.Min(8, rows - r);
            if (m == 8) GemmBlock<Eight>(a + r * lda, lda, m, b, ldb, k, n, c + r * ldc, ldc, accumulate);
            else if (m > 4) GemmBlock<Seven>(a + r * lda, lda, m, b, ldb, k, n, c + r * ldc, ldc, accumulate);
            else GemmBlock<Four>(a + r * lda, lda, m, b, ldb, k, n, c + r * ldc, ldc, accumulate);
        }
    }

    /// <summary>
    /// <see cref="Multiply"/> for one block of <paramref name="m"/> ≤ <typeparamref name="TLanes"/>.Count rows;
    /// missing rows repeat the last one (they compute and store the same values). The lane count is a constant per
    /// instantiation, so the unused accumulators of <see cref="Four"/> and <see cref="Seven"/> are compiled away (a GQA
    /// group of 7 query heads, as in Qwen2-0.5B, computes no eighth lane).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void GemmBlock<TLanes>(float* a, int lda, int m, float* b, int ldb, int k, int n, float* c, int ldc, bool accumulate)
        where TLanes : struct, ILanes
    {
        float* a0 = a, a1 = a + Math.Min(1, m - 1) * lda, a2 = a + Math.Min(2, m - 1) * lda, a3 = a + Math.Min(3, m - 1) * lda;
        float* a4 = a + Math.Min(4, m - 1) * lda, a5 = a + Math.Min(5, m - 1) * lda, a6 = a + Math.Min(6, m - 1) * lda, a7 = a + Math.Min(7, m - 1) * lda;
        float* c0 = c, c1 = c + Math.Min(1, m - 1) * ldc, c2 = c + Math.Min(2, m - 1) * ldc, c3 = c + Math.Min(3, m - 1) * ldc;
        float* c4 = c + Math.Min(4, m - 1) * ldc, c5 = c + Math.Min(5, m - 1) * ldc, c6 = c + Math.Min(6, m - 1) * ldc, c7 = c + Math.Min(7, m - 1) * ldc;
        int j = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            // 32 columns at a time: 16 accumulators, so each broadcast of a feeds two FMAs (2 vector + 8 broadcast loads
            // per 16 FMAs, where 16 columns at a time took 1 + 8 per 8); each sum runs over i in the same order.
            for (; j + 32 <= n; j += 32)
            {
                Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
                Vector512<float> u0 = default, u1 = default, u2 = default, u3 = default, u4 = default, u5 = default, u6 = default, u7 = default;
                if (accumulate)
                {
                    s0 = Vector512.Load(c0 + j); s1 = Vector512.Load(c1 + j); s2 = Vector512.Load(c2 + j); s3 = Vector512.Load(c3 + j);
                    u0 = Vector512.Load(c0 + j + 16); u1 = Vector512.Load(c1 + j + 16); u2 = Vector512.Load(c2 + j + 16); u3 = Vector512.Load(c3 + j + 16);
                    if (TLanes.Count > 4)
                    {
                        s4 = Vector512.Load(c4 + j); s5 = Vector512.Load(c5 + j); s6 = Vector512.Load(c6 + j);
                        u4 = Vector512.Load(c4 + j + 16); u5 = Vector512.Load(c5 + j + 16); u6 = Vector512.Load(c6 + j + 16);
                    }
                    if (TLanes.Count > 7) { s7 = Vector512.Load(c7 + j); u7 = Vector512.Load(c7 + j + 16); }
                }
                float* bj = b + j;
                for (int i = 0; i < k; i++, bj += ldb)
                {
                    var v = Vector512.Load(bj);
                    var w = Vector512.Load(bj + 16);
                    var x = Vector512.Create(a0[i]); s0 = Vector512.FusedMultiplyAdd(x, v, s0); u0 = Vector512.FusedMultiplyAdd(x, w, u0);
                    x = Vector512.Create(a1[i]); s1 = Vector512.FusedMultiplyAdd(x, v, s1); u1 = Vector512.FusedMultiplyAdd(x, w, u1);
                    x = Vector512.Create(a2[i]); s2 = Vector512.FusedMultiplyAdd(x, v, s2); u2 = Vector512.FusedMultiplyAdd(x, w, u2);
                    x = Vector512.Create(a3[i]); s3 = Vector512.FusedMultiplyAdd(x, v, s3); u3 = Vector512.FusedMultiplyAdd(x, w, u3);
                    if (TLanes.Count > 4)
                    {
                        x = Vector512.Create(a4[i]); s4 = Vector512.FusedMultiplyAdd(x, v, s4); u4 = Vector512.FusedMultiplyAdd(x, w, u4);
                        x = Vector512.Create(a5[i]); s5 = Vector512.FusedMultiplyAdd(x, v, s5); u5 = Vector512.FusedMultiplyAdd(x, w, u5);
                        x = Vector512.Create(a6[i]); s6 = Vector512.FusedMultiplyAdd(x, v, s6); u6 = Vector512.FusedMultiplyAdd(x, w, u6);
                    }
                    if (TLanes.Count > 7) { x = Vector512.Create(a7[i]); s7 = Vector512.FusedMultiplyAdd(x, v, s7); u7 = Vector512.FusedMultiplyAdd(x, w, u7); }
                }
                s0.Store(c0 + j); s1.Store(c1 + j); s2.Store(c2 + j); s3.Store(c3 + j);
                u0.Store(c0 + j + 16); u1.Store(c1 + j + 16); u2.Store(c2 + j + 16); u3.Store(c3 + j + 16);
                if (TLanes.Count > 4)
                {
                    s4.Store(c4 + j); s5.Store(c5 + j); s6.Store(c6 + j);
                    u4.Store(c4 + j + 16); u5.Store(c5 + j + 16); u6.Store(c6 + j + 16);
                }
                if (TLanes.Count > 7) { s7.Store(c7 + j); u7.Store(c7 + j + 16); }
            }
            for (; j + 16 <= n; j += 16)
            {
                Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
                if (accumulate)
                {
                    s0 = Vector512.Load(c0 + j); s1 = Vector512.Load(c1 + j); s2 = Vector512.Load(c2 + j); s3 = Vector512.Load(c3 + j);
                    if (TLanes.Count > 4) { s4 = Vector512.Load(c4 + j); s5 = Vector512.Load(c5 + j); s6 = Vector512.Load(c6 + j); }
                    if (TLanes.Count > 7) s7 = Vector512.Load(c7 + j);
                }
                float* bj = b + j;
                for (int i = 0; i < k; i++, bj += ldb)
                {
                    var v = Vector512.Load(bj);
                    s0 = Vector512.FusedMultiplyAdd(Vector512.Create(a0[i]), v, s0);
                    s1 = Vector512.FusedMultiplyAdd(Vector512.Create(a1[i]), v, s1);
                    s2 = Vector512.FusedMultiplyAdd(Vector512.Create(a2[i]), v, s2);
                    s3 = Vector512.FusedMultiplyAdd(Vector512.Create(a3[i]), v, s3);
                    if (TLanes.Count > 4)
                    {
                        s4 = Vector512.FusedMultiplyAdd(Vector512.Create(a4[i]), v, s4);
                        s5 = Vector512.FusedMultiplyAdd(Vector512.Create(a5[i]), v, s5);
                        s6 = Vector512.FusedMultiplyAdd(Vector512.Create(a6[i]), v, s6);
                    }
                    if (TLanes.Count > 7) s7 = Vector512.FusedMultiplyAdd(Vector512.Create(a7[i]), v, s7);
                }
                s0.Store(c0 + j); s1.Store(c1 + j); s2.Store(c2 + j); s3.Store(c3 + j);
                if (TLanes.Count > 4) { s4.Store(c4 + j); s5.Store(c5 + j); s6.Store(c6 + j); }
                if (TLanes.Count > 7) s7.Store(c7 + j);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; j + 8 <= n; j += 8)
            {
                Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
                if (accumulate)
                {
                    s0 = Vector256.Load(c0 + j); s1 = Vector256.Load(c1 + j); s2 = Vector256.Load(c2 + j); s3 = Vector256.Load(c3 + j);
                    if (TLanes.Count > 4) { s4 = Vector256.Load(c4 + j); s5 = Vector256.Load(c5 + j); s6 = Vector256.Load(c6 + j); }
                    if (TLanes.Count > 7) s7 = Vector256.Load(c7 + j);
                }
                float* bj = b + j;
                for (int i = 0; i < k; i++, bj += ldb)
                {
                    var v = Vector256.Load(bj);
                    s0 = Vector256.FusedMultiplyAdd(Vector256.Create(a0[i]), v, s0);
                    s1 = Vector256.FusedMultiplyAdd(Vector256.Create(a1[i]), v, s1);
                    s2 = Vector256.FusedMultiplyAdd(Vector256.Create(a2[i]), v, s2);
                    s3 = Vector256.FusedMultiplyAdd(Vector256.Create(a3[i]), v, s3);
                    if (TLanes.Count > 4)
                    {
                        s4 = Vector256.FusedMultiplyAdd(Vector256.Create(a4[i]), v, s4);
                        s5 = Vector256.FusedMultiplyAdd(Vector256.Create(a5[i]), v, s5);
                        s6 = Vector256.FusedMultiplyAdd(Vector256.Create(a6[i]), v, s6);
                    }
                    if (TLanes.Count > 7) s7 = Vector256.FusedMultiplyAdd(Vector256.Create(a7[i]), v, s7);
                }
                s0.Store(c0 + j); s1.Store(c1 + j); s2.Store(c2 + j); s3.Store(c3 + j);
                if (TLanes.Count > 4) { s4.Store(c4 + j); s5.Store(c5 + j); s6.Store(c6 + j); }
                if (TLanes.Count > 7) s7.Store(c7 + j);
            }
        }
        for (; j < n; j++)
            for (int r = 0; r < m; r++)
            {
                float sum = accumulate ? c[r * ldc + j] : 0f;
                for (int i = 0; i < k; i++) sum = MathF.FusedMultiplyAdd(a[r * lda + i], b[(long)i * ldb + j], sum);
                c[r * ldc + j] = sum;
            }
    }
}
