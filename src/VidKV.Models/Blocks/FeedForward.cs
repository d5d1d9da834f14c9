using System.Numerics.Tensors;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>The position-wise MLP of a transformer block: <see cref="SwiGluFeedForward"/> (Llama, Qwen2) or <see cref="GeluFeedForward"/> (ViTs, LLaVA's projector).</summary>
internal abstract class FeedForward
{
    /// <summary>h [tokens, embedding] in, the block's output out into the same buffer.</summary>
    public abstract void Forward(Span<float> h, int tokens, Activations buffers, ForwardProfile? profile);
}

/// <summary>down(silu(gate(x)) · up(x)), gate and up in one pass over the activations.</summary>
internal sealed unsafe class SwiGluFeedForward(Linear gate, Linear up, Linear down) : FeedForward
{
    public Linear Gate { get; } = gate;
    public Linear Up { get; } = up;
    public Linear Down { get; } = down;

    public override void Forward(Span<float> h, int tokens, Activations buffers, ForwardProfile? profile)
    {
        int f = Gate.Outputs;
        Span<float> g = buffers.Gate(tokens * f), u = buffers.Up(tokens * f);
        Linear.ForwardShared(h, tokens, Gate, g, Up, u, null, default, profile);
        fixed (float* pg = g, pu = u, gb = Gate.Bias, ub = Up.Bias)
        {
            var job = new Job { Gate = pg, Up = pu, GateBias = gb, UpBias = ub, Width = f, Tokens = tokens };
            TokenParallel.Run(tokens, &Execute, &job);
        }
        profile?.Lap(ForwardPhase.Other);
        Down.Forward(g, tokens, h, profile);
    }

    struct Job
    {
        public float* Gate, Up, GateBias, UpBias;
        public int Width, Tokens;
    }

    static void Execute(void* context, int thread, int threads)
    {
        ref Job w = ref *(Job*)context;
        var (start, end) = TokenParallel.Share(w.Tokens, thread, threads);
        for (int t = start; t < end; t++)
        {
            var gate = new Span<float>(w.Gate + (long)t * w.Width, w.Width);
            var up = new Span<float>(w.Up + (long)t * w.Width, w.Width);
            if (w.GateBias != null) TensorPrimitives.Add(gate, new ReadOnlySpan<float>(w.GateBias, w.Width), gate);
            if (w.UpBias != null) TensorPrimitives.Add(up, new ReadOnlySpan<float>(w.UpBias, w.Width), up);
            Kernels.SwiGlu(gate, up, gate);
        }
    }
}

/// <summary>down(gelu(up(x))) with biases, GELU in its tanh form or CLIP's quick form.</summary>
internal sealed unsafe class GeluFeedForward(Linear up, Linear down, bool quick = false) : FeedForward
{
    public Linear Up { get; } = up;
    public Linear Down { get; } = down;
    public bool Quick { get; } = quick;

    public override void Forward(Span<float> h, int tokens, Activations buffers, ForwardProfile? profile)
    {
        int f = Up.Outputs;
        Span<float> u = buffers.Up(tokens * f);
        Up.Forward(h, tokens, u, profile);
        fixed (float* pu = u)
        {
            var job = new Job { Up = pu, Width = f, Tokens = tokens, Quick = Quick };
            TokenParallel.Run(tokens, &Execute, &job);
        }
        profile?.Lap(ForwardPhase.Other);
        Down.Forward(u, tokens, h, profile);
    }

    struct Job
    {
        public float* Up;
        public int Width, Tokens;
        public bool Quick;
    }

    static void Execute(void* context, int thread, int threads)
    {
        ref Job w = ref *(Job*)context;
        var (start, end) = TokenParallel.Share(w.Tokens, thread, threads);
        for (int t = start; t < end; t++)
        {
            var row = new Span<float>(w.Up + (long)t * w.Width, w.Width);
            if (w.Quick) Kernels.QuickGelu(row, row);
            else Kernels.Gelu(row, row);
        }
    }
}
