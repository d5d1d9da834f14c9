using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

using static VidKV.Tensors.X86Emitter;

namespace VidKV.Tensors;

/// <summary>
/// Prefill of BF16 weights with vdpbf16ps (AVX512_BF16), emitted as machine code (<see cref="EmittedCode"/>; .NET 10
/// has no API for it): each instruction multiplies 16 rows × 2 columns of bf16 weights by a broadcast pair of bf16
/// activations and adds both products into f32 lanes — 32 MACs where an f32 FMA does 16, measured at one per cycle
/// on this Zen 4 like the FMA. The activations are rounded to bf16 first, as llama.cpp does for BF16 weights (its
/// vec_dot_type is BF16): each activation moves by at most 2^−9 of itself, so |Δ| ≤ 2^−9·Σ|w·x| per output (a test
/// holds the kernel to the rounded-activation reference and that bound). The products are exact in f32 and summed
/// with round-to-nearest, as an FMA chain; bf16 subnormals (below 1.2e−38) count as zero (the instruction's DAZ/FTZ).
/// Decode keeps f32 activations (it is bound by memory, and exact).
/// <para>
/// Tiles are 32 rows: per pair of columns, two 64-byte vectors hold rows 0–15 and 16–31 (each lane one row's two
/// bf16), so a row's 32-bit words of its stored bytes go to the lanes as they are. The kernel runs 8 tokens over a
/// whole tile, 16 accumulators (8 tokens × 2 halves), as <see cref="WeightMatrix"/>'s f32 panel kernel does.
/// </para>
/// </summary>
internal static unsafe class Bf16Tiles
{
    /// <summary>Rows per tile.</summary>
    public const int Rows = 32;
    /// <summary>Tokens per kernel call; the caller pads the activations to whole groups with zeros.</summary>
    public const int Tokens = 8;

    [StructLayout(LayoutKind.Sequential)]
    struct Call
    {
        public uint* Packed;   // 0: [pair][2 halves][16 rows] bf16 pairs
        public ushort* X;      // 8: token 0's bf16 activations (token t at t·Stride bytes)
        public long Stride;    // 16: bytes between tokens
        public long Pairs;     // 24: column pairs (≥ 1)
        public float* Y;       // 32: token t's 32 outputs at t·Ldy
        public long Ldy;       // 40
    }

    static readonly delegate* unmanaged[SuppressGCTransition]<Call*, void> Kernel;

    static Bf16Tiles()
    {
        // CPUID.(EAX=7, ECX=1):EAX[5] = AVX512_BF16
        if (EmittedCode.Allowed && (X86Base.CpuId(7, 1).Eax & (1 << 5)) != 0 && EmittedCode.Install(Emit()) is { } entries)
            Kernel = (delegate* unmanaged[SuppressGCTransition]<Call*, void>)entries[0];
    }

    /// <summary>Whether BF16 prefill of rows of <paramref name="columns"/> runs here (the kernel, an even width).</summary>
    public static bool Handles(int columns) => Kernel != null && columns > 0 && columns % 2 == 0;

    /// <summary>
    /// Packs <paramref name="rows"/> ≤ 32 BF16 rows (<paramref name="rowBytes"/> apart) into the tile layout; rows past
    /// <paramref name="rows"/> are zeros.
    /// </summary>
    public static void Pack(byte* weights, long rowBytes, int rows, int columns, uint* packed)
    {
        int pairs = columns / 2;
        for (int r = 0; r < Rows; r++)
        {
            uint* target = packed + (r >> 4) * 16 + (r & 15);
            if (r >= rows)
            {
                for (int p = 0; p < pairs; p++) target[p * 32] = 0;
                continue;
            }
            uint* words = (uint*)(weights + r * rowBytes);
            for (int p = 0; p < pairs; p++) target[p * 32] = words[p];
        }
    }

    /// <summary>
    /// <see cref="Pack"/> of F16 rows, each weight rounded to bf16 (f16 → f32 exactly, then <see cref="Quantize.ToBF16"/>):
    /// an F16 matrix whose products may take bf16's precision (see <see cref="WeightMatrix.PackTiles"/>).
    /// <paramref name="scratch"/> holds 1.5 × <paramref name="columns"/> floats.
    /// </summary>
    public static void PackF16(byte* weights, long rowBytes, int rows, int columns, uint* packed, float* scratch)
    {
        ushort* rounded = (ushort*)(scratch + columns);
        for (int r = 0; r < Math.Min(rows, Rows); r++)
        {
            HalfDot.WidenF16((ushort*)(weights + r * rowBytes), scratch, columns);
            Round(scratch, rounded, columns);
            uint* target = packed + (r >> 4) * 16 + (r & 15), words = (uint*)rounded;
            for (int p = 0; p < columns / 2; p++) target[p * 32] = words[p];
        }
        for (int r = rows; r < Rows; r++)
        {
            uint* target = packed + (r >> 4) * 16 + (r & 15);
            for (int p = 0; p < columns / 2; p++) target[p * 32] = 0;
        }
    }

    /// <summary>f32 → bf16 with round to nearest even (NaN stays a quiet NaN): <see cref="Quantize.ToBF16"/> vectorised.</summary>
    public static void Round(float* x, ushort* destination, long n)
    {
        long i = 0;
        if (Avx512F.IsSupported)
            for (; i + 16 <= n; i += 16)
                Avx512F.ConvertToVector256UInt16(RoundBits(Vector512.Load((uint*)x + i))).Store(destination + i);
        for (; i < n; i++) destination[i] = Quantize.ToBF16(x[i]);
    }

    /// <summary>
    /// Each lane's f32 bits <paramref name="u"/> rounded to bf16 (to nearest even; NaN stays a quiet NaN), in the low
    /// 16 bits of the lane, the high 16 bits zero.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<uint> RoundBits(Vector512<uint> u)
    {
        var rounded = (u + Vector512.Create(0x7fffu) + ((u >> 16) & Vector512<uint>.One)) >> 16;
        var nan = Vector512.GreaterThan(u & Vector512.Create(0x7fffffffu), Vector512.Create(0x7f800000u));
        return Vector512.ConditionalSelect(nan, (u >> 16) | Vector512.Create(64u), rounded);
    }

    /// <summary>
    /// y[t·ldy + r] = Σ_c w(r, c)·x(t, c) for 8 tokens and the 32 rows of a packed tile; <paramref name="x"/> holds
    /// token t's bf16 activations at t·<paramref name="stride"/> elements. Needs <see cref="Handles"/>.
    /// </summary>
    public static void Run(uint* packed, ushort* x, int stride, int columns, float* y, int ldy)
    {
        if (!Handles(columns)) throw new InvalidOperationException($"Bf16Tiles cannot run rows of {columns} columns here.");
        var call = new Call { Packed = packed, X = x, Stride = 2L * stride, Pairs = columns / 2, Y = y, Ldy = ldy };
        Kernel(&call);
    }

    /// <summary>
    /// zmm0–15 accumulate (token t: rows 0–15 in 2t, 16–31 in 2t+1), zmm16/17 hold one pair's weights, zmm18–25 each
    /// token's pair broadcast once for both halves (as the instructions' {1to16} memory operand, 18 loads fed 16
    /// products and set the pace on AMD EPYC Zen 5: 139 → 208 GMAC/s on one thread over 1024 columns). Tokens 0–3
    /// read from r8 (+ r10 = stride, 2·r10, r11 = 3·stride), tokens 4–7 from r9 the same way.
    /// </summary>
    static byte[] Emit()
    {
        var e = new X86Emitter();
        e.Load(Rax, new(Rdi, Disp: 0));
        e.Load(R8, new(Rdi, Disp: 8));
        e.Load(R10, new(Rdi, Disp: 16));
        e.Load(Rcx, new(Rdi, Disp: 24));
        e.Load(Rdx, new(Rdi, Disp: 32));
        e.Load(Rsi, new(Rdi, Disp: 40));
        e.Shl(Rsi, 2);
        e.Lea(R11, new(R10, R10, 2));
        e.Lea(R9, new(R8, R10, 4));
        for (int a = 0; a < 16; a++) e.VZero(a);
        Mem[] x = [new(R8), new(R8, R10), new(R8, R10, 2), new(R8, R11), new(R9), new(R9, R10), new(R9, R10, 2), new(R9, R11)];
        int loop = e.Position;
        e.VLoad(16, new(Rax));
        e.VLoad(17, new(Rax, Disp: 64));
        for (int t = 0; t < Tokens; t++)
        {
            e.VBroadcast32(18 + t, x[t]);
            e.Vdpbf16ps(2 * t, 16, 18 + t);
            e.Vdpbf16ps(2 * t + 1, 17, 18 + t);
        }
        e.Add(Rax, 128);
        e.Add(R8, 4);
        e.Add(R9, 4);
        e.Add(Rcx, -1);
        e.JumpBack(Condition.NotZero, loop);
        for (int t = 0; t < Tokens; t++)
        {
            e.VStore(new(Rdx), 2 * t);
            e.VStore(new(Rdx, Disp: 64), 2 * t + 1);
            e.AddRegister(Rdx, Rsi);
        }
        e.Vzeroupper();
        e.Ret();
        return e.ToArray();
    }
}
