using System.Numerics.Tensors;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>y = x·Wᵀ + b: a weight matrix in its stored type (<see cref="WeightMatrix"/>) and an optional f32 bias.</summary>
internal sealed unsafe class Linear(WeightMatrix weight, float[]? bias, ForwardPhase phase)
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
        AddBias(y, tokens, Bias);
        profile?.Lap(ForwardPhase.Other);
    }

    /// <summary>y[t] += bias for every row, split over the pool by rows (a ViT's 1024 rows × 3072 are a few ms on one core).</summary>
    internal static void AddBias(Span<float> y, int tokens, ReadOnlySpan<float> bias)
    {
        fixed (float* py = y, pb = bias)
        {
            var job = new BiasJob { Y = py, Bias = pb, Width = bias.Length, Tokens = tokens };
            TokenParallel.Run(tokens, &AddBiasShare, &job);
        }
    }

    struct BiasJob
    {
        public float* Y, Bias;
        public int Width, Tokens;
    }

    static void AddBiasShare(void* context, int thread, int threads)
    {
        ref BiasJob job = ref *(BiasJob*)context;
        var (start, end) = TokenParallel.Share(job.Tokens, thread, threads);
        var bias = new ReadOnlySpan<float>(job.Bias, job.Width);
        for (int t = start; t < end; t++)
        {
            var row = new Span<float>(job.Y + (long)t * job.Width, job.Width);
            TensorPrimitives.Add(row, bias, row);
        }
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
