using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// The assignment step of spherical k-means as an integer matrix product: for unit keys x_i and unit centres c_j,
/// label_i = argmax_j x_i·c_j (the first j on ties). Both sides are rounded to int16 at <see cref="Levels"/> steps per
/// unit (a unit vector's entries lie in [−1, 1], and by Cauchy–Schwarz every partial sum of products stays below
/// (Levels + √d/2)² &lt; 2³¹), so vpmaddwd does 32 multiply-adds per 512-bit instruction where an f32 FMA does 16.
/// <para>
/// Keys are packed once per clustering in panels of <see cref="PanelKeys"/> (one key per int32 lane, two entries per
/// lane): <c>[panel][pair][16 keys][2]</c>. Centres are packed per iteration as int32 pairs <c>[centre][pair]</c>, and
/// each pair is broadcast against a whole panel, so a block of 8 centres needs 8 accumulators and the running maximum
/// and its index per key fold in registers (one compare and blend per centre per 16 keys, against 32 multiply-adds
/// per pair). All paths compute the same integers and fold centres in ascending order, so the labels do not depend on
/// the instruction set. A label's score differs from the f32 dot product by at most (‖x‖₁ + ‖c‖₁)/(2·Levels) +
/// d/(4·Levels²), at most √d/Levels + d/(4·Levels²) (2.4·10⁻⁴ at d = 64, and far less for keys whose rounding errors
/// do not all line up): only centres whose scores are closer than twice that can trade places.
/// </para>
/// </summary>
internal static unsafe class NearestCentre
{
    /// <summary>Integer steps per unit of a quantised entry.</summary>
    public const int Levels = 32767;
    /// <summary>Keys per packed panel (the int32 lanes of one 512-bit vector).</summary>
    public const int PanelKeys = 16;

    /// <summary>Panels that hold <paramref name="keyCount"/> keys.</summary>
    public static int Panels(int keyCount) => (keyCount + PanelKeys - 1) / PanelKeys;

    /// <summary>Entry pairs of a vector of <paramref name="dimension"/> floats (an odd last entry pairs with 0).</summary>
    public static int Pairs(int dimension) => (dimension + 1) / 2;

    /// <summary>Shorts of packed keys: whole panels of whole pairs.</summary>
    public static int PackedKeyLength(int keyCount, int dimension) => Panels(keyCount) * Pairs(dimension) * 2 * PanelKeys;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static short Quantize(float x) => (short)MathF.Round(Math.Clamp(x, -1f, 1f) * Levels);

    /// <summary>
    /// Packs panels [<paramref name="firstPanel"/>, <paramref name="endPanel"/>) of unit keys [<paramref name="keyCount"/>,
    /// <paramref name="dimension"/>] (so threads can pack their own panels); keys past the count in the last panel are zeros.
    /// A key's quantised row read as int32 pairs is one row of a [16 keys, pairs] matrix, and the panel is its transpose.
    /// </summary>
    /// <param name="packed">[Panels(keyCount), Pairs(dimension), 16, 2]</param>
    public static void PackKeys(ReadOnlySpan<float> keys, int keyCount, int dimension, int firstPanel, int endPanel, Span<short> packed)
    {
        int pairs = Pairs(dimension);
        Span<int> rows = pairs <= 256 ? stackalloc int[PanelKeys * pairs] : new int[PanelKeys * pairs];
        fixed (int* source = rows)
        fixed (short* target = packed)
            for (int panel = firstPanel; panel < endPanel; panel++)
            {
                var shorts = MemoryMarshal.Cast<int, short>(rows);
                shorts.Clear();
                for (int j = 0; j < PanelKeys && panel * PanelKeys + j < keyCount; j++)
                    QuantizeRow(keys.Slice((panel * PanelKeys + j) * dimension, dimension), shorts.Slice(j * 2 * pairs, dimension));
                SmallMatrix.Transpose((float*)source, PanelKeys, pairs, (float*)(target + (long)panel * pairs * 2 * PanelKeys), PanelKeys);
            }
    }

    /// <summary>destination[i] = round(clamp(x[i], −1, 1)·Levels), half to even (the scalar <see cref="Quantize"/>'s rounding).</summary>
    static void QuantizeRow(ReadOnlySpan<float> x, Span<short> destination)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            fixed (float* source = x)
            fixed (short* target = destination)
            {
                var one = Vector512<float>.One;
                var levels = Vector512.Create((float)Levels);
                for (; i + 32 <= x.Length; i += 32)
                {
                    var low = Vector512.ConvertToInt32(Vector512.Round(Vector512.Clamp(Vector512.Load(source + i), -one, one) * levels));
                    var high = Vector512.ConvertToInt32(Vector512.Round(Vector512.Clamp(Vector512.Load(source + i + 16), -one, one) * levels));
                    Vector512.Narrow(low, high).Store(target + i);
                }
            }
        for (; i < x.Length; i++) destination[i] = Quantize(x[i]);
    }

    /// <summary>Packs unit centres [<paramref name="centreCount"/>, <paramref name="dimension"/>] as int32 pairs (low entry in the low half).</summary>
    /// <param name="packed">[centreCount, Pairs(dimension)]</param>
    public static void PackCentres(ReadOnlySpan<float> centres, int centreCount, int dimension, Span<int> packed)
    {
        int pairs = Pairs(dimension);
        for (int c = 0; c < centreCount; c++)
            for (int p = 0; p < pairs; p++)
            {
                short low = Quantize(centres[c * dimension + 2 * p]), high = 2 * p + 1 < dimension ? Quantize(centres[c * dimension + 2 * p + 1]) : (short)0;
                packed[c * pairs + p] = (ushort)low | high << 16;
            }
    }

    /// <summary>
    /// labels[16·panel + j] = the centre of largest score for key j of each panel in [firstPanel, endPanel), and
    /// scores[16·panel + j] that score (the integer dot product; skipped when <paramref name="scores"/> is null). Keys
    /// past the count get a label too, of their zero vector: callers ignore them.
    /// </summary>
    /// <param name="keys">packed keys (<see cref="PackKeys"/>)</param>
    /// <param name="centres">packed centres [centreCount, pairs] (<see cref="PackCentres"/>)</param>
    /// <param name="labels">[16·endPanel] at least</param>
    public static void Assign(short* keys, int pairs, int firstPanel, int endPanel, int* centres, int centreCount, int* labels, int* scores = null)
    {
        int* discard = stackalloc int[PanelKeys];
        for (int panel = firstPanel; panel < endPanel; panel++)
        {
            short* b = keys + (long)panel * pairs * 2 * PanelKeys;
            int* label = labels + panel * PanelKeys, score = scores == null ? discard : scores + panel * PanelKeys;
            if (Vector512.IsHardwareAccelerated && Avx512BW.IsSupported) AssignPanel512(b, pairs, centres, centreCount, label, score);
            else if (Avx2.IsSupported)
            {
                AssignHalf256(b, pairs, centres, centreCount, label, score);
                AssignHalf256(b + PanelKeys, pairs, centres, centreCount, label + PanelKeys / 2, score + PanelKeys / 2);
            }
            else AssignPanelScalar(b, pairs, centres, centreCount, label, score);
        }
    }

    /// <summary>One panel, 8 centres at a time: the running maximum and its index per key stay in two registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void AssignPanel512(short* b, int pairs, int* a, int centreCount, int* label, int* score)
    {
        var best = Vector512.Create(int.MinValue);
        var index = Vector512<int>.Zero;
        for (int c = 0; c < centreCount; c += 8)
        {
            // A block short of 8 centres repeats its last one: equal scores never replace the running maximum.
            int m = Math.Min(8, centreCount - c);
            int* a0 = a + c * pairs, a1 = a + (c + Math.Min(1, m - 1)) * pairs, a2 = a + (c + Math.Min(2, m - 1)) * pairs, a3 = a + (c + Math.Min(3, m - 1)) * pairs;
            int* a4 = a + (c + Math.Min(4, m - 1)) * pairs, a5 = a + (c + Math.Min(5, m - 1)) * pairs, a6 = a + (c + Math.Min(6, m - 1)) * pairs, a7 = a + (c + Math.Min(7, m - 1)) * pairs;
            Vector512<int> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
            short* bp = b;
            for (int p = 0; p < pairs; p++, bp += 2 * PanelKeys)
            {
                var v = Vector512.Load(bp);
                s0 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a0[p]).AsInt16());
                s1 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a1[p]).AsInt16());
                s2 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a2[p]).AsInt16());
                s3 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a3[p]).AsInt16());
                s4 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a4[p]).AsInt16());
                s5 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a5[p]).AsInt16());
                s6 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a6[p]).AsInt16());
                s7 += Avx512BW.MultiplyAddAdjacent(v, Vector512.Create(a7[p]).AsInt16());
            }
            Fold(s0, c, ref best, ref index);
            Fold(s1, c + Math.Min(1, m - 1), ref best, ref index);
            Fold(s2, c + Math.Min(2, m - 1), ref best, ref index);
            Fold(s3, c + Math.Min(3, m - 1), ref best, ref index);
            Fold(s4, c + Math.Min(4, m - 1), ref best, ref index);
            Fold(s5, c + Math.Min(5, m - 1), ref best, ref index);
            Fold(s6, c + Math.Min(6, m - 1), ref best, ref index);
            Fold(s7, c + Math.Min(7, m - 1), ref best, ref index);
        }
        index.Store(label);
        best.Store(score);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Fold(Vector512<int> score, int centre, ref Vector512<int> best, ref Vector512<int> index)
    {
        var greater = Vector512.GreaterThan(score, best);
        best = Vector512.Max(score, best);
        index = Vector512.ConditionalSelect(greater, Vector512.Create(centre), index);
    }

    /// <summary>Eight keys of a panel (half 0 or 1, by the pointers given) on 256-bit vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void AssignHalf256(short* b, int pairs, int* a, int centreCount, int* label, int* score)
    {
        var best = Vector256.Create(int.MinValue);
        var index = Vector256<int>.Zero;
        for (int c = 0; c < centreCount; c += 4)
        {
            int m = Math.Min(4, centreCount - c);
            int* a0 = a + c * pairs, a1 = a + (c + Math.Min(1, m - 1)) * pairs, a2 = a + (c + Math.Min(2, m - 1)) * pairs, a3 = a + (c + Math.Min(3, m - 1)) * pairs;
            Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default;
            short* bp = b;
            for (int p = 0; p < pairs; p++, bp += 2 * PanelKeys)
            {
                var v = Vector256.Load(bp);
                s0 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a0[p]).AsInt16());
                s1 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a1[p]).AsInt16());
                s2 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a2[p]).AsInt16());
                s3 += Avx2.MultiplyAddAdjacent(v, Vector256.Create(a3[p]).AsInt16());
            }
            Fold(s0, c, ref best, ref index);
            Fold(s1, c + Math.Min(1, m - 1), ref best, ref index);
            Fold(s2, c + Math.Min(2, m - 1), ref best, ref index);
            Fold(s3, c + Math.Min(3, m - 1), ref best, ref index);
        }
        index.Store(label);
        best.Store(score);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Fold(Vector256<int> score, int centre, ref Vector256<int> best, ref Vector256<int> index)
    {
        var greater = Vector256.GreaterThan(score, best);
        best = Vector256.Max(score, best);
        index = Vector256.ConditionalSelect(greater, Vector256.Create(centre), index);
    }

    static void AssignPanelScalar(short* b, int pairs, int* a, int centreCount, int* label, int* score)
    {
        for (int j = 0; j < PanelKeys; j++)
        {
            int best = int.MinValue, index = 0;
            for (int c = 0; c < centreCount; c++)
            {
                int sum = 0;
                for (int p = 0; p < pairs; p++)
                {
                    int packed = a[c * pairs + p];
                    sum += (short)packed * b[p * 2 * PanelKeys + 2 * j] + (packed >> 16) * b[p * 2 * PanelKeys + 2 * j + 1];
                }
                if (sum > best) { best = sum; index = c; }
            }
            label[j] = index;
            score[j] = best;
        }
    }

    /// <summary>
    /// The scalar reference: labels[i] = the first argmax over centres of Σ_e keys[i, e]·centres[c, e] in f64, on the
    /// unquantised vectors.
    /// </summary>
    public static void AssignReference(ReadOnlySpan<float> keys, int keyCount, ReadOnlySpan<float> centres, int centreCount, int dimension, Span<int> labels)
    {
        for (int i = 0; i < keyCount; i++)
        {
            double best = double.NegativeInfinity;
            int index = 0;
            for (int c = 0; c < centreCount; c++)
            {
                double sum = 0;
                for (int e = 0; e < dimension; e++) sum += (double)keys[i * dimension + e] * centres[c * dimension + e];
                if (sum > best) { best = sum; index = c; }
            }
            labels[i] = index;
        }
    }
}
