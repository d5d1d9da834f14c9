using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace VidKV.Tensors;

/// <summary>
/// A 2-D weight tensor kept in its stored dtype: <see cref="Rows"/> output features, each a contiguous row of
/// <see cref="Columns"/> input features (ggml's ne0 = columns, ne1 = rows). The memory belongs to the owner
/// (a memory-mapped model file or a native buffer) and must outlive this view.
/// </summary>
public sealed unsafe class WeightMatrix
{
    /// <summary>Rows per unit of work: a tile stays in L1 while every token passes over it.</summary>
    const int RowTile = 16;

    readonly byte* data;

    public WeightMatrix(string name, GgmlType type, int rows, int columns, byte* data)
    {
        if (columns % GgmlTypes.BlockSize(type) != 0)
            throw new ArgumentException($"tensor {name}: row of {columns} is not a whole number of {GgmlTypes.Name(type)} blocks");
        Name = name;
        Type = type;
        Rows = rows;
        Columns = columns;
        RowBytes = (int)GgmlTypes.RowBytes(type, columns);
        this.data = data;
    }

    public string Name { get; }
    public GgmlType Type { get; }
    public int Rows { get; }
    public int Columns { get; }
    public int RowBytes { get; }

    /// <summary>The stored bytes of row <paramref name="row"/>.</summary>
    public ReadOnlySpan<byte> RowData(int row) => new(data + (long)row * RowBytes, RowBytes);

    /// <summary>Row <paramref name="row"/> as f32 (an embedding lookup).</summary>
    public void DequantizeRow(int row, Span<float> destination) => Dequantize.Row(Type, RowData(row), destination[..Columns]);

    /// <summary>True when activations are quantised to 8 bits and multiplied with integer dot products (Q8_0, Q4_0).</summary>
    public bool UsesQuantizedActivations => Type is GgmlType.Q8_0 or GgmlType.Q4_0;

    /// <summary>
    /// y[t, r] = Σ_c W[r, c] · x[t, c] for <paramref name="tokens"/> rows of activations, split over the worker pool.
    /// Q8_0/Q4_0 weights multiply 8-bit quantised activations (see <see cref="QuantizedDot"/>); other types use f32.
    /// <paramref name="x"/>: [tokens, Columns]; <paramref name="y"/>: [tokens, Rows].
    /// </summary>
    public void MatMul(ReadOnlySpan<float> x, int tokens, Span<float> y, WorkerPool? pool = null)
    {
        if (x.Length < tokens * Columns || y.Length < tokens * Rows) throw new ArgumentException($"{Name}: activation shapes do not match [{Rows}, {Columns}]");
        if (tokens == 0) return;
        pool ??= WorkerPool.Shared;
        var scratch = Scratch.ForCurrentThread;
        fixed (float* px = x, py = y)
        {
            var job = new Job { Weights = data, RowBytes = RowBytes, Rows = Rows, Columns = Columns, Tokens = tokens, Type = Type, X = px, Y = py };
            if (UsesQuantizedActivations)
            {
                int blocks = Columns / QuantizedDot.BlockSize;
                scratch.EnsureQuantized(tokens * Columns, tokens * blocks);
                for (int t = 0; t < tokens; t++)
                    QuantizedDot.QuantizeRow(x.Slice(t * Columns, Columns), scratch.Quants.AsSpan(t * Columns, Columns), scratch.Scales.AsSpan(t * blocks, blocks));
                fixed (sbyte* pq = scratch.Quants)
                fixed (float* ps = scratch.Scales)
                {
                    job.Quants = pq;
                    job.Scales = ps;
                    pool.Run(&Execute, &job);
                }
            }
            else pool.Run(&Execute, &job);
        }
    }

    struct Job
    {
        public byte* Weights;
        public int RowBytes, Rows, Columns, Tokens;
        public GgmlType Type;
        public float* X, Y;
        public sbyte* Quants;
        public float* Scales;
    }

    static void Execute(void* context, int thread, int threads)
    {
        ref Job job = ref *(Job*)context;
        var (start, end) = WorkerPool.Split(job.Rows, thread, threads, RowTile);
        int columns = job.Columns, blocks = columns / QuantizedDot.BlockSize;
        if (job.Type is not (GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.F32))
        {
            // Other dtypes: dequantise each row once into an L1-resident buffer, then dot it with every token.
            float[] buffer = Scratch.ForCurrentThread.Row(columns);
            for (int r = start; r < end; r++)
            {
                Dequantize.Row(job.Type, new ReadOnlySpan<byte>(job.Weights + (long)r * job.RowBytes, job.RowBytes), buffer.AsSpan(0, columns));
                for (int t = 0; t < job.Tokens; t++)
                    job.Y[(long)t * job.Rows + r] = TensorPrimitives.Dot(buffer.AsSpan(0, columns), new ReadOnlySpan<float>(job.X + (long)t * columns, columns));
            }
            return;
        }
        for (int tile = start; tile < end; tile += RowTile)
        {
            int tileEnd = Math.Min(end, tile + RowTile);
            for (int t = 0; t < job.Tokens; t++)
            {
                float* y = job.Y + (long)t * job.Rows;
                sbyte* xq = job.Quants + (long)t * columns;
                float* xd = job.Scales + (long)t * blocks;
                for (int r = tile; r < tileEnd; r++)
                {
                    byte* w = job.Weights + (long)r * job.RowBytes;
                    y[r] = job.Type switch
                    {
                        GgmlType.Q8_0 => QuantizedDot.DotQ8_0(w, xq, xd, blocks),
                        GgmlType.Q4_0 => QuantizedDot.DotQ4_0(w, xq, xd, blocks),
                        _ => TensorPrimitives.Dot(new ReadOnlySpan<float>(w, columns), new ReadOnlySpan<float>(job.X + (long)t * columns, columns)),
                    };
                }
            }
        }
    }

    /// <summary>Per-thread buffers that grow to the largest size seen and are then reused (no allocation per call).</summary>
    sealed class Scratch
    {
        [ThreadStatic] static Scratch? current;
        public static Scratch ForCurrentThread => current ??= new Scratch();

        public sbyte[] Quants = [];
        public float[] Scales = [];
        float[] row = [];

        public void EnsureQuantized(int quants, int scales)
        {
            if (Quants.Length < quants) Quants = new sbyte[quants];
            if (Scales.Length < scales) Scales = new float[scales];
        }

        public float[] Row(int length) => row.Length >= length ? row : row = new float[length];
    }
}
