namespace VidKV.Engine;

/// <summary>Sampling settings; defaults are llama.cpp's (<c>common_params_sampling</c>).</summary>
public sealed record SamplingOptions
{
    /// <summary>≤ 0 means greedy (argmax, lowest id on ties).</summary>
    public float Temperature { get; init; } = 0.8f;
    /// <summary>Keep the k most likely tokens; ≤ 0 keeps all.</summary>
    public int TopK { get; init; } = 40;
    /// <summary>Keep the smallest set whose probability reaches p; 1 keeps all.</summary>
    public float TopP { get; init; } = 0.95f;
    /// <summary>Drop tokens below min_p × the top probability; 0 keeps all.</summary>
    public float MinP { get; init; } = 0.05f;
    /// <summary>Divide positive (multiply negative) logits of recently seen tokens; 1 disables.</summary>
    public float RepeatPenalty { get; init; } = 1.0f;
    /// <summary>How many recent tokens the repetition penalty looks at.</summary>
    public int RepeatLastN { get; init; } = 64;
    /// <summary>Seed of the random draw; null picks one.</summary>
    public int? Seed { get; init; }

    /// <summary>Always the most likely token (temperature 0), so answers are reproducible.</summary>
    public static SamplingOptions Greedy { get; } = new() { Temperature = 0 };

    /// <summary>A 64-bit seed (OpenAI's, Microsoft.Extensions.AI's) as the sampler's 32-bit one: its halves folded, so every seed still picks one fixed stream.</summary>
    internal static int FoldSeed(long seed) => unchecked((int)seed ^ (int)(seed >> 32));
}

/// <summary>
/// Picks the next token from logits with llama.cpp's chain order: repetition penalty → top-k → top-p → min-p →
/// temperature → draw. Buffers are allocated once per vocabulary size, so sampling allocates nothing per token.
/// </summary>
internal sealed class Sampler
{
    readonly SamplingOptions options;
    readonly Random random;
    float[] work = [];
    int[] ids = [];
    double[] probabilities = [];

    public Sampler(SamplingOptions options)
    {
        this.options = options;
        random = new Random(options.Seed ?? Random.Shared.Next());
    }

    public SamplingOptions Options => options;

    /// <summary>Chooses a token. <paramref name="history"/> holds the tokens so far (prompt and generated) for the penalty.</summary>
    public int Sample(ReadOnlySpan<float> logits, IReadOnlyList<int> history)
    {
        int n = logits.Length;
        if (work.Length != n) { work = new float[n]; ids = new int[n]; probabilities = new double[n]; }
        logits.CopyTo(work);

        if (options.RepeatPenalty != 1f && options.RepeatLastN != 0)
        {
            int from = options.RepeatLastN < 0 ? 0 : Math.Max(0, history.Count - options.RepeatLastN);
            for (int i = from; i < history.Count; i++)
            {
                int t = history[i];
                if ((uint)t >= (uint)n || AlreadyPenalized(history, from, i, t)) continue;
                work[t] = work[t] > 0 ? work[t] / options.RepeatPenalty : work[t] * options.RepeatPenalty;
            }
        }

        if (options.Temperature <= 0) return ArgMax(work);

        for (int i = 0; i < n; i++) ids[i] = i;
        Array.Sort(work, ids, 0, n, DescendingLogit.Instance);
        int count = n;
        if (options.TopK > 0) count = Math.Min(count, options.TopK);

        Softmax(count, 1f);
        if (options.TopP < 1f)
        {
            double cumulative = 0;
            for (int i = 0; i < count; i++)
            {
                cumulative += probabilities[i];
                if (cumulative >= options.TopP) { count = i + 1; break; }
            }
        }
        if (options.MinP > 0f)
        {
            double threshold = probabilities[0] * options.MinP;
            int kept = 1;
            while (kept < count && probabilities[kept] >= threshold) kept++;
            count = kept;
        }

        Softmax(count, options.Temperature);
        double r = random.NextDouble(), acc = 0;
        for (int i = 0; i < count; i++)
        {
            acc += probabilities[i];
            if (r < acc) return ids[i];
        }
        return ids[count - 1];
    }

    static bool AlreadyPenalized(IReadOnlyList<int> history, int from, int index, int token)
    {
        for (int j = from; j < index; j++) if (history[j] == token) return true;
        return false;
    }

    void Softmax(int count, float temperature)
    {
        double max = work[0] / temperature, sum = 0;
        for (int i = 0; i < count; i++) { probabilities[i] = Math.Exp(work[i] / temperature - max); sum += probabilities[i]; }
        for (int i = 0; i < count; i++) probabilities[i] /= sum;
    }

    /// <summary>Index of the largest value, the lowest index on ties.</summary>
    public static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }

    sealed class DescendingLogit : IComparer<float>
    {
        public static readonly DescendingLogit Instance = new();
        public int Compare(float x, float y) => y.CompareTo(x);
    }
}
