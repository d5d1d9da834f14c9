using System.Numerics.Tensors;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>y = x·Wᵀ + b: a weight matrix in its stored type (<see cref="WeightMatrix"/>) and an optional f32 bias.</summary>
internal sealed class Linear(WeightMatrix weight, float[]? bias, ForwardPhase phase)
{
    public WeightMatrix Weight { get; } = weight;
    public float[]? Bias { get; } = bias;
    /// <summary>The phase its product is timed under.</summary>
    public ForwardPhase Phase { get; } = phase;
    public int Inputs => Weight.Columns;
    public int Outputs => Weight.Rows;

    /// <summary>y = x·Wᵀ + b for <paramref name="tokens"/> rows: x [tokens, Inputs], y [tokens, Outputs].</summary>
    public void Forward(ReadOnlySpan<float> x, int tokens, Span<float> y, ForwardProfile? profile = null)
    {
        Weight.MatMul(x, tokens, y);
        profile?.Lap(Phase);
        if (Bias == null) return;
        for (int t = 0; t < tokens; t++) TensorPrimitives.Add(y.Slice(t * Outputs, Outputs), Bias, y.Slice(t * Outputs, Outputs));
        profile?.Lap(ForwardPhase.Other);
    }

    /// <summary>
    /// The products of two or three layers that share their input (q/k/v, gate/up) in one pass over the activations
    /// (<see cref="WeightMatrix.MatMul(ReadOnlySpan{float}, int, WeightMatrix, Span{float}, WeightMatrix?, Span{float}, WeightMatrix?, Span{float}, WorkerPool?)"/>),
    /// without their biases: the caller adds those where it next touches each row.
    /// </summary>
    public static void ForwardShared(ReadOnlySpan<float> x, int tokens, Linear a, Span<float> ya, Linear b, Span<float> yb, Linear? c, Span<float> yc,
        ForwardProfile? profile = null)
    {
        WeightMatrix.MatMul(x, tokens, a.Weight, ya, b.Weight, yb, c?.Weight, yc);
        profile?.Lap(a.Phase);
    }
}
