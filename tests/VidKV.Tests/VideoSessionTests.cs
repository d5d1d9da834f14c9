using VidKV.Cache;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// Vision sessions on the tiny random pairs (f32 weights, f32 KV, Full policy) with synthetic frames: frame by frame
/// ingest equals one-shot prefill of the same rows; the rows and M-RoPE positions are each family's video format; frame
/// ids reach the KV store; a question between frames answers on a fork that closes the segment while ingestion goes on;
/// a cancelled question gives its pages back; images go in as mtmd lays them out.
/// </summary>
public class VideoSessionTests
{
    /// <summary>A tiny text + vision pair written for the test (OneVision's mmproj with a <c>v.image_newline</c> added, which the random writer leaves out).</summary>
    public class Pair : IDisposable
    {
        readonly TempDirectory directory = new();

        public Pair(string name)
        {
            var (textPath, visionPath) = RandomVisionModel.Write(directory.Path, RandomVisionShape.Find(name)!, GgmlType.F32);
            if (name == "tiny-llava") visionPath = WithNewline(visionPath, directory.File("mmproj-newline.gguf"));
            Text = ModelLoader.Load(textPath);
            Vision = VisionModel.Load(visionPath);
        }

        public DecoderModel Text { get; }
        public VisionModel Vision { get; }

        public void Dispose()
        {
            Vision.Dispose();
            Text.Dispose();
            directory.Dispose();
        }

        static string WithNewline(string source, string target)
        {
            using (var file = GgufFile.Open(source))
            {
                var writer = new GgufWriter();
                foreach (var (key, value) in file.MetadataList) writer.Add(key, value);
                foreach (var tensor in file.Tensors) writer.AddTensor(tensor.Name, tensor.Type, tensor.Shape, stream => stream.Write(file.TensorData(tensor)));
                int width = (int)file.Get("clip.vision.projection_dim")!.AsInt64();
                writer.AddTensor("v.image_newline", GgmlType.F32, [width], [.. Enumerable.Range(0, width).Select(i => MathF.Sin(0.7f * i) * 0.8f)]);
                writer.Write(target);
            }
            return target;
        }
    }

    static EngineOptions Options(VideoFormat format = VideoFormat.Native) => new()
    {
        Kv = new KvCacheConfig { Default = "full", PageSize = 16, Type = GgmlType.F32 },
        PrefillChunk = 256, // a whole frame (and its text) per step
        Video = new VideoOptions { Format = format },
    };

    /// <summary>A synthetic frame: gradients and a moving XOR pattern that differ per index; stream time 0.5 s per index unless given.</summary>
    static VideoFrame Frame(int index, int width, int height, double? seconds = null)
    {
        var image = new RgbImage(width, height);
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                var p = image.Pixel(x, y);
                p[0] = (byte)(4 * x + 37 * index);
                p[1] = (byte)(5 * y + 11 * index);
                p[2] = (byte)(3 * ((x + index) ^ y) + 59 * index);
            }
        return new VideoFrame(image, TimeSpan.FromSeconds(seconds ?? 0.5 * index), index);
    }

    /// <summary>Frame size per family: the tower's square, or for Qwen-VL 84 × 56 (smart-resized to 112 × 84: a 4 × 3 grid).</summary>
    static (int Width, int Height) FrameSize(string family) => family switch
    {
        "tiny-idefics3" => (64, 64),
        "tiny-llava" => (64, 40),
        _ => (84, 56),
    };

    /// <summary>The recorded rows again as one batch on a fresh f32 cache; the last row's logits.</summary>
    static float[] OneShot(DecoderModel text, IReadOnlyList<SessionRow> rows)
    {
        using var state = text.CreateState(4096, GgmlType.F32, GgmlType.F32);
        var batch = text.CreateBatch();
        for (int i = 0; i < rows.Count; i++)
        {
            var r = rows[i];
            bool last = i == rows.Count - 1;
            ReadOnlySpan<int> position = text.PositionComponents == 1 ? default : r.Position;
            if (text.PositionComponents == 1) Assert.Equal(i, r.Position[0]);
            if (r.Embedding == null) batch.AddToken(r.Token, 0, last, position, r.Frame);
            else batch.AddEmbedding(r.Embedding, 0, last, position, r.Frame);
        }
        var logits = new float[text.Config.VocabSize];
        text.Run(batch, state, logits);
        return logits;
    }

    static float MaxDifference(float[] a, float[] b)
    {
        Assert.Equal(a.Length, b.Length);
        float most = 0;
        for (int i = 0; i < a.Length; i++) most = Math.Max(most, Math.Abs(a[i] - b[i]));
        return most;
    }

    public static TheoryData<string, VideoFormat> Families => new()
    {
        { "tiny-idefics3", VideoFormat.Native },
        { "tiny-llava", VideoFormat.Native },
        { "tiny-qwen2vl", VideoFormat.Native },
        { "tiny-qwen25vl", VideoFormat.Native },
        { "tiny-idefics3", VideoFormat.FrameBrackets },
        { "tiny-qwen2vl", VideoFormat.FrameBrackets },
    };

    /// <summary>
    /// Five frames appended one by one (each its own engine step, its own prefill), the segment ended (Qwen's odd frame
    /// paired with itself) and text after: the final logits equal one batch of the same rows on a fresh cache
    /// (max |Δlogit| ≤ 1e-4), and every frame unit got its id.
    /// </summary>
    [Theory]
    [MemberData(nameof(Families))]
    public async Task FrameByFrameIngestEqualsOneShotPrefill(string family, VideoFormat format)
    {
        using var pair = new Pair(family);
        await using var engine = new InferenceEngine(pair.Text, Options(format), pair.Vision);
        await using var session = engine.CreateSession();
        session.Record = [];
        session.KeepLogits = true;
        int steps = 0;
        engine.StepCompleted = () => steps++;
        var (w, h) = FrameSize(family);
        await session.AppendAsync("<|im_start|>user\nwatch:");
        int before = await engine.Call(() => steps); // read on the loop, after the step's own count
        for (int i = 0; i < 5; i++) await session.AppendFrameAsync(Frame(i, w, h));
        bool pairs = format == VideoFormat.Native && family.Contains("qwen");
        Assert.Equal(pairs ? 2 : 5, await engine.Call(() => steps) - before); // a step per frame; the fifth Qwen frame waits for its partner
        await session.EndVideoSegmentAsync();
        await session.AppendAsync(" what happened?");
        Assert.Equal(pairs ? 3 : 5, session.FrameCount);
        Assert.Equal(session.Record.Count, session.Length);

        var expected = OneShot(pair.Text, session.Record);
        float difference = MaxDifference(session.LastLogits!, expected);
        Assert.True(difference <= 1e-4f, $"{family} {format}: incremental vs one-shot logits differ by {difference}");
        Assert.Equal(session.Record.Select(r => r.Frame).Where(f => f >= 0).Distinct(), Enumerable.Range(0, session.FrameCount));
        if (pair.Text.PositionComponents > 1) Assert.True(session.NextPosition < session.Length, "M-RoPE grids should advance the position by less than their rows");
        else Assert.Equal(session.Length, session.NextPosition);
    }

    /// <summary>Builds the rows a format should give, written out by hand per family.</summary>
    sealed class Expected(DecoderModel text)
    {
        public readonly List<(int Token, float[]? Row, int[] Position, int Frame)> Rows = [];

        int[] At(int t, int h, int w) => text.PositionComponents == 1 ? [t] : [t, h, w, 0];

        /// <summary>Text tokens from position <paramref name="p"/> on; returns the position after them.</summary>
        public int Text(string s, int p, bool bos = false, int frame = FrameIds.None)
        {
            foreach (int id in text.Tokenizer.Encode(s, addSpecial: bos, parseSpecial: true))
            {
                Rows.Add((id, null, At(p, p, p), frame));
                p++;
            }
            return p;
        }

        /// <summary>Embedding rows at consecutive positions from <paramref name="p"/>; returns the position after them.</summary>
        public int Embeddings(float[] rows, int width, int frame, int p)
        {
            for (int i = 0; i < rows.Length / width; i++, p++) Rows.Add((-1, rows[(i * width)..((i + 1) * width)], At(p, p, p), frame));
            return p;
        }

        /// <summary>A grid of <paramref name="columns"/> from base <paramref name="s"/> at temporal offset <paramref name="t"/>.</summary>
        public void Grid(float[] rows, int width, int columns, int frame, int s, int t)
        {
            for (int i = 0; i < rows.Length / width; i++) Rows.Add((-1, rows[(i * width)..((i + 1) * width)], At(s + t, s + i / columns, s + i % columns), frame));
        }

        public void Check(IReadOnlyList<SessionRow> actual)
        {
            Assert.Equal(Rows.Count, actual.Count);
            for (int i = 0; i < Rows.Count; i++)
            {
                var (token, row, position, frame) = Rows[i];
                Assert.True(position.SequenceEqual(actual[i].Position), $"row {i}: position [{string.Join(", ", actual[i].Position)}], expected [{string.Join(", ", position)}]");
                Assert.Equal(frame, actual[i].Frame);
                if (row == null)
                {
                    Assert.True(token == actual[i].Token, $"row {i}: token {actual[i].Token} '{System.Text.Encoding.UTF8.GetString(text.Tokenizer.TokenToPiece(actual[i].Token))}', expected {token} '{System.Text.Encoding.UTF8.GetString(text.Tokenizer.TokenToPiece(token))}'");
                    continue;
                }
                Assert.NotNull(actual[i].Embedding);
                Assert.True(MaxDifference(row, actual[i].Embedding!) <= 1e-6f, $"row {i}: embedding differs");
            }
        }
    }

    /// <summary>The tower's rows of a frame as the family's video path encodes it (one pass at its size; OneVision pooled; a Qwen pair through the two-frame kernel).</summary>
    static (float[] Rows, int Columns) Encode(VisionModel vision, VideoFrame first, VideoFrame? second = null)
    {
        var c = vision.Config;
        var buffers = new Activations();
        RgbImage Entry(VideoFrame f) => c.Projector switch
        {
            VisionProjector.Idefics3 => ImageResize.Resize(f.Image, c.ImageSize, c.ImageSize, ResizeAlgorithm.Bilinear, ResizePadding.None),
            VisionProjector.Mlp => ImageResize.Resize(f.Image, c.ImageSize, c.ImageSize, ResizeAlgorithm.Bicubic, ResizePadding.None),
            _ => ImagePreprocessor.Preprocess(c, f.Image).Entries[0],
        };
        float[] Planar(RgbImage e)
        {
            var planar = new float[3 * e.Width * e.Height];
            ImagePreprocessor.Normalize(c, e, planar);
            return planar;
        }
        var a = Entry(first);
        var rows = new float[vision.TokensFor(a.Width, a.Height) * vision.OutputLength];
        if (c.Projector is VisionProjector.Qwen2VL or VisionProjector.Qwen25VL)
        {
            vision.Encode(Planar(a), a.Width, a.Height, rows, buffers, secondFrame: Planar(Entry(second ?? first)));
            return (rows, vision.OutputGrid(a.Width, a.Height).Columns);
        }
        rows = new float[vision.VideoFrameTokens * vision.OutputLength];
        vision.EncodeVideoFrame(Planar(a), rows, buffers);
        return (rows, 0);
    }

    /// <summary>
    /// SmolVLM2: <c>"\nFrame from mm:ss:"</c>, fake, global, the frame's rows, fake, per frame; <c>"\n\n"</c> at the end
    /// (the second frame at 61.5 s reads 01:01). Consecutive positions. A frame's text carries the frame's text id.
    /// </summary>
    [Fact]
    public async Task SmolVlmFramesAreTimestampedSingleImages()
    {
        using var pair = new Pair("tiny-idefics3");
        var frames = new[] { Frame(0, 64, 64, 0), Frame(1, 64, 64, 61.5) };
        var rows = await Record(pair, VideoFormat.Native, frames);
        var want = new Expected(pair.Text);
        int p = want.Text("hi", 0, bos: true);
        p = want.Text("\nFrame from 00:00:<fake_token_around_image><global-img>", p, frame: FrameIds.TextOf(0));
        p = want.Embeddings(Encode(pair.Vision, frames[0]).Rows, 64, 0, p);
        p = want.Text("<fake_token_around_image>", p, frame: FrameIds.TextOf(0));
        p = want.Text("\nFrame from 01:01:<fake_token_around_image><global-img>", p, frame: FrameIds.TextOf(1));
        p = want.Embeddings(Encode(pair.Vision, frames[1]).Rows, 64, 1, p);
        p = want.Text("<fake_token_around_image>", p, frame: FrameIds.TextOf(1));
        want.Text("\n\n", p);
        want.Check(rows);
        Assert.Equal(4, pair.Vision.VideoFrameTokens); // 64 px, patch 16, shuffle 2: no slices
    }

    /// <summary>LLaVA-OneVision: each frame's 2×2-pooled rows back to back, <c>v.image_newline</c> once at the segment's end.</summary>
    [Fact]
    public async Task OneVisionFramesArePooledRowsThenTheNewline()
    {
        using var pair = new Pair("tiny-llava");
        var frames = new[] { Frame(0, 64, 40), Frame(1, 64, 40) };
        var rows = await Record(pair, VideoFormat.Native, frames);
        var want = new Expected(pair.Text);
        int p = want.Text("hi", 0, bos: true);
        p = want.Embeddings(Encode(pair.Vision, frames[0]).Rows, 64, 0, p);
        p = want.Embeddings(Encode(pair.Vision, frames[1]).Rows, 64, 1, p);
        want.Embeddings(pair.Vision.ImageNewline!, 64, -1, p);
        want.Check(rows);
        Assert.Equal(4, pair.Vision.VideoFrameTokens); // 3×3 patches pooled to 2×2
    }

    /// <summary>
    /// Qwen2-VL: two frames are one temporal patch, a 4 × 3 grid at (s + t, s + row, s + column) after
    /// <c>&lt;|vision_start|&gt;</c> (s its next position), t the pair's index; <c>&lt;|vision_end|&gt;</c> at the
    /// video's largest position + 1. Four frames: two pairs.
    /// </summary>
    [Fact]
    public async Task Qwen2VlPairsAreGridsWithTheirPairIndex()
    {
        using var pair = new Pair("tiny-qwen2vl");
        var frames = Enumerable.Range(0, 4).Select(i => Frame(i, 84, 56)).ToArray();
        var rows = await Record(pair, VideoFormat.Native, frames);
        var want = new Expected(pair.Text);
        int p = want.Text("hi", 0, bos: true);
        p = want.Text("<|vision_start|>", p);
        int s = p;
        var (first, columns) = Encode(pair.Vision, frames[0], frames[1]);
        Assert.Equal((4, 12), (columns, first.Length / 64));
        want.Grid(first, 64, 4, 0, s, t: 0);
        want.Grid(Encode(pair.Vision, frames[2], frames[3]).Rows, 64, 4, 1, s, t: 1);
        want.Text("<|vision_end|>", s + 4); // max(t + 1 = 2, rows 3, columns 4)
        want.Check(rows);
    }

    /// <summary>
    /// Qwen2.5-VL: the same grids, t from time: pairs starting at 0 s and 10 s are 20 apart at 2 tokens per second,
    /// and the text goes on after the largest t.
    /// </summary>
    [Fact]
    public async Task Qwen25VlPairsTakeTheirTimeAsT()
    {
        using var pair = new Pair("tiny-qwen25vl");
        var frames = new[] { Frame(0, 84, 56, 0), Frame(1, 84, 56, 0.5), Frame(2, 84, 56, 10), Frame(3, 84, 56, 10.5) };
        var rows = await Record(pair, VideoFormat.Native, frames);
        var want = new Expected(pair.Text);
        int p = want.Text("hi", 0, bos: true);
        p = want.Text("<|vision_start|>", p);
        int s = p;
        want.Grid(Encode(pair.Vision, frames[0], frames[1]).Rows, 64, 4, 0, s, t: 0);
        want.Grid(Encode(pair.Vision, frames[2], frames[3]).Rows, 64, 4, 1, s, t: 20);
        want.Text("<|vision_end|>", s + 21);
        want.Check(rows);
    }

    /// <summary>VideoLLM-online's brackets on any family: <c>"\n["</c>, frames separated by <c>","</c> (the next frame's text), <c>"]"</c>.</summary>
    [Fact]
    public async Task FrameBracketsWrapTheFamilysFrameRows()
    {
        using var pair = new Pair("tiny-idefics3");
        var frames = new[] { Frame(0, 64, 64), Frame(1, 64, 64) };
        var rows = await Record(pair, VideoFormat.FrameBrackets, frames);
        var want = new Expected(pair.Text);
        int p = want.Text("hi", 0, bos: true);
        p = want.Text("\n[", p);
        p = want.Embeddings(Encode(pair.Vision, frames[0]).Rows, 64, 0, p);
        p = want.Text(",", p, frame: FrameIds.TextOf(1));
        p = want.Embeddings(Encode(pair.Vision, frames[1]).Rows, 64, 1, p);
        want.Text("]", p);
        want.Check(rows);
    }

    /// <summary>"hi", the frames one by one, the segment's end; the rows the session sent.</summary>
    static async Task<List<SessionRow>> Record(Pair pair, VideoFormat format, VideoFrame[] frames)
    {
        await using var engine = new InferenceEngine(pair.Text, Options(format), pair.Vision);
        await using var session = engine.CreateSession();
        session.Record = [];
        await session.AppendAsync("hi");
        foreach (var frame in frames) await session.AppendFrameAsync(frame);
        await session.EndVideoSegmentAsync();
        return session.Record;
    }

    /// <summary>
    /// The session hands a frame's pixels back to its source (<see cref="VideoFrame.Recycle"/>) once it has resized it,
    /// once per frame, and a recycled frame's rows are those of the same frame without a recycler.
    /// </summary>
    [Fact]
    public async Task FramesGoBackToTheirSourceOnceResized()
    {
        using var pair = new Pair("tiny-idefics3");
        await using var engine = new InferenceEngine(pair.Text, Options(), pair.Vision);
        var returned = new List<byte[]>();
        var frames = Enumerable.Range(0, 3).Select(i => Frame(i, 64, 40)).ToArray();
        async Task<float[]> Logits(bool recycled)
        {
            await using var session = engine.CreateSession();
            session.KeepLogits = true;
            foreach (var frame in frames) await session.AppendFrameAsync(recycled ? frame with { Recycler = b => { lock (returned) returned.Add(b); } } : frame);
            await session.AppendAsync("?");
            return session.LastLogits!.ToArray();
        }
        var plain = await Logits(false);
        Assert.Empty(returned);
        Assert.Equal(plain, await Logits(true));
        Assert.Equal(frames.Select(f => f.Image.Pixels), returned);
    }

    /// <summary>The KV store holds each frame's id beside its visual rows (every layer and head), −1 beside text.</summary>
    [Fact]
    public async Task FrameIdsReachTheKvStore()
    {
        using var pair = new Pair("tiny-llava");
        await using var engine = new InferenceEngine(pair.Text, Options(), pair.Vision);
        await using var session = engine.CreateSession();
        await session.AppendAsync("hi");
        int text = session.Length;
        for (int i = 0; i < 3; i++) await session.AppendFrameAsync(Frame(i, 64, 40));
        await session.EndVideoSegmentAsync();
        int[] expected = [.. Enumerable.Repeat(-1, text), .. Enumerable.Range(0, 3).SelectMany(f => Enumerable.Repeat(f, 4)), -1];
        var stored = await engine.Call(() =>
        {
            var sequence = session.Cache.Sequence;
            var store = sequence.Store;
            var perHead = new List<int[]>();
            for (int l = 0; l < store.LayerCount; l++)
                for (int h = 0; h < store.KvHeadCount; h++)
                    perHead.Add([.. sequence.Table(l, h).Pages.ToArray().SelectMany(page => store.FrameIds(page).ToArray())]);
            return perHead;
        });
        Assert.All(stored, ids => Assert.Equal(expected, ids));
        Assert.Equal(TimeSpan.FromSeconds(1), session.FrameTimestamp(2));
        Assert.Null(session.FrameTimestamp(3));
    }

    static async Task<string> Answer(Session session, string question, int tokens = 6, CancellationToken cancellation = default)
    {
        var pieces = new List<string>();
        await foreach (var piece in session.AskAsync(question, new AskOptions { MaxTokens = tokens }, cancellation)) pieces.Add(piece);
        return string.Concat(pieces);
    }

    /// <summary>
    /// Qwen2-VL, a question after two frame pairs while more frames go in: it answers as the same question after the
    /// segment is ended for real (its fork got <c>&lt;|vision_end|&gt;</c> at the right position), and the session
    /// ends exactly as one that was never asked.
    /// </summary>
    [Fact]
    public async Task AskBetweenFramesAnswersOnAForkWhileIngestionGoesOn()
    {
        using var pair = new Pair("tiny-qwen2vl");
        var frames = Enumerable.Range(0, 6).Select(i => Frame(i, 84, 56)).ToArray();
        const string question = "<|im_start|>user\nwhat?<|im_end|>\n<|im_start|>assistant\n";

        await using var engine = new InferenceEngine(pair.Text, Options(), pair.Vision);
        await using var asked = engine.CreateSession();
        asked.KeepLogits = true;
        await asked.AppendAsync("watch:");
        foreach (var frame in frames[..4]) await asked.AppendFrameAsync(frame);
        var answering = Answer(asked, question); // forks now: two pairs in, the segment open
        var more = Task.Run(async () =>
        {
            foreach (var frame in frames[4..]) await asked.AppendFrameAsync(frame);
            await asked.EndVideoSegmentAsync();
            await asked.AppendAsync(" then");
        });
        string answer = await answering;
        await more;
        Assert.NotEmpty(answer);
        Assert.Equal(3, asked.FrameCount);

        await using var ended = engine.CreateSession();
        await ended.AppendAsync("watch:");
        foreach (var frame in frames[..4]) await ended.AppendFrameAsync(frame);
        await ended.EndVideoSegmentAsync();
        Assert.Equal(answer, await Answer(ended, question));

        await using var never = engine.CreateSession();
        never.KeepLogits = true;
        await never.AppendAsync("watch:");
        foreach (var frame in frames) await never.AppendFrameAsync(frame);
        await never.EndVideoSegmentAsync();
        await never.AppendAsync(" then");
        Assert.Equal(never.Length, asked.Length);
        Assert.Equal(never.NextPosition, asked.NextPosition);
        Assert.True(MaxDifference(never.LastLogits!, asked.LastLogits!) <= 1e-6f, "the question changed the session");
    }

    /// <summary>Cancelling a question on an open segment, or leaving it early, gives the fork's pages back; frames keep going in.</summary>
    [Fact]
    public async Task CancelledAskAfterFramesFreesItsPages()
    {
        using var pair = new Pair("tiny-idefics3");
        await using var engine = new InferenceEngine(pair.Text, Options(), pair.Vision);
        await using var session = engine.CreateSession();
        await session.AppendAsync("watch:");
        for (int i = 0; i < 3; i++) await session.AppendFrameAsync(Frame(i, 64, 64));
        int before = engine.Memory.Pages;

        using (var cancel = new CancellationTokenSource())
        {
            await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
            {
                await foreach (var _ in session.AskAsync("what?", new AskOptions { MaxTokens = 200 }, cancel.Token)) cancel.Cancel();
            });
        }
        Assert.Equal(before, engine.Memory.Pages);
        await foreach (var _ in session.AskAsync("what?", new AskOptions { MaxTokens = 200 })) break;
        Assert.Equal(before, engine.Memory.Pages);
        Assert.Equal(1, engine.Memory.Sequences);

        await session.AppendFrameAsync(Frame(3, 64, 64));
        Assert.Equal(4, session.FrameCount);
    }

    sealed class Reports : IProgress<VideoProgress>
    {
        public readonly List<VideoProgress> Seen = [];
        public void Report(VideoProgress value)
        {
            lock (Seen) Seen.Add(value);
        }
    }

    static async IAsyncEnumerable<VideoFrame> Clip(int count, int width, int height)
    {
        for (int i = 0; i < count; i++)
        {
            await Task.Yield();
            yield return Frame(i, width, height);
        }
    }

    /// <summary>"hi", the frames one by one (unchanged frames skipped at <paramref name="threshold"/>), the segment's end; the rows sent and the frames reused.</summary>
    static async Task<(List<SessionRow> Rows, int Reused)> RecordReusing(Pair pair, VideoFrame[] frames, double? threshold)
    {
        var options = Options();
        await using var engine = new InferenceEngine(pair.Text, options with { Video = options.Video with { UnchangedThreshold = threshold } }, pair.Vision);
        await using var session = engine.CreateSession();
        session.Record = [];
        await session.AppendAsync("hi");
        foreach (var frame in frames) await session.AppendFrameAsync(frame);
        await session.EndVideoSegmentAsync();
        return (session.Record, session.ReusedFrames);
    }

    static void AssertSameRows(List<SessionRow> expected, List<SessionRow> actual)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.Equal(expected[i].Token, actual[i].Token);
            Assert.Equal(expected[i].Position, actual[i].Position);
            Assert.Equal(expected[i].Frame, actual[i].Frame);
            Assert.Equal(expected[i].Embedding, actual[i].Embedding); // bit for bit
        }
    }

    /// <summary>
    /// Unchanged frames skip the tower: four frames of one picture then two of another, at their own times. At threshold 0
    /// each repeat reuses the last encoded unit's rows (SmolVLM, OneVision: 4 of 6 frames; Qwen-VL's pairs (A,A) (A,A)
    /// (B,B): 1 of 3 units) and the session sends exactly the rows, positions, frame ids and timestamps of a session
    /// that encoded every frame; at 255 every unit after the first reuses the first's rows, so B's rows are A's.
    /// </summary>
    [Theory]
    [InlineData("tiny-idefics3")]
    [InlineData("tiny-llava")]
    [InlineData("tiny-qwen2vl")]
    public async Task UnchangedFramesReuseTheLastEncodedRows(string family)
    {
        using var pair = new Pair(family);
        var (width, height) = FrameSize(family);
        var a = Frame(0, width, height).Image;
        var b = Frame(3, width, height).Image;
        var frames = Enumerable.Range(0, 6).Select(i => new VideoFrame(i < 4 ? a : b, TimeSpan.FromSeconds(0.5 * i), i)).ToArray();
        bool pairs = family == "tiny-qwen2vl";

        var (encodedAll, none) = await RecordReusing(pair, frames, null);
        var (reusing, reused) = await RecordReusing(pair, frames, 0);
        Assert.Equal(0, none);
        Assert.Equal(pairs ? 1 : 4, reused);
        AssertSameRows(encodedAll, reusing);

        var (loose, reusedLoose) = await RecordReusing(pair, frames, 255);
        Assert.Equal(pairs ? 2 : 5, reusedLoose);
        Assert.Equal(encodedAll.Count, loose.Count);
        var firstFrameRows = loose.Where(r => r.Frame == 0).Select(r => r.Embedding!).ToList();
        var lastFrameRows = loose.Where(r => r.Frame == (pairs ? 2 : 5) && r.Embedding != null).Select(r => r.Embedding!).ToList();
        var lastEncodedRows = encodedAll.Where(r => r.Frame == (pairs ? 2 : 5) && r.Embedding != null).Select(r => r.Embedding!).ToList();
        Assert.Equal(firstFrameRows.Count, lastFrameRows.Count);
        Assert.True(lastFrameRows.Zip(firstFrameRows).All(x => x.First.AsSpan().SequenceEqual(x.Second)));
        Assert.False(lastEncodedRows.Zip(firstFrameRows).All(x => x.First.AsSpan().SequenceEqual(x.Second)));
    }

    /// <summary>The frame-time map keeps the newest units only (bounded however long the stream): older ids give null.</summary>
    [Fact]
    public async Task FrameTimestampsKeepTheNewestFrames()
    {
        using var pair = new Pair("tiny-idefics3");
        await using var engine = new InferenceEngine(pair.Text, Options(), pair.Vision);
        await using var session = engine.CreateSession();
        session.TimestampsKept = 4;
        for (int i = 0; i < 6; i++) await session.AppendFrameAsync(Frame(i, 64, 64, seconds: 10 + i));
        Assert.Equal(6, session.FrameCount);
        Assert.Equal(new TimeSpan?[] { null, null, TimeSpan.FromSeconds(12), TimeSpan.FromSeconds(13), TimeSpan.FromSeconds(14), TimeSpan.FromSeconds(15), null, null },
            new[] { 0, 1, 2, 3, 4, 5, 6, -1 }.Select(session.FrameTimestamp).ToArray());
    }

    /// <summary>
    /// The comparison is with the last frame that was encoded, not the last reused: frames brightening by 10 levels a
    /// frame at threshold 15 reuse every other one (a chain of reuses cannot drift).
    /// </summary>
    [Fact]
    public async Task UnchangedFramesAreMeasuredAgainstTheLastEncodedFrame()
    {
        using var pair = new Pair("tiny-idefics3");
        var frames = Enumerable.Range(0, 5).Select(i =>
        {
            var image = new RgbImage(64, 64);
            for (int y = 0; y < 64; y++)
                for (int x = 0; x < 64; x++)
                {
                    var p = image.Pixel(x, y);
                    p[0] = (byte)(x + 10 * i);
                    p[1] = (byte)(y + 10 * i);
                    p[2] = (byte)((x ^ y) + 10 * i);
                }
            return new VideoFrame(image, TimeSpan.FromSeconds(i), i);
        }).ToArray();
        var (_, reused) = await RecordReusing(pair, frames, 15);
        Assert.Equal(2, reused); // frames 1 and 3 (10 levels from 0 and 2); 2 and 4 are 20 from the last encoded
    }

    /// <summary><see cref="Session.AppendVideoAsync"/> reports each frame once it is in and ends the clip (OneVision: its newline row last).</summary>
    [Fact]
    public async Task AppendVideoReportsProgressAndEndsTheClip()
    {
        using var pair = new Pair("tiny-llava");
        await using var engine = new InferenceEngine(pair.Text, Options(), pair.Vision);
        await using var session = engine.CreateSession();
        session.Record = [];
        var reports = new Reports();
        await session.AppendVideoAsync(Clip(4, 64, 40), reports);
        Assert.Equal([1, 2, 3, 4], reports.Seen.Select(r => r.Frames));
        Assert.Equal(TimeSpan.FromSeconds(1.5), reports.Seen[^1].Timestamp);
        Assert.Equal((pair.Text.Vocabulary.AddBos ? 1 : 0) + 4 * 4 + 1, session.Length); // [BOS], four pooled frames, the newline
        Assert.Equal(pair.Vision.ImageNewline, session.Record[^1].Embedding);
        Assert.Equal(4, session.FrameCount);
    }

    /// <summary>
    /// An image on Qwen2-VL goes in as mtmd lays it out (<see cref="MediaPrompt"/>) at the positions
    /// <see cref="Generator.Prefill(DecoderModel, DecoderState, IReadOnlyList{PromptChunk}, float[], CancellationToken)"/>
    /// gives it: same logits after the text that follows, same next position.
    /// </summary>
    [Fact]
    public async Task ImageAppendMatchesTheMediaPromptPrefill()
    {
        using var pair = new Pair("tiny-qwen2vl");
        var image = Frame(7, 84, 56).Image;
        await using var engine = new InferenceEngine(pair.Text, Options(), pair.Vision);
        await using var session = engine.CreateSession();
        session.KeepLogits = true;
        await session.AppendAsync("look:");
        await session.AppendImageAsync(image);
        await session.AppendAsync(" what?");

        var prompt = MediaPrompt.Build(pair.Text, pair.Vision, $"look:{MediaPrompt.Marker} what?", [image]);
        using var state = pair.Text.CreateState(4096, GgmlType.F32, GgmlType.F32);
        var logits = new float[pair.Text.Config.VocabSize];
        int position = Generator.Prefill(pair.Text, state, prompt.Chunks, logits);
        Assert.Equal(position, session.NextPosition);
        Assert.Equal(prompt.Count, session.Length);
        Assert.True(MaxDifference(logits, session.LastLogits!) <= 1e-4f);
    }

    [Fact]
    public async Task AVisionModelOfAnotherWidthIsRefused()
    {
        using var llava = new Pair("tiny-llava");
        using var dir = new TempDirectory();
        RandomModel.Write(dir.File("narrow.gguf"), RandomModelShape.Tiny with { Name = "narrow", Embedding = 32, Heads = 2, KvHeads = 1 }, GgmlType.F32);
        using var text = ModelLoader.Load(dir.File("narrow.gguf"));
        var error = Assert.Throws<ArgumentException>(() => new InferenceEngine(text, Options(), llava.Vision));
        Assert.Contains("not a pair", error.Message);
        await using var engine = new InferenceEngine(llava.Text, Options());
        await using var session = engine.CreateSession();
        await Assert.ThrowsAsync<InvalidOperationException>(() => session.AppendFrameAsync(Frame(0, 64, 40)));
    }
}
