using VidKV.Formats;
using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>The shape of a random-weight model: a real architecture's sizes, no trained weights.</summary>
internal sealed record RandomModelShape(string Name, string Architecture, int Layers, int Embedding, int Heads, int KvHeads,
    int FeedForward, int Vocab, bool TiedOutput, bool Biases, int ContextLength, float RopeBase, float RmsEps)
{
    /// <summary>M-RoPE sections (llama.cpp's <c>{arch}.rope.dimension_sections</c>, an INT32 array of 4), for <c>qwen2vl</c>; null for none.</summary>
    public int[]? RopeSections { get; init; }
    /// <summary>Special tokens and chat template of the vocabulary; null for ChatML's (see <see cref="SyntheticVocabularyOptions.ChatMl"/>).</summary>
    public SyntheticVocabularyOptions? Vocabulary { get; init; }

    public static readonly RandomModelShape Tiny = new("tiny", "qwen2", 2, 64, 4, 2, 128, 2048, true, true, 4096, 1e6f, 1e-6f);
    public static readonly RandomModelShape Small = new("small", "qwen2", 4, 256, 8, 2, 704, 8192, true, true, 8192, 1e6f, 1e-6f);
    public static readonly RandomModelShape TinyLlama = new("tiny-llama", "llama", 2, 64, 4, 2, 172, 2048, false, false, 2048, 10000f, 1e-5f);
    /// <summary>Qwen2-0.5B: 24 layers, hidden 896, 14 heads, 2 KV heads, FFN 4864, vocab 151936, tied output.</summary>
    public static readonly RandomModelShape Qwen2_0_5B = new("qwen2-0.5b", "qwen2", 24, 896, 14, 2, 4864, 151936, true, true, 32768, 1e6f, 1e-6f);
    /// <summary>Qwen2-1.5B's shape: rows of 1536 and 8960 columns are whole 256-column super-blocks, so K-quant files of it are K-quant throughout.</summary>
    public static readonly RandomModelShape Qwen2_1_5B = new("qwen2-1.5b", "qwen2", 28, 1536, 12, 2, 8960, 151936, true, true, 32768, 1e6f, 1e-6f);

    public static IReadOnlyList<RandomModelShape> All { get; } = [Tiny, Small, TinyLlama, Qwen2_0_5B, Qwen2_1_5B];

    public static RandomModelShape? Find(string name) => All.FirstOrDefault(s => s.Name.Equals(name, StringComparison.OrdinalIgnoreCase));
}

/// <summary>
/// Writes GGUF files with random weights of a real architecture, for tests and benchmarks without downloads.
/// Matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 1) (0.05² when tied), norms 1 + 0.1·N(0,1) (the output norm ×4, ×8 when
/// tied), biases 0.1·N(0,1) (the recipe of the
/// testdata's tiny random models, so greedy output is not a trivial repeat). Like llama.cpp's Q4_0 files, a Q4_0
/// model keeps token_embd in Q8_0. The vocabulary is synthetic byte-level BPE (see <see cref="SyntheticVocabulary"/>).
/// </summary>
internal static class RandomModel
{
    public static readonly GgmlType[] WritableTypes = [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K];

    public static void Write(string path, RandomModelShape shape, GgmlType type, ulong seed = 42) =>
        Write(path, shape, type, w => new RandomTensors(w, seed), $"VidKV random {shape.Name} {GgmlTypes.Name(type)} (RANDOM WEIGHTS, not a trained model)");

    /// <summary>
    /// Writes a text model of <paramref name="shape"/> whose tensors come from <paramref name="fill"/> (random, or a
    /// trainer's <see cref="GivenTensors"/>), named <paramref name="name"/> (<c>general.name</c>).
    /// </summary>
    public static void Write(string path, RandomModelShape shape, GgmlType type, Func<GgufWriter, ITensorFill> fill, string name)
    {
        if (!WritableTypes.Contains(type))
            throw new ArgumentException($"type {GgmlTypes.Name(type)} is not supported for random models ({string.Join(", ", WritableTypes.Select(GgmlTypes.Name))})");
        string a = shape.Architecture;
        int headDim = shape.Embedding / shape.Heads, kvDim = shape.KvHeads * headDim;
        var w = new GgufWriter();
        w.Add("general.architecture", a);
        w.Add("general.name", name);
        w.Add("general.file_type", FileType(type));
        w.Add($"{a}.block_count", (uint)shape.Layers);
        w.Add($"{a}.context_length", (uint)shape.ContextLength);
        w.Add($"{a}.embedding_length", (uint)shape.Embedding);
        w.Add($"{a}.feed_forward_length", (uint)shape.FeedForward);
        w.Add($"{a}.attention.head_count", (uint)shape.Heads);
        w.Add($"{a}.attention.head_count_kv", (uint)shape.KvHeads);
        w.Add($"{a}.rope.freq_base", shape.RopeBase);
        w.Add($"{a}.attention.layer_norm_rms_epsilon", shape.RmsEps);
        if (shape.RopeSections != null) w.Add($"{a}.rope.dimension_sections", GgufValue.Of(shape.RopeSections));
        SyntheticVocabulary.AddTo(w, shape.Vocab, shape.Vocabulary);

        var random = fill(w);
        void Matrix(string name, int rows, int columns, GgmlType t, float std)
        {
            // K-quants need rows of whole 256-column super-blocks; like llama-quantize, other rows fall back (to Q8_0).
            if (GgmlTypes.BlockSize(t) == 256 && columns % 256 != 0) t = GgmlType.Q8_0;
            random.Matrix(name, [columns, rows], t, std);
        }
        void Vector(string name, int length, float mean, float std) => random.Vector(name, length, mean, std);

        // Tied output: small embeddings and a larger final norm, as in tiny-qwen2-random-tied (std 0.05, norm ×8).
        GgmlType embeddingType = type is GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K ? GgmlType.Q8_0 : type;
        Matrix("token_embd.weight", shape.Vocab, shape.Embedding, embeddingType, shape.TiedOutput ? 0.05f : 1f);
        if (!shape.TiedOutput) Matrix("output.weight", shape.Vocab, shape.Embedding, type, 1f / MathF.Sqrt(shape.Embedding));
        float outputNormScale = shape.TiedOutput ? 8f : 4f;
        Vector("output_norm.weight", shape.Embedding, outputNormScale, 0.1f * outputNormScale);
        for (int l = 0; l < shape.Layers; l++)
        {
            string p = $"blk.{l}.";
            float inStd = 1f / MathF.Sqrt(shape.Embedding);
            Vector(p + "attn_norm.weight", shape.Embedding, 1f, 0.1f);
            Matrix(p + "attn_q.weight", shape.Embedding, shape.Embedding, type, inStd);
            if (shape.Biases) Vector(p + "attn_q.bias", shape.Embedding, 0f, 0.1f);
            Matrix(p + "attn_k.weight", kvDim, shape.Embedding, type, inStd);
            if (shape.Biases) Vector(p + "attn_k.bias", kvDim, 0f, 0.1f);
            Matrix(p + "attn_v.weight", kvDim, shape.Embedding, type, inStd);
            if (shape.Biases) Vector(p + "attn_v.bias", kvDim, 0f, 0.1f);
            Matrix(p + "attn_output.weight", shape.Embedding, shape.Embedding, type, inStd);
            Vector(p + "ffn_norm.weight", shape.Embedding, 1f, 0.1f);
            Matrix(p + "ffn_gate.weight", shape.FeedForward, shape.Embedding, type, inStd);
            Matrix(p + "ffn_up.weight", shape.FeedForward, shape.Embedding, type, inStd);
            Matrix(p + "ffn_down.weight", shape.Embedding, shape.FeedForward, type, 1f / MathF.Sqrt(shape.FeedForward));
        }
        string? directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
        if (directory != null) Directory.CreateDirectory(directory);
        string temporary = path + ".partial";
        w.Write(temporary);
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>llama.cpp's <c>general.file_type</c> (LLAMA_FTYPE_*) for a file whose matrices are of <paramref name="type"/>.</summary>
    internal static uint FileType(GgmlType type) => type switch
    {
        GgmlType.F32 => 0, GgmlType.F16 => 1, GgmlType.Q4_0 => 2, GgmlType.Q8_0 => 7, GgmlType.Q4_K => 14, GgmlType.Q6_K => 18, GgmlType.BF16 => 32, _ => 0,
    };
}

/// <summary>
/// Where the model writers (<see cref="RandomModel"/>, <see cref="RandomVisionModel"/>) take each tensor's values from:
/// random draws of the given spread (<see cref="RandomTensors"/>), or a trained model's values (<see cref="GivenTensors"/>).
/// </summary>
internal interface ITensorFill
{
    /// <summary>Adds tensor <paramref name="name"/> of ggml shape <paramref name="shape"/> (ne0 first) as <paramref name="type"/>; <paramref name="std"/> is a random fill's spread.</summary>
    void Matrix(string name, long[] shape, GgmlType type, float std);
    /// <summary>Adds F32 vector <paramref name="name"/>; <paramref name="mean"/> and <paramref name="std"/> are a random fill's.</summary>
    void Vector(string name, int length, float mean, float std);
}

/// <summary>
/// Adds given tensors to a <see cref="GgufWriter"/>: each name's values (row-major, ne0 fastest, as ggml stores them)
/// from <paramref name="values"/>, converted to the writer's type; a name that is missing or of the wrong size fails.
/// </summary>
internal sealed class GivenTensors(GgufWriter writer, IReadOnlyDictionary<string, float[]> values) : ITensorFill
{
    readonly HashSet<string> used = [];

    float[] Values(string name, long count)
    {
        if (!values.TryGetValue(name, out var v)) throw new ArgumentException($"no values for tensor '{name}'");
        if (v.Length != count) throw new ArgumentException($"tensor '{name}' needs {count} values, {v.Length} were given");
        used.Add(name);
        return v;
    }

    public void Matrix(string name, long[] shape, GgmlType type, float std) =>
        writer.AddTensor(name, type, shape, Values(name, shape.Aggregate(1L, (a, b) => a * b)));

    public void Vector(string name, int length, float mean, float std) => writer.AddTensor(name, GgmlType.F32, [length], Values(name, length));

    /// <summary>Names given but never written (a trainer's tensor the writer does not know).</summary>
    public IEnumerable<string> Unused => values.Keys.Where(k => !used.Contains(k));
}

/// <summary>
/// Adds random tensors to a <see cref="GgufWriter"/>: each draws from its own <see cref="NormalRandom"/> stream, seeded by
/// the file's seed, the tensor's index in the order added and a per-file salt, so the bytes depend only on those.
/// </summary>
internal sealed class RandomTensors(GgufWriter writer, ulong seed, ulong salt = 0) : ITensorFill
{
    int index;

    ulong NextSeed() => (seed * 1_000_003UL + (ulong)index++) ^ salt;

    /// <summary>A tensor of ggml shape <paramref name="shape"/> (ne0 first) ~ N(0, std²), written as <paramref name="type"/> row by row (rows of ne0).</summary>
    public void Matrix(string name, long[] shape, GgmlType type, float std)
    {
        ulong tensorSeed = NextSeed();
        int columns = (int)shape[0];
        long rows = shape.Skip(1).Aggregate(1L, (a, b) => a * b);
        writer.AddTensor(name, type, shape, stream =>
        {
            var rng = new NormalRandom(tensorSeed);
            var row = new float[columns];
            var bytes = new byte[GgmlTypes.RowBytes(type, columns)];
            for (long r = 0; r < rows; r++)
            {
                for (int c = 0; c < columns; c++) row[c] = rng.Next() * std;
                Quantize.Row(type, row, bytes);
                stream.Write(bytes);
            }
        });
    }

    /// <summary>An F32 vector ~ N(mean, std²).</summary>
    public void Vector(string name, int length, float mean, float std)
    {
        var rng = new NormalRandom(NextSeed());
        var values = new float[length];
        for (int i = 0; i < length; i++) values[i] = mean + std * rng.Next();
        writer.AddTensor(name, GgmlType.F32, [length], values);
    }

    /// <summary>Standard normal draws from xoshiro256** and Box–Muller; deterministic per seed.</summary>
    sealed class NormalRandom(ulong seed)
    {
        ulong s0 = SplitMix(ref seed), s1 = SplitMix(ref seed), s2 = SplitMix(ref seed), s3 = SplitMix(ref seed);
        float spare;
        bool hasSpare;

        static ulong SplitMix(ref ulong x)
        {
            ulong z = x += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }

        ulong NextBits()
        {
            ulong result = ulong.RotateLeft(s1 * 5, 7) * 9, t = s1 << 17;
            s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t; s3 = ulong.RotateLeft(s3, 45);
            return result;
        }

        public float Next()
        {
            if (hasSpare) { hasSpare = false; return spare; }
            double u1 = ((NextBits() >> 11) + 1) * (1.0 / 9007199254740993.0), u2 = (NextBits() >> 11) * (1.0 / 9007199254740992.0);
            double radius = Math.Sqrt(-2 * Math.Log(u1)), angle = 2 * Math.PI * u2;
            spare = (float)(radius * Math.Sin(angle));
            hasSpare = true;
            return (float)(radius * Math.Cos(angle));
        }
    }
}
