using VidKV.Formats;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>Weights served straight from a memory-mapped GGUF file.</summary>
internal sealed unsafe class GgufWeights(GgufFile file) : IWeightSource
{
    public GgufFile File { get; } = file;
    public string Path => File.Path;

    public bool Contains(string name) => File.FindTensor(name) != null;

    public long[]? Dimensions(string name) => File.FindTensor(name)?.Shape.ToArray();

    public WeightMatrix Matrix(string name, int rows, int columns)
    {
        var t = Find(name);
        if (t.Shape.Length != 2 || t.Shape[0] != columns || t.Shape[1] != rows)
            throw ModelFormatException.AtTensor(Path, name, $"shape [{string.Join(", ", t.Shape)}] does not match the expected [{columns}, {rows}]");
        return new WeightMatrix(name, t.Type, rows, columns, File.TensorPointer(t));
    }

    public WeightMatrix Flattened(string name, int rows, int columns)
    {
        var t = Find(name);
        if (t.Shape.Length < 2 || t.Shape[^1] != rows || t.ElementCount != (long)rows * columns)
            throw ModelFormatException.AtTensor(Path, name, $"shape [{string.Join(", ", t.Shape)}] is not {rows} rows of {columns}");
        return new WeightMatrix(name, t.Type, rows, columns, File.TensorPointer(t));
    }

    public float[] Vector(string name, int length)
    {
        var t = Find(name);
        if (t.ElementCount != length)
            throw ModelFormatException.AtTensor(Path, name, $"has {t.ElementCount} elements, expected {length}");
        var result = new float[length];
        Dequantize.Row(t.Type, File.TensorData(t), result);
        return result;
    }

    GgufTensorInfo Find(string name) => File.FindTensor(name) ?? throw ModelFormatException.AtTensor(Path, name, "required tensor is missing");

    public void Dispose() => File.Dispose();
}
