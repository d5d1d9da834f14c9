using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Dot products of f16 / bf16 weights with f32 activations, converting the weights in registers.
/// .NET exposes no F16C instructions, so an f16 becomes f32 bits by sign extension, a shift by 13 and a mask: that is
/// exactly w·2^−112 for every finite w (subnormals included). Activations are therefore passed pre-scaled by 2^64 and
/// the sum is scaled by 2^48 (both exact powers of two, so the result equals the plain f32 dot product up to summation
/// order). Infinite or NaN f16 weights are not propagated (they read as large finite values).
/// </summary>
public static unsafe class HalfDot
{
    /// <summary>Factor applied to activations before <see cref="DotF16"/>.</summary>
    public const float InputScale = 18446744073709551616f; // 2^64
    /// <summary>Factor applied to the result of <see cref="DotF16"/>.</summary>
    public const float OutputScale = 281474976710656f; // 2^48

    /// <summary>Σ f16(w)·x over <paramref name="n"/> elements, with <paramref name="xScaled"/> = x·2^64; returns the true dot product.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static float DotF16(ushort* w, float* xScaled, int n)
    {
        int i = 0;
        float sum = 0;
        if (Avx512F.IsSupported)
        {
            var mask = Vector512.Create(unchecked((int)0x8FFFFFFF));
            var acc0 = Vector512<float>.Zero;
            var acc1 = Vector512<float>.Zero;
            for (; i + 32 <= n; i += 32)
            {
                var h0 = Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)(w + i)));
                var h1 = Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)(w + i + 16)));
                acc0 = Avx512F.FusedMultiplyAdd(Avx512F.And(Avx512F.ShiftLeftLogical(h0, 13), mask).AsSingle(), Avx512F.LoadVector512(xScaled + i), acc0);
                acc1 = Avx512F.FusedMultiplyAdd(Avx512F.And(Avx512F.ShiftLeftLogical(h1, 13), mask).AsSingle(), Avx512F.LoadVector512(xScaled + i + 16), acc1);
            }
            sum = Vector512.Sum(acc0 + acc1);
        }
        else if (Avx2.IsSupported && Fma.IsSupported)
        {
            var mask = Vector256.Create(unchecked((int)0x8FFFFFFF));
            var acc = Vector256<float>.Zero;
            for (; i + 8 <= n; i += 8)
            {
                var h = Avx2.ConvertToVector256Int32(Sse2.LoadVector128((short*)(w + i)));
                acc = Fma.MultiplyAdd(Avx2.And(Avx2.ShiftLeftLogical(h, 13), mask).AsSingle(), Avx.LoadVector256(xScaled + i), acc);
            }
            sum = Vector256.Sum(acc);
        }
        for (; i < n; i++)
            sum += BitConverter.Int32BitsToSingle(((short)w[i] << 13) & unchecked((int)0x8FFFFFFF)) * xScaled[i];
        return sum * OutputScale;
    }

    /// <summary>Σ bf16(w)·x over <paramref name="n"/> elements (a bf16 is the upper half of an f32).</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static float DotBF16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0;
        if (Avx512F.IsSupported)
        {
            var acc0 = Vector512<float>.Zero;
            var acc1 = Vector512<float>.Zero;
            for (; i + 32 <= n; i += 32)
            {
                var h0 = Avx512F.ConvertToVector512UInt32(Avx.LoadVector256(w + i));
                var h1 = Avx512F.ConvertToVector512UInt32(Avx.LoadVector256(w + i + 16));
                acc0 = Avx512F.FusedMultiplyAdd(Avx512F.ShiftLeftLogical(h0, 16).AsSingle(), Avx512F.LoadVector512(x + i), acc0);
                acc1 = Avx512F.FusedMultiplyAdd(Avx512F.ShiftLeftLogical(h1, 16).AsSingle(), Avx512F.LoadVector512(x + i + 16), acc1);
            }
            sum = Vector512.Sum(acc0 + acc1);
        }
        else if (Avx2.IsSupported && Fma.IsSupported)
        {
            var acc = Vector256<float>.Zero;
            for (; i + 8 <= n; i += 8)
            {
                var h = Avx2.ConvertToVector256Int32(Sse2.LoadVector128(w + i));
                acc = Fma.MultiplyAdd(Avx2.ShiftLeftLogical(h, 16).AsSingle(), Avx.LoadVector256(x + i), acc);
            }
            sum = Vector256.Sum(acc);
        }
        for (; i < n; i++) sum += BitConverter.Int32BitsToSingle(w[i] << 16) * x[i];
        return sum;
    }

    /// <summary>
    /// f16 → f32 for <paramref name="n"/> elements: the same bits trick multiplied back by 2^112 — exact for finite
    /// values, subnormals included.
    /// </summary>
    public static void WidenF16(ushort* source, float* destination, int n)
    {
        const float Rebias = 5.192296858534828e+33f; // 2^112
        int i = 0;
        if (Avx512F.IsSupported)
        {
            var mask = Vector512.Create(unchecked((int)0x8FFFFFFF));
            var rebias = Vector512.Create(Rebias);
            for (; i + 16 <= n; i += 16)
            {
                var bits = Avx512F.And(Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)(source + i))), 13), mask);
                Avx512F.Multiply(bits.AsSingle(), rebias).Store(destination + i);
            }
        }
        else if (Avx2.IsSupported)
        {
            var mask = Vector256.Create(unchecked((int)0x8FFFFFFF));
            var rebias = Vector256.Create(Rebias);
            for (; i + 8 <= n; i += 8)
            {
                var bits = Avx2.And(Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(Sse2.LoadVector128((short*)(source + i))), 13), mask);
                Avx.Multiply(bits.AsSingle(), rebias).Store(destination + i);
            }
        }
        for (; i < n; i++) destination[i] = (float)BitConverter.UInt16BitsToHalf(source[i]);
    }

    /// <summary>bf16 → f32 for <paramref name="n"/> elements (exact).</summary>
    public static void WidenBF16(ushort* source, float* destination, int n)
    {
        int i = 0;
        if (Avx512F.IsSupported)
            for (; i + 16 <= n; i += 16)
                Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512UInt32(Avx.LoadVector256(source + i)), 16).AsSingle().Store(destination + i);
        for (; i < n; i++) destination[i] = BitConverter.Int32BitsToSingle(source[i] << 16);
    }

    /// <summary>
    /// Four f32 rows (<paramref name="rowStride"/> apart) against four tokens (<paramref name="xStride"/> apart), n long:
    /// y[token·ldy + row]. Each load feeds four FMAs, the register blocking a compute-bound prefill needs.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    public static void Tile4x4(float* w, int rowStride, float* x, int xStride, int n, float* y, int ldy)
    {
        float* w0 = w, w1 = w + rowStride, w2 = w + 2 * rowStride, w3 = w + 3 * rowStride;
        float* x0 = x, x1 = x + xStride, x2 = x + 2 * xStride, x3 = x + 3 * xStride;
        var r = stackalloc float[16];
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default, a10 = default, a11 = default, a12 = default, a13 = default;
            Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default, a30 = default, a31 = default, a32 = default, a33 = default;
            for (; i + 16 <= n; i += 16)
            {
                var v0 = Vector512.Load(x0 + i); var v1 = Vector512.Load(x1 + i); var v2 = Vector512.Load(x2 + i); var v3 = Vector512.Load(x3 + i);
                var q = Vector512.Load(w0 + i);
                a00 = Vector512.FusedMultiplyAdd(q, v0, a00); a01 = Vector512.FusedMultiplyAdd(q, v1, a01); a02 = Vector512.FusedMultiplyAdd(q, v2, a02); a03 = Vector512.FusedMultiplyAdd(q, v3, a03);
                q = Vector512.Load(w1 + i);
                a10 = Vector512.FusedMultiplyAdd(q, v0, a10); a11 = Vector512.FusedMultiplyAdd(q, v1, a11); a12 = Vector512.FusedMultiplyAdd(q, v2, a12); a13 = Vector512.FusedMultiplyAdd(q, v3, a13);
                q = Vector512.Load(w2 + i);
                a20 = Vector512.FusedMultiplyAdd(q, v0, a20); a21 = Vector512.FusedMultiplyAdd(q, v1, a21); a22 = Vector512.FusedMultiplyAdd(q, v2, a22); a23 = Vector512.FusedMultiplyAdd(q, v3, a23);
                q = Vector512.Load(w3 + i);
                a30 = Vector512.FusedMultiplyAdd(q, v0, a30); a31 = Vector512.FusedMultiplyAdd(q, v1, a31); a32 = Vector512.FusedMultiplyAdd(q, v2, a32); a33 = Vector512.FusedMultiplyAdd(q, v3, a33);
            }
            r[0] = Vector512.Sum(a00); r[1] = Vector512.Sum(a01); r[2] = Vector512.Sum(a02); r[3] = Vector512.Sum(a03);
            r[4] = Vector512.Sum(a10); r[5] = Vector512.Sum(a11); r[6] = Vector512.Sum(a12); r[7] = Vector512.Sum(a13);
            r[8] = Vector512.Sum(a20); r[9] = Vector512.Sum(a21); r[10] = Vector512.Sum(a22); r[11] = Vector512.Sum(a23);
            r[12] = Vector512.Sum(a30); r[13] = Vector512.Sum(a31); r[14] = Vector512.Sum(a32); r[15] = Vector512.Sum(a33);
        }
        else
        {
            for (int k = 0; k < 16; k++) r[k] = 0;
        }
        for (int row = 0; row < 4; row++)
        {
            float* wr = w + row * rowStride;
            for (int t = 0; t < 4; t++)
            {
                float sum = r[row * 4 + t];
                float* xt = x + t * xStride;
                for (int k = i; k < n; k++) sum += wr[k] * xt[k];
                y[t * ldy + row] = sum;
            }
        }
    }
}
