using VidKV.Cache;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>The decoder's batch: embedding rows, rows without logits, several sequences in one pass, the room check and rollback.</summary>
public class DecoderBatchTests
{
    static int[] Tokens(DecoderModel model, int count, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();
    }

    static PagedKvCache Cache(DecoderModel model, PagedKvStore? store = null) =>
        store != null ? new PagedKvCache(store.CreateSequence(), new KvPolicyMap(model.Config.LayerCount, model.Config.KvHeadCount, new FullPolicy()))
            : new PagedKvCache(new PagedKvStore(model.PagedOptions(16, GgmlType.F32)), new KvPolicyMap(model.Config.LayerCount, model.Config.KvHeadCount, new FullPolicy()));

    /// <summary>Feeding a prompt's token embeddings as embedding rows gives the logits of feeding the ids (within 1e-5), for every row.</summary>
    [Theory]
    [InlineData("stories260K")]
    [InlineData("tiny-qwen2-random")]
    public void EmbeddingRowsGiveTheLogitsOfTheirTokens(string name)
    {
        using var model = ModelLoader.Load(TestData.Model(name));
        int e = model.Config.EmbeddingLength, vocab = model.Config.VocabSize;
        var tokens = Tokens(model, 37, 1);
        using var byId = Cache(model);
        using var byEmbedding = Cache(model);
        var buffers = new Activations();
        var batch = model.CreateBatch();
        batch.AddTokens(tokens, allLogits: true);
        var want = new float[tokens.Length * vocab];
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [byId], buffers, want));
        batch.Clear();
        var row = new float[e];
        foreach (int token in tokens)
        {
            model.TokenEmbedding(token, row);
            batch.AddEmbedding(row, logits: true);
        }
        var got = new float[tokens.Length * vocab];
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [byEmbedding], buffers, got));
        for (int i = 0; i < want.Length; i++) Assert.True(Math.Abs(want[i] - got[i]) <= 1e-5f * (1 + Math.Abs(want[i])), $"logit {i}: {got[i]} vs {want[i]}");
        // A mixed batch (ids then embeddings) continues the same sequence.
        batch.Clear();
        batch.AddToken(tokens[0]);
        model.TokenEmbedding(tokens[1], row);
        batch.AddEmbedding(row, logits: true);
        var next = new float[vocab];
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [byEmbedding], buffers, next));
        Assert.Equal(tokens.Length + 2, byEmbedding.Length);
    }

    /// <summary>
    /// Rows without logits skip the output head: the logits written are those of the rows that asked, in row order, equal
    /// to the same rows of an all-logits pass.
    /// </summary>
    [Fact]
    public void OnlyRowsThatAskGetLogits()
    {
        using var model = ModelLoader.Load(TestData.Model("tiny-qwen2-random"));
        int vocab = model.Config.VocabSize;
        var tokens = Tokens(model, 29, 2);
        using var all = Cache(model);
        using var some = Cache(model);
        var buffers = new Activations();
        var batch = model.CreateBatch();
        batch.AddTokens(tokens, allLogits: true);
        var want = new float[tokens.Length * vocab];
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [all], buffers, want));
        batch.Clear();
        int[] asking = [3, 4, 17, 28];
        for (int i = 0; i < tokens.Length; i++) batch.AddToken(tokens[i], logits: asking.Contains(i));
        Assert.Equal(asking.Length, batch.LogitRows);
        var got = new float[asking.Length * vocab];
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [some], buffers, got));
        for (int r = 0; r < asking.Length; r++)
            for (int v = 0; v < vocab; v++)
                Assert.Equal(want[asking[r] * vocab + v], got[r * vocab + v]);
        batch.Clear();
        batch.AddTokens(tokens[..5], lastLogits: false);
        Assert.Equal(0, batch.LogitRows);
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [some], buffers, Span<float>.Empty)); // ingest: no logits, no buffer needed
    }

    /// <summary>
    /// Three sequences in one batch (a prompt each, then a decode step each) over one shared page pool give each
    /// sequence the logits it gets alone (within the tolerance of a different batch shape in the weight products) and the
    /// same greedy tokens; a sequence's rows must be consecutive.
    /// </summary>
    [Fact]
    public void SequencesInOneBatchMatchEachAlone()
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        int vocab = model.Config.VocabSize;
        var prompts = new[] { Tokens(model, 23, 3), Tokens(model, 5, 4), Tokens(model, 41, 5) };
        var buffers = new Activations();
        var batch = model.CreateBatch();
        var alone = new List<float[]>();
        foreach (var prompt in prompts)
        {
            using var cache = Cache(model);
            var logits = new float[vocab];
            batch.Clear();
            batch.AddTokens(prompt);
            Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [cache], buffers, logits));
            alone.Add((float[])logits.Clone());
            int next = Array.IndexOf(logits, logits.Max());
            batch.Clear();
            batch.AddToken(next, logits: true);
            Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [cache], buffers, logits));
            alone.Add((float[])logits.Clone());
        }

        using var store = new PagedKvStore(model.PagedOptions(16, GgmlType.F32));
        var caches = prompts.Select(_ => (KvCache)Cache(model, store)).ToList();
        batch.Clear();
        for (int s = 0; s < prompts.Length; s++) batch.AddTokens(prompts[s], sequence: s);
        var together = new float[prompts.Length * vocab];
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, caches, buffers, together));
        batch.Clear();
        for (int s = 0; s < prompts.Length; s++)
        {
            var first = together.AsSpan(s * vocab, vocab);
            AssertClose(alone[2 * s], first, $"sequence {s} prompt");
            batch.AddToken(IndexOfMax(first), sequence: s, logits: true);
        }
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, caches, buffers, together));
        for (int s = 0; s < prompts.Length; s++)
        {
            AssertClose(alone[2 * s + 1], together.AsSpan(s * vocab, vocab), $"sequence {s} step");
            Assert.Equal(prompts[s].Length + 1, caches[s].Length);
        }
        batch.Clear();
        batch.AddToken(1, sequence: 0);
        batch.AddToken(1, sequence: 1);
        batch.AddToken(1, sequence: 0, logits: true);
        var e = Assert.Throws<ArgumentException>(() => model.Decode(batch, caches, buffers, together));
        Assert.Contains("consecutive", e.Message);
        foreach (var cache in caches) cache.Dispose();
        Assert.Equal(0, store.PageCount);

        static int IndexOfMax(ReadOnlySpan<float> values)
        {
            int best = 0;
            for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
            return best;
        }

        static void AssertClose(float[] want, ReadOnlySpan<float> got, string what)
        {
            for (int i = 0; i < want.Length; i++) Assert.True(Math.Abs(want[i] - got[i]) <= 2e-3f * (1 + Math.Abs(want[i])), $"{what}, logit {i}: {got[i]} vs {want[i]} alone");
            Assert.Equal(IndexOfMax(want), IndexOfMax(got));
        }
    }

    /// <summary>
    /// A batch the budget cannot hold, or one past the context, returns its status before any work and changes nothing;
    /// a layer that fails midway leaves no row of the batch in any layer, and the sequence goes on as if it never ran.
    /// </summary>
    [Fact]
    public void RoomCheckAndRollbackLeaveTheSequenceWhole()
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        int vocab = model.Config.VocabSize, layers = model.Config.LayerCount, heads = model.Config.KvHeadCount;
        var tokens = Tokens(model, 40, 6);
        var buffers = new Activations();
        var batch = model.CreateBatch();
        var logits = new float[vocab];

        // Budget: 20 tokens in 16-token pages need 2 pages per (layer, head); 40 need 3.
        using var store = new PagedKvStore(model.PagedOptions(16, GgmlType.F32) with { MaxHotPages = 2 * layers * heads });
        using var cache = new PagedKvCache(store.CreateSequence(), new KvPolicyMap(layers, heads, new FullPolicy()), contextLength: 60);
        batch.AddTokens(tokens[..20]);
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [cache], buffers, logits));
        batch.Clear();
        batch.AddTokens(tokens[20..]);
        Assert.Equal(DecodeStatus.NoKvRoom, model.Decode(batch, [cache], buffers, logits));
        Assert.Equal(20, cache.Length);
        Assert.Equal(20L * layers * heads, cache.Sequence.StoredRows);
        Assert.Equal(0, store.ReservedPages);
        batch.Clear();
        batch.AddTokens(Tokens(model, 41, 7));
        Assert.Equal(DecodeStatus.ContextFull, model.Decode(batch, [cache], buffers, logits));
        Assert.Equal(20L * layers * heads, cache.Sequence.StoredRows);

        // A policy that fails at layer 3 on its second step: layers 0-2 had appended the batch; they are cut back.
        var failing = new FailingPolicy(failAtLayer: 3, failOnStep: 1);
        var map = new KvPolicyMap(layers, heads, new FullPolicy());
        for (int h = 0; h < heads; h++) map[3, h] = failing;
        using var reference = Cache(model);
        using var broken = new PagedKvCache(new PagedKvStore(model.PagedOptions(16, GgmlType.F32)), map);
        foreach (var target in new KvCache[] { reference, broken })
        {
            batch.Clear();
            batch.AddTokens(tokens[..10]);
            Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [target], buffers, logits));
        }
        batch.Clear();
        batch.AddTokens(tokens[10..25]);
        Assert.Throws<InvalidOperationException>(() => model.Decode(batch, [broken], buffers, logits));
        Assert.Equal(10, broken.Length);
        for (int l = 0; l < layers; l++) for (int h = 0; h < heads; h++) Assert.Equal(10, broken.Sequence.Table(l, h).TokenCount);
        var want = new float[vocab];
        var got = new float[vocab];
        batch.Clear();
        batch.AddTokens(tokens[10..25]);
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [reference], buffers, want));
        Assert.Equal(DecodeStatus.Ok, model.Decode(batch, [broken], buffers, got));
        Assert.Equal(want, got);
    }

    sealed class FailingPolicy(int failAtLayer, int failOnStep) : KvPolicy
    {
        int calls;
        public override string Name => "failing";
        public override void OnAppended(in KvStep step)
        {
            if (step.Layer == failAtLayer && step.Head == 0 && calls++ == failOnStep) throw new InvalidOperationException("injected failure");
        }
    }
}
