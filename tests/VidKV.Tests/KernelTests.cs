using System.Runtime.InteropServices;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// Fast kernels against <see cref="ReferenceKernels"/> on random data of every length 0–256 and large odd sizes.
/// CI runs this class again with AVX-512 and AVX2 switched off so every vector path and tail runs.
/// </summary>
public class KernelTests
{
    public static IEnumerable<int> Lengths => Enumerable.Range(0, 257).Concat([1023, 4099, 10007]);

    static float[] Random(Random rng, int n, float scale = 1f) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale).ToArray();

    /// <summary>Max |a−b| relative to the reference's largest magnitude (normalised error, as ggml's test-backend-ops).</summary>
    static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, float tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        float scale = 1e-30f, err = 0;
        for (int i = 0; i < expected.Length; i++) { scale = Math.Max(scale, Math.Abs(expected[i])); err = Math.Max(err, Math.Abs(expected[i] - actual[i])); }
        Assert.True(err <= tolerance * Math.Max(scale, 1e-3f), $"{what}: max |Δ| {err} against magnitude {scale}");
    }

    /// <summary>A row's maximum (the softmax shift) equals a scalar scan's at every length 1–300 and at 4099, wherever it lies.</summary>
    [Fact]
    public void RowMaximumMatchesAScalarScan()
    {
        var rng = new Random(17);
        foreach (int n in Enumerable.Range(1, 300).Append(4099))
            for (int trial = 0; trial < 3; trial++)
            {
                float[] row = Random(rng, n, 50);
                for (int i = 0; i < n; i++) row[i] -= 60; // all negative: a zero start would hide a bug
                if (trial == 1) row[rng.Next(n)] = 7.25f; // one clear maximum anywhere, the tail included
                float want = row[0];
                foreach (float v in row) want = Math.Max(want, v);
                Assert.Equal(want, VectorMath.Max(row));
            }
        Assert.Throws<ArgumentException>(() => VectorMath.Max(ReadOnlySpan<float>.Empty));
    }

    /// <summary>
    /// <see cref="VectorMath.Exp(ReadOnlySpan{float}, Span{float})"/> against f64 e^x at every length 0–256 and large odd
    /// ones (so the 512-bit, 256-bit and scalar paths all run): within 2 ulp over the normal range, and the edges as
    /// documented (0 below −87.34 and at −∞, +∞ above 88.72, NaN kept). Every lane gives the scalar path's bits.
    /// </summary>
    [Fact]
    public void VectorExpWithinTwoUlp()
    {
        var rng = new Random(21);
        foreach (int n in Lengths.Concat(new[] { 1023, 4099 }))
        {
            float[] x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 175 - 87.3)).ToArray(), y = new float[n];
            VectorMath.Exp(x, y);
            for (int i = 0; i < n; i++)
            {
                double want = Math.Exp(x[i]);
                float ulp = MathF.BitIncrement((float)want) - (float)want;
                Assert.True(Math.Abs(y[i] - want) <= 2 * ulp, $"exp({x[i]:R}) = {y[i]:R}, want {want:R} (n={n}, i={i})");
                Assert.Equal(VectorMath.Exp(x[i]), y[i]);
            }
        }
        // Every float within 2,000 ulp inside both clamps (where 2^n is 2^−126 and 2^128), 16 lanes at a time.
        foreach (float edge in new[] { -87.3365479f, 88.7228394f })
        {
            float[] near = new float[4000], nearExp = new float[near.Length];
            float v = edge;
            for (int i = 0; i < near.Length; i++) { near[i] = v; v = edge < 0 ? MathF.BitIncrement(v) : MathF.BitDecrement(v); }
            VectorMath.Exp(near, nearExp);
            for (int i = 0; i < near.Length; i++) Assert.Equal(VectorMath.Exp(near[i]), nearExp[i]);
        }
        float[] edges = [float.NegativeInfinity, -1000f, -87.34f, 88.73f, 1000f, float.PositiveInfinity, float.NaN, 0f, -0f,
            float.NegativeInfinity, -1000f, -87.34f, 88.73f, 1000f, float.PositiveInfinity, float.NaN, 0f]; // 17: one vector and a tail
        float[] got = new float[edges.Length];
        VectorMath.Exp(edges, got);
        float[] expected = [0f, 0f, 0f, float.PositiveInfinity, float.PositiveInfinity, float.PositiveInfinity, float.NaN, 1f, 1f,
            0f, 0f, 0f, float.PositiveInfinity, float.PositiveInfinity, float.PositiveInfinity, float.NaN, 1f];
        Assert.Equal(expected, got);
    }

    /// <summary>
    /// The softmax's fused pass (<see cref="VectorMath.ExpShiftedSum"/>) at every length 0–256 and large odd ones: each
    /// entry the bits of <see cref="VectorMath.Exp(float)"/> of (x − shift), masked (−∞) entries 0, and the sum within
    /// f32 rounding of the f64 sum of those entries.
    /// </summary>
    [Fact]
    public void ExpShiftedSumMatchesScalar()
    {
        var rng = new Random(22);
        foreach (int n in Lengths)
        {
            float[] x = Enumerable.Range(0, n).Select(i => i % 11 == 5 ? float.NegativeInfinity : (float)(rng.NextDouble() * 40 - 30)).ToArray();
            float shift = n == 0 ? 0 : x.Max(), total = 0;
            float[] row = (float[])x.Clone();
            total = VectorMath.ExpShiftedSum(row, shift);
            double want = 0;
            for (int i = 0; i < n; i++)
            {
                float e = VectorMath.Exp(x[i] - shift);
                Assert.Equal(e, row[i]);
                want += e;
            }
            Assert.True(Math.Abs(total - want) <= 1e-6 * Math.Max(want, 1e-30) * Math.Max(1, Math.Log2(n + 1)), $"n={n}: sum {total:R}, want {want:R}");
        }
    }

    /// <summary>
    /// <see cref="VectorMath.ExpScaledShiftedSum"/> with shift = scale·max(x) gives the bits of scaling the row first
    /// (x·scale rounded) and then <see cref="VectorMath.ExpShiftedSum"/> with the max of the scaled row, as the
    /// bidirectional attention's softmax relies on, at every length 0–256 and large odd ones, −∞ entries included.
    /// </summary>
    [Fact]
    public void ExpScaledShiftedSumMatchesScalingFirst()
    {
        var rng = new Random(24);
        foreach (float scale in new[] { 0.125f, 1f / MathF.Sqrt(72), 0.37f })
            foreach (int n in Lengths)
            {
                float[] x = Enumerable.Range(0, n).Select(i => i % 13 == 7 ? float.NegativeInfinity : (float)(rng.NextDouble() * 200 - 120)).ToArray();
                float[] scaled = x.Select(v => v * scale).ToArray();
                float[] row = (float[])x.Clone();
                float got = VectorMath.ExpScaledShiftedSum(row, scale, n == 0 ? 0 : scale * x.Max());
                float want = VectorMath.ExpShiftedSum(scaled, n == 0 ? 0 : scaled.Max());
                Assert.Equal(scaled, row);
                Assert.Equal(want, got);
            }
    }

    /// <summary>
    /// <see cref="VectorMath.ExpScaledShiftedSumToBf16"/> (the bf16 attention's softmax) returns the bits of
    /// <see cref="VectorMath.ExpScaledShiftedSum"/>'s sum, writes its exponentials rounded by <see cref="Quantize.ToBF16"/>
    /// and leaves the row alone, at every length 0–256 and large odd ones, −∞ entries included.
    /// </summary>
    [Fact]
    public unsafe void ExpToBf16IsTheRoundedExp()
    {
        var rng = new Random(25);
        foreach (int n in Lengths)
        {
            float[] x = Enumerable.Range(0, n).Select(i => i % 11 == 3 ? float.NegativeInfinity : (float)(rng.NextDouble() * 60 - 40)).ToArray();
            float shift = n == 0 ? 0 : 0.125f * x.Max();
            float[] row = (float[])x.Clone();
            var rounded = new ushort[n + 1];
            float got;
            fixed (ushort* p = rounded) got = VectorMath.ExpScaledShiftedSumToBf16(row, 0.125f, shift, p);
            float[] exp = (float[])x.Clone();
            float want = VectorMath.ExpScaledShiftedSum(exp, 0.125f, shift);
            Assert.Equal(x, row);
            Assert.Equal(want, got);
            Assert.Equal(exp.Select(Quantize.ToBF16), rounded.Take(n));
            Assert.Equal(0, rounded[n]);
        }
    }

    /// <summary>
    /// The vectorised f32 → bf16 rounding of the BF16 prefill (<see cref="Bf16Tiles.Round"/>) gives
    /// <see cref="Quantize.ToBF16"/>'s bits at every length 0–256 and large odd ones, ties, NaN, ±∞ and subnormals included.
    /// </summary>
    [Fact]
    public unsafe void Bf16RoundingMatchesScalar()
    {
        var rng = new Random(23);
        foreach (int n in Lengths)
        {
            var x = new float[n];
            for (int i = 0; i < n; i++)
                x[i] = (i % 7) switch
                {
                    0 => BitConverter.Int32BitsToSingle(rng.Next()),                          // any bits, NaN and subnormals too
                    1 => BitConverter.Int32BitsToSingle((rng.Next(1 << 15) << 16) | 0x8000),  // exact ties
                    2 => i % 3 == 0 ? float.PositiveInfinity : float.NegativeInfinity,
                    _ => (float)(rng.NextDouble() * 2 - 1),
                };
            var got = new ushort[n];
            fixed (float* px = x) fixed (ushort* pg = got) Bf16Tiles.Round(px, pg, n);
            for (int i = 0; i < n; i++) Assert.True(Quantize.ToBF16(x[i]) == got[i], $"n={n}, i={i}: {x[i]:R} -> {got[i]:X4}, want {Quantize.ToBF16(x[i]):X4}");
        }
    }

    /// <summary>The byte distance of the unchanged-frame check equals the scalar sum at every length (vector tails), also a 720p-sized row at the extremes.</summary>
    [Fact]
    public void SumAbsoluteDifferencesAtEveryLength()
    {
        var rng = new Random(17);
        foreach (int n in Lengths.Append(1280 * 720 * 3 + 5))
        {
            byte[] a = new byte[n], b = new byte[n];
            rng.NextBytes(a);
            rng.NextBytes(b);
            for (int i = 0; i < n; i += 7) b[i] = a[i]; // some equal bytes
            Assert.Equal(ReferenceKernels.SumAbsoluteDifferences(a, b), Kernels.SumAbsoluteDifferences(a, b));
        }
        byte[] zeros = new byte[2_764_805], full = new byte[zeros.Length];
        Array.Fill(full, (byte)255);
        Assert.Equal(255L * zeros.Length, Kernels.SumAbsoluteDifferences(zeros, full));
        Assert.Throws<ArgumentException>(() => Kernels.SumAbsoluteDifferences(zeros, new byte[3]));
    }

    [Fact]
    public void RmsNormAndSwiGluAtEveryLength()
    {
        var rng = new Random(1);
        foreach (int n in Lengths)
        {
            float[] x = Random(rng, n, 3), w = Random(rng, n), up = Random(rng, n, 2);
            float[] want = new float[n], got = new float[n];
            if (n > 0)
            {
                ReferenceKernels.RmsNorm(x, w, 1e-5f, want);
                Kernels.RmsNorm(x, w, 1e-5f, got);
                AssertClose(want, got, 1e-5f, $"rmsnorm n={n}");
            }

            ReferenceKernels.SwiGlu(x, up, want);
            Kernels.SwiGlu(x, up, got);
            AssertClose(want, got, 1e-5f, $"swiglu n={n}");
            Kernels.SwiGlu(x, up, x); // in place, as the decoder calls it
            AssertClose(want, x, 1e-5f, $"swiglu in place n={n}");
        }
        foreach (int n in new[] { 1023, 1024, 1025, 4864, 9999 }) // across the kernel's internal chunks
        {
            float[] x = Random(rng, n, 8), up = Random(rng, n, 2), want = new float[n];
            ReferenceKernels.SwiGlu(x, up, want);
            Kernels.SwiGlu(x, up, x);
            AssertClose(want, x, 1e-5f, $"swiglu in place n={n}");
        }
    }

    [Theory]
    [InlineData(RopeMode.Normal)]
    [InlineData(RopeMode.NeoX)]
    public void RopeMatchesReference(RopeMode mode)
    {
        var rng = new Random((int)mode);
        foreach (int headDim in new[] { 2, 8, 16, 64, 80, 128 })
        {
            foreach (int position in new[] { 0, 1, 7, 511, 4095, 32767 })
            {
                int ropeDims = headDim == 80 ? 64 : headDim; // partial rotary: the tail stays as it is
                float[] want = Random(rng, headDim), got = (float[])want.Clone();
                ReferenceKernels.Rope(want, position, ropeDims, 1e6f, mode);
                Kernels.Rope(got, position, ropeDims, 1e6f, mode);
                // Like ggml, the kernel advances theta by repeated f32 multiplication (for parity); the drift grows with position.
                AssertClose(want, got, position >= 512 ? 5e-3f : 2e-4f, $"rope {mode} d={headDim} pos={position}");
            }
        }
    }

    public static TheoryData<GgmlType> MatMulTypes => new() { GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K, GgmlType.Q5_K };

    /// <summary>
    /// A prefill of three products that share their input (odd row counts, so claimed 32-row tiles straddle the parts),
    /// with two threads claiming tiles, gives every row the bits of each product alone on one thread.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.F32)]
    public void ClaimedTilesGiveEachRowItsBits(GgmlType type) =>
        FusedOnTwoThreadsGiveTheBitsOfEachAloneOnOne(new Random(77), type, 96, [40, 24, 57], [70], prepare: null);

    /// <summary>
    /// Prefill tiles packed once at load (<see cref="WeightMatrix.PackTiles"/>) give the bits of packing each tile per
    /// call: three matrices of 40, 24 and 57 rows fused into one product (the second and third start inside a tile of
    /// 32, the last ends in a short tile) on 2 threads, against each matrix alone, unpacked, on 1; also a product of
    /// fewer than 4 tokens, which reads the stored rows. Rows of 4096 columns take the tokens in blocks of 64 (the last
    /// of 5: a short group), so threads claim (block, tile) items.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q4_0, 512)]
    [InlineData(GgmlType.Q8_0, 512)]
    [InlineData(GgmlType.Q4_K, 512)]
    [InlineData(GgmlType.Q6_K, 512)]
    [InlineData(GgmlType.Q8_0, 4096)]
    [InlineData(GgmlType.Q4_K, 4096)]
    [InlineData(GgmlType.BF16, 512)]
    [InlineData(GgmlType.BF16, 2048)]
    public void TilesPackedAtLoadGiveTheBitsOfPackingPerCall(GgmlType type, int columns)
    {
        Assert.Equal(64, columns == 4096 ? WeightMatrix.TokenBlockBytes / columns : columns == 2048 ? WeightMatrix.TokenBlockBytes / columns / 2 : 64);
        bool runs = type == GgmlType.BF16 ? Bf16Tiles.Handles(columns) && System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated
            : System.Runtime.Intrinsics.X86.Avx512BW.IsSupported && (type != GgmlType.Q6_K || VnniTiles.IsSupported);
        // BF16: the second matrix's first tile straddles a claimed tile, so that part of it packs from the stored rows.
        FusedOnTwoThreadsGiveTheBitsOfEachAloneOnOne(new Random(91), type, columns, type == GgmlType.BF16 ? [40, 40, 57] : [40, 24, 57], [70, 3, 261],
            prepare: (m, pool) => Assert.Equal(runs, m.PackTiles(pool)));
    }

    /// <summary>
    /// An F16 matrix packed into bf16 tiles at load (<see cref="WeightMatrix.PackTiles"/> with roundF16ToBf16, a vision
    /// tower's default) gives the bits of a BF16 matrix of its rows rounded to bf16, fused and claimed on 2 threads
    /// (2048 columns: token blocks of 64; the second matrix's first tile straddles a claimed tile and packs from the
    /// stored rows, rounding them the same way) against each alone on 1; without the kernel it does not pack. Fewer
    /// than 4 tokens read the stored f16 rows, exactly.
    /// </summary>
    [Theory]
    [InlineData(98)] // rows rounded with a scalar tail
    [InlineData(512)]
    [InlineData(2048)]
    public void F16RoundedAtLoadGivesTheBitsOfItsBf16Rows(int columns)
    {
        bool runs = Bf16Tiles.Handles(columns) && System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated;
        FusedOnTwoThreadsGiveTheBitsOfEachAloneOnOne(new Random(95), GgmlType.F16, columns, [40, 40, 57], [70, 261],
            prepare: (m, pool) => Assert.Equal(runs, m.PackTiles(pool, roundF16ToBf16: true)), aloneType: runs ? GgmlType.BF16 : null);
        FusedOnTwoThreadsGiveTheBitsOfEachAloneOnOne(new Random(97), GgmlType.F16, columns, [40, 24, 57], [3],
            prepare: (m, pool) => Assert.Equal(runs, m.PackTiles(pool, roundF16ToBf16: true)));
    }

    /// <summary>
    /// Prefill from the interleaved decode copy (Q8_0's VNNI kernel reads its groups as they are; the other types
    /// repack each tile) gives the bits of the stored rows: matrices of 48, 16 and 80 rows fused into one product (a
    /// claimed tile holds the first's last 16 rows and the second's only 16), 2 threads against 1.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q6_K)]
    public void InterleavedPrefillGivesTheBitsOfTheStoredRows(GgmlType type) =>
        FusedOnTwoThreadsGiveTheBitsOfEachAloneOnOne(new Random(93), type, 512, [48, 16, 80], [5, 70, 261],
            prepare: (m, pool) => Assert.Equal(Interleaved.Supports(type), m.Interleave(pool)));

    /// <summary>
    /// Three matrices of random rows (made ready by <paramref name="prepare"/>: packed, interleaved, or as stored)
    /// multiplied as one fused product on 2 threads give, for every token count, the bits of each stored matrix alone on 1.
    /// </summary>
    /// <param name="aloneType">
    /// the type of the matrices each product alone runs on, their rows the stored rows read back and stored again in it
    /// (F16 rows rounded to BF16); null: the stored rows as they are
    /// </param>
    static unsafe void FusedOnTwoThreadsGiveTheBitsOfEachAloneOnOne(Random rng, GgmlType type, int columns, int[] rows, int[] tokenCounts, Action<WeightMatrix, WorkerPool>? prepare,
        GgmlType? aloneType = null)
    {
        int rowBytes = (int)GgmlTypes.RowBytes(type, columns), aloneBytes = (int)GgmlTypes.RowBytes(aloneType ?? type, columns);
        var bytes = rows.Select(r =>
        {
            var b = new byte[rowBytes * r];
            var w = Random(rng, r * columns);
            for (int i = 0; i < r; i++) Quantize.Row(type, w.AsSpan(i * columns, columns), b.AsSpan(i * rowBytes));
            return b;
        }).ToArray();
        var aloneRows = bytes.Select((b, m) =>
        {
            if (aloneType is not { } restored) return b;
            var copy = new byte[aloneBytes * rows[m]];
            var row = new float[columns];
            for (int i = 0; i < rows[m]; i++)
            {
                Dequantize.Row(type, b.AsSpan(i * rowBytes, rowBytes), row);
                Quantize.Row(restored, row, copy.AsSpan(i * aloneBytes));
            }
            return copy;
        }).ToArray();
        fixed (byte* p0 = bytes[0], p1 = bytes[1], p2 = bytes[2], a0 = aloneRows[0], a1 = aloneRows[1], a2 = aloneRows[2])
        {
            byte*[] pointers = [p0, p1, p2], alonePointers = [a0, a1, a2];
            var ready = Enumerable.Range(0, 3).Select(i => new WeightMatrix("r" + i, type, rows[i], columns, pointers[i])).ToArray();
            var stored = Enumerable.Range(0, 3).Select(i => new WeightMatrix("s" + i, aloneType ?? type, rows[i], columns, alonePointers[i])).ToArray();
            try
            {
                using var two = new WorkerPool(2);
                using var one = new WorkerPool(1);
                if (prepare != null) foreach (var m in ready) prepare(m, two);
                foreach (int tokens in tokenCounts)
                {
                    float[] x = Random(rng, tokens * columns);
                    var fused = rows.Select(r => new float[tokens * r]).ToArray();
                    WeightMatrix.MatMul(x, tokens, ready[0], fused[0], ready[1], fused[1], ready[2], fused[2], two);
                    for (int i = 0; i < 3; i++)
                    {
                        var alone = new float[tokens * rows[i]];
                        stored[i].MatMul(x, tokens, alone, one);
                        Assert.Equal(alone, fused[i]);
                    }
                }
            }
            finally
            {
                foreach (var m in ready) m.Dispose();
            }
        }
    }

    [Theory]
    [MemberData(nameof(MatMulTypes))]
    public unsafe void MatMulMatchesReference(GgmlType type)
    {
        var rng = new Random((int)type);
        int block = GgmlTypes.BlockSize(type) == 1 ? 1 : 32;
        var shapes = GgmlTypes.BlockSize(type) == 256
            ? new[] { (1, 256, 1), (17, 512, 3), (5, 768, 7), (33, 256, 4), (3, 1280, 9), (32, 256, 261) }
            : new[] { (1, 32, 1), (17, 64, 3), (33, 96, 1), (5, 32 * 37, 7), (129, 256, 2), (3, 1024 + block, 5), (40, 128, 8), (7, 64, 4), (35, 160, 13), (9, 64 * 19, 1), (64, 64, 261) }; // 261 tokens: more than one call's 64 groups
        foreach (var (rows, columns, tokens) in shapes)
        {
            float[] weights = Random(rng, rows * columns);
            var bytes = new byte[GgmlTypes.RowBytes(type, columns) * rows];
            if (Quantize.CanQuantize(type))
            {
                for (int r = 0; r < rows; r++)
                    Quantize.Row(type, weights.AsSpan(r * columns, columns), bytes.AsSpan((int)(r * GgmlTypes.RowBytes(type, columns))));
            }
            else RandomKQuantBlocks(rng, type, bytes);
            fixed (byte* p = bytes)
            {
                var w = new WeightMatrix("w", type, rows, columns, p);
                float[] x = Random(rng, tokens * columns), want = new float[tokens * rows], got = new float[tokens * rows];
                if (w.QuantizesActivations(tokens))
                {
                    ReferenceKernels.MatMulQuantizedActivations(w, x, tokens, want);
                    w.MatMul(x, tokens, got);
                    AssertClose(want, got, 1e-5f, $"{type} [{rows}x{columns}] x {tokens} vs quantised-activation reference");
                    // The stated bound against exact f32: |Δ| ≤ Σ_blocks Σ|w| · max|x_block| / 254 (plus f16 rounding of the scale).
                    AssertWithinBound(w, x, tokens, got, (row, xt) =>
                    {
                        double bound = 0;
                        for (int b = 0; b < columns / 32; b++)
                        {
                            double amax = 0, wsum = 0;
                            for (int j = 0; j < 32; j++) { amax = Math.Max(amax, Math.Abs(xt[32 * b + j])); wsum += Math.Abs(row[32 * b + j]); }
                            bound += wsum * amax / 254 * 1.002;
                        }
                        return bound + 1e-5;
                    });
                }
                else if (w.RoundsActivationsToBF16(tokens))
                {
                    ReferenceKernels.MatMulBF16Activations(w, x, tokens, want);
                    w.MatMul(x, tokens, got);
                    AssertClose(want, got, 1e-5f, $"{type} [{rows}x{columns}] x {tokens} vs bf16-activation reference");
                    // The stated bound against exact f32: each activation moves by at most 2^-9 of itself.
                    AssertWithinBound(w, x, tokens, got, (row, xt) =>
                    {
                        double sum = 0;
                        for (int j = 0; j < columns; j++) sum += Math.Abs((double)row[j] * xt[j]);
                        return sum / 512 * 1.001 + 1e-6;
                    });
                }
                else
                {
                    ReferenceKernels.MatMul(w, x, tokens, want);
                    w.MatMul(x, tokens, got);
                    AssertClose(want, got, 1e-5f, $"{type} [{rows}x{columns}] x {tokens}");
                }
            }
        }
    }

    /// <summary>
    /// |exact f32 product − <paramref name="got"/>| ≤ <paramref name="bound"/>(dequantised row, token's activations)
    /// for every row and token: the error a kernel's rounding of its activations is documented to stay within.
    /// </summary>
    static void AssertWithinBound(WeightMatrix w, float[] x, int tokens, float[] got, Func<float[], float[], double> bound)
    {
        int rows = w.Rows, columns = w.Columns;
        var exact = new float[tokens * rows];
        ReferenceKernels.MatMul(w, x, tokens, exact);
        var row = new float[columns];
        for (int r = 0; r < rows; r++)
        {
            w.DequantizeRow(r, row);
            for (int t = 0; t < tokens; t++)
            {
                double limit = bound(row, x.AsSpan(t * columns, columns).ToArray());
                Assert.True(Math.Abs(exact[t * rows + r] - got[t * rows + r]) <= limit, $"{w.Type} row {r} token {t}: error above the stated bound {limit}");
            }
        }
    }

    /// <summary>
    /// The integer prefill tiles (<see cref="IntegerTiles"/>) at the edges of their int16 accumulators: every weight code
    /// at an extreme (Q4_0 nibbles 0/15, Q8_0 bytes −128/127) and every activation quantised to ±127, signs arranged so
    /// whole blocks add up in one direction. A saturating vpmaddubsw or an overflowing int16 sum would show as a wrong
    /// result; rows and tokens that are not whole tiles or groups take the buffered path.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q8_0)]
    public unsafe void IntegerPrefillTilesAtExtremeCodes(GgmlType type)
    {
        var rng = new Random(11);
        foreach (var (rows, columns, tokens) in new[] { (64, 256, 8), (35, 96, 6), (32, 32 * 21, 5) })
        {
            int blocks = columns / 32, blockBytes = (int)GgmlTypes.RowBytes(type, 32);
            var bytes = new byte[blocks * blockBytes * rows];
            for (int r = 0; r < rows; r++)
                for (int b = 0; b < blocks; b++)
                {
                    int at = (r * blocks + b) * blockBytes;
                    BitConverter.TryWriteBytes(bytes.AsSpan(at), BitConverter.HalfToUInt16Bits((Half)(0.5 + rng.NextDouble())));
                    int pattern = rng.Next(3); // 0: all high, 1: all low, 2: mixed
                    for (int j = 0; j < blockBytes - 2; j++)
                    {
                        bool high = pattern == 0 || (pattern == 2 && rng.Next(2) == 0);
                        bytes[at + 2 + j] = type == GgmlType.Q4_0 ? (byte)(high ? 0xFF : 0x00) : (byte)(high ? 127 : 0x80);
                    }
                }
            // |x| equal within a block (every code ±127), one sign for most blocks.
            float[] x = new float[tokens * columns];
            for (int i = 0; i < x.Length; i++) x[i] = (i / 32 % 3 == 2 && rng.Next(2) == 0 ? -1f : 1f) * (1 + i / 32 % 5);
            fixed (byte* p = bytes)
            {
                var w = new WeightMatrix("w", type, rows, columns, p);
                Assert.True(w.QuantizesActivations(tokens));
                float[] want = new float[tokens * rows], got = new float[tokens * rows];
                ReferenceKernels.MatMulQuantizedActivations(w, x, tokens, want);
                w.MatMul(x, tokens, got);
                AssertClose(want, got, 1e-6f, $"{type} [{rows}x{columns}] x {tokens} at extreme codes");
            }
        }
    }

    /// <summary>
    /// The VNNI tile kernel (<see cref="VnniTiles"/>, emitted machine code) against the AVX-512BW one on the same random
    /// tiles: the same integers and the same float operations in the same order, so equal bit for bit — Q4_0 and Q4_K
    /// (mins) on one tile, Q8_0's one plane of offset bytes against its two nibble planes; 1–13 blocks, 1–3 groups of 4
    /// tokens (the kernel walks the groups itself), with and without accumulation, quants extreme and random. Where the
    /// kernel cannot run (no AVX512_VNNI, not Linux x86-64, or <c>VIDKV_EMIT=0</c>) the test is reported as skipped with
    /// the reason; the tile products then dispatch to the AVX-512BW kernel, which the other tests hold to the reference.
    /// </summary>
    [EmittedKernelTheory("avx512_vnni")]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q8_0)]
    public unsafe void VnniTilesEqualAvx512BwBitForBit(GgmlType type)
    {
        Assert.True(VnniTiles.IsSupported, "the CPU has AVX512_VNNI but the vpdpbusd kernels were not installed");
        Assert.Equal(1, IntegerTiles.Planes(type));
        var rng = new Random(13 + (int)type);
        foreach (var (count, groups) in new[] { (1, 1), (2, 3), (7, 1), (13, 2) })
            foreach (bool accumulate in new[] { false, true })
            {
                int tokens = 4 * groups, columns = 32 * (count + 3), blocks = columns / 32, ldy = 37; // the tile covers blocks 0 … count−1 of wider rows
                var packed = new byte[count * 1024];
                rng.NextBytes(packed);
                if (type != GgmlType.Q8_0) for (int i = 0; i < packed.Length; i++) packed[i] &= 15;
                float[] scales = Random(rng, count * 32), mins = Random(rng, count * 32), xd = Random(rng, tokens * blocks), xsum = Random(rng, tokens * blocks);
                var xq = new sbyte[tokens * columns];
                for (int i = 0; i < xq.Length; i++) xq[i] = (sbyte)(i % 97 == 0 ? -127 : i % 89 == 0 ? 127 : rng.Next(-127, 128));
                var xs = new int[tokens * blocks];
                fixed (sbyte* q = xq) fixed (int* s = xs) IntegerTiles.BlockSums(q, tokens * blocks, s);
                float[] initial = Random(rng, tokens * ldy), want = (float[])initial.Clone(), got = (float[])initial.Clone();
                // Q8_0's two planes for the AVX-512BW kernel: high nibbles at steps 0–7, low nibbles at steps 8–15 of each block.
                var planes = new byte[count * 2048];
                for (int b = 0; b < count; b++)
                    for (int i = 0; i < 1024; i++)
                    {
                        planes[b * 2048 + i] = (byte)(packed[b * 1024 + i] >> 4);
                        planes[b * 2048 + 1024 + i] = (byte)(packed[b * 1024 + i] & 15);
                    }
                fixed (byte* pk = packed, pl = planes)
                fixed (float* sc = scales, mn = mins, d = xd, sum = xsum, w = want, g = got)
                fixed (sbyte* q = xq)
                fixed (int* s = xs)
                {
                    float* m = type == GgmlType.Q4_K ? mn : null;
                    for (int group = 0; group < groups; group++)
                    {
                        int t = 4 * group;
                        if (type == GgmlType.Q8_0) IntegerTiles.Q8_0Bw(pl, sc, q + t * columns, d + t * blocks, s + t * blocks, columns, blocks, count, w + t * ldy, ldy, accumulate);
                        else IntegerTiles.Q4_0Bw(pk, sc, m, q + t * columns, d + t * blocks, s + t * blocks, sum + t * blocks, columns, blocks, count, w + t * ldy, ldy, accumulate);
                    }
                    if (type == GgmlType.Q8_0) VnniTiles.Q8_0(pk, sc, q, d, s, columns, blocks, count, groups, g, ldy, accumulate);
                    else VnniTiles.Q4_0(pk, sc, m, q, d, s, sum, columns, blocks, count, groups, g, ldy, accumulate);
                }
                for (int i = 0; i < want.Length; i++)
                    Assert.True(BitConverter.SingleToInt32Bits(want[i]) == BitConverter.SingleToInt32Bits(got[i]),
                        $"{type}, {count} blocks, {groups} groups, accumulate={accumulate}: token {i / ldy} row {i % ldy}: VNNI {got[i]:R} vs AVX-512BW {want[i]:R}");
            }
    }

    /// <summary>
    /// Q4_0, Q8_0, Q4_K and Q6_K repacked with 16 rows interleaved (<see cref="Interleaved"/>): decode (1–3 tokens) and
    /// prefill (tiles packed from, or rows read off, the copy; 16-row and 32-row tiles) against the reference each path
    /// is held to, on odd widths; <see cref="Interleaved.ReadRow"/> gives the stored rows back and row lookups (which
    /// read the copy) match the stored rows' dequantisation.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q6_K)]
    public unsafe void InterleavedMatchesReference(GgmlType type)
    {
        var rng = new Random(12);
        bool kQuant = type is GgmlType.Q4_K or GgmlType.Q6_K;
        var shapes = kQuant ? new[] { (16, 256), (48, 512), (32, 256 * 7) } : new[] { (16, 32), (48, 96), (80, 32 * 37), (32, 1024 + 32) };
        foreach (var (rows, columns) in shapes)
        {
            int rowBytes = (int)GgmlTypes.RowBytes(type, columns), blocks = columns / Interleaved.BlockColumns(type);
            var bytes = new byte[rowBytes * rows];
            void Fill(byte[] target, int count)
            {
                if (kQuant) RandomKQuantBlocks(rng, type, target);
                else for (int r = 0; r < count; r++) Quantize.Row(type, Random(rng, columns), target.AsSpan(r * rowBytes));
            }
            Fill(bytes, rows);
            if (type == GgmlType.Q8_0) bytes[2] = 0x80; // a −128 code (llama.cpp's quantiser never writes one; files may hold it)
            fixed (byte* p = bytes)
            {
                var copy = new byte[Interleaved.Bytes(type, rows, blocks)];
                var back = new byte[rowBytes];
                fixed (byte* pc = copy, pb = back)
                {
                    Interleaved.Repack(type, p, rowBytes, blocks, pc, 0, rows / Interleaved.Group);
                    for (int r = 0; r < rows; r++)
                    {
                        Interleaved.ReadRow(type, pc, blocks, r, pb);
                        Assert.True(back.AsSpan().SequenceEqual(bytes.AsSpan(r * rowBytes, rowBytes)), $"{type} row {r} of [{rows}x{columns}] does not round-trip");
                    }
                }
                using var w = new WeightMatrix("w", type, rows, columns, p);
                // Only machines with AVX-512BW repack; elsewhere the same products run from the stored rows.
                Assert.Equal(Interleaved.Supports(type), w.Interleave());
                Assert.Equal(Interleaved.Supports(type), w.IsInterleaved);
                foreach (int tokens in new[] { 1, 2, 3, 4, 7, 9 })
                {
                    float[] x = Random(rng, tokens * columns), want = new float[tokens * rows], got = new float[tokens * rows];
                    Reference(w, x, tokens, want);
                    w.MatMul(x, tokens, got);
                    AssertClose(want, got, 1e-5f, $"interleaved {type} [{rows}x{columns}] x {tokens}");
                }
                var row = new float[columns];
                w.DequantizeRow(rows - 1, row);
                var expected = new float[columns];
                Dequantize.Row(type, bytes.AsSpan((rows - 1) * rowBytes, rowBytes), expected);
                Assert.Equal(expected, row);

                // One job with a stored matrix of 40 rows first: the interleaved part's tiles then start mid-group.
                var firstBytes = new byte[rowBytes * 40];
                Fill(firstBytes, 40);
                fixed (byte* pf = firstBytes)
                {
                    var first = new WeightMatrix("first", type, 40, columns, pf);
                    foreach (int tokens in new[] { 1, 5 })
                    {
                        float[] x = Random(rng, tokens * columns), want0 = new float[tokens * 40], want1 = new float[tokens * rows];
                        float[] got0 = new float[tokens * 40], got1 = new float[tokens * rows];
                        Reference(first, x, tokens, want0);
                        Reference(w, x, tokens, want1);
                        WeightMatrix.MatMul(x, tokens, first, got0, w, got1, null, default);
                        AssertClose(want0, got0, 1e-5f, $"stored {type} [40x{columns}] beside an interleaved one x {tokens}");
                        AssertClose(want1, got1, 1e-5f, $"interleaved {type} [{rows}x{columns}] behind a stored one x {tokens}");
                    }
                }
            }
        }
    }

    /// <summary>The scalar reference a product is held to: with 8-bit activations where the kernel quantises them.</summary>
    static void Reference(WeightMatrix w, float[] x, int tokens, float[] y)
    {
        if (w.QuantizesActivations(tokens)) ReferenceKernels.MatMulQuantizedActivations(w, x, tokens, y);
        else ReferenceKernels.MatMul(w, x, tokens, y);
    }

    [Fact]
    public void ActivationQuantizationMatchesReferenceExactly()
    {
        var rng = new Random(5);
        foreach (int blocks in new[] { 0, 1, 2, 3, 7, 28, 153 })
        {
            float[] x = Random(rng, blocks * 32, 4);
            if (blocks > 1) x.AsSpan(32, 32).Clear(); // an all-zero block
            if (blocks > 2) { x[64] = 127f; x[65] = 2.5f; x[66] = -3.5f; } // d = 1: ties round to even
            sbyte[] q1 = new sbyte[x.Length], q2 = new sbyte[x.Length];
            float[] s1 = new float[blocks], s2 = new float[blocks];
            ReferenceKernels.QuantizeActivations(x, q1, s1);
            QuantizedDot.QuantizeRow(x, q2, s2);
            Assert.Equal(q1, q2);
            Assert.Equal(s1, s2);
        }
    }

    /// <summary>Random K-quant blocks: any bit pattern is a valid block once its f16 scales are small finite numbers.</summary>
    static void RandomKQuantBlocks(Random rng, GgmlType type, byte[] bytes)
    {
        rng.NextBytes(bytes);
        int blockBytes = GgmlTypes.BlockBytes(type);
        int[] halfOffsets = type switch { GgmlType.Q6_K => [208], GgmlType.Q4_K or GgmlType.Q5_K => [0, 2], _ => throw new ArgumentException(type.ToString()) };
        for (int b = 0; b < bytes.Length; b += blockBytes)
            foreach (int o in halfOffsets) BitConverter.TryWriteBytes(bytes.AsSpan(b + o), BitConverter.HalfToUInt16Bits((Half)(rng.NextDouble() * 0.02 + 0.001)));
    }

    [Theory]
    [InlineData(1, 0, 4, 4, 8)]
    [InlineData(5, 0, 8, 4, 8)]
    [InlineData(3, 17, 14, 2, 64)]
    [InlineData(1, 300, 4, 1, 16)]
    [InlineData(7, 1, 6, 3, 5)]
    [InlineData(19, 0, 6, 2, 16)]
    [InlineData(12, 125, 4, 2, 8)]
    [InlineData(9, 250, 14, 2, 64)]
    public void CausalAttentionMatchesReference(int tokens, int start, int heads, int kvHeads, int headDim)
    {
        var rng = new Random(tokens * 1000 + start);
        int positions = start + tokens;
        float[] q = Random(rng, tokens * heads * headDim, 2), k = Random(rng, positions * kvHeads * headDim, 2), v = Random(rng, positions * kvHeads * headDim);
        float[] want = new float[q.Length], got = new float[q.Length];
        float scale = 1f / MathF.Sqrt(headDim);
        ReferenceKernels.CausalAttention(q, k, v, tokens, start, heads, kvHeads, headDim, scale, want);
        Attention.Causal(q, k, v, tokens, start, heads, kvHeads, headDim, scale, got);
        AssertClose(want, got, 1e-5f, $"attention t={tokens} start={start}");

        // f16 keys and/or values: the kernel must equal the reference run on the f16-rounded values.
        foreach (var (kt, vt) in new[] { (GgmlType.F16, GgmlType.F16), (GgmlType.F16, GgmlType.F32), (GgmlType.F32, GgmlType.F16) })
        {
            float[] kr = Round(k, kt), vr = Round(v, vt);
            ReferenceKernels.CausalAttention(q, kr, vr, tokens, start, heads, kvHeads, headDim, scale, want);
            Attention.Causal(q, Bytes(k, kt), kt, Bytes(v, vt), vt, tokens, start, heads, kvHeads, headDim, scale, got);
            AssertClose(want, got, 1e-5f, $"attention {kt}/{vt} t={tokens} start={start}");
        }
    }

    /// <summary>
    /// Attention over masked rows of pages with gaps in positions: equals the reference run on the gathered selected
    /// rows (dequantised as stored), for f32, f16 and q8_0 pages and prefill batches that see only earlier rows (several
    /// token blocks from 41 tokens on), with rows back to back or <paramref name="rowPadding"/> bytes apart.
    /// </summary>
    [Theory]
    [InlineData(1, 300, 4, 2, 32, 16, GgmlType.F16)]
    [InlineData(5, 90, 6, 3, 64, 32, GgmlType.F32)]
    [InlineData(9, 200, 14, 2, 64, 64, GgmlType.Q8_0)]
    [InlineData(3, 37, 4, 4, 32, 16, GgmlType.Q8_0)]
    [InlineData(17, 500, 8, 2, 96, 32, GgmlType.F16)]
    [InlineData(4, 70, 6, 2, 20, 16, GgmlType.F16)]
    [InlineData(2, 45, 3, 3, 5, 64, GgmlType.F32)]
    [InlineData(70, 150, 6, 2, 32, 32, GgmlType.F16)]
    [InlineData(41, 260, 9, 3, 64, 32, GgmlType.Q8_0, 12)]
    [InlineData(13, 120, 4, 1, 24, 16, GgmlType.F32, 8)]
    public unsafe void PagedAttentionMatchesReferenceOnSelectedRows(int tokens, int stored, int heads, int kvHeads, int headDim, int pageSize, GgmlType type, int rowPadding = 0)
    {
        var rng = new Random(tokens * 7919 + stored);
        int group = heads / kvHeads, rowBytes = (int)GgmlTypes.RowBytes(type, headDim);
        float[] q = Random(rng, tokens * heads * headDim, 2);
        // Stored rows per head: positions ascend with random gaps; the batch's own tokens are the last positions.
        int start = stored * 2;
        var pins = new List<System.Runtime.InteropServices.GCHandle>();
        var views = new List<KvPageView>();
        var headStart = new int[kvHeads + 1];
        var keysPerHead = new List<float>[kvHeads];
        var valuesPerHead = new List<float>[kvHeads];
        var positionsPerHead = new List<int>[kvHeads];
        for (int g = 0; g < kvHeads; g++)
        {
            headStart[g] = views.Count;
            keysPerHead[g] = []; valuesPerHead[g] = []; positionsPerHead[g] = [];
            var positions = new List<int>();
            int p = 0;
            for (int i = 0; i < stored; i++) { p += 1 + rng.Next(2); if (p < start) positions.Add(p); }
            for (int t = 0; t < tokens; t++) positions.Add(start + t);
            for (int first = 0; first < positions.Count; first += pageSize)
            {
                int count = Math.Min(pageSize, positions.Count - first);
                float[] k = Random(rng, count * headDim, 2), v = Random(rng, count * headDim);
                byte[] kb = Padded(Bytes(k, type), rowBytes, rowPadding), vb = Padded(Bytes(v, type), rowBytes, rowPadding);
                int[] pos = positions.GetRange(first, count).ToArray();
                bool lastPage = first + count == positions.Count;
                ulong mask = rng.Next(4) == 0 || lastPage ? KvPageView.AllRows : (ulong)rng.NextInt64() & (count == 64 ? ulong.MaxValue : (1UL << count) - 1);
                if (rng.Next(5) == 0 && !lastPage) continue; // page not selected at all
                float[] kr = Dequantized(Bytes(k, type), type, count * headDim), vr = Dequantized(Bytes(v, type), type, count * headDim);
                for (int j = 0; j < count; j++)
                {
                    if (mask != KvPageView.AllRows && (mask >> j & 1) == 0) continue;
                    keysPerHead[g].AddRange(kr.AsSpan(j * headDim, headDim).ToArray());
                    valuesPerHead[g].AddRange(vr.AsSpan(j * headDim, headDim).ToArray());
                    positionsPerHead[g].Add(pos[j]);
                }
                var hk = System.Runtime.InteropServices.GCHandle.Alloc(kb, System.Runtime.InteropServices.GCHandleType.Pinned);
                var hv = System.Runtime.InteropServices.GCHandle.Alloc(vb, System.Runtime.InteropServices.GCHandleType.Pinned);
                var hp = System.Runtime.InteropServices.GCHandle.Alloc(pos, System.Runtime.InteropServices.GCHandleType.Pinned);
                pins.AddRange([hk, hv, hp]);
                views.Add(new KvPageView
                {
                    Keys = (byte*)hk.AddrOfPinnedObject(), Values = (byte*)hv.AddrOfPinnedObject(), KeyStride = rowBytes + rowPadding, ValueStride = rowBytes + rowPadding,
                    Positions = (int*)hp.AddrOfPinnedObject(), Count = count, Mask = mask,
                });
            }
        }
        headStart[kvHeads] = views.Count;
        try
        {
            float[] got = new float[q.Length], want = new float[q.Length];
            float scale = 1f / MathF.Sqrt(headDim);
            Attention.Paged(q, tokens, start, heads, kvHeads, headDim, scale, views.ToArray(), headStart, type, type, got);
            int qRow = heads * headDim;
            for (int t = 0; t < tokens; t++)
                for (int h = 0; h < heads; h++)
                {
                    int g = h / group;
                    var rows = positionsPerHead[g].Select((pos, j) => (pos, j)).Where(x => x.pos <= start + t).Select(x => x.j).ToArray();
                    var scores = rows.Select(j => Enumerable.Range(0, headDim).Sum(i => (double)q[t * qRow + h * headDim + i] * keysPerHead[g][j * headDim + i]) * scale).ToArray();
                    double max = scores.Max(), sum = scores.Sum(s => Math.Exp(s - max));
                    for (int i = 0; i < headDim; i++)
                        want[t * qRow + h * headDim + i] = (float)rows.Select((j, r) => Math.Exp(scores[r] - max) / sum * valuesPerHead[g][j * headDim + i]).Sum();
                }
            AssertClose(want, got, 1e-5f, $"paged attention {type} t={tokens}");
        }
        finally
        {
            foreach (var handle in pins) handle.Free();
        }
    }

    static float[] Dequantized(byte[] bytes, GgmlType type, int n)
    {
        var x = new float[n];
        Dequantize.Row(type, bytes, x);
        return x;
    }

    static float[] Round(float[] x, GgmlType type) => type == GgmlType.F32 ? x : x.Select(v => (float)(Half)v).ToArray();

    /// <summary>Rows of <paramref name="rowBytes"/> moved <paramref name="padding"/> bytes further apart each (the gaps hold 0xCD).</summary>
    static byte[] Padded(byte[] rows, int rowBytes, int padding)
    {
        if (padding == 0) return rows;
        int count = rows.Length / rowBytes;
        var padded = new byte[count * (rowBytes + padding)];
        Array.Fill(padded, (byte)0xCD);
        for (int j = 0; j < count; j++) rows.AsSpan(j * rowBytes, rowBytes).CopyTo(padded.AsSpan(j * (rowBytes + padding)));
        return padded;
    }

    static byte[] Bytes(float[] x, GgmlType type)
    {
        var bytes = new byte[GgmlTypes.RowBytes(type, x.Length)];
        Quantize.Row(type, x, bytes);
        return bytes;
    }

    /// <summary>The small product behind attention and page scoring against a double-precision loop, odd sizes, with and without accumulate.</summary>
    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(3, 5, 7)]
    [InlineData(4, 64, 16)]
    [InlineData(5, 20, 17)]
    [InlineData(7, 64, 130)]
    [InlineData(8, 129, 8)]
    [InlineData(9, 3, 33)]
    [InlineData(17, 128, 64)]
    [InlineData(56, 64, 15)]
    [InlineData(6, 72, 121)]
    public unsafe void SmallMatrixMultiplyMatchesScalar(int rows, int k, int n)
    {
        var rng = new Random(rows * 1000 + k * 10 + n);
        int lda = k + 3, ldb = n + 5, ldc = n + 2;
        float[] a = Random(rng, rows * lda), b = Random(rng, k * ldb), start = Random(rng, rows * ldc);
        foreach (bool accumulate in new[] { false, true })
        {
            var c = (float[])start.Clone();
            fixed (float* pa = a, pb = b, pc = c) SmallMatrix.Multiply(pa, lda, rows, pb, ldb, k, n, pc, ldc, accumulate);
            for (int r = 0; r < rows; r++)
            {
                var want = new float[n];
                for (int j = 0; j < n; j++)
                {
                    double sum = accumulate ? start[r * ldc + j] : 0;
                    for (int i = 0; i < k; i++) sum += (double)a[r * lda + i] * b[i * ldb + j];
                    want[j] = (float)sum;
                }
                AssertClose(want, c.AsSpan(r * ldc, n), 1e-5f, $"row {r} accumulate={accumulate}");
                // Every width of the kernel (32, 16, 8 columns, scalar) sums each entry as the same chain of FMAs over k.
                for (int j = 0; j < n; j++)
                {
                    float chain = accumulate ? start[r * ldc + j] : 0f;
                    for (int i = 0; i < k; i++) chain = MathF.FusedMultiplyAdd(a[r * lda + i], b[i * ldb + j], chain);
                    Assert.Equal(chain, c[r * ldc + j]);
                }
                // Columns past n are not touched.
                Assert.Equal(start.AsSpan(r * ldc + n, ldc - n).ToArray(), c.AsSpan(r * ldc + n, ldc - n).ToArray());
            }
        }
    }

    /// <summary>
    /// The int16-pair panel product behind page scoring against a scalar loop: the integer sums are exact, so every
    /// instruction set gives the same bits; odd row and pair counts, the largest values whose sums still fit int32.
    /// </summary>
    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 5)]
    [InlineData(4, 64)]
    [InlineData(5, 129)]
    [InlineData(7, 128)]
    [InlineData(8, 3)]
    [InlineData(9, 17)]
    [InlineData(17, 64)]
    public unsafe void SmallMatrixMultiplyPairsMatchesScalar(int rows, int pairs)
    {
        var rng = new Random(rows * 100 + pairs);
        const int columns = SmallMatrix.PairPanelColumns;
        int lda = pairs + 1, ldc = columns + 3;
        int levels = (int)Math.Min(short.MaxValue, Math.Sqrt(int.MaxValue / (2.0 * pairs)));
        var a = new int[rows * lda];
        var b = new short[pairs * 2 * columns];
        for (int i = 0; i < a.Length; i++) a[i] = (ushort)rng.Next(-levels, levels + 1) | rng.Next(-levels, levels + 1) << 16;
        for (int i = 0; i < b.Length; i++) b[i] = (short)rng.Next(-levels, levels + 1);
        b[0] = (short)levels; a[0] = (ushort)levels | levels << 16; // the extremes
        float[] rowScale = Random(rng, rows), columnScale = Random(rng, columns), c = Random(rng, rows * ldc), start = (float[])c.Clone();
        fixed (int* pa = a) fixed (short* pb = b) fixed (float* pr = rowScale, pcs = columnScale, pc = c)
            SmallMatrix.MultiplyPairs(pa, lda, rows, pb, pairs, pr, pcs, pc, ldc);
        for (int r = 0; r < rows; r++)
        {
            for (int j = 0; j < columns; j++)
            {
                long sum = 0;
                for (int p = 0; p < pairs; p++)
                    sum += (long)(short)a[r * lda + p] * b[p * 2 * columns + 2 * j] + (long)(a[r * lda + p] >> 16) * b[p * 2 * columns + 2 * j + 1];
                Assert.InRange(sum, int.MinValue, int.MaxValue);
                Assert.Equal((float)sum * (rowScale[r] * columnScale[j]), c[r * ldc + j]);
            }
            Assert.Equal(start.AsSpan(r * ldc + columns, ldc - columns).ToArray(), c.AsSpan(r * ldc + columns, ldc - columns).ToArray());
        }
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(15, 5)]
    [InlineData(16, 16)]
    [InlineData(17, 20)]
    [InlineData(50, 64)]
    [InlineData(128, 130)]
    public unsafe void SmallMatrixTransposeIsExact(int rows, int columns)
    {
        var rng = new Random(rows * 31 + columns);
        int padded = (rows + 15) & ~15, stride = padded + 3;
        float[] source = new float[padded * columns], destination = new float[columns * stride];
        Random(rng, rows * columns).CopyTo(source, 0);
        var original = (float[])source.Clone();
        fixed (float* ps = source, pd = destination) SmallMatrix.Transpose(ps, rows, columns, pd, stride);
        for (int r = 0; r < padded; r++)
            for (int c = 0; c < columns; c++)
                Assert.Equal(r < rows ? original[r * columns + c] : 0f, destination[c * stride + r]);
    }

    /// <summary>
    /// The attention's packs read one head in place: <see cref="WeightMatrix.PackF32"/> of a strided [rows, columns] block
    /// and <see cref="WeightMatrix.PackF32Transposed"/> of the transpose of one, multiplied by
    /// <see cref="WeightMatrix.MultiplyPacked"/>, give the bits of <see cref="WeightMatrix.MultiplyF32"/> on the same
    /// matrices copied out densely; the packs hold each value at its place in the tiles' panels ([column][16], zeros past
    /// the rows) and never write their source (odd sizes, partial tiles and panels). The products run on AVX-512 only.
    /// </summary>
    [Theory]
    [InlineData(1, 7, 5)]
    [InlineData(13, 24, 9)]
    [InlineData(33, 72, 17)]
    [InlineData(64, 64, 64)]
    [InlineData(50, 16, 8)]
    public unsafe void StridedPacksMultiplyAsDenseMatrices(int rows, int columns, int tokens)
    {
        var rng = new Random(rows * 7 + columns);
        int stride = columns * 3 + 5, padded = (rows + 31) & ~31;
        // A: rows r at a[r·stride + 2 .. + columns]; B (for the transposed pack): row r of the matrix is column r of b.
        float[] a = Random(rng, rows * stride), b = Random(rng, columns * stride), x = Random(rng, tokens * columns), xt = Random(rng, tokens * columns);
        float[] aCopy = (float[])a.Clone(), bCopy = (float[])b.Clone();
        float[] dense = new float[padded * columns], denseT = new float[padded * columns];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < columns; c++) { dense[r * columns + c] = a[r * stride + 2 + c]; denseT[r * columns + c] = b[c * stride + 3 + r]; }
        float[] packed = new float[padded * columns], packedT = new float[padded * columns];
        packed.AsSpan().Fill(float.NaN); // so the zeros past the rows must be written
        packedT.AsSpan().Fill(float.NaN);
        float[] got = new float[tokens * rows], want = new float[tokens * rows];
        fixed (float* pa = a, pb = b, pp = packed, ppt = packedT, px = x, pxt = xt, pd = dense, pdt = denseT, pg = got, pw = want)
        {
            WeightMatrix.PackF32(pa + 2, stride, rows, columns, pp);
            WeightMatrix.PackF32Transposed(pb + 3, stride, rows, columns, ppt);
            // Row r's panel starts at (r / 16)·16·columns; column c's 16 values at + 16c.
            for (int r = 0; r < padded; r++)
                for (int c = 0; c < columns; c++)
                {
                    long at = (long)(r / 16) * 16 * columns + 16 * c + r % 16;
                    Assert.Equal(r < rows ? dense[r * columns + c] : 0f, packed[at]);
                    Assert.Equal(r < rows ? denseT[r * columns + c] : 0f, packedT[at]);
                }
            if (!System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated) return; // MultiplyPacked needs AVX-512
            WeightMatrix.MultiplyPacked(pp, rows, columns, px, tokens, pg);
            WeightMatrix.MultiplyF32(pd, rows, columns, px, tokens, pw);
            Assert.Equal(want, got);
            WeightMatrix.MultiplyPacked(ppt, rows, columns, pxt, tokens, pg);
            WeightMatrix.MultiplyF32(pdt, rows, columns, pxt, tokens, pw);
            Assert.Equal(want, got);
        }
        Assert.Equal(aCopy, a);
        Assert.Equal(bCopy, b);
    }
}
