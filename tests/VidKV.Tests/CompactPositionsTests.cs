using VidKV.Cache;
using VidKV.Engine;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// Compact positions (<see cref="KvPositions.Compact"/>, StreamingLLM's positions within the cache): the store's
/// re-rotation of stored keys against keys rotated at the compact positions directly (every key type, both pairings,
/// partial rotary dimensions, cold pages, a fork's shared pages), and a model's logits after evictions against a fresh
/// prefill of the kept tokens at 0..K−1.
/// </summary>
public class CompactPositionsTests
{
    const int HeadDim = 20, KvHeads = 2, PageSize = 16;

    /// <summary>The key of one row rotated at <paramref name="position"/> with the kernels the model uses.</summary>
    static float[] Rotated(ReadOnlySpan<float> raw, int position, KeyRotation rotation)
    {
        var head = raw.ToArray();
        Span<float> cos = stackalloc float[rotation.Dimensions / 2], sin = stackalloc float[rotation.Dimensions / 2];
        Kernels.RopeAngles(position, rotation.Dimensions, rotation.FreqBase, cos, sin);
        Kernels.Rope(head, cos, sin, rotation.Mode);
        return head;
    }

    /// <summary>Raw (unrotated) keys and values of <paramref name="rows"/> rows, [rows, KvHeads, HeadDim] each.</summary>
    static (float[] Keys, float[] Values) RandomRows(int rows, int seed)
    {
        var rng = new Random(seed);
        var keys = new float[rows * KvHeads * HeadDim];
        var values = new float[keys.Length];
        for (int i = 0; i < keys.Length; i++)
        {
            keys[i] = (float)(rng.NextDouble() * 2 - 1);
            values[i] = (float)(rng.NextDouble() * 2 - 1);
        }
        return (keys, values);
    }

    /// <summary>Appends rows 0..rows−1 in chunks, each key rotated at its place (what a model stores).</summary>
    static void AppendAll(KvSequence sequence, float[] rawKeys, float[] values, int rows, KeyRotation rotation)
    {
        int kvRow = KvHeads * HeadDim;
        for (int start = 0; start < rows;)
        {
            int n = Math.Min(7, rows - start);
            var keys = new float[n * kvRow];
            for (int t = 0; t < n; t++)
                for (int h = 0; h < KvHeads; h++)
                    Rotated(rawKeys.AsSpan(((start + t) * KvHeads + h) * HeadDim, HeadDim), start + t, rotation).CopyTo(keys, (t * KvHeads + h) * HeadDim);
            Assert.True(sequence.Append(0, start, n, keys, values.AsSpan(start * kvRow, n * kvRow)));
            start += n;
        }
    }

    /// <summary>Evicts the rows at the given places from every head's table.</summary>
    static void EvictPlaces(KvSequence sequence, HashSet<int> places)
    {
        var store = sequence.Store;
        for (int h = 0; h < KvHeads; h++)
        {
            var table = sequence.Table(0, h);
            for (int i = table.Count - 1; i >= 0; i--)
            {
                var pos = store.Positions(table[i]);
                ulong mask = 0;
                for (int j = 0; j < pos.Length; j++) if (places.Contains(pos[j])) mask |= 1UL << j;
                sequence.Evict(0, h, i, mask);
            }
        }
    }

    /// <summary>Each table's rows in order: (place, key position, key, value).</summary>
    static List<(int Place, int KeyPosition, float[] Key, float[] Value)> Rows(KvSequence sequence, int head)
    {
        var store = sequence.Store;
        var rows = new List<(int, int, float[], float[])>();
        foreach (int page in sequence.Table(0, head).Pages)
        {
            int n = store.Count(page);
            var keys = new float[n * HeadDim];
            var values = new float[n * HeadDim];
            store.ReadKeys(page, keys);
            store.ReadValues(page, values);
            for (int j = 0; j < n; j++)
                rows.Add((store.Positions(page)[j], store.KeyPositions(page)[j], keys[(j * HeadDim)..((j + 1) * HeadDim)], values[(j * HeadDim)..((j + 1) * HeadDim)]));
        }
        return rows;
    }

    static float Tolerance(GgmlType type) => type switch { GgmlType.F32 => 1e-5f, GgmlType.F16 => 4e-3f, _ => 6e-2f };

    static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, float tolerance, string what)
    {
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tolerance, $"{what}, element {i}: expected {expected[i]}, stored {actual[i]}");
    }

    [Theory]
    [InlineData(RopeMode.Normal, 20, GgmlType.F32, 61)]
    [InlineData(RopeMode.NeoX, 20, GgmlType.F32, 61)]
    [InlineData(RopeMode.Normal, 12, GgmlType.F16, 45)]
    [InlineData(RopeMode.NeoX, 14, GgmlType.F16, 77)]
    [InlineData(RopeMode.NeoX, 20, GgmlType.F32, 16)]
    public void KeptRowsTakeConsecutiveKeyPositionsAndTheirKeysTurnWithThem(RopeMode mode, int rotaryDims, GgmlType type, int rows)
    {
        var rotation = new KeyRotation(mode, rotaryDims, 10000f);
        using var store = new PagedKvStore(new PagedKvOptions { LayerCount = 1, KvHeadCount = KvHeads, HeadDim = HeadDim, PageSize = PageSize, KeyType = type, ValueType = type, Metadata = KvMetadata.All });
        using var sequence = store.CreateSequence();
        var (raw, values) = RandomRows(rows, rows);
        AppendAll(sequence, raw, values, rows, rotation);

        // Nothing evicted: nothing moves.
        Assert.Equal(rows, sequence.CompactKeyPositions(rotation, out long none));
        Assert.Equal(0, none);

        var evicted = new HashSet<int>(Enumerable.Range(3, rows / 3).Concat(Enumerable.Range(rows / 2, 3)).Where(p => p < rows - 1));
        EvictPlaces(sequence, evicted);
        int kept = rows - evicted.Count;
        Assert.Equal(kept, sequence.CompactKeyPositions(rotation, out long rotated));
        Assert.Equal(KvHeads * (rows - 1 - evicted.Min() - (evicted.Count - 1)), rotated); // every kept row after the first hole

        int kvRow = KvHeads * HeadDim;
        for (int h = 0; h < KvHeads; h++)
        {
            var stored = Rows(sequence, h);
            Assert.Equal(kept, stored.Count);
            for (int j = 0; j < kept; j++)
            {
                var (place, keyPosition, key, value) = stored[j];
                Assert.DoesNotContain(place, evicted);
                Assert.Equal(j, keyPosition);
                var expected = Rotated(raw.AsSpan(place * kvRow + h * HeadDim, HeadDim), j, rotation);
                AssertClose(expected, key, Tolerance(type) * 2, $"head {h} row {j} (place {place})");
                AssertClose(values.AsSpan(place * kvRow + h * HeadDim, HeadDim), value, Tolerance(type), $"value of head {h} row {j}");
            }
        }
        // Compacted again with nothing new evicted: nothing moves.
        Assert.Equal(kept, sequence.CompactKeyPositions(rotation, out long again));
        Assert.Equal(0, again);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ColdPagesTakeTheSameShiftAndStayCold(bool mapped)
    {
        using var dir = new TempDirectory();
        var rotation = new KeyRotation(RopeMode.NeoX, HeadDim, 10000f);
        using var store = new PagedKvStore(new PagedKvOptions
        {
            LayerCount = 1, KvHeadCount = KvHeads, HeadDim = HeadDim, PageSize = PageSize, KeyType = GgmlType.F32, ValueType = GgmlType.F32,
            ColdPath = dir.File("cold.bin"), MapColdTier = mapped, Metadata = KvMetadata.Digest | KvMetadata.KeySum,
        });
        using var sequence = store.CreateSequence();
        const int rows = 70;
        var (raw, values) = RandomRows(rows, 5);
        AppendAll(sequence, raw, values, rows, rotation);
        // Rows 2..9 leave the first page; every later page then moves cold except the last.
        EvictPlaces(sequence, [.. Enumerable.Range(2, 8)]);
        var cold = new List<int>();
        for (int h = 0; h < KvHeads; h++)
        {
            var table = sequence.Table(0, h);
            for (int i = 1; i < table.Count - 1; i++)
            {
                store.MoveCold(table[i]);
                cold.Add(table[i]);
            }
        }
        Assert.NotEmpty(cold);
        Assert.Equal(rows - 8, sequence.CompactKeyPositions(rotation, out _));
        foreach (int page in cold) Assert.False(store.IsHot(page), $"page {page} was re-rotated in the cold tier and stays there");
        int kvRow = KvHeads * HeadDim;
        for (int h = 0; h < KvHeads; h++)
        {
            var stored = Rows(sequence, h); // read from the cold file for the cold pages
            for (int j = 0; j < stored.Count; j++)
                AssertClose(Rotated(raw.AsSpan(stored[j].Place * kvRow + h * HeadDim, HeadDim), j, rotation), stored[j].Key, 2e-5f, $"head {h} row {j}");
            // A recalled page brings the re-rotated keys back.
            int page = sequence.Table(0, h)[1];
            Assert.True(store.Recall(page));
            var keys = new float[store.Count(page) * HeadDim];
            store.ReadKeys(page, keys);
            int first = stored.FindIndex(r => r.Place == store.Positions(page)[0]);
            AssertClose(stored[first].Key, keys.AsSpan(0, HeadDim), 0, "recalled key");
            // Min/max digests were rebuilt from the turned keys: every stored key lies inside its block's bounds.
            var min = store.MinKey(page, 0);
            var max = store.MaxKey(page, 0);
            for (int i = 0; i < HeadDim; i++) Assert.InRange(keys[i], min[i], max[i]);
        }
    }

    [Fact]
    public void AForkKeepsItsKeysWhileTheParentCompacts()
    {
        var rotation = new KeyRotation(RopeMode.Normal, HeadDim, 10000f);
        using var store = new PagedKvStore(new PagedKvOptions { LayerCount = 1, KvHeadCount = KvHeads, HeadDim = HeadDim, PageSize = PageSize, KeyType = GgmlType.F16, ValueType = GgmlType.F16 });
        using var parent = store.CreateSequence();
        const int rows = 50;
        var (raw, values) = RandomRows(rows, 9);
        AppendAll(parent, raw, values, rows, rotation);
        var before = Rows(parent, 1);
        using var fork = parent.Fork();
        EvictPlaces(parent, [.. Enumerable.Range(4, 10)]);
        Assert.Equal(rows - 10, parent.CompactKeyPositions(rotation, out long rotated));
        Assert.True(rotated > 0);
        var forkRows = Rows(fork, 1);
        Assert.Equal(before.Count, forkRows.Count);
        for (int j = 0; j < before.Count; j++)
        {
            Assert.Equal(before[j].KeyPosition, forkRows[j].KeyPosition);
            Assert.Equal(before[j].Key, forkRows[j].Key);
        }
        var after = Rows(parent, 1);
        Assert.Equal(Enumerable.Range(0, rows - 10), after.Select(r => r.KeyPosition));
    }

    // ---- models ----

    /// <summary>One-layer random models of odd sizes: llama (adjacent pairs, head dim 12) and qwen2 (NeoX halves, biases, head dim 14).</summary>
    static RandomModelShape Shape(string architecture) => architecture == "llama"
        ? new("odd-llama", "llama", 1, 60, 5, 1, 100, 400, false, false, 2048, 10000f, 1e-5f)
        : new("odd-qwen2", "qwen2", 1, 84, 6, 2, 130, 400, true, true, 4096, 10000f, 1e-6f);

    static DecoderModel Load(TempDirectory dir, RandomModelShape shape)
    {
        string path = dir.File(shape.Name + ".gguf");
        RandomModel.Write(path, shape, GgmlType.F32, seed: 11);
        return ModelLoader.Load(path);
    }

    /// <summary>Streams <paramref name="tokens"/> into a sink+window cache in steps of 5 after a prefill of 23; returns the cache's kept places.</summary>
    static int[] Stream(DecoderModel model, DecoderState state, int[] tokens)
    {
        var logits = new float[model.Config.VocabSize];
        model.Forward(state, tokens.AsSpan(0, 23), logits);
        for (int i = 23; i < tokens.Length; i += 5) model.Forward(state, tokens.AsSpan(i, Math.Min(5, tokens.Length - i)), logits);
        var cache = (PagedKvCache)state.Cache;
        return [.. cache.Sequence.Table(0, 0).Pages.ToArray().SelectMany(p => cache.Store.Positions(p).ToArray())];
    }

    static float MaxDifference(float[] a, float[] b) => a.Zip(b, (x, y) => Math.Abs(x - y)).Max();

    /// <summary>
    /// A one-layer model's keys and values of a row depend on its token and position only, so after a sink + window
    /// policy evicted, compact positions must give the next tokens the logits of a fresh prefill of exactly the kept
    /// tokens at 0..K−1; original positions must not (the kept rows sit tens of positions further back).
    /// </summary>
    [Theory]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void CompactLogitsEqualAFreshPrefillOfTheKeptTokens(string architecture)
    {
        using var dir = new TempDirectory();
        using var model = Load(dir, Shape(architecture));
        var c = model.Config;
        var rng = new Random(3);
        var tokens = Enumerable.Range(0, 71).Select(_ => rng.Next(c.VocabSize)).ToArray();
        int[] question = [.. Enumerable.Range(0, 4).Select(_ => rng.Next(c.VocabSize))];
        int vocab = c.VocabSize;

        float[] Next(KvPositions positions, out int[] kept, out PagedKvCache cacheSeen)
        {
            var config = new KvCacheConfig { Default = "sinkwindow:sinks=3,window=19", PageSize = PageSize, Type = GgmlType.F32, Positions = positions };
            var cache = config.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim, rotation: model.KeyRotation);
            using var state = model.CreateState(cache);
            kept = Stream(model, state, tokens);
            Assert.Equal(tokens.Length, cache.Length);
            var logits = new float[question.Length * vocab];
            model.Forward(state, question, logits, allLogits: true);
            cacheSeen = cache;
            return logits;
        }

        var compact = Next(KvPositions.Compact, out var kept, out var compactCache);
        Assert.Equal(22, kept.Length);
        Assert.Equal([0, 1, 2], kept[..3]);
        Assert.Equal(Enumerable.Range(tokens.Length - 19, 19), kept[3..]);
        Assert.True(compactCache.RerotatedRows > 0);
        var original = Next(KvPositions.Original, out var keptOriginal, out _);
        Assert.Equal(kept, keptOriginal);

        using var fresh = model.CreateState(4096, GgmlType.F32, GgmlType.F32);
        var scratch = new float[vocab];
        model.Forward(fresh, [.. kept.Select(p => tokens[p])], scratch);
        var reference = new float[question.Length * vocab];
        model.Forward(fresh, question, reference, allLogits: true);

        float scale = 1 + reference.Max(Math.Abs);
        Assert.True(MaxDifference(reference, compact) <= 1e-4f * scale, $"compact differs from the fresh prefill by {MaxDifference(reference, compact)} (logits up to {scale})");
        Assert.True(MaxDifference(reference, original) > 1e-2f * scale, $"original positions should differ from the fresh prefill, but only by {MaxDifference(reference, original)}");
    }

    /// <summary>
    /// A question's fork of a compacted stream, fed a token at a time (as an answer is generated), gives the logits of the
    /// same tokens fed at once: each step's rows go on at the fork's next compact position (it does not compact itself).
    /// </summary>
    [Fact]
    public void AForkOfACompactedStreamGoesOnAtConsecutivePositions()
    {
        using var dir = new TempDirectory();
        using var model = Load(dir, Shape("llama"));
        var c = model.Config;
        int vocab = c.VocabSize;
        var rng = new Random(5);
        var tokens = Enumerable.Range(0, 71).Select(_ => rng.Next(vocab)).ToArray();
        int[] question = [.. Enumerable.Range(0, 4).Select(_ => rng.Next(vocab))];
        var config = new KvCacheConfig { Default = "sinkwindow:sinks=3,window=19", PageSize = PageSize, Type = GgmlType.F32, Positions = KvPositions.Compact };
        var cache = config.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim, rotation: model.KeyRotation);
        using var stream = model.CreateState(cache);
        int kept = Stream(model, stream, tokens).Length;
        Assert.Equal(kept, cache.NextRopePosition);

        float[] Ask(bool stepwise)
        {
            var fork = cache.Fork(new KvPolicyMap(c.LayerCount, c.KvHeadCount, new FullPolicy()));
            using var state = model.CreateState(fork);
            var logits = new float[question.Length * vocab];
            if (stepwise)
                for (int i = 0; i < question.Length; i++) model.Forward(state, question.AsSpan(i, 1), logits.AsSpan(i * vocab, vocab));
            else model.Forward(state, question, logits, allLogits: true);
            Assert.Equal(kept + question.Length, fork.NextRopePosition);
            return logits;
        }
        var once = Ask(stepwise: false);
        var stepwise = Ask(stepwise: true);
        float scale = 1 + once.Max(Math.Abs);
        Assert.True(MaxDifference(once, stepwise) <= 1e-4f * scale, $"a token at a time differs from all at once by {MaxDifference(once, stepwise)} (logits up to {scale})");
    }

    /// <summary>With nothing evicted, compact positions are the original ones: a multi-layer model's logits are bit for bit the same.</summary>
    [Fact]
    public void CompactWithoutEvictionsChangesNothing()
    {
        using var dir = new TempDirectory();
        using var model = Load(dir, Shape("qwen2") with { Name = "odd-qwen2-3", Layers = 3 });
        var c = model.Config;
        var tokens = Enumerable.Range(0, 40).Select(i => i * 37 % c.VocabSize).ToArray();
        float[] Run(KvPositions positions)
        {
            var cache = new KvCacheConfig { Default = "full", PageSize = PageSize, Type = GgmlType.F16, Positions = positions }
                .CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim, rotation: model.KeyRotation);
            using var state = model.CreateState(cache);
            var logits = new float[c.VocabSize];
            model.Forward(state, tokens.AsSpan(0, 25), logits);
            model.Forward(state, tokens.AsSpan(25), logits);
            Assert.Equal(0, cache.RerotatedRows);
            Assert.Equal(tokens.Length, cache.NextRopePosition);
            return logits;
        }
        Assert.Equal(Run(KvPositions.Original), Run(KvPositions.Compact));
    }

    /// <summary>A question's fork taken before the stream evicts and compacts answers as it would have before.</summary>
    [Fact]
    public void AForkTakenBeforeACompactionGivesTheSameLogits()
    {
        using var dir = new TempDirectory();
        using var model = Load(dir, Shape("llama") with { Name = "odd-llama-2", Layers = 2 });
        var c = model.Config;
        var rng = new Random(8);
        var tokens = Enumerable.Range(0, 60).Select(_ => rng.Next(c.VocabSize)).ToArray();
        int[] question = [5, 77, 301];
        var config = new KvCacheConfig { Default = "sinkwindow:sinks=2,window=24", PageSize = PageSize, Positions = KvPositions.Compact };
        var cache = config.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim, rotation: model.KeyRotation);
        using var stream = model.CreateState(cache);
        var logits = new float[c.VocabSize];
        model.Forward(stream, tokens.AsSpan(0, 30), logits);

        KvPolicyMap Full() => new(c.LayerCount, c.KvHeadCount, new FullPolicy());
        float[] Ask(PagedKvCache fork)
        {
            using var state = model.CreateState(fork);
            var answer = new float[question.Length * c.VocabSize];
            model.Forward(state, question, answer, allLogits: true);
            return answer;
        }
        var early = cache.Fork(Full());
        var late = cache.Fork(Full());
        Assert.Equal(KvPositions.Compact, late.Positions);
        var asked = Ask(early);
        long rotatedBefore = cache.RerotatedRows;
        model.Forward(stream, tokens.AsSpan(30), logits); // evicts and re-rotates rows the late fork still shares
        Assert.True(cache.RerotatedRows > rotatedBefore);
        Assert.Equal(asked, Ask(late));
    }

    [Fact]
    public void MRopeModelsGetAClearError()
    {
        using var dir = new TempDirectory();
        string path = dir.File("mrope.gguf");
        RandomModel.Write(path, RandomModelShape.Tiny with { Name = "mrope", Architecture = "qwen2vl", RopeSections = [2, 3, 3, 0] }, GgmlType.F32);
        using var model = ModelLoader.Load(path);
        Assert.Null(model.KeyRotation);
        var compact = new KvCacheConfig { Positions = KvPositions.Compact };
        var e = Assert.Throws<KvConfigException>(() => new InferenceEngine(model, new EngineOptions { Kv = compact }));
        Assert.Contains("not supported for M-RoPE", e.Message);
        Assert.Contains("mrope.gguf", e.Message);
        var c = model.Config;
        var direct = Assert.Throws<KvConfigException>(() => compact.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim, rotation: model.KeyRotation));
        Assert.Contains("M-RoPE", direct.Message);
    }

    [Fact]
    public void ConfigReadsPositionsAndNamesABadValue()
    {
        Assert.Equal(KvPositions.Compact, KvCacheConfig.Parse("""{ "default": "sinkwindow", "positions": "compact" }""").Positions);
        Assert.Equal(KvPositions.Original, KvCacheConfig.Parse("""{ "default": "sinkwindow" }""").Positions);
        var e = Assert.Throws<KvConfigException>(() => KvCacheConfig.Parse("""{ "positions": "sideways" }""", "kv.json"));
        Assert.Contains("kv.json: field 'positions'", e.Message);
        Assert.Contains("'sideways' is not original or compact", e.Message);
    }

    /// <summary>A session streaming text under a bounded policy with compact positions goes on at its kept rows' count.</summary>
    [Fact]
    public async Task ASessionGoesOnAtItsKeptRows()
    {
        using var dir = new TempDirectory();
        using var model = Load(dir, Shape("qwen2") with { Name = "odd-qwen2-2", Layers = 2 });
        await using var engine = new InferenceEngine(model, new EngineOptions
        {
            Kv = new KvCacheConfig { Default = "sinkwindow:sinks=4,window=40", Positions = KvPositions.Compact },
            PrefillChunk = 16,
        });
        await using var session = engine.CreateSession();
        var rng = new Random(4);
        for (int i = 0; i < 6; i++) await session.AppendTokensAsync(Enumerable.Range(0, 25).Select(_ => rng.Next(model.Config.VocabSize)).ToArray());
        var (length, next, stored) = await engine.Call(() => (session.Cache.Length, session.Cache.NextRopePosition, session.Cache.Sequence.StoredRows));
        Assert.Equal(150, length);
        Assert.Equal(44, next);
        Assert.Equal(44L * model.Config.LayerCount * model.Config.KvHeadCount, stored);
        var usage = new AskUsage();
        await foreach (var _ in session.AskAsync("what next?", new AskOptions { MaxTokens = 3, IgnoreEndOfGeneration = true, Usage = usage })) { }
        Assert.Equal(3, usage.CompletionTokens);
        Assert.Equal(1, engine.Store.SequenceCount); // the question's fork gave its pages back
    }

    /// <summary>
    /// A context length bounds RoPE positions, not places: under compact positions a bounded stream goes on past it
    /// (its rows turn at the kept rows' count, which <see cref="Session.NextPosition"/> reports and the server's and chat
    /// client's checks read), under original positions the same stream stops at it with the engine's error.
    /// </summary>
    [Theory]
    [InlineData(KvPositions.Compact)]
    [InlineData(KvPositions.Original)]
    public async Task TheContextLengthBoundsPositionsNotPlaces(KvPositions positions)
    {
        using var dir = new TempDirectory();
        using var model = Load(dir, Shape("qwen2") with { Name = "odd-qwen2-ctx", Layers = 2 });
        await using var engine = new InferenceEngine(model, new EngineOptions
        {
            Kv = new KvCacheConfig { Default = "sinkwindow:sinks=4,window=40", Positions = positions },
            PrefillChunk = 16,
            ContextLength = 64,
        });
        await using var session = engine.CreateSession();
        var rng = new Random(5);
        int[] Tokens() => Enumerable.Range(0, 25).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();
        await session.AppendTokensAsync(Tokens());
        await session.AppendTokensAsync(Tokens());
        if (positions == KvPositions.Original)
        {
            Assert.Equal(50, session.NextPosition);
            var e = await Assert.ThrowsAsync<InvalidOperationException>(() => session.AppendTokensAsync(Tokens()));
            Assert.Contains("context full", e.Message);
            return;
        }
        for (int i = 0; i < 4; i++) await session.AppendTokensAsync(Tokens());
        Assert.Equal(150, session.Length);
        Assert.Equal(44, session.NextPosition);
        var usage = new AskUsage();
        await foreach (var _ in session.AskAsync("what next?", new AskOptions { MaxTokens = 3, IgnoreEndOfGeneration = true, Usage = usage })) { }
        Assert.Equal(3, usage.CompletionTokens);
    }
}
