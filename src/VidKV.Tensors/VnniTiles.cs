using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

using static VidKV.Tensors.X86Emitter;

namespace VidKV.Tensors;

/// <summary>
/// The integer prefill tiles of <see cref="IntegerTiles"/> on AVX-512 VNNI: vpdpbusd adds 4 products of unsigned
/// weight bytes and signed activation bytes into each int32 lane in one instruction (64 MACs per zmm), where the
/// AVX-512BW kernel needs vpmaddubsw + vpaddw for the same work and a vpmaddwd per block. .NET 10 has no vpdpbusd on
/// a CPU with AVX512_VNNI but not AVX10 (Zen 4, Ice Lake, Sapphire Rapids), so the kernel is emitted as machine code
/// (<see cref="EmittedCode"/>) — what oneDNN gets from its JIT and llama.cpp from a compiler.
/// <para>
/// Tile layout and arithmetic are those of <see cref="IntegerTiles"/> (same packed tiles, same per-block finish:
/// (Σ − offset·Σq_x) converted, times d_w·d_x, fused-added; Q4_K's −m·(d_x·Σq_x) fused-subtracted), so the sums are
/// the same integers and the floats go through the same operations in the same order: the results equal the
/// AVX-512BW kernel's bit for bit. Int32 lanes cannot saturate, so Q8_0 is one plane of offset bytes w + 128 instead
/// of two nibble planes. Each token's 4 activations of a step are broadcast into a register once (vpbroadcastd) for
/// the step's two vpdpbusd: with the broadcast as the instructions' memory operand ({1to16}) instead, 10 loads fed 8
/// products, and on AMD EPYC Zen 5 the loads set the pace (3072×768 × 1024 tokens on one thread, Q8_0: 235–244 →
/// 276–279 GMAC/s).
/// </para>
/// <para>
/// Where it cannot run (see <see cref="EmittedCode"/>; also with <c>VIDKV_EMIT=0</c>, as CI runs the kernel tests
/// once more) the AVX-512BW kernel runs.
/// </para>
/// </summary>
internal static unsafe class VnniTiles
{
    /// <summary>Arguments of one kernel call (fields at the offsets the emitted code reads).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Call
    {
        public byte* Packed;     // 0: the tile at its first block
        public float* Scales;    // 8: [block][32] d_w
        public float* Mins;      // 16: [block][32] dmin·m (Q4_K)
        public sbyte* Xq;        // 24: token 0's quants at the first block
        public void* Sums;       // 32: [token][blocks] Σq as int32 (offset types) or d_x·Σq as float (Q4_K)
        public float* Xd;        // 40: [token][blocks] d_x
        public long Columns;     // 48: bytes between tokens' quants
        public long Blocks;      // 56: elements between tokens' scales and sums
        public long Count;       // 64: blocks to run (≥ 1)
        public float* Y;         // 72: token t's 32 outputs at t·Ldy
        public long Ldy;         // 80
        public long Accumulate;  // 88: 0 → overwrite y
        public long Groups;      // 96: groups of 4 tokens, one after another (the kernel advances Xq, Sums, Xd and Y)
    }

    /// <summary>Whether the VNNI kernels run on this machine (emitted, and not switched off).</summary>
    public static bool IsSupported => Offset3 != null;

    /// <summary>
    /// Bytes of one Q8_0 block of a group of 16 interleaved rows (<see cref="Interleaved"/>): 16 f16 scales, then 8
    /// vectors of 4 columns × 16 rows of offset bytes — each vector one half of a tile step, as it is.
    /// </summary>
    const int InterleavedQ8Block = 32 + 8 * 64;

    /// <summary>
    /// Σq·8 (Q4_0: shift 3) and Σq·128 (Q8_0: shift 7) come off; Q4_K has mins instead; Q6_K's blocks are 16 columns
    /// (4 steps) with Σq·32 off.
    /// </summary>
    static readonly delegate* unmanaged[SuppressGCTransition]<Call*, void> Offset3, Offset7, WithMins, Offset5Short, Offset7Interleaved;

    static VnniTiles()
    {
        // CPUID.(EAX=7, ECX=0):ECX[11] = AVX512_VNNI
        if (!EmittedCode.Allowed || (X86Base.CpuId(7, 0).Ecx & (1 << 11)) == 0) return;
        if (EmittedCode.Install(Emit(3, false, 8), Emit(7, false, 8), Emit(0, true, 8), Emit(5, false, 4), Emit(7, false, 8, interleaved: true)) is not { } entries) return;
        Offset3 = (delegate* unmanaged[SuppressGCTransition]<Call*, void>)entries[0];
        Offset7 = (delegate* unmanaged[SuppressGCTransition]<Call*, void>)entries[1];
        WithMins = (delegate* unmanaged[SuppressGCTransition]<Call*, void>)entries[2];
        Offset5Short = (delegate* unmanaged[SuppressGCTransition]<Call*, void>)entries[3];
        Offset7Interleaved = (delegate* unmanaged[SuppressGCTransition]<Call*, void>)entries[4];
    }

    /// <summary>Q4_0 (<paramref name="mins"/> null) or Q4_K tile: as <see cref="IntegerTiles.Q4_0"/>.</summary>
    internal static void Q4_0(byte* packed, float* scales, float* mins, sbyte* xq, float* xd, int* xs, float* xsum, int columns, int blocks, int count, int groups, float* y, int ldy, bool accumulate) =>
        Run(mins == null ? Offset3 : WithMins, packed, scales, mins, xq, mins == null ? xs : xsum, xd, columns, blocks, count, groups, y, ldy, accumulate);

    /// <summary>Q8_0 tile of one plane of offset bytes: as <see cref="IntegerTiles.Q8_0"/>.</summary>
    internal static void Q8_0(byte* packed, float* scales, sbyte* xq, float* xd, int* xs, int columns, int blocks, int count, int groups, float* y, int ldy, bool accumulate) =>
        Run(Offset7, packed, scales, null, xq, xs, xd, columns, blocks, count, groups, y, ldy, accumulate);

    /// <summary>
    /// Q8_0 straight from the decode layout (<see cref="Interleaved"/>): rows 0–15 of the tile from the group block at
    /// <paramref name="group0"/>, rows 16–31 from <paramref name="group1"/> (the same for a tile of 16 rows, whose upper
    /// outputs the caller drops), each block's f16 scales widened in the kernel. The same integers, scales and
    /// operations as <see cref="Q8_0"/> on a tile packed from it, so the same bits, without the per-call repacking.
    /// </summary>
    internal static void Q8_0Interleaved(byte* group0, byte* group1, sbyte* xq, float* xd, int* xs, int columns, int blocks, int count, int groups, float* y, int ldy, bool accumulate) =>
        Run(Offset7Interleaved, group0, (float*)group1, null, xq, xs, xd, columns, blocks, count, groups, y, ldy, accumulate);

    /// <summary>Q6_K tile (blocks of 16 columns, scale and Σq per 16): as <see cref="IntegerTiles.Q6_K"/>.</summary>
    internal static void Q6_K(byte* packed, float* scales, sbyte* xq, float* xd, int* xs, int columns, int blocks, int count, int groups, float* y, int ldy, bool accumulate) =>
        Run(Offset5Short, packed, scales, null, xq, xs, xd, columns, blocks, count, groups, y, ldy, accumulate);

    static void Run(delegate* unmanaged[SuppressGCTransition]<Call*, void> kernel, byte* packed, float* scales, float* mins, sbyte* xq, void* sums, float* xd,
        int columns, int blocks, int count, int groups, float* y, int ldy, bool accumulate)
    {
        if (count <= 0 || groups <= 0) return;
        var call = new Call
        {
            Packed = packed, Scales = scales, Mins = mins, Xq = xq, Sums = sums, Xd = xd,
            Columns = columns, Blocks = blocks, Count = count, Y = y, Ldy = ldy, Accumulate = accumulate ? 1 : 0, Groups = groups,
        };
        kernel(&call);
    }

    /// <summary>
    /// The kernel: <c>Groups</c> × 4 tokens × 32 rows, <c>Count</c> blocks of 32 columns. zmm0–7: the float outputs
    /// (token t: rows 0–15 in 2t, 16–31 in 2t+1); zmm8–15 the block's int32 sums in the same order; zmm16/17 the
    /// weights of one step (4 columns × 16 rows each); zmm18/19 d_w, zmm20/21 the mins; zmm22–24 temporaries; zmm25–28
    /// each token's 4 activations of the step, broadcast. Tokens
    /// 0 and 1 address their quants from r8 (+ r10 = columns), 2 and 3 from r9; their scales and sums from r11/rbx and
    /// r12/r13 (+ rbp = blocks·4); y from r14/rdi (+ r15 = ldy·4). Every general register is in use, so the argument
    /// block's address stays on the stack and each group reloads from it and moves its token pointers on by 4 tokens.
    /// <paramref name="shift"/>: log2 of the offset (Σ − Σq·2^shift), ignored with <paramref name="mins"/>;
    /// <paramref name="steps"/>: steps of 4 columns per block (8, or 4 for Q6_K's 16-column blocks).
    /// <paramref name="interleaved"/>: the two halves of each step and their f16 scales come from the Q8_0 group blocks
    /// at rax and rsi (<see cref="Q8_0Interleaved"/>) instead of a packed tile and its f32 scales.
    /// </summary>
    static byte[] Emit(int shift, bool mins, int steps, bool interleaved = false)
    {
        var e = new X86Emitter();
        int[] saved = [Rbx, Rbp, R12, R13, R14, R15];
        foreach (int r in saved) e.Push(r);
        e.Push(Rdi);
        Mem args = new(Rsp);

        int group = e.Position;
        e.Load(Rdi, args);
        e.Load(Rax, new(Rdi, Disp: 0));
        e.Load(Rsi, new(Rdi, Disp: 8));
        e.Load(Rdx, new(Rdi, Disp: 16));
        e.Load(R8, new(Rdi, Disp: 24));
        e.Load(R12, new(Rdi, Disp: 32));
        e.Load(R11, new(Rdi, Disp: 40));
        e.Load(R10, new(Rdi, Disp: 48));
        e.Load(Rbp, new(Rdi, Disp: 56));
        e.Shl(Rbp, 2);
        e.Load(Rcx, new(Rdi, Disp: 64));
        e.Load(R14, new(Rdi, Disp: 72));
        e.Load(R15, new(Rdi, Disp: 80));
        e.Shl(R15, 2);
        e.Load(Rdi, new(Rdi, Disp: 88));
        e.Lea(R9, new(R8, R10, 2));
        e.Lea(Rbx, new(R11, Rbp, 2));
        e.Lea(R13, new(R12, Rbp, 2));
        // y rows: token 0 at r14, 1 at r14 + r15, 2 at rdi, 3 at rdi + r15.
        Mem[] y = [new(R14), new(R14, R15), new(Rdi), new(Rdi, R15)];
        e.Test(Rdi, Rdi);
        e.Lea(Rdi, new(R14, R15, 2)); // lea leaves the flags alone
        int toZero = e.JumpForward(Condition.Zero);
        for (int t = 0; t < 4; t++) { e.VLoad(2 * t, y[t]); e.VLoad(2 * t + 1, y[t] + 64); }
        int toLoop = e.JumpForward(Condition.Always);
        e.Bind(toZero);
        for (int t = 0; t < 4; t++) { e.VZero(2 * t); e.VZero(2 * t + 1); }
        e.Bind(toLoop);

        Mem[] x = [new(R8), new(R8, R10), new(R9), new(R9, R10)];
        Mem[] d = [new(R11), new(R11, Rbp), new(Rbx), new(Rbx, Rbp)];
        Mem[] s = [new(R12), new(R12, Rbp), new(R13), new(R13, Rbp)];
        int loop = e.Position;
        for (int r = 8; r < 16; r++) e.VZero(r);
        for (int step = 0; step < steps; step++)
        {
            if (interleaved)
            {
                e.VLoad(16, new(Rax, Disp: 32 + step * 64));
                e.VLoad(17, new(Rsi, Disp: 32 + step * 64));
            }
            else
            {
                e.VLoad(16, new(Rax, Disp: step * 128));
                e.VLoad(17, new(Rax, Disp: step * 128 + 64));
            }
            for (int t = 0; t < 4; t++)
            {
                e.VBroadcast32(25 + t, x[t] + 4 * step);
                e.Vpdpbusd(8 + 2 * t, 16, 25 + t);
                e.Vpdpbusd(9 + 2 * t, 17, 25 + t);
            }
        }
        if (interleaved)
        {
            e.Vcvtph2ps(18, new(Rax));
            e.Vcvtph2ps(19, new(Rsi));
        }
        else
        {
            e.VLoad(18, new(Rsi));
            e.VLoad(19, new(Rsi, Disp: 64));
        }
        if (mins) { e.VLoad(20, new(Rdx)); e.VLoad(21, new(Rdx, Disp: 64)); }
        for (int t = 0; t < 4; t++)
        {
            int low = 8 + 2 * t, high = 9 + 2 * t;
            if (!mins)
            {
                e.VpslldBroadcast(22, s[t], shift);
                e.Vpsubd(low, low, 22);
                e.Vpsubd(high, high, 22);
            }
            e.Vcvtdq2ps(low, low);
            e.Vcvtdq2ps(high, high);
            e.VmulpsBroadcast(23, 18, d[t]);
            e.VmulpsBroadcast(24, 19, d[t]);
            e.Vfmadd231ps(2 * t, low, 23);
            e.Vfmadd231ps(2 * t + 1, high, 24);
            if (mins)
            {
                e.Vfnmadd231psBroadcast(2 * t, 20, s[t]);
                e.Vfnmadd231psBroadcast(2 * t + 1, 21, s[t]);
            }
        }
        e.Add(Rax, interleaved ? InterleavedQ8Block : 128 * steps);
        e.Add(R8, 4 * steps);
        e.Add(R9, 4 * steps);
        e.Add(Rsi, interleaved ? InterleavedQ8Block : 128);
        e.Add(Rdx, 128);
        foreach (int r in new[] { R11, Rbx, R12, R13 }) e.Add(r, 4);
        e.Add(Rcx, -1);
        e.JumpBack(Condition.NotZero, loop);
        for (int t = 0; t < 4; t++) { e.VStore(y[t], 2 * t); e.VStore(y[t] + 64, 2 * t + 1); }

        // Next group: Xq += 4·columns, Sums and Xd += 4·blocks·4 bytes, Y += 4·ldy·4 bytes; Groups −= 1.
        e.Load(Rdi, args);
        e.Load(Rax, new(Rdi, Disp: 24)); e.Lea(Rax, new(Rax, R10, 4)); e.Store(new(Rdi, Disp: 24), Rax);
        e.Load(Rax, new(Rdi, Disp: 32)); e.Lea(Rax, new(Rax, Rbp, 4)); e.Store(new(Rdi, Disp: 32), Rax);
        e.Load(Rax, new(Rdi, Disp: 40)); e.Lea(Rax, new(Rax, Rbp, 4)); e.Store(new(Rdi, Disp: 40), Rax);
        e.Load(Rax, new(Rdi, Disp: 72)); e.Lea(Rax, new(Rax, R15, 4)); e.Store(new(Rdi, Disp: 72), Rax);
        e.Load(Rax, new(Rdi, Disp: 96)); e.Add(Rax, -1); e.Store(new(Rdi, Disp: 96), Rax);
        e.JumpBack(Condition.NotZero, group); // mov does not touch the flags of the add

        e.Pop(Rdi);
        e.Vzeroupper();
        for (int i = saved.Length - 1; i >= 0; i--) e.Pop(saved[i]);
        e.Ret();
        return e.ToArray();
    }
}
