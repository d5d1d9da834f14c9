using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// Named weights of a model file, addressed by GGUF tensor names (<c>token_embd.weight</c>, <c>blk.3.attn_q.weight</c>).
/// Matrices stay in their stored dtype; 1-D tensors (norms, biases) are read as f32.
/// </summary>
internal interface IWeightSource : IDisposable
{
    /// <summary>The file or folder the weights come from, for messages.</summary>
    string Path { get; }

    bool Contains(string name);

    /// <summary>
    /// The tensor's dimensions in GGUF order (innermost first: a [rows, columns] matrix is [columns, rows]); null when
    /// absent. Lets a loader take a width from the tensor itself, as llama.cpp does.
    /// </summary>
    long[]? Dimensions(string name);

    /// <summary>A [rows, columns] matrix; throws <see cref="Formats.ModelFormatException"/> naming the tensor when absent or of another shape.</summary>
    WeightMatrix Matrix(string name, int rows, int columns);

    /// <summary>
    /// A tensor of more than two dimensions read as a [rows, columns] matrix: its outermost dimension the rows, the rest
    /// flattened into the columns (a conv kernel [out, in, kh, kw] as [out, in·kh·kw]).
    /// </summary>
    WeightMatrix Flattened(string name, int rows, int columns);

    /// <summary>A 1-D tensor of <paramref name="length"/> elements as f32.</summary>
    float[] Vector(string name, int length);
}
