using System.Runtime.InteropServices;

using static VidKV.Tensors.X86Emitter;

namespace VidKV.Tensors;

/// <summary>
/// Matrix-vector products of f16 rows (decode) with vcvtph2ps, emitted as machine code (<see cref="EmittedCode"/>):
/// .NET 10 exposes no F16C, and the exact shift-and-mask widening of <see cref="HalfDot"/> costs three instructions per
/// 16 weights where vcvtph2ps from memory costs one. The managed kernel streamed 26 GB/s where a plain read of the same
/// matrix ran at 39 GB/s (same process, 2 threads, 256 MiB); with one conversion and one FMA per 16 weights the
/// product runs at the read rate (checked in C first: 33–34 GB/s against 33–35 for the plain read).
/// <para>
/// Per row: four accumulators over 64 columns per step (each fed by a conversion from memory and an FMA with the
/// activations read from memory), then summed and reduced across lanes to one float. Columns must be a whole number
/// of 64 (every hidden and FFN width of the Qwen2, Llama and Mistral families is); other widths take
/// <see cref="HalfDot.DotF16"/>. Summation order differs from the managed kernel, so results agree to f32 rounding.
/// </para>
/// </summary>
internal static unsafe class F16Rows
{
    [StructLayout(LayoutKind.Sequential)]
    struct Call
    {
        public ushort* W;      // 0: the first row
        public long RowBytes;  // 8
        public long Rows;      // 16: ≥ 1
        public float* X;       // 24: the activations (not scaled)
        public long Columns;   // 32: a multiple of 64
        public float* Y;       // 40: y[r] for each row
    }

    static readonly delegate* unmanaged[SuppressGCTransition]<Call*, void> Kernel;

    static F16Rows()
    {
        if (EmittedCode.Allowed && EmittedCode.Install(Emit()) is { } entries)
            Kernel = (delegate* unmanaged[SuppressGCTransition]<Call*, void>)entries[0];
    }

    /// <summary>Whether the emitted kernel runs rows of <paramref name="columns"/> on this machine.</summary>
    public static bool Handles(int columns) => Kernel != null && columns > 0 && columns % 64 == 0;

    /// <summary>y[r] = Σ_c f16(w[r·rowBytes/2 + c])·x[c] for r &lt; <paramref name="rows"/>; needs <see cref="Handles"/>.</summary>
    public static void Run(ushort* w, long rowBytes, int rows, float* x, int columns, float* y)
    {
        if (!Handles(columns)) throw new InvalidOperationException($"F16Rows cannot run rows of {columns} columns here.");
        if (rows <= 0) return;
        var call = new Call { W = w, RowBytes = rowBytes, Rows = rows, X = x, Columns = columns, Y = y };
        Kernel(&call);
    }

    /// <summary>
    /// rax walks the rows (pointing past the used bytes of the current one), r9 runs from −(bytes per row) up to 0 so
    /// one add both steps the columns and ends the loop; x is addressed from its end as rsi + 2·r9.
    /// </summary>
    static byte[] Emit()
    {
        var e = new X86Emitter();
        e.Load(Rax, new(Rdi, Disp: 0));
        e.Load(R8, new(Rdi, Disp: 8));
        e.Load(Rcx, new(Rdi, Disp: 16));
        e.Load(Rsi, new(Rdi, Disp: 24));
        e.Load(R10, new(Rdi, Disp: 32));
        e.Load(Rdx, new(Rdi, Disp: 40));
        e.AddRegister(R10, R10);        // bytes of f16 per row
        e.AddRegister(Rax, R10);
        e.Lea(Rsi, new(Rsi, R10, 2));   // the end of x
        e.Neg(R10);
        int row = e.Position;
        for (int k = 0; k < 4; k++) e.VZero(k);
        e.Mov(R9, R10);
        int column = e.Position;
        for (int k = 0; k < 4; k++)
        {
            e.Vcvtph2ps(16 + k, new(Rax, R9, 1, 32 * k));
            e.Vfmadd231ps(k, 16 + k, new Mem(Rsi, R9, 2, 64 * k));
        }
        e.Add(R9, 128);
        e.JumpBack(Condition.NotZero, column);
        e.Vaddps(0, 0, 1);
        e.Vaddps(2, 2, 3);
        e.Vaddps(0, 0, 2);
        e.ExtractUpper256(1, 0);
        e.Vaddps(0, 0, 1, 256);
        e.ExtractUpper128(1, 0);
        e.Vaddps(0, 0, 1, 128);
        e.Vpermilps128(1, 0, 0x4E); // swap the 64-bit halves
        e.Vaddps(0, 0, 1, 128);
        e.Vpermilps128(1, 0, 0xB1); // swap neighbours
        e.Vaddps(0, 0, 1, 128);
        e.VStoreScalar(new(Rdx), 0);
        e.Add(Rdx, 4);
        e.AddRegister(Rax, R8);
        e.Add(Rcx, -1);
        e.JumpBack(Condition.NotZero, row);
        e.Vzeroupper();
        e.Ret();
        return e.ToArray();
    }
}
