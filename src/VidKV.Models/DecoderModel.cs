using System.Diagnostics;
using VidKV.Cache;
using VidKV.Formats;
using VidKV.Tensors;
using VidKV.Text;

namespace VidKV.Models;

/// <summary>What <see cref="DecoderModel.Decode"/> did with a batch.</summary>
public enum DecodeStatus
{
    /// <summary>Every row ran; the caches hold the rows and the logits are written.</summary>
    Ok,
    /// <summary>A sequence would pass its cache's context length; nothing changed.</summary>
    ContextFull,
    /// <summary>The KV pool's budget cannot hold the batch's new pages (the room check before the pass); nothing changed.</summary>
    NoKvRoom,
}

/// <summary>
/// A Llama-family decoder (Llama, Qwen2) composed of shared blocks: per layer RMSNorm → <see cref="SelfAttention"/>
/// (GQA, RoPE, optional q/k/v biases) → residual → RMSNorm → <see cref="SwiGluFeedForward"/> → residual; then a final
/// norm and the output projection (tied to the token embedding when <c>output.weight</c> is absent). Activations are
/// f32; weights stay in their stored dtype. <see cref="Decode"/> runs a <see cref="DecoderBatch"/> of token and
/// embedding rows from one or several sequences, each over its own KV cache.
/// </summary>
public sealed unsafe class DecoderModel : IDisposable
{
    sealed record Layer(Norm AttentionNorm, SelfAttention Attention, Norm FeedForwardNorm, SwiGluFeedForward FeedForward);

    readonly IWeightSource weights;
    readonly Layer[] layers;
    readonly WeightMatrix tokenEmbedding;
    readonly Linear output;
    readonly Norm outputNorm;
    readonly Rope rope;

    /// <param name="repack">
    /// Repack weights into the layouts the kernels read fastest where this machine has such kernels (Q4_0/Q8_0/Q4_K/Q6_K
    /// rows interleaved by 16 with AVX-512BW; see <see cref="WeightMatrix.Interleave"/>), as llama.cpp's runtime
    /// repack; false keeps every matrix as stored (llama-bench's <c>--no-repack</c>).
    /// </param>
    internal DecoderModel(ModelConfig config, IWeightSource weights, Vocabulary vocabulary, bool repack = true)
    {
        Config = config;
        this.weights = weights;
        Vocabulary = vocabulary;
        Tokenizer = Tokenizer.Create(vocabulary);
        if (vocabulary.Count > config.VocabSize)
            throw ModelFormatException.InFile(weights.Path, $"vocabulary has {vocabulary.Count} tokens but token_embd.weight has only {config.VocabSize} rows");

        int e = config.EmbeddingLength, qDim = config.HeadCount * config.HeadDim, kvDim = config.KvHeadCount * config.HeadDim, f = config.FeedForwardLength;
        tokenEmbedding = weights.Matrix("token_embd.weight", config.VocabSize, e);
        outputNorm = Norm.Rms(weights.Vector("output_norm.weight", e), config.RmsNormEps);
        output = new Linear(weights.Contains("output.weight") ? weights.Matrix("output.weight", config.VocabSize, e) : tokenEmbedding, null, ForwardPhase.LmHead);
        rope = new Rope(config.RopeMode, config.RopeDims, config.RopeFreqBase, config.RopeSections);
        layers = new Layer[config.LayerCount];
        for (int i = 0; i < layers.Length; i++)
        {
            string p = $"blk.{i}.";
            Linear Project(string name, int rows, int columns, ForwardPhase phase) =>
                new(weights.Matrix(p + name + ".weight", rows, columns), weights.Contains(p + name + ".bias") ? weights.Vector(p + name + ".bias", rows) : null, phase);
            layers[i] = new Layer(
                Norm.Rms(weights.Vector(p + "attn_norm.weight", e), config.RmsNormEps),
                new SelfAttention(Project("attn_q", qDim, e, ForwardPhase.QkvProjection), Project("attn_k", kvDim, e, ForwardPhase.QkvProjection),
                    Project("attn_v", kvDim, e, ForwardPhase.QkvProjection), Project("attn_output", e, qDim, ForwardPhase.OutputProjection),
                    config.HeadCount, config.KvHeadCount, config.HeadDim, rope),
                Norm.Rms(weights.Vector(p + "ffn_norm.weight", e), config.RmsNormEps),
                new SwiGluFeedForward(Project("ffn_gate", f, e, ForwardPhase.GateUp), Project("ffn_up", f, e, ForwardPhase.GateUp), Project("ffn_down", e, f, ForwardPhase.Down)));
        }
        if (repack)
        {
            // Only a GGUF file's mapping may give its pages back once a matrix is repacked.
            bool mapped = weights is GgufWeights;
            try
            {
                foreach (var matrix in Matrices()) matrix.Interleave(releaseStoredPages: mapped);
            }
            catch
            {
                foreach (var matrix in Matrices()) matrix.Dispose(); // the caller disposes the weights
                throw;
            }
        }
    }

    /// <summary>Whether any matrix was repacked at load (<see cref="WeightMatrix.Interleave"/>).</summary>
    public bool IsRepacked => Matrices().Any(m => m.IsInterleaved);

    /// <summary>Every matrix the forward pass multiplies with (an untied token embedding is only looked up by rows).</summary>
    IEnumerable<WeightMatrix> Matrices() => LayerMatrices().Append(output.Weight);

    IEnumerable<WeightMatrix> LayerMatrices()
    {
        foreach (var l in layers)
            foreach (var m in new[] { l.Attention.Query, l.Attention.Key, l.Attention.Value, l.Attention.Output, l.FeedForward.Gate, l.FeedForward.Up, l.FeedForward.Down })
                yield return m.Weight;
    }

    /// <summary>The model's hyper-parameters, read from the file.</summary>
    public ModelConfig Config { get; }
    /// <summary>The model's vocabulary, read from the file.</summary>
    public Vocabulary Vocabulary { get; }
    /// <summary>The tokenizer for <see cref="Vocabulary"/>.</summary>
    public Tokenizer Tokenizer { get; }
    /// <summary>The GGUF file or Hugging Face folder the model was loaded from.</summary>
    public string Path => weights.Path;
    /// <summary>Storage type of the largest matrices (what llama.cpp calls the model's file type).</summary>
    public GgmlType WeightType => layers.Length > 0 ? layers[0].FeedForward.Gate.Weight.Type : output.Weight.Type;
    /// <summary>Components of a row's position in a <see cref="DecoderBatch"/> for this model (1, or M-RoPE's sections).</summary>
    public int PositionComponents => rope.Components;

    /// <summary>
    /// How this model rotates its keys (pairing, rotary dimensions, frequency base), for caches that compact positions
    /// (<see cref="KvPositions.Compact"/>); null for an M-RoPE model, whose keys turn by several position components.
    /// </summary>
    public KeyRotation? KeyRotation => rope.Sections == null ? new KeyRotation(rope.Mode, rope.Dimensions, rope.FreqBase) : null;

    /// <summary>The input embedding of <paramref name="token"/> ([embedding length] f32): what a token row starts from.</summary>
    public void TokenEmbedding(int token, Span<float> destination)
    {
        if ((uint)token >= (uint)Config.VocabSize) throw new ArgumentOutOfRangeException(nameof(token), $"token id {token} is outside the vocabulary of {Config.VocabSize}");
        tokenEmbedding.DequantizeRow(token, destination[..Config.EmbeddingLength]);
    }

    /// <summary>A batch shaped for this model (embedding rows of its width, positions of its component count).</summary>
    public DecoderBatch CreateBatch() => new(Config.EmbeddingLength, PositionComponents);

    /// <summary>
    /// A fresh KV cache and scratch space for one sequence of up to <paramref name="contextLength"/> tokens: a paged
    /// cache (32-token pages) that keeps every token (<see cref="FullPolicy"/>). Keys and values are f16 by default
    /// (llama.cpp's default; logits move by up to ~1e-2), f32 (bit-for-bit the precise path) or q8_0.
    /// </summary>
    internal DecoderState CreateState(int contextLength, GgmlType keyType = GgmlType.F16, GgmlType valueType = GgmlType.F16)
    {
        var store = new PagedKvStore(PagedOptions() with { KeyType = keyType, ValueType = valueType });
        return new(this, new PagedKvCache(store, new KvPolicyMap(Config.LayerCount, Config.KvHeadCount, new FullPolicy()), contextLength));
    }

    /// <summary>A state over a given cache (a <see cref="PagedKvCache"/> with policies, for one); the state owns and disposes it.</summary>
    internal DecoderState CreateState(KvCache cache) => new(this, cache);

    /// <summary>Weight bytes one decoded token reads: every layer matrix and the output matrix once (what bounds decode).</summary>
    public long WeightBytesPerToken => Matrices().Sum(m => (long)m.RowBytes * m.Rows);

    /// <summary>FLOPs of the layer matrix products per prompt token (2 per weight; prefill computes the output matrix once per batch, so it is left out).</summary>
    public long MatMulFlopsPerToken => LayerMatrices().Sum(m => 2L * m.Rows * m.Columns);

    /// <summary>FLOPs of attention for one query over <paramref name="keys"/> cached tokens in every layer (scores and weighted sum, 2 each).</summary>
    public long AttentionFlopsPerToken(int keys) => 4L * Config.HeadCount * Config.HeadDim * keys * Config.LayerCount;

    /// <summary>Options for a paged store shaped for this model.</summary>
    public PagedKvOptions PagedOptions(int pageSize = 32, GgmlType type = GgmlType.F16) =>
        new() { LayerCount = Config.LayerCount, KvHeadCount = Config.KvHeadCount, HeadDim = Config.HeadDim, PageSize = pageSize, KeyType = type, ValueType = type };

    /// <summary>
    /// Runs <paramref name="tokens"/> at the state's next positions, appends their keys and values to its cache, and
    /// writes logits: [tokens.Length, vocab] when <paramref name="allLogits"/>, else [vocab] for the last token. Throws
    /// when the context or the KV budget is full (nothing is then changed); <see cref="Decode"/> returns that instead.
    /// </summary>
    internal void Forward(DecoderState state, ReadOnlySpan<int> tokens, Span<float> logits, bool allLogits = false)
    {
        if (tokens.Length == 0) return;
        var batch = state.Batch;
        batch.Clear();
        batch.AddTokens(tokens, 0, lastLogits: true, allLogits);
        Run(batch, state, logits);
    }

    /// <summary>Runs a batch of the state's one sequence (sequence 0); throws where <see cref="Decode"/> returns a status other than Ok.</summary>
    internal void Run(DecoderBatch batch, DecoderState state, Span<float> logits)
    {
        switch (Decode(batch, state.Sequences, state.Activations, logits, state.Profile))
        {
            case DecodeStatus.ContextFull:
                throw new InvalidOperationException($"context full: {state.Cache.Length} + {batch.Count} tokens exceed the context length {state.Cache.ContextLength}");
            case DecodeStatus.NoKvRoom:
                throw new InvalidOperationException($"KV hot tier full: {batch.Count} more tokens need pages the budget cannot hold; use a policy that evicts or moves pages cold, or raise the page limit");
        }
    }

    /// <summary>
    /// Runs a batch: each row's input (token embedding or given embedding), its RoPE angles, every layer (each
    /// sequence's rows appended to its cache, <paramref name="sequences"/>[<see cref="DecoderBatch.Sequence"/>], and
    /// attending causally over it), then the output head for the rows that need logits only:
    /// <paramref name="logits"/> [<see cref="DecoderBatch.LogitRows"/>, vocab] in row order. Before any work it checks
    /// that each sequence stays within its context and that the KV pools can hold the new pages, setting those pages'
    /// slots aside (<see cref="PagedKvStore.Reserve"/>); if not it returns the status and changes nothing. Should a layer
    /// still fail, every sequence is cut back to its length before the batch and the exception goes on.
    /// </summary>
    public DecodeStatus Decode(DecoderBatch batch, IReadOnlyList<KvCache> sequences, Activations buffers, Span<float> logits, ForwardProfile? profile = null)
    {
        int n = batch.Count;
        if (n == 0) return DecodeStatus.Ok;
        profile?.Start();
        var c = Config;
        int e = c.EmbeddingLength, vocab = c.VocabSize;
        if (batch.EmbeddingLength != e || batch.PositionComponents != PositionComponents)
            throw new ArgumentException($"the batch has rows of {batch.EmbeddingLength} floats and {batch.PositionComponents}-component positions; this model takes {e} and {PositionComponents} (use CreateBatch)", nameof(batch));
        if (logits.Length < (long)batch.LogitRows * vocab) throw new ArgumentException($"logits buffer holds {logits.Length} floats, the batch needs {batch.LogitRows} × {vocab}", nameof(logits));

        // Runs of consecutive rows per sequence; each sequence at most once.
        var runList = RunsOf(batch, sequences, buffers.Runs);
        foreach (var run in runList)
            if (!run.Cache.Reserve(run.Start + run.Count)) return DecodeStatus.ContextFull;
        if (!ReservePages(runList)) return DecodeStatus.NoKvRoom;

        Span<float> x = buffers.X(n * e), h = buffers.H(n * e);
        // Rows without a position of their own turn at the cache's next RoPE position onwards: their place in the
        // sequence, or fewer under compact positions, whose rows take theirs from the cache alone.
        var places = buffers.Places(n);
        foreach (var run in runList)
        {
            int rope = run.Cache.NextRopePosition;
            if (run.Cache.Positions == KvPositions.Compact)
                for (int i = 0; i < run.Count; i++)
                    if (batch.HasPosition(run.FirstRow + i) || PositionComponents > 1)
                        throw new ArgumentException($"row {run.FirstRow + i}: its sequence's cache compacts positions, so its rows take their RoPE positions from the cache; a row with a position of its own (or an M-RoPE model's) cannot go in", nameof(batch));
            for (int i = 0; i < run.Count; i++) places[run.FirstRow + i] = rope + i;
        }
        for (int t = 0; t < n; t++)
        {
            int token = batch.Token(t);
            if (token >= 0) tokenEmbedding.DequantizeRow(token, x.Slice(t * e, e));
            else batch.Embedding(t).CopyTo(x.Slice(t * e, e));
        }
        int half = rope.Pairs;
        Span<float> cos = buffers.RopeCos(n * half), sin = buffers.RopeSin(n * half);
        rope.Angles(batch, places, cos, sin);
        profile?.Lap(ForwardPhase.Other); // embedding lookup and RoPE angles

        var runSpan = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(runList);
        try
        {
            for (int l = 0; l < layers.Length; l++)
            {
                var layer = layers[l];
                // Layer l > 0 first adds the previous feed-forward output to the residual stream.
                if (l == 0) layer.AttentionNorm.Apply(x, h, n, profile);
                else layer.AttentionNorm.AddThenApply(x, h, h, n, profile);
                layer.Attention.Forward(h, n, buffers, cos, sin, l, runSpan, batch.Frames, profile);
                layer.FeedForwardNorm.AddThenApply(x, h, h, n, profile);
                layer.FeedForward.Forward(h, n, buffers, profile);
            }
        }
        catch
        {
            // Layers before the failing one appended these rows: take them out again so each sequence stays whole.
            foreach (var run in runList) run.Cache.Truncate(run.Start);
            throw;
        }
        finally
        {
            foreach (var run in runList) (run.Cache as PagedKvCache)?.Store.ReleaseReservation();
        }
        if (layers.Length > 0) System.Numerics.Tensors.TensorPrimitives.Add(x, h, x);
        foreach (var run in runList) run.Cache.Commit(run.Start + run.Count);

        // The output head for the rows that need logits, gathered into consecutive rows of h.
        int m = 0;
        for (int t = 0; t < n; t++)
            if (batch.NeedsLogits(t)) x.Slice(t * e, e).CopyTo(h.Slice(m++ * e, e));
        if (m > 0)
        {
            outputNorm.Apply(h, h, m, profile);
            output.Forward(h, m, logits, profile);
        }
        if (profile != null) profile.Times.Tokens += n;
        return DecodeStatus.Ok;
    }

    /// <summary>The batch's runs of rows per sequence, in row order; a sequence split over two runs is an error.</summary>
    List<AttentionRun> RunsOf(DecoderBatch batch, IReadOnlyList<KvCache> sequences, List<AttentionRun> runs)
    {
        runs.Clear();
        int vocab = Config.VocabSize;
        for (int row = 0; row < batch.Count;)
        {
            int sequence = batch.Sequence(row), first = row;
            if (sequence >= sequences.Count) throw new ArgumentException($"row {row}: sequence {sequence}, but {sequences.Count} sequences were given", nameof(batch));
            foreach (var run in runs)
                if (run.Cache == sequences[sequence]) throw new ArgumentException($"row {row}: the rows of sequence {sequence} must be consecutive (it also has rows from {run.FirstRow})", nameof(batch));
            for (; row < batch.Count && batch.Sequence(row) == sequence; row++)
            {
                int token = batch.Token(row);
                if (token >= vocab) throw new ArgumentOutOfRangeException(nameof(batch), $"token id {token} at row {row} is outside the vocabulary of {vocab}");
            }
            var cache = sequences[sequence];
            runs.Add(new AttentionRun(cache, first, row - first, cache.Length));
        }
        return runs;
    }

    /// <summary>Sets aside the hot slots the runs' appends take, per KV pool; false (nothing set aside) when a pool's budget cannot hold them.</summary>
    static bool ReservePages(List<AttentionRun> runs)
    {
        for (int i = 0; i < runs.Count; i++)
        {
            if (runs[i].Cache is not PagedKvCache paged) continue;
            var store = paged.Store;
            bool first = true;
            for (int j = 0; j < i && first; j++) first = (runs[j].Cache as PagedKvCache)?.Store != store;
            if (!first) continue; // counted with the pool's first run
            int pages = 0;
            for (int j = i; j < runs.Count; j++)
                if ((runs[j].Cache as PagedKvCache)?.Store == store) pages += runs[j].Cache.PagesToAppend(runs[j].Count);
            if (!store.Reserve(pages))
            {
                for (int j = 0; j < i; j++) (runs[j].Cache as PagedKvCache)?.Store.ReleaseReservation();
                return false;
            }
        }
        return true;
    }

    /// <summary>Frees the weight matrices and closes the model's files; the model is unusable after.</summary>
    public void Dispose()
    {
        foreach (var matrix in Matrices().Distinct()) matrix.Dispose();
        weights.Dispose();
    }
}

/// <summary>
/// One sequence's state for the single-sequence helpers (<see cref="DecoderModel.Forward"/>, generation, benchmarks):
/// its KV cache (native memory, freed by Dispose), activation buffers, a reusable batch and the phase times.
/// </summary>
internal sealed class DecoderState : IDisposable
{
    internal DecoderState(DecoderModel model, KvCache cache)
    {
        Cache = cache;
        Sequences = [cache];
        Batch = model.CreateBatch();
    }

    public void Dispose() => Cache.Dispose();

    public KvCache Cache { get; }
    internal KvCache[] Sequences { get; }
    internal DecoderBatch Batch { get; }
    internal Activations Activations { get; } = new();
    internal ForwardProfile Profile { get; } = new();

    /// <summary>Time the forward passes spent per phase for this sequence, summed over all calls (profiles).</summary>
    public ForwardTimes Times => Profile.Times;

    /// <summary>Tokens already in the cache (the next token's position).</summary>
    public int Position => Cache.Length;
}
