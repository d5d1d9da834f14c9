using VidKV.Text;

namespace VidKV.Train;

/// <summary>
/// One training example laid out as VidKV's session lays out a watched stream for an idefics3 (SmolVLM2) model, so that
/// what the model learns is what it sees at run time:
/// <list type="bullet">
/// <item>each frame: <c>"\nFrame from mm:ss:&lt;fake_token_around_image&gt;&lt;global-img&gt;"</c>, the frame's projector
/// rows, <c>"&lt;fake_token_around_image&gt;"</c> (VideoLayout's native idefics3 format); the last of these rows learns the
/// proactive decision — the silence token when nothing happened, the narration's first token when something did
/// (VideoLLM-online's streaming objective: Chen et al., 2024, "VideoLLM-online: Online Video Large Language Model for
/// Streaming Video");</item>
/// <item>with <see cref="SequenceBuilder.Frame"/>'s narration kept in the stream (proactive mode appends what was said):
/// its tokens and the end-of-utterance token, each learning the next;</item>
/// <item>a question asked after some frames: on a fork at run time, so here a branch that sees the stream up to its cut
/// and nothing after (a mask) at positions going on from the cut: the segment's closing <c>"\n\n"</c>, then
/// <c>"\n{question}\n"</c> (what <c>vidkv watch</c> asks), then the answer and the end-of-utterance token, each learning
/// the next.</item>
/// </list>
/// Rows are token ids, or frame rows (<see cref="FrameOf"/>, <see cref="FrameRow"/>) the model fills with its projector's
/// output; <see cref="Labels"/> holds each row's target next token (−100: none).
/// </summary>
public sealed class TrainingSequence
{
    internal TrainingSequence(long[] tokens, int[] frameOf, int[] frameRow, long[] labels, float[] positions, int[] visibleUntil, int[] branchStart, bool[] decision)
    {
        Decision = decision;
        Tokens = tokens;
        FrameOf = frameOf;
        FrameRow = frameRow;
        Labels = labels;
        Positions = positions;
        VisibleUntil = visibleUntil;
        BranchStart = branchStart;
    }

    /// <summary>Rows in the sequence.</summary>
    public int Length => Tokens.Length;
    /// <summary>Each row's token id (0 for a frame row).</summary>
    public long[] Tokens { get; }
    /// <summary>Each row's frame (index into the example's frames), −1 for a token row.</summary>
    public int[] FrameOf { get; }
    /// <summary>A frame row's row within its frame's projector output.</summary>
    public int[] FrameRow { get; }
    /// <summary>Each row's target (the token that should come next), −100 for none.</summary>
    public long[] Labels { get; }
    /// <summary>Each row's RoPE position.</summary>
    public float[] Positions { get; }
    /// <summary>Stream rows a row may attend to: [0, VisibleUntil) of the stream, besides its own branch.</summary>
    public int[] VisibleUntil { get; }
    /// <summary>First row of the row's question branch (attended causally from there), or −1 for a stream row.</summary>
    public int[] BranchStart { get; }

    /// <summary>Whether the row is a frame's closing row, whose target is the proactive decision (silence or the narration's first token).</summary>
    public bool[] Decision { get; }
    /// <summary>Per frame, the rows of its time stamp's mm:ss in <c>"\nFrame from mm:ss:"</c>.</summary>
    public IReadOnlyList<int[]> Stamps { get; init; } = [];
    /// <summary>Rows with a target.</summary>
    public int LabelCount => Labels.Count(l => l >= 0);
}

/// <summary>Builds a <see cref="TrainingSequence"/> item by item: frames (with or without narration), then questions cut in at any point.</summary>
public sealed class SequenceBuilder
{
    /// <summary>The silence token (VidKV's ProactiveOptions default, VideoLLM-online's).</summary>
    public const string Silence = ",";
    const long Ignore = -100;

    readonly Tokenizer tokenizer;
    readonly int rowsPerFrame;
    readonly long silence, endOfUtterance, fake;
    readonly long[] close;
    readonly List<long> tokens = [], labels = [];
    readonly List<float> positions = [];
    int next; // the next stream row's position
    readonly List<int> frameOf = [], frameRow = [];
    readonly List<bool> decision = [];
    readonly List<(int Cut, long[] Tokens, long[] Labels, int Position)> branches = [];
    readonly List<int[]> stamps = [];
    int frames;

    /// <param name="tokenizer">the model's tokenizer (its vocabulary has SmolVLM's special tokens)</param>
    /// <param name="rowsPerFrame">projector rows per frame</param>
    public SequenceBuilder(Tokenizer tokenizer, int rowsPerFrame)
    {
        this.tokenizer = tokenizer;
        this.rowsPerFrame = rowsPerFrame;
        silence = Single(Silence);
        endOfUtterance = Single("<end_of_utterance>");
        fake = Single("<fake_token_around_image>");
        close = Encode("\n\n");
    }

    long Single(string text) => Encode(text) is [long id] ? id : throw new ArgumentException($"'{text}' is not one token in this vocabulary");
    long[] Encode(string text) => [.. tokenizer.Encode(text, addSpecial: false, parseSpecial: true).Select(t => (long)t)];

    /// <summary>The silence token's id.</summary>
    public long SilenceToken => silence;
    /// <summary>Frames added so far (the next frame's index).</summary>
    public int FrameCount => frames;
    /// <summary>Stream rows so far (where a question asked now would cut).</summary>
    public int StreamLength => tokens.Count;

    /// <summary>
    /// Adds a frame at <paramref name="seconds"/> of stream time; its closing row learns silence, or
    /// <paramref name="narration"/>'s first token. With <paramref name="narrationInStream"/> the narration follows
    /// in the stream (proactive mode), its tokens learning the next and the end-of-utterance token. The frame's rows
    /// start <paramref name="gap"/> positions after the last row, as if that many rows between had been evicted.
    /// </summary>
    public void Frame(int seconds, string? narration, bool narrationInStream, int gap = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(gap);
        next += gap;
        string time = VidKV.World.WorldWords.Time(seconds);
        long[] prefix = Encode($"\nFrame from {time}:<fake_token_around_image><global-img>");
        stamps.Add(StampRows(prefix, Encode(time), tokens.Count));
        foreach (long t in prefix) Add(t, Ignore);
        for (int r = 0; r < rowsPerFrame; r++)
        {
            tokens.Add(0);
            labels.Add(Ignore);
            positions.Add(next++);
            frameOf.Add(frames);
            frameRow.Add(r);
            decision.Add(false);
        }
        frames++;
        if (narration == null)
        {
            Add(fake, silence, decides: true);
            return;
        }
        long[] said = Encode(narration);
        Add(fake, said[0], decides: true);
        if (!narrationInStream) return;
        for (int i = 0; i < said.Length; i++) Add(said[i], i + 1 < said.Length ? said[i + 1] : endOfUtterance);
        Add(endOfUtterance, Ignore);
    }

    /// <summary>The rows (from <paramref name="start"/>) where <paramref name="stamp"/>'s tokens stand in <paramref name="prefix"/>, after its first token ("Frame").</summary>
    static int[] StampRows(long[] prefix, long[] stamp, int start)
    {
        for (int i = 1; i + stamp.Length <= prefix.Length; i++)
            if (prefix.AsSpan(i, stamp.Length).SequenceEqual(stamp)) return [.. Enumerable.Range(start + i, stamp.Length)];
        throw new InvalidOperationException("the time stamp is not tokenized alike on its own and in the frame's prefix");
    }

    /// <summary>Adds a question asked now (after the frames so far) and its answer, on a branch of its own.</summary>
    public void Question(string question, string answer)
    {
        var t = new List<long>(close);
        t.AddRange(Encode($"\n{question}\n"));
        var l = Enumerable.Repeat(Ignore, t.Count).ToList();
        long[] said = [.. Encode(answer), endOfUtterance];
        l[^1] = said[0];
        for (int i = 0; i < said.Length; i++)
        {
            t.Add(said[i]);
            l.Add(i + 1 < said.Length ? said[i + 1] : Ignore);
        }
        branches.Add((tokens.Count, [.. t], [.. l], next));
    }

    void Add(long token, long label, bool decides = false)
    {
        decision.Add(decides);
        tokens.Add(token);
        labels.Add(label);
        positions.Add(next++);
        frameOf.Add(-1);
        frameRow.Add(0);
    }

    /// <summary>The sequence: the stream rows, then each question's branch.</summary>
    public TrainingSequence Build()
    {
        int stream = tokens.Count, total = stream + branches.Sum(b => b.Tokens.Length);
        var allTokens = new long[total];
        var allLabels = new long[total];
        var allFrames = new int[total];
        var allRows = new int[total];
        var allPositions = new float[total];
        var visible = new int[total];
        var branchStart = new int[total];
        var decides = new bool[total];
        for (int i = 0; i < stream; i++)
        {
            allTokens[i] = tokens[i];
            allLabels[i] = labels[i];
            allFrames[i] = frameOf[i];
            allRows[i] = frameRow[i];
            allPositions[i] = positions[i];
            visible[i] = i + 1;
            branchStart[i] = -1;
            decides[i] = decision[i];
        }
        int at = stream;
        foreach (var (cut, t, l, position) in branches)
        {
            for (int k = 0; k < t.Length; k++, at++)
            {
                allTokens[at] = t[k];
                allLabels[at] = l[k];
                allFrames[at] = -1;
                allPositions[at] = position + k;
                visible[at] = cut;
                branchStart[at] = at - k;
            }
        }
        return new TrainingSequence(allTokens, allFrames, allRows, allLabels, allPositions, visible, branchStart, decides) { Stamps = [.. stamps] };
    }
}
