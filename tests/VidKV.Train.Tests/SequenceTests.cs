using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Train;
using VidKV.World;

namespace VidKV.Train.Tests;

/// <summary>The trainer lays examples out as VidKV's session lays out a watched stream, and its examples are well formed.</summary>
public class SequenceTests
{
    static SequenceTests() => LibTorchLoadFix.Apply();

    static readonly TinyVlmConfig Small = new()
    {
        ImageSize = 32, PatchSize = 8, VisionWidth = 32, VisionBlocks = 1, VisionHeads = 2, VisionFeedForward = 80, MergeFactor = 2,
        Layers = 1, Embedding = 64, Heads = 4, KvHeads = 2, FeedForward = 96, Vocab = WorldVocabulary.Size,
    };

    /// <summary>
    /// Frames (one with its narration said in the stream, as proactive mode appends it), the segment's close and a
    /// question: the trainer's stream rows and question branch are token for token the rows VidKV's session sends
    /// (recorded), frame rows in the same places; the world's words are single tokens.
    /// </summary>
    [Fact]
    public async Task TrainingLayoutIsTheSessionsLayout()
    {
        var dir = Directory.CreateTempSubdirectory("vidkv-layout-").FullName;
        try
        {
            using var torchModel = new TinyVlm(Small);
            var (textPath, projectorPath) = ModelExport.Write(dir, torchModel, "layout-test", WorldVocabulary.Options);
            using var text = ModelLoader.Load(textPath);
            using var vision = VisionModel.Load(projectorPath);
            await using var engine = new InferenceEngine(text, new EngineOptions(), vision);
            await using var session = engine.CreateSession();
            session.Record = [];

            var tokenizer = WorldVocabulary.CreateTokenizer();
            foreach (string word in WorldWords.Vocabulary.Where(w => w.All(char.IsAsciiLetter)))
                foreach (string form in new[] { word, " " + word })
                    Assert.True(tokenizer.Encode(form, addSpecial: false).Count == 1, $"'{form}' is {tokenizer.Encode(form, addSpecial: false).Count} tokens");
            var builder = new SequenceBuilder(tokenizer, Small.TokensPerFrame);
            string narration = "a small red circle entered.";
            for (int tick = 0; tick < 3; tick++)
            {
                var image = new RgbImage(40, 40);
                await session.AppendFrameAsync(new VideoFrame(image, TimeSpan.FromSeconds(tick), tick));
                builder.Frame(tick, tick == 1 ? narration : null, narrationInStream: true);
                if (tick == 1) await session.AppendTokensAsync(tokenizer.Encode(narration + "<end_of_utterance>", addSpecial: false).ToArray());
            }
            const string question = "what colour is the circle?";
            builder.Question(question, "red");
            await session.EndVideoSegmentAsync();
            await session.AppendAsync($"\n{question}\n");
            var sequence = builder.Build();
            var rows = session.Record;
            int stream = sequence.BranchStart.TakeWhile(b => b < 0).Count();
            int branchPrompt = rows.Count - stream; // the close and the question; the answer is the model's to say
            Assert.True(branchPrompt > 0);
            for (int i = 0; i < rows.Count; i++)
            {
                bool frameRow = rows[i].Embedding != null;
                Assert.Equal(frameRow, sequence.FrameOf[i] >= 0);
                if (!frameRow) Assert.True(rows[i].Token == sequence.Tokens[i], $"row {i}: session token {rows[i].Token}, trainer {sequence.Tokens[i]}");
            }
            Assert.Equal(stream, sequence.Positions[stream]); // the branch goes on from the stream's end
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// Generated examples: every frame has its rows and one decision row (silence on event-free ticks, the narration's
    /// first token on event ticks), every question a branch that sees only the stream up to its frame and ends its
    /// answer with the end of the utterance; the same seed gives the same example.
    /// </summary>
    [Fact]
    public void ExamplesAreWellFormed()
    {
        var tokenizer = WorldVocabulary.CreateTokenizer();
        var examples = new WorldExamples(Small, tokenizer, new ExampleOptions { MaxFrames = 9, RenderSize = 48 });
        long end = tokenizer.Encode("<end_of_utterance>", addSpecial: false)[0];
        for (ulong seed = 1; seed <= 20; seed++)
        {
            var example = examples.Make(seed);
            var s = example.Sequence;
            Assert.Equal(example.Frames * 3 * Small.ImageSize * Small.ImageSize, example.Pixels.Length);
            Assert.Equal(example.Frames * Small.TokensPerFrame, s.FrameOf.Count(f => f >= 0));
            Assert.Equal(example.Frames, s.Decision.Count(d => d));
            var stream = WorldStream.Generate(seed, example.Frames);
            int events = Enumerable.Range(0, example.Frames).Count(t => stream.Narration(t) != null);
            Assert.Equal(example.Frames - events, Enumerable.Range(0, s.Length).Count(i => s.Decision[i] && s.Labels[i] == examples.SilenceToken));
            int branches = Enumerable.Range(0, s.Length).Count(i => s.BranchStart[i] == i);
            Assert.Equal(example.Questions.Count, branches);
            for (int i = 0; i < s.Length; i++)
            {
                if (s.BranchStart[i] < 0) continue;
                Assert.True(s.VisibleUntil[i] <= s.BranchStart.TakeWhile(b => b < 0).Count());
                bool last = i + 1 == s.Length || s.BranchStart[i + 1] != s.BranchStart[i];
                if (last) Assert.Equal(end, s.Tokens[i]);
            }
            Assert.Equal(example.Frames, s.Stamps.Count);
            var decisions = Enumerable.Range(0, s.Length).Where(i => s.Decision[i]).ToArray();
            for (int f = 0; f < example.Frames; f++)
            {
                // The frame's stamp: its own time, among the rows before its frame rows and after the last frame's decision.
                Assert.Equal(WorldWords.Time(f), tokenizer.Decode(s.Stamps[f].Select(r => (int)s.Tokens[r])));
                Assert.True(s.Stamps[f][^1] < Array.IndexOf(s.FrameOf, f) && (f == 0 || s.Stamps[f][0] > decisions[f - 1]));
            }
            var again = examples.Make(seed);
            Assert.Equal(s.Tokens, again.Sequence.Tokens);
            Assert.Equal(example.Pixels, again.Pixels);
        }
    }

    /// <summary>
    /// Change targets (<see cref="ChangeTargets"/>): nothing in a clip's first frame; in a frame without an event, every
    /// cell and the frame none; in a scene cut's, every cell the cut; otherwise exactly one cell holds the event — the one
    /// of the object's centre now, or before for a leave; an object seen in both frames of a scene is marked moved
    /// exactly when its centre moved (where it is the only one centred in its cell), and cells without an object centred in
    /// them have no moved target.
    /// </summary>
    [Fact]
    public void ChangeTargetsMarkTheEventsCellAndWhatMoved()
    {
        const int side = 3, cells = side * side, ticks = 300;
        var stream = WorldStream.Generate(77, ticks);
        var t = ChangeTargets.Of(stream, ticks, side);
        int Cell(WorldObject o) => Math.Min(side - 1, (int)(o.Y * side)) * side + Math.Min(side - 1, (int)(o.X * side));
        Assert.All(t.Cell.Take(cells), v => Assert.Equal(-1, v));
        Assert.Equal(-1, t.Frame[0]);
        var seen = new HashSet<WorldEventKind>();
        int moved = 0, still = 0;
        for (int f = 1; f < ticks; f++)
        {
            var row = t.Cell.AsSpan(f * cells, cells).ToArray();
            var e = stream.EventAt(f);
            if (e == null)
            {
                Assert.Equal(0, t.Frame[f]);
                Assert.All(row, v => Assert.Equal(0, v));
            }
            else
            {
                long kind = (long)e.Kind + 1;
                seen.Add(e.Kind);
                Assert.Equal(kind, t.Frame[f]);
                if (e.Kind == WorldEventKind.SceneCut) Assert.All(row, v => Assert.Equal(kind, v));
                else
                {
                    var at = e.Kind == WorldEventKind.Leave ? e.Object!.Value : stream.State(f).Find(e.Object!.Value.Id)!.Value;
                    Assert.Equal(kind, row[Cell(at)]);
                    Assert.Equal(cells - 1, row.Count(v => v == 0));
                }
            }
            var now = stream.State(f);
            var centred = now.Objects.Select(Cell).ToHashSet();
            for (int c = 0; c < cells; c++)
                if (!centred.Contains(c)) Assert.Equal(-1, t.Moved[f * cells + c]);
            foreach (var o in now.Objects)
                if (now.Objects.Count(other => Cell(other) == Cell(o)) == 1 && stream.State(f - 1).Find(o.Id) is { } was && stream.State(f - 1).Scene == now.Scene)
                {
                    bool move = was.X != o.X || was.Y != o.Y;
                    Assert.Equal(move ? 1 : 0, t.Moved[f * cells + Cell(o)]);
                    if (move) moved++; else still++;
                }
        }
        Assert.Equal(Enum.GetValues<WorldEventKind>().Length, seen.Count);
        Assert.True(moved > 0 && still > 0, $"{moved} moved, {still} still");
    }

    /// <summary>
    /// A question's evidence cells (<see cref="WorldExamples.EvidenceCells"/>) hold what it asks about: the colour asked
    /// ("what colour is/was the …") and the region asked ("where is the …") are those of the object centred in them; "what
    /// is on the screen" points at one cell per object; an enter's "when" at the cell of the object in the frame it
    /// entered, not the one before.
    /// </summary>
    [Fact]
    public void EvidenceCellsHoldTheAnswer()
    {
        const int side = 3, cells = side * side;
        int checkedColour = 0, checkedWhere = 0, checkedWhen = 0;
        for (ulong seed = 1; seed <= 12; seed++)
        {
            var stream = WorldStream.Generate(seed, 24);
            var targets = CellTargets.Of(stream, 24, side);
            foreach (int ask in new[] { 5, 15, 23 })
                foreach (var q in WorldQuestions.All(stream, ask))
                {
                    int[] evidence = WorldExamples.EvidenceCells(stream, q, side);
                    // A cell where two objects are centred holds one of them in the targets: those say nothing here.
                    if (evidence.Any(cell => Shared(stream, cell))) continue;
                    switch (q.Kind)
                    {
                        case QuestionKind.Colour or QuestionKind.ColourAt:
                            Assert.Single(evidence);
                            Assert.Equal(q.Answer, WorldWords.Of((Colour)(targets.Colour[evidence[0]] - 1)));
                            checkedColour++;
                            break;
                        case QuestionKind.Where:
                            Assert.Single(evidence);
                            Assert.Equal(q.Answer, WorldWords.Of((Region)(targets.Region[evidence[0]] - 1)));
                            Assert.Equal(ask, evidence[0] / cells);
                            checkedWhere++;
                            break;
                        case QuestionKind.Objects:
                            Assert.Equal(stream.State(ask).Objects.Count, q.Subjects.Count);
                            Assert.All(evidence, cell => Assert.True(targets.Size[cell] > 0));
                            break;
                        case QuestionKind.WhenEntered:
                            Assert.Single(evidence);
                            Assert.Equal(q.EvidenceTicks.Max(), evidence[0] / cells);
                            checkedWhen++;
                            break;
                    }
                }
        }
        Assert.True(checkedColour > 20 && checkedWhere > 20 && checkedWhen > 5, $"{checkedColour} colour, {checkedWhere} where, {checkedWhen} when questions");

        static bool Shared(WorldStream stream, int cell) =>
            stream.State(cell / cells).Objects.Count(o => Math.Min(side - 1, (int)(o.Y * side)) * side + Math.Min(side - 1, (int)(o.X * side)) == cell % cells) > 1;
    }

    /// <summary>
    /// A narration's cells (<see cref="WorldExamples.NarrationCells"/>): none without an event or for a scene cut; the
    /// entering object in its first frame only, the leaving one in its last only, any other event's object in both
    /// frames — and the object the world draws there is the event's.
    /// </summary>
    [Fact]
    public void NarrationCellsHoldTheEventsObject()
    {
        const int side = 3, cells = side * side, ticks = 300;
        var stream = WorldStream.Generate(91, ticks);
        var targets = CellTargets.Of(stream, ticks, side);
        int checkedEvents = 0;
        for (int t = 0; t < ticks; t++)
        {
            int[] found = WorldExamples.NarrationCells(stream, t, side);
            var e = t == 0 ? null : stream.EventAt(t);
            if (e?.Object is not { } o) { Assert.Empty(found); continue; }
            int[] frames = e.Kind switch { WorldEventKind.Enter => [t], WorldEventKind.Leave => [t - 1], _ => [t - 1, t] };
            Assert.Equal(frames, found.Select(c => c / cells).ToArray());
            foreach (int c in found)
            {
                var at = stream.State(c / cells).Find(o.Id)!.Value;
                Assert.Equal(CellTargets.CellOf(at, side), c % cells);
                if (stream.State(c / cells).Objects.Count(x => CellTargets.CellOf(x, side) == c % cells) == 1)
                    Assert.Equal((int)at.Shape + 1, targets.Shape[c]);
            }
            checkedEvents++;
        }
        Assert.True(checkedEvents > 20, $"{checkedEvents} events");
    }

    /// <summary>
    /// Per-row evidence (<see cref="WorldExample.Evidence"/>): one entry per row of a branch that predicts an answer
    /// token, in long-stream clips too (times shifted); in "what is on the screen", the row that predicts an object's
    /// colour word points at one cell, whose object has that colour.
    /// </summary>
    [Fact]
    public void EachAnswerRowHasItsEvidence()
    {
        var tokenizer = WorldVocabulary.CreateTokenizer();
        var config = Small with { ImageSize = 48 };
        var examples = new WorldExamples(config, tokenizer, new ExampleOptions { MaxFrames = 12, QuestionsPerClip = 12, RenderSize = 48, MaxStartSeconds = 3600, MaxPositionGap = 100 });
        var colours = Enum.GetValues<Colour>().ToDictionary(WorldWords.Of);
        int listed = 0;
        for (ulong seed = 1; seed <= 30; seed++)
        {
            var example = examples.Make(seed);
            var s = example.Sequence;
            Assert.Equal(example.Questions.Count, example.Evidence.Count);
            int branch = -1, row = 0;
            for (int i = 0; i < s.Length; i++)
            {
                if (s.BranchStart[i] < 0) continue;
                if (s.BranchStart[i] == i)
                {
                    if (branch >= 0) Assert.Equal(example.Evidence[branch].Length, row);
                    branch++;
                    row = 0;
                }
                if (s.Labels[i] < 0) continue;
                int[] cells = example.Evidence[branch][row++];
                var q = example.Questions[branch];
                if (q.Kind != QuestionKind.Objects || q.Subjects.Count < 2) continue;
                if (!colours.TryGetValue(tokenizer.Decode([(int)s.Labels[i]]).Trim(), out var colour)) continue;
                Assert.Single(cells);
                // A cell two objects share holds one of them in the targets.
                if (Centred(WorldStream.Generate(seed, example.Frames), cells[0]) == 1)
                {
                    Assert.True((int)colour + 1 == example.Cells.Colour[cells[0]], $"seed {seed} q '{q.Answer}' row {row - 1} cell {cells[0]} all [{string.Join(",", example.Evidence[branch][^1])}] colour {colour} target {example.Cells.Colour[cells[0]]} ask {q.AskTick}");
                    listed++;
                }
            }
            if (branch >= 0) Assert.Equal(example.Evidence[branch].Length, row);
        }
        Assert.True(listed > 20, $"{listed} listed colours checked");

        int Centred(WorldStream stream, int cell)
        {
            const int side = 3;
            return stream.State(cell / (side * side)).Objects.Count(o => Math.Min(side - 1, (int)(o.Y * side)) * side + Math.Min(side - 1, (int)(o.X * side)) == cell % (side * side));
        }
    }

    /// <summary>
    /// Long-stream examples (<see cref="ExampleOptions.MaxStartSeconds"/>, <see cref="ExampleOptions.MaxPositionGap"/>):
    /// the same clip and questions as without, every time it shows (frame stamps, questions, answers) later by one
    /// offset per clip, positions rising with jumps only before frames, each question's branch going on from the
    /// position after its cut; some clips shifted, some not, some with jumps.
    /// </summary>
    [Fact]
    public void LongStreamExamplesShiftTimesAndPositionsOnly()
    {
        var tokenizer = WorldVocabulary.CreateTokenizer();
        var plainOptions = new ExampleOptions { MaxFrames = 12, RenderSize = 48 };
        var plain = new WorldExamples(Small, tokenizer, plainOptions);
        var longStream = new WorldExamples(Small, tokenizer, plainOptions with { MaxStartSeconds = 3000, MaxPositionGap = 5000 });
        var stamp = new System.Text.RegularExpressions.Regex(@"(\d\d):(\d\d)");
        int Seconds(System.Text.RegularExpressions.Match m) => int.Parse(m.Groups[1].Value) * 60 + int.Parse(m.Groups[2].Value);
        int shifted = 0, jumped = 0;
        for (ulong seed = 1; seed <= 40; seed++)
        {
            var a = plain.Make(seed);
            var b = longStream.Make(seed);
            Assert.Equal(a.Pixels, b.Pixels);
            Assert.Equal(a.Questions.Select(q => (q.Kind, q.Question, q.Answer, q.AskTick)), b.Questions.Select(q => (q.Kind, q.Question, q.Answer, q.AskTick)));
            var s = b.Sequence;
            int stream = s.BranchStart.TakeWhile(x => x < 0).Count();
            string Text(TrainingSequence q, int from, int to) => tokenizer.Decode(Enumerable.Range(from, to - from).Where(i => q.FrameOf[i] < 0).Select(i => (int)q.Tokens[i]));
            var before = stamp.Matches(Text(a.Sequence, 0, a.Sequence.BranchStart.TakeWhile(x => x < 0).Count())).Select(Seconds).ToArray();
            var after = stamp.Matches(Text(s, 0, stream)).Select(Seconds).ToArray();
            Assert.Equal(Enumerable.Range(0, b.Frames), before);
            Assert.Equal(b.Frames, after.Length);
            int offset = after[0];
            Assert.Equal(before.Select(t => t + offset), after);
            if (offset > 0) shifted++;
            // Questions and answers: the same words, every stamp later by the clip's offset.
            for (int i = 0, k = 0; i < s.Length; i++)
            {
                if (s.BranchStart[i] != i) continue;
                int end = i;
                while (end < s.Length && s.BranchStart[end] == i) end++;
                string branch = Text(s, i, end);
                Assert.Contains(stamp.Replace(b.Questions[k].Question, m => WorldWords.Time(Seconds(m) + offset)), branch);
                Assert.Contains(stamp.Replace(b.Questions[k].Answer, m => WorldWords.Time(Seconds(m) + offset)), branch);
                Assert.Equal(s.Positions[s.VisibleUntil[i] - 1] + 1, s.Positions[i]);
                k++;
            }
            // Positions rise by one within a frame's text, rows and narration; they jump only where a frame's stamp starts.
            bool jumps = false;
            for (int i = 1; i < stream; i++)
            {
                float step = s.Positions[i] - s.Positions[i - 1];
                Assert.True(step >= 1, $"seed {seed} row {i}: position {s.Positions[i]} after {s.Positions[i - 1]}");
                if (step > 1)
                {
                    jumps = true;
                    Assert.StartsWith("\nFrame from", tokenizer.Decode(Enumerable.Range(i, 3).Select(r => (int)s.Tokens[r])));
                }
            }
            if (jumps) jumped++;
        }
        Assert.InRange(shifted, 8, 32);
        Assert.InRange(jumped, 8, 32);
    }
}
