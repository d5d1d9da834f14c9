using VidKV.Cache;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// Prepacked prefill (Zhao et al. 2024): first-fit-decreasing packing against a plain reference, the engine's steps
/// under it, the KV and logits of packed prompts against each prompt alone, and greedy answers against chunked prefill.
/// </summary>
public class PrepackTests
{
    static EngineOptions Options(PrefillScheduling prefill, int chunk = 128) => new()
    {
        Kv = new KvCacheConfig { Default = "full", PageSize = 16, Type = GgmlType.F32 },
        Prefill = prefill,
        PrefillChunk = chunk,
        MaxBatchRows = 512,
    };

    static int[] Tokens(DecoderModel model, int count, int seed)
    {
        var rng = new Random(seed);
        // Ids past the first few, so none is a control token.
        return Enumerable.Range(0, count).Select(_ => 3 + rng.Next(model.Config.VocabSize - 3)).ToArray();
    }

    /// <summary>The 300, 200, 100, 400-row example in 512-row bins: 400 + 100, then 300 + 200; an item too large for a bin gets none; ties keep their order.</summary>
    [Fact]
    public void FirstFitDecreasingPacksTheExample()
    {
        var (bins, order, count) = Pack([300, 200, 100, 400], 512);
        Assert.Equal(2, count);
        Assert.Equal([3, 0, 1, 2], order);
        Assert.Equal([1, 1, 0, 0], bins);

        (bins, order, count) = Pack([600, 256, 256, 256, 0], 512);
        Assert.Equal(2, count);
        Assert.Equal([0, 1, 2, 3, 4], order); // equal sizes in the given order
        Assert.Equal([-1, 0, 0, 1, 0], bins);

        (_, _, count) = Pack([], 512);
        Assert.Equal(0, count);
    }

    static (int[] Bins, int[] Order, int Count) Pack(int[] sizes, int capacity)
    {
        var bins = new int[sizes.Length];
        var order = new int[sizes.Length];
        int count = Prepacking.FirstFitDecreasing(sizes, capacity, bins, order, new int[sizes.Length]);
        return (bins, order, count);
    }

    /// <summary>
    /// On random sizes (some larger than a bin, many equal), the packing is the one a plainly written first-fit
    /// decreasing gives (a stable sort, a list of bins), no bin is over capacity, and packing allocates nothing.
    /// </summary>
    [Fact]
    public void FirstFitDecreasingMatchesAPlainReference()
    {
        var rng = new Random(17);
        for (int trial = 0; trial < 300; trial++)
        {
            int n = rng.Next(0, 40), capacity = rng.Next(1, 600);
            var sizes = Enumerable.Range(0, n).Select(_ => rng.Next(4) == 0 ? rng.Next(1, 4) * 50 : rng.Next(0, 700)).ToArray();
            var (bins, order, count) = Pack(sizes, capacity);

            var wantOrder = Enumerable.Range(0, n).OrderByDescending(i => sizes[i]).ToArray(); // LINQ's sort is stable
            var loads = new List<int>();
            var wantBins = new int[n];
            foreach (int i in wantOrder)
            {
                wantBins[i] = sizes[i] > capacity ? -1 : loads.FindIndex(load => load + sizes[i] <= capacity);
                if (sizes[i] > capacity) continue;
                if (wantBins[i] < 0)
                {
                    wantBins[i] = loads.Count;
                    loads.Add(0);
                }
                loads[wantBins[i]] += sizes[i];
            }
            Assert.Equal(wantOrder, order);
            Assert.Equal(wantBins, bins);
            Assert.Equal(loads.Count, count);
            Assert.All(loads, load => Assert.True(load <= capacity));
        }

        int[] many = [.. Enumerable.Range(0, 64).Select(i => (i * 37) % 300)], scratch1 = new int[64], scratch2 = new int[64], scratch3 = new int[64];
        Prepacking.FirstFitDecreasing(many, 512, scratch1, scratch2, scratch3);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++) Prepacking.FirstFitDecreasing(many, 512, scratch1, scratch2, scratch3);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    /// <summary>
    /// Sessions whose appends wait together, with the rows each step gave each of them (by session index), step after
    /// step until all are in.
    /// </summary>
    static async Task<List<Dictionary<int, int>>> StepsOf(InferenceEngine engine, DecoderModel model, int[] lengths)
    {
        var sessions = lengths.Select(_ => engine.CreateSession()).ToArray();
        var steps = new List<Dictionary<int, int>>();
        engine.StepCompleted = () =>
        {
            var (batch, caches) = engine.LastStep;
            var step = new Dictionary<int, int>();
            for (int row = 0; row < batch.Count; row++)
            {
                int session = Array.FindIndex(sessions, s => s.Cache == caches[batch.Sequence(row)]);
                step[session] = step.GetValueOrDefault(session) + 1;
            }
            steps.Add(step);
        };
        var appends = await LineUp(engine, () => lengths.Select((n, i) => sessions[i].AppendTokensAsync(Tokens(model, n, i))).ToArray());
        await Task.WhenAll(appends);
        await Settled(engine);
        engine.StepCompleted = null;
        foreach (var s in sessions) await s.DisposeAsync();
        return steps;
    }

    /// <summary>
    /// Completes once the loop has finished its current step, <see cref="InferenceEngine.StepCompleted"/> included (work
    /// completes inside a step, before that hook runs).
    /// </summary>
    static Task Settled(InferenceEngine engine) => engine.Call(() => true);

    /// <summary>Pauses the loop, starts the work, waits until all of it waits in the loop and lets the loop go: the work meets in one step.</summary>
    static async Task<T[]> LineUp<T>(InferenceEngine engine, Func<T[]> start) where T : Task
    {
        engine.Paused = true;
        var started = start();
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(1);
        while (await engine.Call(() => engine.WaitingWorks) < started.Length)
        {
            Assert.True(DateTime.UtcNow < deadline, "the work never lined up");
            await Task.Delay(5);
        }
        engine.Paused = false;
        return started;
    }

    /// <summary>
    /// The engine runs first-fit decreasing step by step: prompts of 300, 200, 100 and 400 rows go in as 400 + 100,
    /// then 300 + 200 (chunked prefill needs four steps of 128-row chunks); with a 700-row prompt, too long for a step,
    /// a chunk's rows are kept for it, and its rest goes in whole once it fits.
    /// </summary>
    [Fact]
    public async Task PrepackedStepsFollowFirstFitDecreasing()
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        await using (var engine = new InferenceEngine(model, Options(PrefillScheduling.Prepacked)))
        {
            var steps = await StepsOf(engine, model, [300, 200, 100, 400]);
            Assert.Equal(2, steps.Count);
            Assert.Equal(new Dictionary<int, int> { [3] = 400, [2] = 100 }, steps[0]);
            Assert.Equal(new Dictionary<int, int> { [0] = 300, [1] = 200 }, steps[1]);

            // 700 rows do not fit 512: 384 rows are packed (300), the long one gets a 128-row chunk; then 250 and
            // another chunk; then its last 444 rows, which now fit whole.
            steps = await StepsOf(engine, model, [700, 300, 250]);
            Assert.Equal(3, steps.Count);
            Assert.Equal(new Dictionary<int, int> { [1] = 300, [0] = 128 }, steps[0]);
            Assert.Equal(new Dictionary<int, int> { [2] = 250, [0] = 128 }, steps[1]);
            Assert.Equal(new Dictionary<int, int> { [0] = 444 }, steps[2]);
        }
        await using (var engine = new InferenceEngine(model, Options(PrefillScheduling.Chunked)))
        {
            var steps = await StepsOf(engine, model, [300, 200, 100, 400]);
            Assert.Equal(4, steps.Count);
            Assert.Equal(new Dictionary<int, int> { [0] = 128, [1] = 128, [2] = 100, [3] = 128 }, steps[0]);
            Assert.All(steps, step => Assert.All(step.Values, rows => Assert.True(rows <= 128)));
        }
    }

    /// <summary>A test image (a gradient with a pattern), as the video tests draw their frames.</summary>
    static RgbImage Image(int width, int height)
    {
        var image = new RgbImage(width, height);
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                var p = image.Pixel(x, y);
                p[0] = (byte)(4 * x);
                p[1] = (byte)(5 * y);
                p[2] = (byte)(3 * (x ^ y));
            }
        return image;
    }

    /// <summary>Every stored row of a sequence, page by page: keys and values as f32, and positions.</summary>
    static List<(float[] Keys, float[] Values, int[] Positions)> Rows(KvSequence sequence)
    {
        var store = sequence.Store;
        var rows = new List<(float[], float[], int[])>();
        for (int l = 0; l < store.LayerCount; l++)
            for (int h = 0; h < store.KvHeadCount; h++)
                foreach (int page in sequence.Table(l, h).Pages)
                {
                    var keys = new float[store.Count(page) * store.HeadDim];
                    var values = new float[keys.Length];
                    store.ReadKeys(page, keys);
                    store.ReadValues(page, values);
                    rows.Add((keys, values, store.Positions(page).ToArray()));
                }
        return rows;
    }

    /// <summary>
    /// Prompts of odd, different lengths (with the Qwen2-VL pair, one of them an image: text rows and an M-RoPE grid of
    /// embedding rows) packed into one step give each sequence bitwise the KV rows (keys, values, positions) of the prompt
    /// prefilled alone, and its last-row logits within 1e-5 relative. The KV is exact because every prompt here has at
    /// least 4 rows, so alone and packed its rows take the same weight-product kernels (one row's sums do not depend on
    /// the rows beside it). The logits are not: alone the output head runs one row (a dot product per weight row),
    /// packed four (the f32 tiles where AVX-512 runs them), and the two sum in different orders.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task PrepackedPrefillGivesTheKvAndLogitsOfSeparatePrefill(bool withImage)
    {
        using var pair = withImage ? new VideoSessionTests.Pair("tiny-qwen2vl") : null;
        using var owned = withImage ? null : ModelLoader.Load(TestData.Model("tiny-qwen2-random"));
        var model = pair?.Text ?? owned!;
        int[] lengths = [37, 101, 13, 250];
        var image = Image(84, 56);
        Task Append(Session session, int i) => withImage && i == 3 ? session.AppendImageAsync(image) : session.AppendTokensAsync(Tokens(model, lengths[i], 10 + i));

        var alone = new List<(List<(float[], float[], int[])> Kv, float[] Logits, int Rows)>();
        await using (var engine = new InferenceEngine(model, Options(PrefillScheduling.Prepacked), pair?.Vision))
            for (int i = 0; i < lengths.Length; i++)
            {
                await using var session = engine.CreateSession();
                session.KeepLogits = true;
                int steps = 0;
                engine.StepCompleted = () => steps++;
                await Append(session, i);
                await Settled(engine);
                Assert.Equal(1, steps); // alone, in one batch of its own rows
                engine.StepCompleted = null;
                alone.Add((await engine.Call(() => Rows(session.Cache.Sequence)), session.LastLogits!, session.Length));
            }
        if (withImage) Assert.True(alone[3].Rows > 10, $"the image took only {alone[3].Rows} rows");

        await using (var engine = new InferenceEngine(model, Options(PrefillScheduling.Prepacked), pair?.Vision))
        {
            var sessions = lengths.Select(_ => engine.CreateSession()).ToArray();
            foreach (var s in sessions) s.KeepLogits = true;
            var sizes = new List<(int Sequences, int Rows)>();
            engine.StepCompleted = () => sizes.Add((engine.LastStep.Caches.Count, engine.LastStep.Batch.Count));
            await Task.WhenAll(await LineUp(engine, () => sessions.Select(Append).ToArray()));
            await Settled(engine);
            Assert.Equal([(4, alone.Sum(a => a.Rows))], sizes); // one step held every prompt whole

            for (int i = 0; i < sessions.Length; i++)
            {
                var kv = await engine.Call(() => Rows(sessions[i].Cache.Sequence));
                Assert.Equal(alone[i].Kv.Count, kv.Count);
                for (int p = 0; p < kv.Count; p++)
                {
                    Assert.Equal(alone[i].Kv[p].Item3, kv[p].Positions);
                    Assert.True(alone[i].Kv[p].Item1.AsSpan().SequenceEqual(kv[p].Keys), $"prompt {i}, page {p}: keys differ from alone");
                    Assert.True(alone[i].Kv[p].Item2.AsSpan().SequenceEqual(kv[p].Values), $"prompt {i}, page {p}: values differ from alone");
                }
                AssertClose(alone[i].Logits, sessions[i].LastLogits!, $"prompt {i} logits");
            }
            foreach (var s in sessions) await s.DisposeAsync();
        }

        static void AssertClose(float[] want, float[] got, string what)
        {
            Assert.Equal(want.Length, got.Length);
            for (int k = 0; k < want.Length; k++)
                Assert.True(Math.Abs(want[k] - got[k]) <= 1e-5f * (1 + Math.Abs(want[k])), $"{what}[{k}]: {got[k]} packed, {want[k]} alone");
        }
    }

    /// <summary>
    /// Five sessions asking at once (prompts of about 20 to 700 tokens: some whole, one longer than a step) get the same
    /// greedy answers under prepacked prefill as under chunked, and prepacking did put a prompt longer than a chunk
    /// into one step.
    /// </summary>
    [Fact]
    public async Task PrepackedAnswersEqualChunkedAnswers()
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        string text = File.ReadAllText(TestData.File_("text/story_eval.txt"));
        string[] prompts = [text[..80], text[200..1100], text[1500..2300], text[3000..5800], text[6000..6500]];
        var ask = new AskOptions { MaxTokens = 16, Sampling = SamplingOptions.Greedy };
        var answers = new List<string[]>();
        int longestPart = 0;
        foreach (var prefill in new[] { PrefillScheduling.Chunked, PrefillScheduling.Prepacked })
        {
            await using var engine = new InferenceEngine(model, Options(prefill));
            var sessions = prompts.Select(_ => engine.CreateSession()).ToArray();
            if (prefill == PrefillScheduling.Prepacked)
                engine.StepCompleted = () =>
                {
                    var (batch, _) = engine.LastStep;
                    for (int row = 0, start = 0; row <= batch.Count; row++)
                        if (row == batch.Count || batch.Sequence(row) != batch.Sequence(start))
                        {
                            longestPart = Math.Max(longestPart, row - start);
                            start = row;
                        }
                };
            async Task<string> Answer(Session session, string prompt)
            {
                var pieces = new List<string>();
                await foreach (var piece in session.AskAsync(prompt, ask)) pieces.Add(piece);
                return string.Concat(pieces);
            }
            answers.Add(await Task.WhenAll(await LineUp(engine, () => sessions.Select((s, i) => Answer(s, prompts[i])).ToArray())));
            await Settled(engine);
            foreach (var s in sessions) await s.DisposeAsync();
        }
        Assert.All(answers[0], a => Assert.True(a.Length > 5, $"answer '{a}' is too short to compare"));
        Assert.Equal(answers[0], answers[1]);
        Assert.True(longestPart > 128, $"no prompt went in whole past a chunk (longest part {longestPart} rows)");
        Assert.True(prompts.Max(p => model.Tokenizer.Encode(p, addSpecial: true, parseSpecial: true).Count) > 512, "no prompt is longer than a step");
    }
}
