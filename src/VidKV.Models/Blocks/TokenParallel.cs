using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// Runs per-token work (norms, RoPE, activations, residuals) split over the worker pool by tokens, without a delegate
/// or a closure: the block passes a static function and a pointer to a context struct on its stack. On one thread it
/// was 10 % of a pp512 forward once the products got faster. A single token runs on the caller.
/// </summary>
static unsafe class TokenParallel
{
    public static void Run(int tokens, delegate*<void*, int, int, void> body, void* context)
    {
        if (tokens <= 1) body(context, 0, 1);
        else WorkerPool.Shared.Run(body, context);
    }

    /// <summary>The tokens thread <paramref name="thread"/> of <paramref name="threads"/> takes.</summary>
    public static (int Start, int End) Share(int tokens, int thread, int threads) =>
        tokens <= 1 ? (0, tokens) : WorkerPool.Split(tokens, thread, threads);
}
