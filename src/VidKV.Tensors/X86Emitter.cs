namespace VidKV.Tensors;

/// <summary>
/// A minimal x86-64 assembler: just the instruction forms the emitted kernels (<see cref="VnniTiles"/>,
/// <see cref="Bf16Tiles"/>, <see cref="F16Rows"/>) need, encoded per the Intel SDM (volume 2, §2.2 REX, §2.7 EVEX).
/// Every memory operand has a SIB byte (so rsp and r12 work as bases) and the shortest displacement: none, disp8
/// (EVEX's compressed disp8·N) or disp32 — disp32 everywhere made each VNNI step's broadcast 10 bytes instead of 7, and
/// the SmolVLM2-shaped encoder pass 2.5 % slower on AMD EPYC Zen 5.
/// </summary>
internal sealed class X86Emitter
{
    readonly List<byte> code = [];

    /// <summary>General-purpose register numbers as the encoding uses them.</summary>
    public const int Rax = 0, Rcx = 1, Rdx = 2, Rbx = 3, Rsp = 4, Rbp = 5, Rsi = 6, Rdi = 7,
        R8 = 8, R9 = 9, R10 = 10, R11 = 11, R12 = 12, R13 = 13, R14 = 14, R15 = 15;

    /// <summary>A memory operand [base + index·scale + disp] (index −1: none; rsp cannot be an index).</summary>
    public readonly record struct Mem(int Base, int Index = -1, int Scale = 1, int Disp = 0)
    {
        public static Mem operator +(Mem m, int disp) => m with { Disp = m.Disp + disp };
    }

    /// <summary>The bytes emitted so far.</summary>
    public byte[] ToArray() => [.. code];

    /// <summary>Current offset (a label).</summary>
    public int Position => code.Count;

    void Byte(int b) => code.Add((byte)b);

    void Int32(int v)
    {
        for (int i = 0; i < 4; i++) Byte(v >> (8 * i));
    }

    /// <summary>
    /// ModRM, SIB and the shortest displacement for <paramref name="m"/> with <paramref name="reg"/>'s low bits: none
    /// when it is 0 (unless the base is rbp or r13, which need one), else disp8 when it is a multiple of
    /// <paramref name="scale"/> within ±127 of it (EVEX's compressed disp8·N, N the bytes the instruction reads; 1 for
    /// the general-purpose forms), else disp32. A VNNI step's broadcast at +4·step is then 10 bytes → 7.
    /// </summary>
    void Address(int reg, Mem m, int scale = 1)
    {
        if (m.Index == Rsp) throw new ArgumentException("rsp cannot be an index register.", nameof(m));
        int scaleBits = m.Scale switch { 1 => 0, 2 => 1, 4 => 2, 8 => 3, _ => throw new ArgumentException($"Scale {m.Scale} is not 1, 2, 4 or 8.", nameof(m)) };
        int mod = m.Disp == 0 && (m.Base & 7) != 5 ? 0 : m.Disp % scale == 0 && m.Disp / scale is >= -128 and <= 127 ? 1 : 2;
        Byte(mod << 6 | (reg & 7) << 3 | 4);
        Byte(scaleBits << 6 | (m.Index < 0 ? 4 : m.Index & 7) << 3 | (m.Base & 7));
        if (mod == 1) Byte(m.Disp / scale);
        else if (mod == 2) Int32(m.Disp);
    }

    // ---- General-purpose instructions (64-bit operands: REX.W) ----

    void Rex(int reg, int index, int rm) => Byte(0x48 | (reg >> 3 & 1) << 2 | (index < 0 ? 0 : index >> 3 & 1) << 1 | (rm >> 3 & 1));

    /// <summary>mov r64, [m]</summary>
    public void Load(int dst, Mem m) { Rex(dst, m.Index, m.Base); Byte(0x8B); Address(dst, m); }

    /// <summary>mov r64, r64</summary>
    public void Mov(int dst, int src) { Rex(dst, -1, src); Byte(0x8B); Byte(0xC0 | (dst & 7) << 3 | (src & 7)); }

    /// <summary>add r64, r64</summary>
    public void AddRegister(int dst, int src) { Rex(dst, -1, src); Byte(0x03); Byte(0xC0 | (dst & 7) << 3 | (src & 7)); }

    /// <summary>neg r64</summary>
    public void Neg(int dst) { Rex(0, -1, dst); Byte(0xF7); Byte(0xD8 | (dst & 7)); }

    /// <summary>mov [m], r64</summary>
    public void Store(Mem m, int src) { Rex(src, m.Index, m.Base); Byte(0x89); Address(src, m); }

    /// <summary>lea r64, [m]</summary>
    public void Lea(int dst, Mem m) { Rex(dst, m.Index, m.Base); Byte(0x8D); Address(dst, m); }

    /// <summary>add r64, imm32</summary>
    public void Add(int dst, int imm) { Rex(0, -1, dst); Byte(0x81); Byte(0xC0 | (dst & 7)); Int32(imm); }

    /// <summary>shl r64, imm8</summary>
    public void Shl(int dst, int imm) { Rex(0, -1, dst); Byte(0xC1); Byte(0xE0 | (dst & 7)); Byte(imm); }

    /// <summary>test r64, r64</summary>
    public void Test(int a, int b) { Rex(b, -1, a); Byte(0x85); Byte(0xC0 | (b & 7) << 3 | (a & 7)); }

    /// <summary>push r64</summary>
    public void Push(int r) { if (r >= 8) Byte(0x41); Byte(0x50 | (r & 7)); }

    /// <summary>pop r64</summary>
    public void Pop(int r) { if (r >= 8) Byte(0x41); Byte(0x58 | (r & 7)); }

    public void Ret() => Byte(0xC3);

    /// <summary>vzeroupper (the caller's SSE code pays no transition penalty).</summary>
    public void Vzeroupper() { Byte(0xC5); Byte(0xF8); Byte(0x77); }

    /// <summary>A forward jump (jmp, jz or jnz) to be bound with <see cref="Bind"/>; returns its patch position.</summary>
    public int JumpForward(Condition condition)
    {
        Branch(condition);
        Int32(0);
        return code.Count;
    }

    /// <summary>Points the forward jump ending at <paramref name="patch"/> to the current position.</summary>
    public void Bind(int patch)
    {
        int rel = code.Count - patch;
        for (int i = 0; i < 4; i++) code[patch - 4 + i] = (byte)(rel >> (8 * i));
    }

    /// <summary>A backward jump to <paramref name="label"/>.</summary>
    public void JumpBack(Condition condition, int label)
    {
        Branch(condition);
        Int32(label - (code.Count + 4));
    }

    void Branch(Condition condition)
    {
        if (condition == Condition.Always) { Byte(0xE9); return; }
        Byte(0x0F);
        Byte(condition == Condition.Zero ? 0x84 : 0x85);
    }

    public enum Condition { Always, Zero, NotZero }

    // ---- AVX-512 instructions on zmm registers (EVEX.512) ----

    /// <summary>Opcode maps and mandatory prefixes of the EVEX forms used.</summary>
    const int Map0F = 1, Map0F38 = 2, Map0F3A = 3, NoPrefix = 0, P66 = 1, PF3 = 2;

    /// <summary>Vector lengths (EVEX.L'L): xmm, ymm, zmm.</summary>
    const int L128 = 0, L256 = 1, L512 = 2;

    /// <summary>
    /// EVEX prefix, opcode and operands. <paramref name="vvvv"/> is the second source (−1: unused);
    /// <paramref name="rm"/> a vector register when <paramref name="m"/> is null; <paramref name="broadcast"/> sets EVEX.b
    /// (a 32-bit memory element repeated to all 16 lanes, {1to16}). No masking.
    /// </summary>
    void Evex(int map, int pp, int opcode, int reg, int vvvv, int rm, Mem? m, bool broadcast, int length = L512, bool w = false, int memoryBytes = 0)
    {
        int v = vvvv < 0 ? 0 : vvvv;
        int x, b;
        if (m is { } mem) { x = mem.Index < 0 ? 0 : mem.Index >> 3 & 1; b = mem.Base >> 3 & 1; }
        else { x = rm >> 4 & 1; b = rm >> 3 & 1; }
        Byte(0x62);
        Byte((~reg >> 3 & 1) << 7 | (~x & 1) << 6 | (~b & 1) << 5 | (~reg >> 4 & 1) << 4 | map);
        Byte((w ? 0x80 : 0) | (~v & 15) << 3 | 4 | pp);
        Byte(length << 5 | (broadcast ? 1 : 0) << 4 | (~v >> 4 & 1) << 3);
        Byte(opcode);
        // disp8·N: N is the element for a broadcast, else the bytes read or written (the whole vector unless given).
        if (m is { } address) Address(reg, address, broadcast ? (w ? 8 : 4) : memoryBytes > 0 ? memoryBytes : 16 << length);
        else Byte(0xC0 | (reg & 7) << 3 | (rm & 7));
    }

    /// <summary>vmovups zmm, [m]</summary>
    public void VLoad(int dst, Mem m) => Evex(Map0F, NoPrefix, 0x10, dst, -1, 0, m, false);

    /// <summary>vpbroadcastd zmm, [m]: one 32-bit element to all 16 lanes</summary>
    public void VBroadcast32(int dst, Mem m) => Evex(Map0F38, P66, 0x58, dst, -1, 0, m, false, memoryBytes: 4);

    /// <summary>vmovups [m], zmm</summary>
    public void VStore(Mem m, int src) => Evex(Map0F, NoPrefix, 0x11, src, -1, 0, m, false);

    /// <summary>vpxord zmm, zmm, zmm (with itself: zero).</summary>
    public void VZero(int dst) => Evex(Map0F, P66, 0xEF, dst, dst, dst, null, false);

    /// <summary>vpdpbusd acc, u8, s8: acc (int32 lanes) += Σ of the 4 products of each lane's unsigned bytes of
    /// <paramref name="unsigned"/> with its signed bytes of <paramref name="signed"/>.</summary>
    public void Vpdpbusd(int acc, int unsigned, int signed) => Evex(Map0F38, P66, 0x50, acc, unsigned, signed, null, false);

    /// <summary>vpslld dst, [m]{1to16}, imm8</summary>
    public void VpslldBroadcast(int dst, Mem m, int shift) { Evex(Map0F, P66, 0x72, 6, dst, 0, m, true); Byte(shift); }

    /// <summary>vpsubd dst, a, b (dst = a − b)</summary>
    public void Vpsubd(int dst, int a, int b) => Evex(Map0F, P66, 0xFA, dst, a, b, null, false);

    /// <summary>vcvtdq2ps dst, src</summary>
    public void Vcvtdq2ps(int dst, int src) => Evex(Map0F, NoPrefix, 0x5B, dst, -1, src, null, false);

    /// <summary>vmulps dst, a, [m]{1to16}</summary>
    public void VmulpsBroadcast(int dst, int a, Mem m) => Evex(Map0F, NoPrefix, 0x59, dst, a, 0, m, true);

    /// <summary>vfmadd231ps acc, a, b (acc = a·b + acc, one rounding)</summary>
    public void Vfmadd231ps(int acc, int a, int b) => Evex(Map0F38, P66, 0xB8, acc, a, b, null, false);

    /// <summary>vdpbf16ps acc, a, b: acc (16 f32 lanes) += the two bf16 products of each lane's pairs in
    /// <paramref name="a"/> and <paramref name="b"/> (AVX512_BF16).</summary>
    public void Vdpbf16ps(int acc, int a, int b) => Evex(Map0F38, PF3, 0x52, acc, a, b, null, false);

    /// <summary>vcvtph2ps zmm, [m] (16 f16 at m to f32, exact)</summary>
    public void Vcvtph2ps(int dst, Mem m) => Evex(Map0F38, P66, 0x13, dst, -1, 0, m, false, memoryBytes: 32);

    /// <summary>vfmadd231ps acc, a, [m] (acc = a·m + acc, 16 lanes)</summary>
    public void Vfmadd231ps(int acc, int a, Mem m) => Evex(Map0F38, P66, 0xB8, acc, a, 0, m, false);

    /// <summary>vaddps dst, a, b on zmm (512), ymm (256) or xmm (128) registers.</summary>
    public void Vaddps(int dst, int a, int b, int bits = 512) => Evex(Map0F, NoPrefix, 0x58, dst, a, b, null, false, bits == 512 ? L512 : bits == 256 ? L256 : L128);

    /// <summary>vextractf64x4 ymm dst, zmm src, 1 (the upper 256 bits).</summary>
    public void ExtractUpper256(int dst, int src) { Evex(Map0F3A, P66, 0x1B, src, -1, dst, null, false, L512, w: true); Byte(1); }

    /// <summary>vextractf32x4 xmm dst, ymm src, 1 (the upper 128 bits).</summary>
    public void ExtractUpper128(int dst, int src) { Evex(Map0F3A, P66, 0x19, src, -1, dst, null, false, L256); Byte(1); }

    /// <summary>vpermilps xmm dst, xmm src, imm8 (lane i takes lane imm[2i+1:2i]).</summary>
    public void Vpermilps128(int dst, int src, int imm) { Evex(Map0F3A, P66, 0x04, dst, -1, src, null, false, L128); Byte(imm); }

    /// <summary>vmovss [m], xmm (lane 0).</summary>
    public void VStoreScalar(Mem m, int src) => Evex(Map0F, PF3, 0x11, src, -1, 0, m, false, L128, memoryBytes: 4);

    /// <summary>vfnmadd231ps acc, a, [m]{1to16} (acc = −(a·m) + acc, one rounding)</summary>
    public void Vfnmadd231psBroadcast(int acc, int a, Mem m) => Evex(Map0F38, P66, 0xBC, acc, a, 0, m, true);
}
