using VidKV.Cache;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// The ingest-time reducers (ReSV, LiveVLM, QuickPrefill, VideoScan, InfiniPot-V) on generated keys that look like
/// video: frames are blocks of rows with a frame id, a static scene repeats its keys with tiny noise, a scene cut draws
/// new ones, and text rows (frame id −1) come between frames. The cache is driven directly (append → attend →
/// commit per layer), no model: 2 layers, 2 KV heads of dimension 32, 2 query heads each, f32 pages of 16 rows.
/// </summary>
public class ReducerTests
{
    const int Layers = 2, KvHeads = 2, Group = 2, D = 32, Heads = KvHeads * Group;
    static readonly float Scale = 1 / MathF.Sqrt(D);

    /// <summary>A cache fed rows step by step, remembering every row's frame, key and value as appended.</summary>
    sealed class Video : IDisposable
    {
        public readonly PagedKvCache Cache;
        public readonly List<int> Frames = []; // frame id of each position
        public readonly List<float[]> Keys = [], Values = []; // [KvHeads × D] per position
        readonly Random rng;

        public Video(string spec, int? budget = null, int seed = 1, string? coldPath = null)
        {
            Cache = new KvCacheConfig { Default = spec, PageSize = 16, Type = GgmlType.F32, Budget = budget, ColdPath = coldPath }.CreateCache(Layers, KvHeads, D);
            rng = new Random(seed);
        }

        Video(PagedKvCache cache, Video parent, int seed)
        {
            Cache = cache;
            Frames.AddRange(parent.Frames);
            Keys.AddRange(parent.Keys);
            Values.AddRange(parent.Values);
            rng = new Random(seed);
        }

        /// <summary>A fork of the stream (shared pages) under fresh policies of <paramref name="spec"/>, as a session asks a question.</summary>
        public Video Fork(string spec, int seed) =>
            new(Cache.Fork(new KvCacheConfig { Default = spec }.BuildPolicies(Layers, KvHeads)), this, seed);

        public int Position => Frames.Count;
        public PagedKvStore Store => Cache.Store;

        /// <summary>Appends rows with keys [n, KvHeads, D] (values and queries random unless given) in one step, through every layer.</summary>
        public void Step(float[] keys, int[] frames, float[]? queries = null)
        {
            int n = frames.Length, start = Position;
            var values = Gaussian(rng, n * KvHeads * D);
            queries ??= Gaussian(rng, n * Heads * D);
            var output = new float[n * Heads * D];
            // Recorded first, so observers of this step see its rows.
            for (int t = 0; t < n; t++)
            {
                Frames.Add(frames[t]);
                Keys.Add(keys.AsSpan(t * KvHeads * D, KvHeads * D).ToArray());
                Values.Add(values.AsSpan(t * KvHeads * D, KvHeads * D).ToArray());
            }
            for (int l = 0; l < Layers; l++)
            {
                Cache.Append(l, start, n, keys, values, frames);
                Cache.Attend(l, queries, start, n, Heads, Scale, output);
            }
            Cache.Commit(start + n);
        }

        /// <summary>Appends a frame's rows (keys [rows, KvHeads, D]) in <paramref name="chunks"/> steps.</summary>
        public void Frame(int frame, float[] keys, int chunks = 1)
        {
            int rows = keys.Length / (KvHeads * D);
            for (int c = 0; c < chunks; c++)
            {
                int from = rows * c / chunks, to = rows * (c + 1) / chunks;
                Step(keys[(from * KvHeads * D)..(to * KvHeads * D)], Enumerable.Repeat(frame, to - from).ToArray());
            }
        }

        /// <summary>One text row (frame id −1) with random key and the given queries ([Heads × D]) or random ones.</summary>
        public void Text(float[]? queries = null) => Step(Gaussian(rng, KvHeads * D), [-1], queries);

        /// <summary>Stored positions of (layer, head), ascending.</summary>
        public int[] Stored(int layer, int head)
        {
            var list = new List<int>();
            foreach (int page in Cache.Sequence.Table(layer, head).Pages) list.AddRange(Store.Positions(page).ToArray());
            return [.. list];
        }

        public void Dispose() => Cache.Dispose();
    }

    static float[] Gaussian(Random rng, int n, float sigma = 1)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = sigma * (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        return x;
    }

    /// <summary>A scene: one key per slot and KV head ([rows, KvHeads, D]).</summary>
    static float[] Scene(Random rng, int rows) => Gaussian(rng, rows * KvHeads * D);

    /// <summary>A frame of a scene: its keys plus Gaussian noise of <paramref name="noise"/>.</summary>
    static float[] Shot(Random rng, float[] scene, float noise = 0.01f)
    {
        var keys = Gaussian(rng, scene.Length, noise);
        for (int i = 0; i < keys.Length; i++) keys[i] += scene[i];
        return keys;
    }

    static float[] Key(Video video, int position, int head) => video.Keys[position].AsSpan(head * D, D).ToArray();

    // ---- ReSV ----

    /// <summary>
    /// ReSV on a static scene makes a frame's worth of clusters with the first frame and none after (each token joins
    /// its slot's cluster); a scene cut adds about a frame's worth, and the new scene then adds none either. Frames
    /// split over two steps and text between frames change nothing.
    /// </summary>
    [Fact]
    public void ResvStaticSceneAddsNoClustersAndASceneCutAddsThem()
    {
        const int rows = 24;
        var rng = new Random(7);
        using var video = new Video("resv");
        var policy = Assert.IsType<ReSvPolicy>(video.Cache.Policies[0, 0]);
        var sceneA = Scene(rng, rows);
        var sceneB = Scene(rng, rows);
        var counts = new List<int[]>(); // clusters of every (layer, head) after each frame is followed by the next row
        for (int f = 0; f < 12; f++)
        {
            video.Frame(f, Shot(rng, f < 6 ? sceneA : sceneB), chunks: f % 2 + 1);
            if (f == 3) video.Text(); // a timestamp between frames
            counts.Add(Enumerable.Range(0, Layers * KvHeads).Select(i => policy.ClusterCount(i / KvHeads, i % KvHeads)).ToArray());
        }
        video.Text(); // finishes the last frame
        for (int i = 0; i < Layers * KvHeads; i++)
        {
            // counts[f] holds frames 0..f−1 clustered (frame f is open until a row follows it).
            int first = counts[1][i];
            Assert.InRange(first, rows - 2, rows);
            for (int f = 2; f <= 6; f++) Assert.Equal(first, counts[f][i]);
            int cut = counts[7][i];
            Assert.InRange(cut - first, rows - 2, rows);
            for (int f = 8; f < 12; f++) Assert.Equal(cut, counts[f][i]);
            Assert.Equal(cut, policy.ClusterCount(i / KvHeads, i % KvHeads));
        }
    }

    /// <summary>
    /// ReSV's τ trades tokens read for attention recall: on a stream of several scenes and a question that looks for
    /// one of them, raising τ reads more rows and recalls more (monotone in both), τ = 1 reads everything (recall 1),
    /// τ = 0 reads only what is not clustered, every τ recalls about τ of the attention, and τ = 0.9 reads less than
    /// half the rows.
    /// </summary>
    [Fact]
    public void ResvTauTradesTokensReadForRecallMonotonically()
    {
        float[] taus = [0f, 0.2f, 0.4f, 0.6f, 0.8f, 0.9f, 0.95f, 0.99f, 1f];
        var read = new double[taus.Length];
        var recall = new double[taus.Length];
        int stored = 0;
        for (int i = 0; i < taus.Length; i++)
        {
            (read[i], recall[i], stored) = ResvQuestion(FormattableString.Invariant($"resv:tau={taus[i]}"));
        }
        for (int i = 1; i < taus.Length; i++)
        {
            Assert.True(read[i] >= read[i - 1], $"tau {taus[i]} reads {read[i]} rows, tau {taus[i - 1]} {read[i - 1]}");
            Assert.True(recall[i] >= recall[i - 1] - 1e-9, $"tau {taus[i]} recalls {recall[i]}, tau {taus[i - 1]} {recall[i - 1]}");
        }
        Assert.Equal((double)stored, read[^1]);
        Assert.Equal(1, recall[^1], 1e-5);
        Assert.True(read[0] < stored / 10.0, $"tau 0 reads {read[0]} of {stored} rows");
        // τ is attention mass: the clusters' full-precision scores make the recall at least about τ (measured: 0.29,
        // 0.44, 0.63, 0.82, 0.91, 0.95, 0.99 for τ = 0.2 … 0.99), with 126 of 322 rows read at τ = 0.9.
        for (int i = 1; i < taus.Length; i++)
            Assert.True(recall[i] >= taus[i] - 0.05, $"tau {taus[i]} recalls {recall[i]}; reads {string.Join(" ", read)}; recalls {string.Join(" ", recall.Select(r => r.ToString("F3")))}");
        int at = Array.IndexOf(taus, 0.9f);
        Assert.True(read[at] < stored / 2.0, $"tau 0.9 reads {read[at]} of {stored} rows");
    }

    /// <summary>
    /// Four scenes of five frames each, then a question whose queries point at scene 2's keys: rows read and the
    /// attention recall R = Σ_read p_i of the question's queries (exact softmax over every stored row, mean over
    /// layers, KV heads and query heads), and the rows stored per head.
    /// </summary>
    static (double Read, double Recall, int Stored) ResvQuestion(string spec)
    {
        const int rows = 16;
        var rng = new Random(11);
        using var video = new Video(spec, seed: 3);
        var scenes = Enumerable.Range(0, 4).Select(_ => Scene(rng, rows)).ToArray();
        video.Text(); // a prompt
        for (int f = 0; f < 20; f++) video.Frame(f, Shot(rng, scenes[f / 5], 0.05f));
        // The question's query heads look for scene 2: the mean of its keys of their KV head, scaled up.
        var query = new float[Heads * D];
        for (int h = 0; h < Heads; h++)
            for (int s = 0; s < rows; s++)
                for (int e = 0; e < D; e++) query[h * D + e] += 1.5f * scenes[2][(s * KvHeads + h / Group) * D + e] / MathF.Sqrt(rows) + 0.3f * (float)(rng.NextDouble() - 0.5);
        double readSum = 0, recallSum = 0;
        int observed = 0, storedRows = 0;
        video.Cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> views) =>
        {
            var selected = Selected(views);
            int head = step.Head;
            var positions = video.Stored(step.Layer, head);
            storedRows = positions.Length;
            for (int g = 0; g < step.Group; g++)
            {
                var q = step.LastQueries.Slice(g * D, D).ToArray();
                var logits = positions.Select(p => (double)Scale * Dot(q, Key(video, p, head))).ToArray();
                double max = logits.Max(), sum = logits.Sum(x => Math.Exp(x - max));
                recallSum += positions.Select((p, i) => selected.Contains(p) ? Math.Exp(logits[i] - max) / sum : 0).Sum();
            }
            readSum += selected.Count;
            observed++;
        };
        video.Text(query);
        Assert.Equal(Layers * KvHeads, observed);
        return (readSum / observed, recallSum / (observed * Group), storedRows);
    }

    /// <summary>A store with fewer SimHash bits than ReSV compares is refused with the policy's name.</summary>
    [Fact]
    public void ResvNeedsTheStoresHashBits()
    {
        var policies = new KvPolicyMap(1, 1, KvPolicies.Parse("resv:bits=48"));
        var store = new PagedKvStore(new PagedKvOptions { LayerCount = 1, KvHeadCount = 1, HeadDim = D, Metadata = KvMetadata.SimHash });
        var e = Assert.Throws<KvConfigException>(() => new PagedKvCache(store, policies));
        Assert.Contains("bits=48 needs a store keeping at least 48 SimHash bits, it keeps 32", e.Message);
    }

    // ---- LiveVLM ----

    /// <summary>
    /// LiveVLM keeps exactly ⌈ratio · n⌉ video rows of every finished clip of 4 frames (the open clip whole, text
    /// untouched) — the rows its last queries attend to most, recomputed here — and a question reads its recent clip,
    /// the text, and the old frame whose mean key it matches (the needle), not everything.
    /// </summary>
    [Fact]
    public void LiveVlmKeepsItsShareOfEveryClipAndRetrievesTheNeedleFrame()
    {
        const int rows = 16, clip = 4, frames = 14;
        var rng = new Random(5);
        using var video = new Video("livevlm:ratio=0.25,clip=4,queries=4,recent=1,retrieve=1");
        var policy = Assert.IsType<LiveVlmPolicy>(video.Cache.Policies[0, 0]);
        video.Text();
        var frameKeys = new List<float[]>();
        var needle = Gaussian(rng, KvHeads * D); // frame 1's keys all lean this way (per KV head)
        for (int f = 0; f < frames; f++)
        {
            frameKeys.Add(Scene(rng, rows)); // every frame its own content
            if (f == 1)
                for (int s = 0; s < rows; s++)
                    for (int i = 0; i < KvHeads * D; i++) frameKeys[f][s * KvHeads * D + i] += 2 * needle[i];
            video.Frame(f, frameKeys[f], chunks: f % 3 == 2 ? 2 : 1);
            int finishedFrames = f; // frame f is open
            for (int l = 0; l < Layers; l++)
                for (int h = 0; h < KvHeads; h++)
                {
                    var stored = video.Stored(l, h);
                    Assert.Contains(0, stored); // the text row
                    for (int c = 0; c * clip < f + 1; c++)
                    {
                        int kept = stored.Count(p => video.Frames[p] >= c * clip && video.Frames[p] < (c + 1) * clip);
                        bool finished = (c + 1) * clip <= finishedFrames;
                        int appended = Math.Min(clip, f + 1 - c * clip) * rows;
                        Assert.Equal(finished ? policy.Kept(clip * rows) : appended, kept);
                    }
                }
        }
        video.Text(); // finishes frame 13
        // A question whose queries point where frame 1's keys lean (an old, compressed clip): its kept rows are read.
        var query = new float[Heads * D];
        for (int h = 0; h < Heads; h++) needle.AsSpan(h / Group * D, D).CopyTo(query.AsSpan(h * D, D));
        int observed = 0;
        video.Cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> views) =>
        {
            var selected = Selected(views);
            var stored = video.Stored(step.Layer, step.Head);
            Assert.Contains(stored, p => video.Frames[p] == 1);
            Assert.True(stored.Where(p => video.Frames[p] == 1).All(selected.Contains), $"layer {step.Layer} head {step.Head}: the needle frame was not read");
            Assert.True(stored.Where(p => video.Frames[p] < 0).All(selected.Contains), "a text row was not read");
            Assert.True(stored.Where(p => video.Frames[p] >= 10).All(selected.Contains), "the recent clip (the newest 4 frames) was not read");
            Assert.True(selected.Count < stored.Length, "a question read everything");
            Assert.DoesNotContain(stored, p => video.Frames[p] is >= 4 and < 8 && selected.Contains(p)); // clip 1 is neither recent nor matching
            observed++;
        };
        video.Text(query);
        Assert.Equal(Layers * KvHeads, observed);
    }

    /// <summary>The rows LiveVLM keeps of a clip are those its last queries attend to most (recomputed in f64 from the queries it saw).</summary>
    [Fact]
    public void LiveVlmKeepsTheRowsTheClipsLastQueriesAttendTo()
    {
        const int rows = 8;
        var rng = new Random(9);
        using var video = new Video("livevlm:ratio=0.25,clip=2,queries=3");
        var queries = new List<float[]>(); // per position, [Heads × D]
        for (int f = 0; f < 2; f++)
        {
            var keys = Scene(rng, rows);
            var q = Gaussian(rng, rows * Heads * D);
            video.Step(keys, Enumerable.Repeat(f, rows).ToArray(), q);
            for (int t = 0; t < rows; t++) queries.Add(q.AsSpan(t * Heads * D, Heads * D).ToArray());
        }
        video.Text();
        for (int l = 0; l < Layers; l++)
            for (int h = 0; h < KvHeads; h++)
            {
                var votes = new double[2 * rows];
                for (int p = 2 * rows - 3; p < 2 * rows; p++)
                    for (int g = 0; g < Group; g++)
                    {
                        var q = queries[p].AsSpan((h * Group + g) * D, D).ToArray();
                        var logits = Enumerable.Range(0, p + 1).Select(i => (double)Scale * Dot(q, Key(video, i, h))).ToArray();
                        double max = logits.Max(), sum = logits.Sum(x => Math.Exp(x - max));
                        for (int i = 0; i <= p; i++) votes[i] += Math.Exp(logits[i] - max) / sum;
                    }
                var want = Enumerable.Range(0, 2 * rows).OrderByDescending(i => votes[i]).ThenBy(i => i).Take(4).Order().ToArray();
                Assert.Equal(want, video.Stored(l, h).Where(p => video.Frames[p] >= 0).ToArray());
            }
    }

    // ---- QuickPrefill ----

    /// <summary>
    /// QuickPrefill keeps exactly ⌈ratio · n⌉ of every finished group of 4 frames — the rows with the smallest key norm
    /// averaged over the layer's KV heads, the same rows in every head — keeps the open group whole, and never drops
    /// text, even between frames.
    /// </summary>
    [Fact]
    public void QuickPrefillKeepsTheSmallestKeyNormsOfEveryGroup()
    {
        const int rows = 10, group = 4, frames = 11;
        var rng = new Random(13);
        using var video = new Video("quickprefill:ratio=0.5,group=4");
        var policy = Assert.IsType<QuickPrefillPolicy>(video.Cache.Policies[0, 0]);
        video.Text();
        for (int f = 0; f < frames; f++)
        {
            // Keys of varied norms, so the choice matters.
            var keys = Scene(rng, rows);
            for (int t = 0; t < rows; t++)
            {
                float norm = 0.2f + (float)rng.NextDouble() * 2;
                for (int i = 0; i < KvHeads * D; i++) keys[t * KvHeads * D + i] *= norm;
            }
            video.Frame(f, keys, chunks: f % 2 + 1);
            if (f % 3 == 1) video.Text();
        }
        video.Text();
        for (int l = 0; l < Layers; l++)
        {
            int[]? first = null;
            for (int h = 0; h < KvHeads; h++)
            {
                var stored = video.Stored(l, h);
                first ??= stored;
                Assert.Equal(first, stored); // one selection for the layer's heads
                Assert.True(Enumerable.Range(0, video.Position).Where(p => video.Frames[p] < 0).All(stored.Contains), "text was dropped");
                for (int g = 0; g * group < frames; g++)
                {
                    var members = Enumerable.Range(0, video.Position).Where(p => video.Frames[p] >= g * group && video.Frames[p] < (g + 1) * group).ToArray();
                    var kept = stored.Where(members.Contains).ToArray();
                    if ((g + 1) * group > frames) { Assert.Equal(members, kept); continue; } // the open group
                    Assert.Equal(policy.Kept(members.Length), kept.Length);
                    var want = members.OrderBy(p => Enumerable.Range(0, KvHeads).Average(k => Norm(Key(video, p, k)))).Take(kept.Length).Order().ToArray();
                    Assert.Equal(want, kept);
                }
            }
        }
    }

    // ---- VideoScan ----

    /// <summary>
    /// VideoScan keeps one row of every finished frame: at the frame's last position, key and value the means of the
    /// frame's; the open frame stays whole; text stays. With <c>attended=2</c> two more rows stay; with <c>mean=0</c>
    /// the carrier is the frame's last row as it was.
    /// </summary>
    [Theory]
    [InlineData("videoscan", 1)]
    [InlineData("videoscan:attended=2", 3)]
    [InlineData("videoscan:mean=0", 1)]
    public void VideoScanKeepsOneCarrierPerFinishedFrame(string spec, int keptPerFrame)
    {
        const int rows = 12, frames = 6;
        var rng = new Random(17);
        using var video = new Video(spec);
        bool mean = !spec.Contains("mean=0");
        video.Text();
        for (int f = 0; f < frames; f++)
        {
            if (f == 3) video.Text();
            video.Frame(f, Scene(rng, rows), chunks: f % 2 + 1);
            for (int l = 0; l < Layers; l++)
                for (int h = 0; h < KvHeads; h++)
                {
                    var stored = video.Stored(l, h);
                    Assert.Equal(rows, stored.Count(p => video.Frames[p] == f)); // the open frame
                    for (int done = 0; done < f; done++)
                    {
                        var kept = stored.Where(p => video.Frames[p] == done).ToArray();
                        Assert.Equal(keptPerFrame, kept.Length);
                        int last = video.Frames.LastIndexOf(done);
                        Assert.Equal(last, kept[^1]);
                        var members = Enumerable.Range(0, video.Position).Where(p => video.Frames[p] == done).ToArray();
                        var want = mean ? Mean(members.Select(p => Key(video, p, h))) : Key(video, last, h);
                        var wantValue = mean ? Mean(members.Select(p => video.Values[p].AsSpan(h * D, D).ToArray())) : video.Values[last].AsSpan(h * D, D).ToArray();
                        var key = new float[D];
                        var value = new float[D];
                        FrameRows.Locate(video.Store, video.Cache.Sequence.Table(l, h), last, out int index, out int row);
                        int page = video.Cache.Sequence.Table(l, h)[index];
                        video.Store.ReadKey(page, row, key);
                        video.Store.ReadValue(page, row, value);
                        for (int e = 0; e < D; e++)
                        {
                            Assert.Equal(want[e], key[e], 1e-5);
                            Assert.Equal(wantValue[e], value[e], 1e-5);
                        }
                    }
                    Assert.True(Enumerable.Range(0, video.Position).Where(p => video.Frames[p] < 0).All(stored.Contains), "text was dropped");
                }
        }
    }

    // ---- InfiniPot-V ----

    /// <summary>
    /// InfiniPot-V holds every head at exactly min(video rows appended, cap) video rows after each step, text aside,
    /// with the newest frames whole; with alpha=1 the older rows it keeps are the ones no reference frame repeats.
    /// </summary>
    [Fact]
    public void InfiniPotVHoldsTheCapAndKeepsTheLeastRedundant()
    {
        const int rows = 16, frames = 14, cap = 72, recent = 2;
        var rng = new Random(19);
        using var video = new Video($"infinipotv:budget={cap},recent={recent},alpha=1");
        var scene = Scene(rng, rows);
        int videoRows = 0;
        video.Text();
        for (int f = 0; f < frames; f++)
        {
            // Slots 0–3 show something new in every frame; slots 4–15 repeat the scene.
            var keys = Shot(rng, scene, 0.02f);
            Gaussian(rng, 4 * KvHeads * D).CopyTo(keys, 0);
            video.Frame(f, keys, chunks: f % 2 + 1);
            if (f % 4 == 3) video.Text();
            videoRows += rows;
            for (int l = 0; l < Layers; l++)
                for (int h = 0; h < KvHeads; h++)
                {
                    var stored = video.Stored(l, h);
                    Assert.Equal(Math.Min(videoRows, cap), stored.Count(p => video.Frames[p] >= 0));
                    Assert.True(Enumerable.Range(0, video.Position).Where(p => video.Frames[p] < 0).All(stored.Contains), "text was dropped");
                    for (int newest = Math.Max(0, f - recent + 1); newest <= f; newest++)
                        Assert.Equal(rows, stored.Count(p => video.Frames[p] == newest));
                    if (videoRows > cap)
                    {
                        // The older rows kept: the new-content slots, never a repeat of the scene while new ones remain.
                        var older = stored.Where(p => video.Frames[p] >= 0 && video.Frames[p] <= f - recent).ToArray();
                        int novel = (f - recent + 1) * 4;
                        Assert.Equal(Math.Min(novel, older.Length), older.Count(p => p - video.Frames.IndexOf(video.Frames[p]) < 4));
                    }
                }
        }
    }

    /// <summary>
    /// With a compression target below the cap (the paper's |C| &lt; |M|), a head's video rows grow a frame at a time
    /// until a step passes the cap, then drop to exactly the target, the newest frames whole: every head holds the
    /// count a plain simulation of that rule gives, so the pass runs once per (cap − target) rows, not every step.
    /// </summary>
    [Fact]
    public void InfiniPotVCompressesDownToItsTargetWhenItPassesTheCap()
    {
        const int rows = 10, frames = 30, cap = 64, target = 35, recent = 2;
        var rng = new Random(29);
        using var video = new Video($"infinipotv:budget={cap},target={target},recent={recent}");
        video.Text();
        int held = 0, compressions = 0;
        for (int f = 0; f < frames; f++)
        {
            video.Frame(f, Gaussian(rng, rows * KvHeads * D), chunks: f % 2 + 1);
            held += rows;
            if (held > cap) { held = target; compressions++; }
            for (int l = 0; l < Layers; l++)
                for (int h = 0; h < KvHeads; h++)
                {
                    var stored = video.Stored(l, h);
                    Assert.Equal(held, stored.Count(p => video.Frames[p] >= 0));
                    for (int newest = Math.Max(0, f - recent + 1); newest <= f; newest++)
                        Assert.Equal(rows, stored.Count(p => video.Frames[p] == newest));
                    Assert.True(Enumerable.Range(0, video.Position).Where(p => video.Frames[p] < 0).All(stored.Contains), "text was dropped");
                }
        }
        Assert.InRange(compressions, 8, 10); // every 3 frames once full, where target = cap compresses at every one
        Assert.Throws<ArgumentOutOfRangeException>(() => new InfiniPotVPolicy(64, target: 65));
        Assert.Throws<ArgumentOutOfRangeException>(() => new InfiniPotVPolicy(64, target: 0));
    }

    /// <summary>
    /// Heads of one layer that keep different frames each keep their frames' starts (the slot of a row is its position
    /// minus its frame's first): head 0 sees frame 0 repeated by every later reference and drops it first, head 1 sees
    /// frame 0 as the one novel frame and keeps it; every stored video row of either head still finds its frame's
    /// first position. The starts of frames no head holds go, so while head 1 holds frame 0 for good the list stays
    /// bounded by the frames the heads keep (plus the newest, and those the step's compressions just emptied).
    /// </summary>
    [Fact]
    public void InfiniPotVKeepsTheFrameStartsOfEveryHeadsOldestFrame()
    {
        const int rows = 8, frames = 60, cap = 24;
        var rng = new Random(31);
        using var video = new Video($"infinipotv:budget={cap},recent=1,alpha=1");
        var policy = (InfiniPotVPolicy)video.Cache.Policies[0, 0];
        float[] sceneA = Scene(rng, rows), sceneB = Scene(rng, rows);
        video.Text();
        bool diverged = false;
        for (int f = 0; f < frames; f++)
        {
            // Head 0: frame 0 is scene A, frames 1–2 novel, then A again (frame 0 becomes redundant, 1–2 stay).
            // Head 1: frame 0 novel, then scene B throughout (frame 0 stays, the repeats go).
            var keys = new float[rows * KvHeads * D];
            var a = f == 0 || f >= 3 ? Shot(rng, sceneA) : Scene(rng, rows);
            var b = f == 0 ? Scene(rng, rows) : Shot(rng, sceneB);
            for (int r = 0; r < rows; r++)
            {
                a.AsSpan((r * KvHeads + 0) * D, D).CopyTo(keys.AsSpan((r * KvHeads + 0) * D));
                b.AsSpan((r * KvHeads + 1) * D, D).CopyTo(keys.AsSpan((r * KvHeads + 1) * D));
            }
            video.Frame(f, keys);
            for (int l = 0; l < Layers; l++)
            {
                for (int h = 0; h < KvHeads; h++)
                    foreach (int p in video.Stored(l, h).Where(p => video.Frames[p] >= 0))
                        Assert.Equal(video.Frames.IndexOf(video.Frames[p]), policy.FrameStart(l, p, video.Frames[p]));
                diverged |= video.Stored(l, 1).Any(p => video.Frames[p] == 0) && !video.Stored(l, 0).Any(p => video.Frames[p] == 0);
                int held = Enumerable.Range(0, KvHeads).SelectMany(h => video.Stored(l, h)).Where(p => video.Frames[p] >= 0).Select(p => video.Frames[p]).Distinct().Count();
                Assert.InRange(policy.FrameStartCount(l), 1, held + 3);
            }
        }
        Assert.True(diverged, "head 1 never kept frame 0 while head 0 had dropped it: the case this tests did not arise");
    }

    /// <summary>
    /// A frame's own text (a timestamp before its rows, a delimiter after, tagged <see cref="FrameIds.TextOf"/>) counts
    /// against InfiniPot-V's cap with the frame: however many frames go by, a head holds at most the cap in visual rows
    /// plus frame text, a frame keeps its text exactly while it keeps a visual row, the newest frames stay whole with
    /// theirs, and other text is never dropped. The timestamp goes in a step before its frame's rows (still to come,
    /// not an orphan).
    /// </summary>
    [Fact]
    public void InfiniPotVCountsAFramesTextWithTheFrame()
    {
        const int rows = 8, frames = 40, cap = 60, recent = 2, before = 3, after = 1;
        var rng = new Random(23);
        using var video = new Video($"infinipotv:budget={cap},recent={recent}");
        video.Text();
        for (int f = 0; f < frames; f++)
        {
            video.Step(Gaussian(rng, before * KvHeads * D), Enumerable.Repeat(FrameIds.TextOf(f), before).ToArray());
            video.Frame(f, Gaussian(rng, rows * KvHeads * D), chunks: f % 2 + 1);
            video.Step(Gaussian(rng, after * KvHeads * D), [FrameIds.TextOf(f)]);
            if (f % 7 == 6) video.Text();
            for (int l = 0; l < Layers; l++)
                for (int h = 0; h < KvHeads; h++)
                {
                    var stored = video.Stored(l, h).ToHashSet();
                    int held = stored.Count(p => video.Frames[p] >= 0 || FrameIds.IsFrameText(video.Frames[p]));
                    int appended = (f + 1) * (rows + before + after);
                    if (appended <= cap) Assert.Equal(appended, held);
                    else Assert.InRange(held, cap - before - after, cap);
                    Assert.True(Enumerable.Range(0, video.Position).Where(p => video.Frames[p] == FrameIds.None).All(stored.Contains), "text was dropped");
                    for (int g = 0; g <= f; g++)
                    {
                        var own = Enumerable.Range(0, video.Position).Where(p => FrameIds.Owner(video.Frames[p]) == g).ToArray();
                        bool visual = own.Any(p => video.Frames[p] == g && stored.Contains(p));
                        int text = own.Count(p => video.Frames[p] < 0 && stored.Contains(p));
                        Assert.True(text == (visual ? before + after : 0), $"frame {g} after frame {f}: {text} text rows, visual rows kept: {visual}");
                        if (g > f - recent) Assert.All(own, p => Assert.Contains(p, stored));
                    }
                }
        }
    }

    /// <summary>
    /// A question asked on a fork (fresh policies, as a session answers while the stream goes on) reads the same rows
    /// as the same question on the stream itself: ReSV's clusters and LiveVLM's frame summaries are rebuilt from the
    /// store at the fork's first step.
    /// </summary>
    [Theory]
    [InlineData("resv:tau=0.6")]
    [InlineData("livevlm:clip=4,retrieve=2")]
    public void AForkRetrievesWhatTheStreamWould(string spec)
    {
        const int rows = 16;
        var rng = new Random(31);
        using var video = new Video(spec, seed: 2);
        var scenes = Enumerable.Range(0, 3).Select(_ => Scene(rng, rows)).ToArray();
        video.Text();
        for (int f = 0; f < 15; f++) video.Frame(f, Shot(rng, scenes[f / 5], 0.05f), chunks: f % 2 + 1);
        var query = new float[Heads * D];
        for (int h = 0; h < Heads; h++)
            for (int s = 0; s < rows; s++)
                for (int e = 0; e < D; e++) query[h * D + e] += scenes[1][(s * KvHeads + h / Group) * D + e] / 4;
        using var fork = video.Fork(spec, seed: 4);
        var reads = new List<string>[2];
        foreach (var (stream, i) in new[] { (fork, 1), (video, 0) })
        {
            var log = reads[i] = [];
            stream.Cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> views) =>
                log.Add($"{step.Layer}.{step.Head}: {string.Join(",", Selected(views).Order())}");
            stream.Text(query);
        }
        Assert.Equal(Layers * KvHeads, reads[0].Count);
        Assert.Equal(reads[0], reads[1]);
        Assert.True(reads[0].All(r => r.Split(',').Length < video.Position), "the question read everything: nothing was retrieved");
    }

    // ---- compositions ----

    public static TheoryData<string> Compositions => new(
    [
        "resv", "livevlm", "quickprefill:group=3", "videoscan", "infinipotv",
        "videoscan+quest", "quickprefill:group=3+freekv", "infinipotv+clusterkv", "quickprefill:group=3+resv",
        "videoscan+resv", "infinipotv+livevlm", "sinkwindow:sinks=4,window=90+resv",
    ]);

    /// <summary>
    /// Every reducer alone and composed with a retriever on a video stream (frames, text between them, a question):
    /// every step reads its own row and only stored rows, an evicted row never comes back, text rows are never
    /// evicted by a frame reducer, and the reducer's budget holds whatever the retriever.
    /// </summary>
    [Theory]
    [MemberData(nameof(Compositions))]
    public void ReducersKeepTheirInvariantsUnderEveryRetriever(string spec)
    {
        const int rows = 12, frames = 16;
        var rng = new Random(23);
        using var video = new Video(spec, budget: 64);
        var policy = video.Cache.Policies[0, 0];
        var reducer = policy is ComposedPolicy c ? c.Reducer : policy;
        int steps = 0;
        video.Cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> views) =>
        {
            var selected = Selected(views);
            var stored = video.Stored(step.Layer, step.Head).ToHashSet();
            Assert.Contains(step.Position + step.Count - 1, selected);
            Assert.True(selected.IsSubsetOf(stored), $"{spec} layer {step.Layer} head {step.Head} position {step.Position}: read a row that is not stored");
            steps++;
        };
        var everStored = new HashSet<int>[Layers * KvHeads];
        var evicted = new HashSet<int>[Layers * KvHeads];
        for (int i = 0; i < everStored.Length; i++) { everStored[i] = []; evicted[i] = []; }
        var scene = Scene(rng, rows);
        video.Text();
        for (int f = 0; f < frames; f++)
        {
            video.Frame(f, f == 8 ? Scene(rng, rows) : Shot(rng, scene, 0.05f), chunks: f % 3 + 1);
            if (f % 5 == 4) video.Text();
            Check();
        }
        video.Text();
        for (int t = 0; t < 4; t++) video.Text();
        Check();
        Assert.True(steps > 0);

        void Check()
        {
            // Frames are finished once a row follows them: all but the last one, unless a text row came after it.
            int appendedFrames = video.Frames.Where(x => x >= 0).Distinct().Count();
            int finished = appendedFrames - (video.Frames[^1] >= 0 ? 1 : 0), appendedRows = appendedFrames * rows;
            bool retrieverEvicts = policy is ComposedPolicy { Retriever: LiveVlmPolicy };
            for (int l = 0; l < Layers; l++)
                for (int h = 0; h < KvHeads; h++)
                {
                    int i = l * KvHeads + h;
                    var stored = video.Stored(l, h).ToHashSet();
                    Assert.False(stored.Overlaps(evicted[i]), $"{spec}: an evicted row came back");
                    evicted[i].UnionWith(everStored[i].Except(stored));
                    everStored[i].UnionWith(stored);
                    if (reducer is not SinkWindowPolicy)
                        Assert.True(Enumerable.Range(0, video.Position).Where(p => video.Frames[p] < 0).All(stored.Contains), $"{spec}: text was dropped");
                    int videoRows = stored.Count(p => video.Frames[p] >= 0);
                    switch (reducer)
                    {
                        case VideoScanPolicy scan:
                            Assert.Equal(finished * scan.Kept(rows) + (appendedFrames - finished) * rows, videoRows);
                            break;
                        case QuickPrefillPolicy quick:
                            int groups = finished / quick.Group;
                            Assert.Equal(groups * quick.Kept(quick.Group * rows) + appendedRows - groups * quick.Group * rows, videoRows);
                            break;
                        case InfiniPotVPolicy pot when retrieverEvicts:
                            Assert.InRange(videoRows, 1, pot.Budget);
                            break;
                        case InfiniPotVPolicy pot:
                            Assert.Equal(Math.Min(pot.Budget, appendedRows), videoRows);
                            break;
                        case LiveVlmPolicy live:
                            int clips = finished / live.Clip;
                            Assert.Equal(clips * live.Kept(live.Clip * rows) + appendedRows - clips * live.Clip * rows, videoRows);
                            break;
                    }
                }
        }
    }

    /// <summary>With a cold tier ReSV moves the pages of clustered frames out of RAM and reads the same rows as in RAM.</summary>
    [Fact]
    public void ResvReadsTheSameRowsWithClusteredPagesCold()
    {
        string path = Path.Combine(Path.GetTempPath(), $"vidkv-resv-{Environment.ProcessId}-{Guid.NewGuid():N}.bin");
        var reads = new List<string>[2];
        int maxCold = 0;
        for (int run = 0; run < 2; run++)
        {
            var rng = new Random(29);
            using var video = new Video("resv:tau=0.5", seed: 5, coldPath: run == 1 ? path : null);
            var log = reads[run] = [];
            video.Cache.Observer = (in KvStep step, ReadOnlySpan<KvPageView> views) =>
                log.Add($"{step.Layer}.{step.Head}@{step.Position}: {string.Join(",", Selected(views).Order())}");
            var scenes = new[] { Scene(rng, 16), Scene(rng, 16) };
            video.Text();
            for (int f = 0; f < 10; f++)
            {
                video.Frame(f, Shot(rng, scenes[f / 5]));
                if (run == 1) maxCold = Math.Max(maxCold, video.Store.ColdOnlyPageCount);
            }
            for (int t = 0; t < 3; t++) video.Text();
        }
        Assert.True(maxCold > 0, "no page went cold");
        Assert.Equal(reads[0], reads[1]);
        Assert.False(File.Exists(path));
    }

    static unsafe HashSet<int> Selected(ReadOnlySpan<KvPageView> views)
    {
        var set = new HashSet<int>();
        foreach (var view in views)
            for (int j = 0; j < view.Count; j++)
                if (view.Mask == KvPageView.AllRows || (view.Mask >> j & 1) != 0) set.Add(view.Positions[j]);
        return set;
    }

    static double Dot(float[] a, float[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += (double)a[i] * b[i];
        return s;
    }

    static double Norm(float[] a) => Math.Sqrt(Dot(a, a));

    static float[] Mean(IEnumerable<float[]> rows)
    {
        var list = rows.ToList();
        var mean = new float[D];
        foreach (var row in list) for (int e = 0; e < D; e++) mean[e] += row[e];
        for (int e = 0; e < D; e++) mean[e] /= list.Count;
        return mean;
    }
}
