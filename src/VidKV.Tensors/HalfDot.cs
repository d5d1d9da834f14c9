using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace VidKV.Tensors;

/// <summary>
/// Dot products of f16 / bf16 weights with f32 activations, converting the weights in registers.
/// .NET exposes no F16C instructions, so an f16 becomes f32 bits by sign extension, a shift by 13 and a mask: that is
/// exactly w·2^−112 for every finite w (subnormals included). Activations are therefore passed pre-scaled by 2^64 and
/// the sum is scaled by 2^48 (both exact powers of two, so the result equals the plain f32 dot product up to summation
/// order). Infinite or NaN f16 weights are not propagated (they read as large finite values). Where kernels are
/// emitted, f16 decode of rows of whole 64 columns runs <see cref="F16Rows"/>' vcvtph2ps instead.
/// </summary>
internal static unsafe class HalfDot
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
}
