using System.Numerics.Tensors;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// A normalisation layer over rows of <see cref="Width"/>: RMSNorm (Llama, Qwen2: x / √(mean x² + ε) · w, the sum of
/// squares in f64 as ggml) or LayerNorm (ViTs: (x − mean) / √(var + ε) · w + b). <see cref="AddThenApply"/> fuses the
/// residual add before it, as every pre-norm transformer block starts.
/// </summary>
internal sealed unsafe class Norm(NormKind kind, float[] weight, float[]? bias, float eps)
{
    public NormKind Kind { get; } = kind;
    public int Width => weight.Length;
    public float Epsilon { get; } = eps;

    public static Norm Rms(float[] weight, float eps) => new(NormKind.Rms, weight, null, eps);
    public static Norm Layer(float[] weight, float[]? bias, float eps) => new(NormKind.Layer, weight, bias, eps);

    /// <summary>y = norm(x) for each of <paramref name="tokens"/> rows ([tokens, Width]); y may be x.</summary>
    public void Apply(Span<float> x, Span<float> y, int tokens, ForwardProfile? profile = null) => Run(x, default, y, tokens, add: false, profile);

    /// <summary>x += h, then y = norm(x), per row ([tokens, Width] each; y may be h): the residual add and the next block's norm.</summary>
    public void AddThenApply(Span<float> x, ReadOnlySpan<float> h, Span<float> y, int tokens, ForwardProfile? profile = null) => Run(x, h, y, tokens, add: true, profile);

    void Run(Span<float> x, ReadOnlySpan<float> h, Span<float> y, int tokens, bool add, ForwardProfile? profile)
    {
        int e = Width;
        if (x.Length < tokens * e || y.Length < tokens * e || add && h.Length < tokens * e) throw new ArgumentException($"rows shorter than {tokens} × {e}");
        fixed (float* px = x, ph = h, py = y, pw = weight, pb = bias)
        {
            var job = new Job { X = px, H = ph, Y = py, Weight = pw, Bias = pb, Width = e, Tokens = tokens, Eps = Epsilon, Kind = Kind, Add = add };
            TokenParallel.Run(tokens, &Execute, &job);
        }
        profile?.Lap(ForwardPhase.Other);
    }

    struct Job
    {
        public float* X, H, Y, Weight, Bias;
        public int Width, Tokens;
        public float Eps;
        public NormKind Kind;
        public bool Add;
    }

    static void Execute(void* context, int thread, int threads)
    {
        ref Job job = ref *(Job*)context;
        var (start, end) = TokenParallel.Share(job.Tokens, thread, threads);
        int e = job.Width;
        var weight = new ReadOnlySpan<float>(job.Weight, e);
        for (int t = start; t < end; t++)
        {
            var x = new Span<float>(job.X + (long)t * e, e);
            if (job.Add) TensorPrimitives.Add(x, new ReadOnlySpan<float>(job.H + (long)t * e, e), x);
            var y = new Span<float>(job.Y + (long)t * e, e);
            if (job.Kind == NormKind.Rms) Kernels.RmsNorm(x, weight, job.Eps, y);
            else Kernels.LayerNorm(x, weight, job.Bias == null ? default : new ReadOnlySpan<float>(job.Bias, e), job.Eps, y);
        }
    }
}

internal enum NormKind { Rms, Layer }
