using System.Security.Cryptography;
using VidKV.Cli;
using VidKV.Video;
using VidKV.World;

namespace VidKV.Tests;

/// <summary>
/// The synthetic video world: determinism from the seed, frames that show the state, events that are one per tick and
/// match the states, questions whose answers a test recomputes from the states, allocation-free rendering, and videos
/// that the repository's own reader decodes back to the rendered frames.
/// </summary>
public class WorldTests
{
    static readonly WorldOptions[] Presets = [WorldOptions.Clip, WorldOptions.Stream];

    static string[] FrameHashes(WorldStream stream, int width, int height)
    {
        var frame = new byte[3 * width * height];
        return [.. Enumerable.Range(0, stream.TickCount).Select(tick =>
        {
            stream.Render(tick, frame, width, height);
            return Convert.ToHexString(SHA256.HashData(frame));
        })];
    }

    static string[] EventLines(WorldStream stream) => [.. stream.Events.Select(e => $"{e.Tick} {e.Kind} {e.Object} {e.NewColour} {e.Edge} {e.Narration}")];

    [Fact]
    public void SameSeedSameWorldOtherSeedOtherWorld()
    {
        var first = WorldStream.Generate(11, 120);
        var again = WorldStream.Generate(11, 120);
        var other = WorldStream.Generate(12, 120);
        Assert.Equal(EventLines(first), EventLines(again));
        Assert.Equal(first.StaticStretches, again.StaticStretches);
        Assert.Equal(FrameHashes(first, 48, 36), FrameHashes(again, 48, 36));
        Assert.NotEqual(EventLines(first), EventLines(other));
        Assert.NotEqual(FrameHashes(first, 48, 36)[0], FrameHashes(other, 48, 36)[0]);
        // A shorter stream from the same seed is the start of the longer one.
        Assert.Equal(FrameHashes(first, 48, 36)[..40], FrameHashes(WorldStream.Generate(11, 40), 48, 36));
    }

    [Fact]
    public void RandomGeneratorIsSplitMix64SeededAndUniform()
    {
        // SplitMix64's published outputs from state 0.
        ulong state = 0;
        Assert.Equal(0xE220A8397B1DCDAFUL, WorldRandom.SplitMix64(ref state));
        Assert.Equal(0x6E789E6AA1B965F4UL, WorldRandom.SplitMix64(ref state));
        Assert.Equal(0x06C45D188009454FUL, WorldRandom.SplitMix64(ref state));
        var random = new WorldRandom(5);
        var counts = new int[7];
        for (int i = 0; i < 70_000; i++) counts[random.Next(7)]++;
        Assert.All(counts, c => Assert.InRange(c, 9_500, 10_500)); // ±5 %: about 5 standard deviations
        for (int i = 0; i < 1000; i++) Assert.InRange(random.NextDouble(), 0.0, 0.9999999999999999);
    }

    /// <summary>A point of each shape's interior in units of its radius (the ring's centre is a hole).</summary>
    static (double U, double V) InsidePoint(Shape shape) => shape == Shape.Ring ? (0.75, 0) : (0, 0);

    [Theory]
    [InlineData(64, 64)]
    [InlineData(37, 53)]
    [InlineData(32, 32)]
    [InlineData(97, 41)]
    [InlineData(256, 144)]
    public void FramesShowEachObjectOverTheBackground(int width, int height)
    {
        var random = new WorldRandom((ulong)(width * 1000 + height));
        var frame = new byte[3 * width * height];
        var background = new byte[frame.Length];
        for (int trial = 0; trial < 12; trial++)
        {
            var stream = WorldStream.Generate(random.NextUInt64(), 60, Presets[trial % 2]);
            int tick = random.Next(stream.TickCount);
            var state = stream.State(tick);
            stream.Render(tick, frame, width, height);
            WorldRenderer.RenderBackground(state.Background, background, width, height);
            double side = Math.Min(width, height);
            foreach (var o in state.Objects)
            {
                double radius = o.Radius * side, cx = o.X * width, cy = o.Y * height;
                var colour = WorldPalette.Of(o.Colour);
                bool Exact(int x, int y) => frame[3 * (y * width + x)] == colour.R && frame[3 * (y * width + x) + 1] == colour.G && frame[3 * (y * width + x) + 2] == colour.B;
                int exact = 0;
                for (int y = 0; y < height; y++)
                    for (int x = 0; x < width; x++)
                        if (Math.Pow(x + 0.5 - cx, 2) + Math.Pow(y + 0.5 - cy, 2) <= radius * radius && Exact(x, y)) exact++;
                Assert.True(exact > 0, $"seed {stream.Seed} tick {tick}: no pixel of the {o.Description} shows {colour}");
                if (radius >= 8)
                {
                    var (u, v) = InsidePoint(o.Shape);
                    Assert.True(Exact((int)(cx + u * radius), (int)(cy + v * radius)), $"seed {stream.Seed} tick {tick}: the {o.Description}'s inside is not {colour}");
                }
            }
            for (int y = 0; y < height; y++)
                for (int x = 0; x < width; x++)
                {
                    bool nearAnObject = state.Objects.Any(o => Math.Pow(x + 0.5 - o.X * width, 2) + Math.Pow(y + 0.5 - o.Y * height, 2) <= Math.Pow(o.Radius * side + 1, 2));
                    if (!nearAnObject)
                        Assert.True(frame.AsSpan(3 * (y * width + x), 3).SequenceEqual(background.AsSpan(3 * (y * width + x), 3)), $"seed {stream.Seed} tick {tick}: pixel ({x}, {y}) is not background");
                }
        }
    }

    /// <summary>The outline of a polygon shape in units of its radius: the triangle's 3 corners, the star's 10 (tips at radius 1, the first up).</summary>
    static (double X, double Y)[] Outline(Shape shape)
    {
        int corners = shape == Shape.Triangle ? 3 : 10;
        return [.. Enumerable.Range(0, corners).Select(i =>
        {
            double angle = (-90 + 360.0 * i / corners) * Math.PI / 180, radius = shape == Shape.Star && i % 2 == 1 ? WorldRenderer.StarInner : 1;
            return (radius * Math.Cos(angle), radius * Math.Sin(angle));
        })];
    }

    /// <summary>Whether (u, v) is inside a shape, from its outline (polygons by crossing count), independent of the renderer's distance fields.</summary>
    static bool Inside(Shape shape, (double X, double Y)[] outline, double u, double v)
    {
        double r2 = u * u + v * v;
        switch (shape)
        {
            case Shape.Circle: return r2 <= 1;
            case Shape.Ring: return r2 <= 1 && r2 >= 0.25;
            case Shape.Square: return Math.Abs(u) <= WorldRenderer.SquareHalf && Math.Abs(v) <= WorldRenderer.SquareHalf;
            case Shape.Cross:
                double au = Math.Abs(u), av = Math.Abs(v), length = WorldRenderer.ArmLength, half = WorldRenderer.ArmHalfWidth;
                return (au <= length && av <= half) || (au <= half && av <= length);
        }
        bool inside = false;
        for (int i = 0, j = outline.Length - 1; i < outline.Length; j = i++)
        {
            var (a, b) = (outline[i], outline[j]);
            if ((a.Y > v) != (b.Y > v) && u < a.X + (v - a.Y) * (b.X - a.X) / (b.Y - a.Y)) inside = !inside;
        }
        return inside;
    }

    /// <summary>
    /// Each shape's anti-aliased pixels against coverage counted on 8×8 samples per pixel of its outline, at odd sizes
    /// and sub-pixel offsets: the covered area within 3 %, and no pixel off by more than 0.45 of full coverage (along
    /// edges the distance fields are within 0.1; at sharp corners their one-pixel ramp over- or undershoots by up to ~0.4).
    /// </summary>
    [Theory]
    [InlineData(101, 77)]
    [InlineData(53, 37)]
    public void ShapesCoverWhatTheirOutlinesCover(int width, int height)
    {
        var black = new Background(BackgroundPattern.Plain, new Rgb(0, 0, 0), new Rgb(0, 0, 0), 0);
        var frame = new byte[3 * width * height];
        foreach (var shape in Enum.GetValues<Shape>())
        {
            var outline = shape is Shape.Triangle or Shape.Star ? Outline(shape) : [];
            foreach (var (x, y) in new[] { (0.5, 0.5), (0.41, 0.57), (0.537, 0.463) })
            {
                var o = new WorldObject(0, shape, Colour.White, Size.Big, x, y);
                WorldRenderer.Render(black, [o], frame, width, height);
                double radius = o.Radius * Math.Min(width, height), cx = x * width, cy = y * height;
                double area = 0, referenceArea = 0, worst = 0;
                for (int py = 0; py < height; py++)
                    for (int px = 0; px < width; px++)
                    {
                        if (Math.Abs(px + 0.5 - cx) > radius + 2 || Math.Abs(py + 0.5 - cy) > radius + 2)
                        {
                            Assert.Equal(0, frame[3 * (py * width + px)]); // far from the shape: untouched
                            continue;
                        }
                        int samples = 0;
                        for (int sy = 0; sy < 8; sy++)
                            for (int sx = 0; sx < 8; sx++)
                                if (Inside(shape, outline, (px + (sx + 0.5) / 8 - cx) / radius, (py + (sy + 0.5) / 8 - cy) / radius)) samples++;
                        double coverage = frame[3 * (py * width + px)] / 245.0, reference = samples / 64.0;
                        area += coverage;
                        referenceArea += reference;
                        worst = Math.Max(worst, Math.Abs(coverage - reference));
                    }
                Assert.True(worst <= 0.45, $"{shape} at ({x}, {y}) in {width}×{height}: a pixel's coverage is off by {worst:F3}");
                Assert.True(Math.Abs(area - referenceArea) <= 0.03 * referenceArea, $"{shape} at ({x}, {y}) in {width}×{height}: area {area:F1} against {referenceArea:F1}");
            }
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void EventsAreOnePerTickAndTheStatesFollowThem(int preset)
    {
        var options = Presets[preset];
        var seen = new HashSet<WorldEventKind>();
        for (ulong seed = 1; seed <= 12; seed++)
        {
            var stream = WorldStream.Generate(seed, 400, options);
            Assert.Equal(400, stream.TickCount);
            Assert.True(stream.Events.Select(e => e.Tick).SequenceEqual(stream.Events.Select(e => e.Tick).Distinct().Order()), "events out of order or two at a tick");
            Assert.DoesNotContain(stream.Events, e => e.Tick == 0);
            for (int tick = 0; tick < stream.TickCount; tick++)
            {
                var state = stream.State(tick);
                Assert.Equal(tick, state.Tick);
                Invariants(state, options);
                if (tick == 0) continue;
                var before = stream.State(tick - 1);
                var e = stream.EventAt(tick);
                Assert.Same(e, stream.Events.FirstOrDefault(x => x.Tick == tick));
                Assert.Equal(e?.Narration, stream.Narration(tick));
                if (stream.StaticStretches.Any(r => r.Contains(tick)))
                {
                    Assert.Null(e);
                    Assert.Equal(before.Objects, state.Objects); // nothing moves: the frame repeats
                }
                if (e != null) seen.Add(e.Kind);
                Follows(before, state, e);
            }
        }
        Assert.Equal(Enum.GetValues<WorldEventKind>(), seen.Order()); // every kind happens
    }

    static void Invariants(WorldState state, WorldOptions options)
    {
        var objects = state.Objects;
        Assert.InRange(objects.Count, Math.Min(options.MinObjects, 1) == 0 ? 0 : 1, options.MaxObjects);
        Assert.True(objects.Select(o => o.Id).SequenceEqual(objects.Select(o => o.Id).Order()), "objects not in draw (id) order");
        Assert.Equal(objects.Count, objects.Select(o => o.Description).Distinct().Count()); // every description names one object
        for (int i = 0; i < objects.Count; i++)
        {
            var (low, high) = WorldGeometry.CentreRange(objects[i].Radius);
            Assert.InRange(objects[i].X, low - 1e-12, high + 1e-12);
            Assert.InRange(objects[i].Y, low - 1e-12, high + 1e-12);
            for (int j = i + 1; j < objects.Count; j++)
                Assert.True(WorldGeometry.Apart(objects[i].X, objects[i].Y, objects[i].Radius, objects[j].X, objects[j].Y, objects[j].Radius),
                    $"tick {state.Tick}: the {objects[i].Description} and the {objects[j].Description} overlap");
        }
    }

    /// <summary>The state after a tick is the state before it, changed by the event (if any) and one step of every moving object.</summary>
    static void Follows(WorldState before, WorldState after, WorldEvent? e)
    {
        string at = $"tick {after.Tick} ({e?.Narration ?? "no event"})";
        if (e?.Kind == WorldEventKind.SceneCut)
        {
            Assert.DoesNotContain(after.Objects, o => before.Find(o.Id) != null);
            Assert.NotEqual(before.Background, after.Background);
            Assert.Equal(before.Scene + 1, after.Scene);
            Assert.Equal("the scene changed.", e.Narration);
            return;
        }
        Assert.Equal(before.Background, after.Background);
        Assert.Equal(before.Scene, after.Scene);
        var target = e?.Object?.Id;
        switch (e?.Kind)
        {
            case WorldEventKind.Enter:
                Assert.Null(before.Find(target!.Value));
                Assert.Equal(e.Object, after.Find(target.Value));
                Assert.False(e.Object!.Value.IsMoving);
                Assert.Equal($"a {e.Object.Value.Description} entered.", e.Narration);
                break;
            case WorldEventKind.Leave:
                Assert.Equal(e.Object, before.Find(target!.Value));
                Assert.Null(after.Find(target.Value)); // not visible any more
                Assert.Equal(WorldGeometry.NearestEdge(e.Object!.Value.X, e.Object.Value.Y), e.Edge);
                Assert.Equal($"the {e.Object.Value.NameAmong(before.ObjectSpan)} left.", e.Narration);
                break;
            case WorldEventKind.StartMoving:
                Assert.False(before.Find(target!.Value)!.Value.IsMoving);
                Assert.True(after.Find(target.Value)!.Value.IsMoving);
                Assert.Equal(e.Object, after.Find(target.Value));
                Assert.EndsWith(" started moving.", e.Narration);
                break;
            case WorldEventKind.Stop:
                Assert.True(before.Find(target!.Value)!.Value.IsMoving);
                Assert.Equal(before.Find(target.Value)!.Value with { VelocityX = 0, VelocityY = 0 }, after.Find(target.Value));
                Assert.Equal($"the {before.Find(target.Value)!.Value.NameAmong(before.ObjectSpan)} stopped.", e.Narration);
                break;
            case WorldEventKind.ChangeColour:
                Assert.Equal(e.Object, before.Find(target!.Value));
                Assert.NotEqual(e.Object!.Value.Colour, e.NewColour);
                Assert.Equal(e.NewColour, after.Find(target.Value)!.Value.Colour);
                Assert.Equal($"the {e.Object.Value.NameAmong(before.ObjectSpan)} changed to {WorldWords.Of(e.NewColour!.Value)}.", e.Narration);
                break;
        }
        // Everything else keeps its identity and colour; a moving object steps by its velocity (reflected off a border
        // or another object: same speed) or waits where it was; a still one stays put.
        Assert.Equal(before.Objects.Select(o => o.Id).Where(id => id != target || e!.Kind != WorldEventKind.Leave),
            after.Objects.Select(o => o.Id).Where(id => id != target || e!.Kind != WorldEventKind.Enter));
        foreach (var o in after.Objects)
        {
            if (before.Find(o.Id) is not { } was) continue;
            if (o.Id != target || e!.Kind != WorldEventKind.ChangeColour) Assert.Equal(was.Colour, o.Colour);
            if (!o.IsMoving)
            {
                Assert.True(was.X == o.X && was.Y == o.Y, $"{at}: the still {o.Description} moved");
                continue;
            }
            if (o.Id != target) Assert.Equal(Math.Abs(was.VelocityX) + Math.Abs(was.VelocityY), Math.Abs(o.VelocityX) + Math.Abs(o.VelocityY), 12);
            bool stepped = Math.Abs(was.X + o.VelocityX - o.X) < 1e-12 && Math.Abs(was.Y + o.VelocityY - o.Y) < 1e-12;
            Assert.True(stepped || (was.X == o.X && was.Y == o.Y), $"{at}: the {o.Description} went from ({was.X}, {was.Y}) to ({o.X}, {o.Y}) at velocity ({o.VelocityX}, {o.VelocityY})");
        }
    }

    /// <summary>"big red circle", "red circle", "big square", "square" back to what they name.</summary>
    static (Size? Size, Colour? Colour, Shape Shape) ParseName(string name)
    {
        string[] words = name.Split(' ');
        var shape = (Shape)IndexOf(WorldWords.Shapes, words[^1]);
        Colour? colour = words.Length >= 2 && WorldWords.Colours.Contains(words[^2]) ? (Colour)IndexOf(WorldWords.Colours, words[^2]) : null;
        Size? size = WorldWords.Sizes.Contains(words[0]) ? (Size)IndexOf(WorldWords.Sizes, words[0]) : null;
        Assert.Equal(words.Length, 1 + (colour != null ? 1 : 0) + (size != null ? 1 : 0));
        return (size, colour, shape);
    }

    static int IndexOf(IReadOnlyList<string> words, string word)
    {
        int index = words.ToList().IndexOf(word);
        Assert.True(index >= 0, $"'{word}' is not one of {string.Join(", ", words)}");
        return index;
    }

    static bool Fits(WorldObject o, (Size? Size, Colour? Colour, Shape Shape) name) =>
        o.Shape == name.Shape && (name.Colour == null || o.Colour == name.Colour) && (name.Size == null || o.Size == name.Size);

    static int TickOf(string time)
    {
        string[] parts = time.Split(':');
        return 60 * int.Parse(parts[0]) + int.Parse(parts[1]);
    }

    static string Between(string text, string start, string end)
    {
        int from = text.IndexOf(start, StringComparison.Ordinal) + start.Length;
        return text[from..text.IndexOf(end, from, StringComparison.Ordinal)];
    }

    /// <summary>
    /// Every question at random ask ticks of random streams, its answer recomputed from the states and events alone (the
    /// name in a question must fit exactly one object), every word in the vocabulary, no question text twice; "where"
    /// and "what colour" also checked on a 37×53 frame.
    /// </summary>
    [Fact]
    public void AnswersAgreeWithTheStates()
    {
        var random = new WorldRandom(2024);
        var vocabulary = WorldWords.Vocabulary.ToHashSet();
        HashSet<QuestionKind> kinds = [], sampledKinds = [];
        const int width = 37, height = 53;
        var frame = new byte[3 * width * height];
        for (int trial = 0; trial < 16; trial++)
        {
            var stream = WorldStream.Generate(random.NextUInt64(), 80, Presets[trial % 2]);
            foreach (var e in stream.Events) Assert.All(WorldWords.Split(e.Narration), w => Assert.Contains(w, vocabulary));
            int ask = random.Next(stream.TickCount);
            var state = stream.State(ask);
            stream.Render(ask, frame, width, height);
            var questions = WorldQuestions.All(stream, ask).ToArray();
            Assert.Equal(questions.Length, questions.Select(q => q.Question).Distinct().Count());
            foreach (var q in questions)
            {
                kinds.Add(q.Kind);
                Assert.All(WorldWords.Split(q.Question).Concat(WorldWords.Split(q.Answer)), w => Assert.Contains(w, vocabulary));
                Assert.Equal(ask, q.AskTick);
                Assert.All(q.EvidenceTicks, t => Assert.InRange(t, 0, ask));
                Assert.Equal(Recompute(stream, q, frame, width, height), q.Answer);
            }
            // Sampling draws from the same questions.
            var asked = questions.ToDictionary(q => q.Question);
            for (int i = 0; i < 20; i++)
            {
                var sampled = WorldQuestions.Sample(stream, ask, random)!;
                Assert.True(asked.TryGetValue(sampled.Question, out var same) && same == sampled with { EvidenceTicks = same.EvidenceTicks, Subjects = same.Subjects }
                    && same.EvidenceTicks.SequenceEqual(sampled.EvidenceTicks) && same.Subjects.SequenceEqual(sampled.Subjects), $"sampled '{sampled.Question}' → '{sampled.Answer}' is not among the questions");
                sampledKinds.Add(sampled.Kind);
            }
        }
        Assert.Equal(Enum.GetValues<QuestionKind>(), sampledKinds.Order());
        Assert.Equal(Enum.GetValues<QuestionKind>(), kinds.Order());
    }

    static string Recompute(WorldStream stream, WorldQuestion q, byte[] frame, int width, int height)
    {
        var now = stream.State(q.AskTick);
        WorldObject One(WorldState state, string name)
        {
            var fits = state.Objects.Where(o => Fits(o, ParseName(name))).ToArray();
            Assert.True(fits.Length == 1, $"'{q.Question}': '{name}' fits {fits.Length} objects at tick {state.Tick}");
            return fits[0];
        }
        WorldEvent OneEvent(WorldEventKind kind, string name)
        {
            var fits = stream.Events.Where(e => e.Tick <= q.AskTick && e.Kind == kind && Fits(e.Object!.Value, ParseName(name))).ToArray();
            Assert.True(fits.Length == 1, $"'{q.Question}': '{name}' fits {fits.Length} {kind} events");
            return fits[0];
        }
        switch (q.Kind)
        {
            case QuestionKind.Objects:
                string[] listed = q.Answer == "nothing" ? [] : [.. q.Answer.Replace(" and ", ", ").Split(", ").Select(item => item["a ".Length..]).Order()];
                Assert.Equal(now.Objects.Select(o => o.Description).Order(), listed);
                return q.Answer;
            case QuestionKind.Count:
                return now.Objects.Count.ToString();
            case QuestionKind.Colour:
            {
                var o = One(now, Between(q.Question, "the ", "?"));
                Assert.True(ShowsColour(frame, width, height, o), $"'{q.Question}': the frame shows no {WorldWords.Of(o.Colour)} pixel in the {o.Description}'s disc");
                return WorldWords.Of(o.Colour);
            }
            case QuestionKind.Where:
            {
                var o = One(now, Between(q.Question, "the ", "?"));
                // The answer's cell of the frame holds the object's centre pixel.
                int x = (int)(o.X * width), y = (int)(o.Y * height);
                Assert.Equal(WorldWords.Of(o.Region), WorldWords.Regions[3 * (3 * y / height) + 3 * x / width]);
                return WorldWords.Of(o.Region);
            }
            case QuestionKind.Happened:
                return stream.EventAt(TickOf(Between(q.Question, " at ", "?")))?.Narration.TrimEnd('.') ?? "nothing";
            case QuestionKind.ColourAt:
                return WorldWords.Of(One(stream.State(TickOf(Between(q.Question, " at ", "?"))), Between(q.Question, "the ", " at ")).Colour);
            case QuestionKind.WhenEntered:
                return $"at {OneEvent(WorldEventKind.Enter, Between(q.Question, "the ", " enter?")).Time}";
            case QuestionKind.WhenLeft:
                return $"at {OneEvent(WorldEventKind.Leave, Between(q.Question, "the ", " leave?")).Time}";
            default:
            {
                var kind = q.Question.StartsWith("which entered", StringComparison.Ordinal) ? WorldEventKind.Enter : WorldEventKind.Leave;
                string a = Between(q.Question, ", the ", " or "), b = Between(q.Question, " or the ", "?");
                var (ea, eb) = (OneEvent(kind, a), OneEvent(kind, b));
                Assert.Equal(new[] { ea.Tick - 1, ea.Tick, eb.Tick - 1, eb.Tick }.Order(), q.EvidenceTicks.Order());
                return $"the {(ea.Tick < eb.Tick ? a : b)}";
            }
        }
    }

    /// <summary>Whether a pixel of the object's disc has exactly its palette colour.</summary>
    static bool ShowsColour(byte[] frame, int width, int height, WorldObject o)
    {
        var rgb = WorldPalette.Of(o.Colour);
        double radius = o.Radius * Math.Min(width, height), cx = o.X * width, cy = o.Y * height;
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
                if (Math.Pow(x + 0.5 - cx, 2) + Math.Pow(y + 0.5 - cy, 2) <= radius * radius
                    && frame[3 * (y * width + x)] == rgb.R && frame[3 * (y * width + x) + 1] == rgb.G && frame[3 * (y * width + x) + 2] == rgb.B) return true;
        return false;
    }

    [Fact]
    public void NeedleQuestionsSitAtTheirEvidence()
    {
        var stream = WorldStream.Generate(99, 2000, WorldOptions.Stream);
        const int ask = 1999;
        var distances = new List<int>();
        foreach (int evidence in new[] { 1999, 1500, 1000, 250, 3 })
        {
            var questions = WorldQuestions.About(stream, evidence, ask).ToArray();
            Assert.Contains(questions, q => q.Kind == QuestionKind.Happened);
            Assert.All(questions, q => Assert.Equal(evidence, q.EvidenceTicks.Max()));
            Assert.All(questions, q => Assert.Equal(ask, q.AskTick));
            // A colour question for every object its shape names at that tick.
            var state = stream.State(evidence);
            Assert.Equal(state.Objects.Count(o => o.ShapeNameAmong(state.ObjectSpan) != null), questions.Count(q => q.Kind == QuestionKind.ColourAt));
            distances.AddRange(questions.Where(q => q.Kind == QuestionKind.ColourAt).Select(q => q.Distance));
        }
        Assert.Contains(1996, distances);
        var enter = stream.Events.First(e => e.Kind == WorldEventKind.Enter);
        Assert.Throws<ArgumentOutOfRangeException>(() => WorldQuestions.About(stream, 10, 5).ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => WorldQuestions.About(stream, 0, 2000).ToArray());
        Assert.Equal(enter.Tick - 1, WorldQuestions.About(stream, enter.Tick, ask).Where(q => q.Kind == QuestionKind.Happened).Single().EvidenceTicks.Min());
    }

    [Fact]
    public void SubTickFramesMoveBetweenTicks()
    {
        var stream = WorldStream.Generate(3, 200);
        const int width = 64, height = 48;
        var frame = new byte[3 * width * height];
        var tickFrame = new byte[frame.Length];
        for (int tick = 0; tick < stream.TickCount; tick++)
        {
            stream.RenderAt(tick, frame, width, height);
            stream.Render(tick, tickFrame, width, height);
            Assert.Equal(tickFrame, frame);
        }
        stream.RenderAt(stream.TickCount + 5.5, frame, width, height); // past the end: the last tick
        Assert.Equal(tickFrame, frame);
        // Half-way into an enter, the entering object is on its way in: its colour shows, but less of it than at the tick.
        var enter = stream.Events.First(e => e.Kind == WorldEventKind.Enter);
        var colour = WorldPalette.Of(enter.Object!.Value.Colour);
        int Count(byte[] f) => Enumerable.Range(0, width * height).Count(p => f[3 * p] == colour.R && f[3 * p + 1] == colour.G && f[3 * p + 2] == colour.B);
        stream.RenderAt(enter.Tick - 0.5, frame, width, height);
        stream.Render(enter.Tick, tickFrame, width, height);
        Assert.InRange(Count(frame), 1, Count(tickFrame) - 1);
        Assert.Throws<ArgumentOutOfRangeException>(() => stream.RenderAt(-1, frame, width, height));
    }

    [Fact]
    public void VocabularyHoldsEveryWordOnce()
    {
        Assert.Equal(WorldWords.Vocabulary.Count, WorldWords.Vocabulary.Distinct().Count());
        Assert.Equal(["at", "0", "1", ":", "0", "5", "."], WorldWords.Split("at 01:05."));
        Assert.Equal(["what", "is", "on", "the", "screen", "?"], WorldWords.Split("what is on the screen?"));
        Assert.Equal("83:20", WorldWords.Time(5000));
        Assert.Equal(Enum.GetValues<Region>().Length, WorldWords.Regions.Count);
        Assert.Equal(Region.TopLeft, WorldGeometry.RegionOf(0.1, 0.2));
        Assert.Equal(Region.BottomRight, WorldGeometry.RegionOf(0.9, 0.7));
        Assert.Equal(Region.Center, WorldGeometry.RegionOf(0.5, 0.5));
    }

    [Fact]
    public void BadOptionsAreNamed()
    {
        Assert.Contains("max objects", Assert.Throws<ArgumentException>(() => WorldStream.Generate(1, 10, new WorldOptions { MaxObjects = 7 })).Message);
        Assert.Contains("event probability", Assert.Throws<ArgumentException>(() => WorldStream.Generate(1, 10, new WorldOptions { EventProbability = 1.5 })).Message);
        Assert.Contains("at least one tick", Assert.Throws<ArgumentException>(() => WorldStream.Generate(1, 0)).Message);
        Assert.Contains("needs 300 bytes", Assert.Throws<ArgumentException>(() => WorldStream.Generate(1, 1).Render(0, new byte[299], 10, 10)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => WorldStream.Generate(1, 5).State(5));
    }

    /// <summary>Generating a clip writes an H.264 file that the repository's own reader decodes back to the rendered frames.</summary>
    [Fact]
    public async Task VideoDecodesBackToTheRenderedFrames()
    {
        using var dir = new TempDirectory();
        string path = dir.File("world.mp4");
        var stream = WorldStream.Generate(8, 3);
        const int width = 64, height = 48;
        await WorldVideo.WriteAsync(stream, path, width, height, fps: 2, crf: 10);
        var decoded = new List<Formats.VideoFrame>();
        await foreach (var frame in new FfmpegSource(path).ReadAsync()) decoded.Add(frame);
        Assert.Equal(6, decoded.Count);
        var rendered = new byte[3 * width * height];
        for (int k = 0; k < decoded.Count; k++)
        {
            Assert.Equal(TimeSpan.FromSeconds(k / 2.0), decoded[k].Timestamp);
            stream.RenderAt(k / 2.0, rendered, width, height);
            var pixels = decoded[k].Image.Pixels;
            Assert.Equal(rendered.Length, pixels.Length);
            double meanError = Enumerable.Range(0, rendered.Length).Average(i => Math.Abs(rendered[i] - pixels[i]));
            Assert.True(meanError < 3, $"frame {k}: mean error {meanError:F2} levels");
        }
        // One frame per second of the file is the ticks' frames.
        int tick = 0;
        await foreach (var frame in new FfmpegSource(path, new FrameSampling { Fps = 1 }).ReadAsync())
        {
            Assert.Equal(TimeSpan.FromSeconds(tick), frame.Timestamp);
            stream.Render(tick++, rendered, width, height);
            Assert.True(Enumerable.Range(0, rendered.Length).Average(i => Math.Abs(rendered[i] - frame.Image.Pixels[i])) < 3);
        }
        Assert.Equal(3, tick);
        Assert.Contains("even width and height", (await Assert.ThrowsAsync<ArgumentException>(() => WorldVideo.WriteAsync(stream, dir.File("odd.mp4"), 37, 53, 2))).Message);
        Assert.False(File.Exists(dir.File("odd.mp4")));
    }

    /// <summary>An encoder that fails is one IOException with ffmpeg's own words; nothing is left on disk.</summary>
    [Fact]
    public async Task VideoWriterReportsFfmpegsError()
    {
        using var dir = new TempDirectory();
        string path = dir.File("bad.mp4");
        var failure = await Assert.ThrowsAsync<IOException>(async () =>
        {
            await using var writer = RawVideoWriter.Start(path, 16, 16, 1, preset: "nosuchpreset");
            var frame = new byte[3 * 16 * 16];
            for (int i = 0; i < 4; i++) await writer.WriteFrameAsync(frame);
            await writer.CompleteAsync();
        });
        Assert.StartsWith($"{path}: ffmpeg could not write it: ", failure.Message);
        Assert.Contains("preset", failure.Message, StringComparison.OrdinalIgnoreCase);
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void GenerateCommandWritesTheVideoAndItsLog()
    {
        using var dir = new TempDirectory();
        string path = dir.File("clip.mp4");
        var stderr = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["world", "generate", "--seed", "5", "--ticks", "12", "--size", "32x24", "--fps", "2", "--questions", "4", "-o", path], stderr, new StringWriter()));
        Assert.Contains("24 frames, 32×24 at 2 fps", stderr.ToString());
        Assert.True(new FileInfo(path).Length > 0);
        var log = WorldVideo.ReadLog(dir.File("clip.json"));
        var stream = WorldStream.Generate(5, 12);
        Assert.Equal((5UL, 12, 32, 24, 2.0), (log.Seed, log.Ticks, log.Width, log.Height, log.Fps));
        Assert.Equal(stream.Events.Select(e => (e.Tick, e.Time, e.Narration)), log.Events.Select(e => (e.Tick, e.Time, e.Narration)));
        Assert.Equal(4, log.Questions.Select(q => q.Question).Distinct().Count());
        Assert.All(log.Questions, q => Assert.Equal(11, q.AskTick));
        Assert.All(log.Questions, q => Assert.Contains(WorldQuestions.All(stream, 11), x => x.Question == q.Question && x.Answer == q.Answer));
        Assert.Contains("\"narration\"", File.ReadAllText(dir.File("clip.json")));
        Assert.DoesNotContain(Directory.GetFiles(dir.Path), f => f.Contains(".partial", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("--size 37", "even width and height")]
    [InlineData("--size 0x24", "--size '0x24'")]
    [InlineData("--ticks 0", "--ticks must be in 1..360000")]
    [InlineData("--fps 0", "--fps must be in (0, 120]")]
    [InlineData("--max-objects 9", "max objects must be in 1..6")]
    [InlineData("--event-probability 2", "event probability must be a probability")]
    [InlineData("--preset busy", "busy")]
    public void GenerateCommandRejectsBadOptions(string options, string problem)
    {
        using var dir = new TempDirectory();
        var stderr = new StringWriter();
        Assert.Equal(CliRunner.BadInput, CliRunner.Run(CliApp.BuildRoot(), ["world", "generate", "-o", dir.File("x.mp4"), .. options.Split(' ')], stderr, new StringWriter()));
        Assert.Contains(problem, stderr.ToString());
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void GenerateCommandNeedsAnExistingFolder()
    {
        using var dir = new TempDirectory();
        var stderr = new StringWriter();
        Assert.Equal(CliRunner.BadInput, CliRunner.Run(CliApp.BuildRoot(), ["world", "generate", "-o", dir.File("no/such/x.mp4")], stderr, new StringWriter()));
        Assert.Contains("no such folder", stderr.ToString());
    }

    [Fact]
    public void GenerateCommandHasHelp()
    {
        var stdout = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["world", "generate", "--help"], new StringWriter(), stdout));
        foreach (string option in new[] { "--seed", "--ticks", "--size", "--fps", "--output", "--preset", "--questions" })
            Assert.Contains(option, stdout.ToString());
    }
}

/// <summary>Rendering into a caller's buffer allocates nothing once warm, at a tick and between ticks.</summary>
[Collection("Allocation")]
public class WorldAllocationTests
{
    [Fact]
    public void RenderingIntoABufferAllocatesNothing()
    {
        var stream = WorldStream.Generate(21, 100);
        var frame = new byte[3 * 64 * 64];
        for (int i = 0; i < 200; i++) Draw(i);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 200; i++) Draw(i);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated == 0, $"rendering 400 frames allocated {allocated} bytes");

        void Draw(int i)
        {
            stream.Render(i % stream.TickCount, frame, 64, 64);
            stream.RenderAt(i % stream.TickCount + 0.375, frame, 64, 64);
        }
    }
}
