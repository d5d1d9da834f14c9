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

    /// <summary>
    /// y[t, r] = Σ_c W[r, c] · x[t, c] for <paramref name="tokens"/> rows of activations.
    /// <paramref name="x"/>: [tokens, Columns]; <paramref name="y"/>: [tokens, Rows].
    /// </summary>
    public void MatMul(ReadOnlySpan<float> x, int tokens, Span<float> y)
    {
        if (x.Length < tokens * Columns || y.Length < tokens * Rows) throw new ArgumentException($"{Name}: activation shapes do not match [{Rows}, {Columns}]");
        fixed (float* px = x, py = y)
        {
            float* xp = px, yp = py;
            const int rowsPerTask = 16;
            int tasks = (Rows + rowsPerTask - 1) / rowsPerTask;
            Parallel.For(0, tasks, task =>
            {
                int start = task * rowsPerTask, end = Math.Min(Rows, start + rowsPerTask);
                float[] buffer = Type == GgmlType.F32 ? [] : RowBuffer(Columns);
                for (int r = start; r < end; r++)
                {
                    ReadOnlySpan<float> w;
                    if (Type == GgmlType.F32) w = MemoryMarshal.Cast<byte, float>(RowData(r));
                    else
                    {
                        Dequantize.Row(Type, RowData(r), buffer.AsSpan(0, Columns));
                        w = buffer.AsSpan(0, Columns);
                    }
                    for (int t = 0; t < tokens; t++)
                        yp[(long)t * Rows + r] = TensorPrimitives.Dot(w, new ReadOnlySpan<float>(xp + (long)t * Columns, Columns));
                }
            });
        }
    }

    [ThreadStatic] static float[]? rowBuffer;

    static float[] RowBuffer(int length)
    {
        if (rowBuffer == null || rowBuffer.Length < length) rowBuffer = new float[length];
        return rowBuffer;
    }
}
