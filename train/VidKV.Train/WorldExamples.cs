using System.Globalization;
using System.Text.RegularExpressions;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Text;
using VidKV.World;

namespace VidKV.Train;

/// <summary>What examples look like: clip lengths, questions per clip, how often narration stays in the stream.</summary>
public sealed record ExampleOptions
{
    /// <summary>Fewest frames (ticks) of a clip (lengths are drawn log-uniformly between this and <see cref="MaxFrames"/>).</summary>
    public int MinFrames { get; init; } = 2;
    /// <summary>Most frames (ticks) of a clip.</summary>
    public int MaxFrames { get; init; } = 24;
    /// <summary>Questions per clip on average (asked after random frames; one is always asked after the last).</summary>
    public double QuestionsPerClip { get; init; } = 4;
    /// <summary>Probability that a clip's narrations are in its stream (proactive mode) rather than only learnt as the first token.</summary>
    public double NarrationInStream { get; init; } = 0.5;
    /// <summary>Side of the frames the world is drawn at before VidKV's bilinear resize to the tower's size (as a video of that size would be).</summary>
    public int RenderSize { get; init; } = 256;
    /// <summary>
    /// Latest time a clip may start at, in seconds (0: every clip starts at 00:00). Half the clips then start at a time
    /// drawn uniformly below it, every time they show (frame stamps, questions, answers) shifted by it: a clip is then a
    /// window of a long stream, and the model reads minutes it would otherwise never see before frame 2,000 of a watch.
    /// </summary>
    public int MaxStartSeconds { get; init; }
    /// <summary>
    /// Largest jump of positions between two frames (0: none). In half the clips, a quarter of the frames start after a
    /// jump drawn log-uniformly in [1, this], and the clip's first row at the start time's place: the holes and distances
    /// a bounded KV policy leaves in a long stream (evicted frames keep their positions' gap), seen in short clips.
    /// </summary>
    public int MaxPositionGap { get; init; }
    /// <summary>How eventful the clips are.</summary>
    public WorldOptions World { get; init; } = WorldOptions.Clip;
}

/// <summary>
/// One example: its sequence, its frames' pixels [frames, 3, size, size], its questions in branch order, and what each
/// frame row's cell holds (<see cref="CellTargets"/>, for the training-only perception probe).
/// </summary>
public sealed record WorldExample(TrainingSequence Sequence, float[] Pixels, int Frames, IReadOnlyList<WorldQuestion> Questions, CellTargets Cells)
{
    /// <summary>What changed in each frame row's cell since the frame before (for the training-only change probe).</summary>
    public ChangeTargets Changes { get; init; } = ChangeTargets.Empty;

    /// <summary>
    /// Per question (branch order) and per row of its branch that predicts an answer token (in order, the end of the
    /// utterance last), the frame cells (frame · cells per frame + cell) where that token is to be read: the cell of each
    /// of its <see cref="WorldQuestion.Subjects"/> in each of its evidence frames that shows it; for "what is on the
    /// screen", each object's phrase the object's cell, a separator the objects still to come, the end all of them (for
    /// the training-only pointer loss). Empty where the answer is about no object.
    /// </summary>
    public IReadOnlyList<int[][]> Evidence { get; init; } = [];

    /// <summary>
    /// Per frame, the cells of the object its event concerns, in the frame before and its own (where it is on screen);
    /// empty for a frame without an event or with a scene cut: what its decision and narration are about (for the
    /// training-only pointer loss).
    /// </summary>
    public IReadOnlyList<int[]> Narration { get; init; } = [];
}

/// <summary>
/// What changed in each cell of a frame since the frame before, and in the frame as a whole: the event of the tick
/// (<see cref="WorldEventKind"/> + 1; 0: none) at the cell of the object it concerns — where it is now for an enter, a
/// start, a stop or a colour change, where it was for a leave — or at every cell for a scene cut; and per cell whether
/// the object centred there now stood elsewhere a frame ago (it moves). A clip's first frame has no frame before: −1
/// (no target). What a model needs to compute from two frames before it can say what happened (the proactive decision).
/// </summary>
/// <param name="Cell">each cell's event class, −1 in a clip's first frame</param>
/// <param name="Moved">1 where the cell's object moved since the frame before, 0 where it did not, −1 where no object is centred or there is no frame before</param>
/// <param name="Frame">each frame's event class (what its proactive decision is about), −1 for the first</param>
public sealed record ChangeTargets(long[] Cell, long[] Moved, long[] Frame)
{
    /// <summary>No frames.</summary>
    public static ChangeTargets Empty { get; } = new([], [], []);

    /// <summary>Classes: none and each event kind.</summary>
    public static int Classes => Enum.GetValues<WorldEventKind>().Length + 1;

    /// <summary>The changes of the first <paramref name="frames"/> frames of <paramref name="stream"/> on a <paramref name="side"/>² grid.</summary>
    public static ChangeTargets Of(WorldStream stream, int frames, int side)
    {
        int cells = side * side;
        var cell = new long[frames * cells];
        var moved = new long[frames * cells];
        var frame = new long[frames];
        Array.Fill(moved, -1);
        Array.Fill(cell, -1, 0, Math.Min(cells, cell.Length));
        if (frames > 0) frame[0] = -1;
        for (int f = 1; f < frames; f++)
        {
            var now = stream.State(f);
            var before = stream.State(f - 1);
            foreach (var o in now.Objects)
                if (before.Find(o.Id) is { } was && now.Scene == before.Scene)
                    moved[f * cells + CellTargets.CellOf(o, side)] = was.X != o.X || was.Y != o.Y ? 1 : 0;
            if (stream.EventAt(f) is not { } e) continue;
            long kind = (long)e.Kind + 1;
            frame[f] = kind;
            if (e.Kind == WorldEventKind.SceneCut)
                Array.Fill(cell, kind, f * cells, cells);
            else if ((e.Kind == WorldEventKind.Leave ? e.Object : now.Find(e.Object!.Value.Id)) is { } at)
                cell[f * cells + CellTargets.CellOf(at, side)] = kind;
        }
        return new ChangeTargets(cell, moved, frame);
    }
}

/// <summary>
/// What each frame row's cell of the frame holds: a frame's rows are a grid of cells (Idefics3's pixel shuffle keeps
/// them in reading order), and an object belongs to the cell of its centre. Per cell: colour, shape, size and the 3×3
/// region its centre is in (what "where" answers) as classes (0: no object; else the enum's value + 1), and the centre's
/// offset within the cell in [0, 1]² (0 where empty).
/// </summary>
public sealed record CellTargets(long[] Colour, long[] Shape, long[] Size, long[] Region, float[] Offset)
{
    /// <summary>Colour classes (none + the world's colours).</summary>
    public static int Colours => Enum.GetValues<Colour>().Length + 1;
    /// <summary>Shape classes (none + the world's shapes).</summary>
    public static int Shapes => Enum.GetValues<Shape>().Length + 1;
    /// <summary>Size classes (none + small, big).</summary>
    public static int Sizes => Enum.GetValues<Size>().Length + 1;
    /// <summary>Region classes (none + the 3×3 grid's).</summary>
    public static int Regions => Enum.GetValues<Region>().Length + 1;

    /// <summary>The cell of a <paramref name="side"/>² grid (in reading order) that <paramref name="o"/>'s centre is in.</summary>
    public static int CellOf(WorldObject o, int side) => (int)Math.Clamp(o.Y * side, 0, side - 1e-9) * side + (int)Math.Clamp(o.X * side, 0, side - 1e-9);

    /// <summary>The cells of the first <paramref name="frames"/> frames of <paramref name="stream"/> on a <paramref name="side"/>² grid.</summary>
    public static CellTargets Of(WorldStream stream, int frames, int side) => Of(stream, Enumerable.Range(0, frames).ToArray(), side);

    /// <summary>The cells of the frames of <paramref name="ticks"/> of <paramref name="stream"/>, in that order, on a <paramref name="side"/>² grid.</summary>
    public static CellTargets Of(WorldStream stream, IReadOnlyList<int> ticks, int side)
    {
        int cells = side * side, frames = ticks.Count;
        var t = new CellTargets(new long[frames * cells], new long[frames * cells], new long[frames * cells], new long[frames * cells], new float[frames * cells * 2]);
        for (int f = 0; f < frames; f++)
            foreach (var o in stream.State(ticks[f]).Objects)
            {
                double x = Math.Clamp(o.X * side, 0, side - 1e-9), y = Math.Clamp(o.Y * side, 0, side - 1e-9);
                int cell = f * cells + CellOf(o, side);
                t.Colour[cell] = (int)o.Colour + 1;
                t.Shape[cell] = (int)o.Shape + 1;
                t.Size[cell] = (int)o.Size + 1;
                t.Region[cell] = (int)o.Region + 1;
                t.Offset[2 * cell] = (float)(x - Math.Floor(x));
                t.Offset[2 * cell + 1] = (float)(y - Math.Floor(y));
            }
        return t;
    }
}

/// <summary>
/// Makes training and evaluation examples from generated worlds (<see cref="WorldStream"/>): a clip of a random length,
/// every frame drawn and resized as VidKV's session would take it from a video, questions sampled after random frames
/// (<see cref="WorldQuestions.Sample"/>), narrations as the proactive targets. The same seed gives the same example.
/// </summary>
public sealed partial class WorldExamples(TinyVlmConfig config, Tokenizer tokenizer, ExampleOptions options)
{
    /// <summary>The silence token's id (what a frame without an event should predict).</summary>
    public long SilenceToken { get; } = new SequenceBuilder(tokenizer, config.TokensPerFrame).SilenceToken;

    /// <summary>The example of <paramref name="seed"/>; with <paramref name="narrate"/> its narrations are in its stream whatever <see cref="ExampleOptions.NarrationInStream"/> says (as an evaluation of whole comments needs).</summary>
    public WorldExample Make(ulong seed, bool narrate = false)
    {
        var random = new WorldRandom(seed ^ 0x5EED5EED5EED5EEDUL);
        // Log-uniform lengths: most clips short (many frames seen closely for few rows), some long (distances up to the longest).
        int frames = (int)Math.Floor(options.MinFrames * Math.Pow((options.MaxFrames + 1.0) / options.MinFrames, random.NextDouble()));
        frames = Math.Clamp(frames, options.MinFrames, options.MaxFrames);
        var stream = WorldStream.Generate(seed, frames, options.World);
        bool narrated = random.NextDouble() < options.NarrationInStream || narrate;
        var builder = new SequenceBuilder(tokenizer, config.TokensPerFrame);
        // Long-stream draws on a generator of their own: with both options off the example is the one it always was.
        var longStream = new WorldRandom(seed ^ 0x10C5EED10C5EED1UL);
        int start = options.MaxStartSeconds > 0 && longStream.NextDouble() < 0.5 ? (int)(longStream.NextDouble() * options.MaxStartSeconds) : 0;
        bool gaps = options.MaxPositionGap > 0 && longStream.NextDouble() < 0.5;
        int Gap(int tick) => !gaps ? 0
            : tick == 0 ? start * (config.TokensPerFrame + 14)
            : longStream.NextDouble() < 0.25 ? (int)Math.Floor(Math.Pow(options.MaxPositionGap + 1.0, longStream.NextDouble())) : 0;
        int size = config.ImageSize, plane = size * size;
        var pixels = new float[frames * 3 * plane];
        var questions = new List<WorldQuestion>();
        double perFrame = Math.Max(0, options.QuestionsPerClip - 1) / frames;
        for (int tick = 0; tick < frames; tick++)
        {
            builder.Frame(start + tick, stream.Narration(tick), narrated, Gap(tick));
            DrawFrame(stream, tick, pixels.AsSpan(tick * 3 * plane, 3 * plane));
            bool last = tick == frames - 1;
            int asked = last ? 1 : 0;
            for (double p = perFrame; p > 0; p -= 1)
                if (random.NextDouble() < p) asked++;
            for (int k = 0; k < asked; k++)
                if (WorldQuestions.Sample(stream, tick, random) is { } q)
                {
                    builder.Question(Shift(q.Question, start), Shift(q.Answer, start));
                    questions.Add(q);
                }
        }
        int side = config.PatchesPerSide / config.MergeFactor;
        return new WorldExample(builder.Build(), pixels, frames, questions, CellTargets.Of(stream, frames, side))
        {
            Changes = ChangeTargets.Of(stream, frames, side),
            Evidence = [.. questions.Select(q => RowEvidence(stream, q, Shift(q.Answer, start), side))],
            Narration = [.. Enumerable.Range(0, frames).Select(tick => NarrationCells(stream, tick, side))],
        };
    }

    /// <summary><see cref="WorldExample.Evidence"/> of one question: per answer-predicting row, the cells it reads.</summary>
    int[][] RowEvidence(WorldStream stream, WorldQuestion question, string answer, int side)
    {
        int[] cells = EvidenceCells(stream, question, side);
        // The answer's tokens (as asked: times shifted) and the end of the utterance, as SequenceBuilder.Question lays them out.
        var said = tokenizer.Encode(answer, addSpecial: false, parseSpecial: true);
        int rows = said.Count + 1;
        if (question.Kind != QuestionKind.Objects || question.Subjects.Count < 2) return [.. Enumerable.Repeat(cells, rows)];
        // "a big red circle, a small blue square and a big white ring": "a", size, colour, shape per object in the order
        // listed; two objects may share a cell.
        var state = stream.State(question.AskTick);
        cells = [.. question.Subjects.Select(id => question.AskTick * side * side + CellTargets.CellOf(state.Find(id)!.Value, side))];
        var perRow = new int[rows][];
        int objectIndex = -1, phraseLeft = 0;
        for (int k = 0; k < said.Count; k++)
        {
            if (phraseLeft == 0 && tokenizer.Decode([said[k]]).Trim() == "a") { objectIndex++; phraseLeft = 4; }
            if (phraseLeft > 0) { perRow[k] = [cells[Math.Min(objectIndex, cells.Length - 1)]]; phraseLeft--; }
            else perRow[k] = cells[Math.Min(objectIndex + 1, cells.Length - 1)..]; // a separator: "," or "and" says whether more come
        }
        perRow[^1] = cells;
        return perRow;
    }

    /// <summary>The frame cells of the object the event at <paramref name="tick"/> concerns, at the tick before and its own (<see cref="WorldExample.Narration"/>).</summary>
    public static int[] NarrationCells(WorldStream stream, int tick, int side)
    {
        if (tick == 0 || stream.EventAt(tick)?.Object is not { } o) return [];
        return [.. new[] { tick - 1, tick }.Where(t => stream.State(t).Find(o.Id) is not null)
            .Select(t => t * side * side + CellTargets.CellOf(stream.State(t).Find(o.Id)!.Value, side))];
    }

    /// <summary>The frame cells where <paramref name="question"/>'s answer is to be read (<see cref="WorldExample.Evidence"/>).</summary>
    public static int[] EvidenceCells(WorldStream stream, WorldQuestion question, int side)
    {
        var cells = new List<int>();
        foreach (int tick in question.EvidenceTicks.Distinct())
        {
            if (tick < 0) continue;
            var state = stream.State(tick);
            foreach (int id in question.Subjects)
                if (state.Find(id) is { } o) cells.Add(tick * side * side + CellTargets.CellOf(o, side));
        }
        return [.. cells.Distinct()];
    }

    /// <summary>
    /// <paramref name="count"/> frames of the world of <paramref name="seed"/>, every <paramref name="every"/>-th tick (so
    /// consecutive frames differ more than a clip's), drawn as <see cref="Make"/> draws them, with what their cells hold:
    /// a batch for training the eyes alone (<see cref="Trainer.PretrainVision"/>).
    /// </summary>
    public (float[] Pixels, CellTargets Cells) Frames(ulong seed, int count, int every = 4)
    {
        var stream = WorldStream.Generate(seed, (count - 1) * every + 1, options.World);
        int plane = config.ImageSize * config.ImageSize;
        var pixels = new float[count * 3 * plane];
        var ticks = Enumerable.Range(0, count).Select(i => i * every).ToArray();
        for (int i = 0; i < count; i++) DrawFrame(stream, ticks[i], pixels.AsSpan(i * 3 * plane, 3 * plane));
        return (pixels, CellTargets.Of(stream, ticks, config.PatchesPerSide / config.MergeFactor));
    }

    /// <summary><paramref name="text"/> with every mm:ss in it <paramref name="seconds"/> later.</summary>
    static string Shift(string text, int seconds) => seconds == 0 ? text
        : TimeStamp().Replace(text, m => WorldWords.Time(int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) * 60 + int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture) + seconds));

    [GeneratedRegex(@"\b(\d\d):(\d\d)\b")]
    private static partial Regex TimeStamp();

    /// <summary>Draws the frame of <paramref name="tick"/> at the render size, resizes it to the tower's as VidKV does (bilinear) and normalises it to planes of (x/255 − 0.5)/0.5.</summary>
    void DrawFrame(WorldStream stream, int tick, Span<float> planes)
    {
        int size = config.ImageSize, plane = size * size;
        var image = stream.Render(tick, options.RenderSize, options.RenderSize);
        var resized = options.RenderSize == size ? image : ImageResize.Resize(image, size, size, ResizeAlgorithm.Bilinear, ResizePadding.None);
        var rgb = resized.Pixels;
        for (int i = 0; i < plane; i++)
            for (int c = 0; c < 3; c++)
                planes[c * plane + i] = (rgb[3 * i + c] / 255f - 0.5f) / 0.5f;
    }
}
