using System.Runtime.CompilerServices;
using VidKV.Cache;
using VidKV.Engine;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>The engine loop and sessions: concurrency without interference, forks, the shared budget, asks during ingest, cancellation.</summary>
public class EngineTests
{
    static DecoderModel Stories() => ModelLoader.Load(TestData.Model("stories260K"));

    static string Story(int start, int length)
    {
        string text = File.ReadAllText(TestData.File_("text/story_eval.txt"));
        return text.Substring(start, length);
    }

    static readonly AskOptions Greedy = new() { MaxTokens = 24, Sampling = SamplingOptions.Greedy };

    static async Task<string> Answer(Session session, string question, AskOptions? options = null, CancellationToken cancellation = default)
    {
        var pieces = new List<string>();
        await foreach (var piece in session.AskAsync(question, options ?? Greedy, cancellation)) pieces.Add(piece);
        return string.Concat(pieces);
    }

    static EngineOptions Options(string policy = "full", int maxHotPages = 0, int chunk = 64) => new()
    {
        Kv = new KvCacheConfig { Default = policy, PageSize = 16, Type = GgmlType.F32, MaxHotPages = maxHotPages },
        PrefillChunk = chunk,
    };

    /// <summary>
    /// Two sessions that ingest and ask at the same time (their rows in the same batches) answer with exactly the greedy
    /// text each gives alone; and asking twice gives the same answer (the first left nothing behind).
    /// </summary>
    [Fact]
    public async Task ConcurrentSessionsAnswerAsEachAlone()
    {
        using var model = Stories();
        var inputs = new[] { (Story(0, 900), " Then"), (Story(1500, 400), " The next day") };
        var alone = new List<string>();
        foreach (var (text, question) in inputs)
        {
            await using var engine = new InferenceEngine(model, Options());
            await using var session = engine.CreateSession();
            await session.AppendAsync(text);
            alone.Add(await Answer(session, question));
            Assert.Equal(alone[^1], await Answer(session, question));
        }
        Assert.All(alone, a => Assert.True(a.Length > 10, $"answer '{a}' is too short to compare"));
        Assert.NotEqual(alone[0], alone[1]);

        await using (var engine = new InferenceEngine(model, Options()))
        {
            int shared = 0;
            engine.StepCompleted = () => shared = Math.Max(shared, engine.LastStepSequences);
            var sessions = inputs.Select(_ => engine.CreateSession()).ToArray();
            var answers = await Task.WhenAll(inputs.Select(async (input, i) =>
            {
                await sessions[i].AppendAsync(input.Item1);
                return await Answer(sessions[i], input.Item2);
            }));
            Assert.Equal(alone, answers);
            Assert.True(shared >= 2, "no step ran both sessions' rows together");
            foreach (var s in sessions) await s.DisposeAsync();
            Assert.Equal(0, engine.Memory.Pages);
        }
    }

    /// <summary>An answer runs on a fork: afterwards the session's KV rows are byte-equal to before and the pool holds exactly the session's pages.</summary>
    [Fact]
    public async Task AnswerLeavesTheSessionsKvByteEqual()
    {
        using var model = Stories();
        await using var engine = new InferenceEngine(model, Options(chunk: 50));
        await using var session = engine.CreateSession();
        await session.AppendAsync(Story(0, 700));
        var before = await engine.Call(() => Snapshot(session.Cache.Sequence));
        int pages = engine.Memory.Pages;
        string answer = await Answer(session, " Once");
        Assert.NotEmpty(answer);
        var after = await engine.Call(() => Snapshot(session.Cache.Sequence));
        Assert.Equal(before.Count, after.Count);
        for (int i = 0; i < before.Count; i++) Assert.True(before[i].SequenceEqual(after[i]), $"row {i} changed");
        Assert.Equal(pages, engine.Memory.Pages);
        Assert.Equal(1, engine.Memory.Sequences);
    }

    /// <summary>Every stored K and V row of <paramref name="sequence"/> with its positions, page by page (call on the loop thread).</summary>
    internal static unsafe List<byte[]> Snapshot(KvSequence sequence)
    {
        var store = sequence.Store;
        var rows = new List<byte[]>();
        for (int l = 0; l < store.LayerCount; l++)
            for (int h = 0; h < store.KvHeadCount; h++)
                foreach (int page in sequence.Table(l, h).Pages)
                {
                    int n = store.Count(page), bytes = store.PageBytes;
                    var copy = new ReadOnlySpan<byte>(store.ReadableRows(page), bytes).ToArray();
                    var positions = store.Positions(page).ToArray();
                    rows.Add([.. copy.AsSpan(0, n * store.KeyRowBytes), .. copy.AsSpan(store.PageSize * store.KeyRowBytes, n * store.ValueRowBytes),
                        .. positions.SelectMany(BitConverter.GetBytes)]);
                }
        return rows;
    }

    /// <summary>
    /// Four sessions ingesting and asking at once under one hot budget with an evicting policy: after every step the
    /// hot bytes are within the budget (and come near it, so the budget is what bounds them), and every answer arrives.
    /// </summary>
    [Fact]
    public async Task SharedBudgetHoldsWithFourSessions()
    {
        using var model = Stories();
        const int budget = 700;
        await using var engine = new InferenceEngine(model, Options("sinkwindow:sinks=4,window=60", maxHotPages: budget, chunk: 32));
        long limit = engine.Memory.BudgetBytes, highest = 0;
        int steps = 0, over = 0;
        engine.StepCompleted = () =>
        {
            steps++;
            long hot = engine.Store.HotBytes;
            highest = Math.Max(highest, hot);
            if (hot > limit) over++;
        };
        var answers = await Task.WhenAll(Enumerable.Range(0, 4).Select(async i =>
        {
            await using var session = engine.CreateSession();
            await session.AppendAsync(Story(300 * i, 1200));
            var first = await Answer(session, " Then");
            await session.AppendAsync(Story(300 * i + 1200, 600));
            return first + await Answer(session, " So");
        }));
        Assert.All(answers, a => Assert.NotEmpty(a));
        Assert.True(steps > 20, $"only {steps} steps");
        Assert.Equal(0, over);
        Assert.True(highest > limit / 3, $"hot bytes peaked at {highest} of a {limit}-byte budget: the test does not press on it");
        Assert.Equal(0, engine.Memory.Pages);
    }

    /// <summary>
    /// A long stream under an evicting policy stays bounded: after a warm-up the pool's page metadata, its allocated
    /// buffers and the hot bytes no longer grow however much more is appended (pages are reused from the free list;
    /// no per-position array grows with the stream).
    /// </summary>
    [Theory]
    [InlineData("sinkwindow:sinks=4,window=60")]
    [InlineData("h2o:budget=64")]
    public async Task LongStreamStaysBounded(string policy)
    {
        using var model = Stories();
        await using var engine = new InferenceEngine(model, Options(policy, chunk: 32));
        await using var session = engine.CreateSession();
        var tokens = model.Tokenizer.Encode(File.ReadAllText(TestData.File_("text/story_eval.txt")), addSpecial: true, parseSpecial: false).ToArray();
        (long Metadata, long Allocated, long Hot) Measure() => (engine.Store.MetadataBytes, engine.Store.AllocatedBytes, engine.Store.HotBytes);
        var seen = new List<(long, long, long)>();
        for (int round = 0; round < 6; round++)
        {
            await session.AppendTokensAsync(tokens.AsMemory(0, 1000));
            seen.Add(await engine.Call(Measure));
        }
        Assert.Equal(6000, session.Length);
        for (int i = 2; i < seen.Count; i++) Assert.True(seen[i].Item1 == seen[1].Item1 && seen[i].Item2 == seen[1].Item2, $"after {1000 * (i + 1)} tokens: {seen[i]} vs {seen[1]} after 2000");
        Assert.True(seen[^1].Item3 <= seen[1].Item3, $"hot bytes grew: {seen[^1].Item3} > {seen[1].Item3}");
    }

    static async IAsyncEnumerable<string> Slowly(string text, int pieces, int delayMs, [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        int size = text.Length / pieces;
        for (int i = 0; i < pieces; i++)
        {
            await Task.Delay(delayMs, cancellation);
            yield return text.Substring(i * size, size);
        }
    }

    /// <summary>
    /// A question asked while a slow source is still being ingested streams its first token before the ingest ends; the
    /// ingest goes on and takes in all of the source; cancelling the question gives its pages back.
    /// </summary>
    [Fact]
    public async Task AskDuringIngestStreamsWhileIngestRuns()
    {
        using var model = Stories();
        await using var engine = new InferenceEngine(model, Options(chunk: 16));
        await using var session = engine.CreateSession();
        string text = Story(0, 1600);
        var ingest = session.AppendAsync(Slowly(text, 40, 50));
        while (session.Length < 30) await Task.Delay(5);
        using var cancel = new CancellationTokenSource();
        bool ingestRunningAtFirstToken = false;
        int pieces = 0;
        var asked = Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var piece in session.AskAsync(" Once", new AskOptions { MaxTokens = 1000 }, cancel.Token))
            {
                if (pieces++ == 0) ingestRunningAtFirstToken = !ingest.IsCompleted;
                if (pieces == 3) cancel.Cancel();
            }
        });
        await asked;
        Assert.True(ingestRunningAtFirstToken, "the ingest had finished before the answer's first token");
        await ingest;
        int expected = model.Tokenizer.Encode(text.Substring(0, 40 * (text.Length / 40)), addSpecial: true, parseSpecial: true).Count;
        Assert.InRange(session.Length, expected - 40, expected + 40); // pieces tokenised apart may split words differently
        // Only the session's pages are left: the cancelled answer's fork gave its own back.
        int sessionPages = await engine.Call(() =>
        {
            int n = 0;
            var c = model.Config;
            for (int l = 0; l < c.LayerCount; l++) for (int h = 0; h < c.KvHeadCount; h++) n += session.Cache.Sequence.Table(l, h).Count;
            return n;
        });
        Assert.Equal(sessionPages, engine.Memory.Pages);
    }

    /// <summary>Cancelling an answer, or leaving its enumeration early, returns the pool to its page count before the question.</summary>
    [Fact]
    public async Task CancelledOrAbandonedAnswersFreeTheirPages()
    {
        using var model = Stories();
        await using var engine = new InferenceEngine(model, Options());
        await using var session = engine.CreateSession();
        await session.AppendAsync(Story(0, 500));
        int before = engine.Memory.Pages;

        using (var cancel = new CancellationTokenSource())
        {
            await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
            {
                await foreach (var _ in session.AskAsync(" Then", new AskOptions { MaxTokens = 500 }, cancel.Token)) cancel.Cancel();
            });
        }
        Assert.Equal(before, engine.Memory.Pages);

        await foreach (var _ in session.AskAsync(" Then", new AskOptions { MaxTokens = 500 })) break;
        Assert.Equal(before, engine.Memory.Pages);
        Assert.Equal(1, engine.Memory.Sequences);
    }

    /// <summary>Bad input fails its own call with a clear error; the session and the engine go on.</summary>
    [Fact]
    public async Task BadInputFailsOnlyItsCall()
    {
        using var model = Stories();
        await using var engine = new InferenceEngine(model, Options());
        await using var session = engine.CreateSession();
        var e = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => session.AppendTokensAsync(new[] { 1, model.Config.VocabSize + 5 }));
        Assert.Contains($"{model.Config.VocabSize + 5}", e.Message);
        await Assert.ThrowsAsync<ArgumentException>(() => session.AppendEmbeddingsAsync(new float[model.Config.EmbeddingLength + 1]));
        await session.AppendAsync(Story(0, 200));
        var embedding = new float[2 * model.Config.EmbeddingLength];
        model.TokenEmbedding(5, embedding);
        await session.AppendEmbeddingsAsync(embedding, frameId: 3);
        Assert.NotEmpty(await Answer(session, " The"));
    }
}

/// <summary>The README's library example: the calls it makes exist as public API, and the same program runs on a real model.</summary>
public class ReadmeLibraryExampleTests
{
    [Fact]
    public async Task TheExampleRuns()
    {
        string readme = File.ReadAllText(Path.Combine(TestData.RepositoryRoot, "README.md"));
        int start = readme.IndexOf("```csharp", StringComparison.Ordinal);
        Assert.True(start >= 0, "README has no C# example");
        string code = readme[start..readme.IndexOf("```", start + 9, StringComparison.Ordinal)];
        Assert.True(code.Split('\n').Length - 2 <= 12, "the example should stay about 10 lines");
        var engineType = typeof(InferenceEngine);
        foreach (var (type, member) in new[] { (engineType, "CreateSession"), (typeof(Session), "AppendAsync"), (typeof(Session), "AskAsync"), (typeof(ModelLoader), "Load") })
        {
            Assert.Contains(member, code);
            Assert.True(type.IsPublic && type.GetMethods().Any(m => m.Name == member), $"{type.Name}.{member} is not public API");
        }

        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        await using var engine = new InferenceEngine(model, new EngineOptions { Kv = new() { Default = "freekv", Budget = 64, PageSize = 16 } });
        await using var session = engine.CreateSession();
        var reading = session.AppendAsync(File.ReadAllText(TestData.File_("text/story_eval.txt"))[..3000]);
        var answer = new System.Text.StringBuilder();
        await foreach (var piece in session.AskAsync(" Once upon a time", new AskOptions { MaxTokens = 16 })) answer.Append(piece);
        await reading;
        Assert.NotEqual(0, answer.Length);
        Assert.True(session.Length > 500);
    }
}
