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
            var again = examples.Make(seed);
            Assert.Equal(s.Tokens, again.Sequence.Tokens);
            Assert.Equal(example.Pixels, again.Pixels);
        }
    }
}
