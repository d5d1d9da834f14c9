using VidKV.Cache;
using VidKV.Models;

namespace VidKV.Engine;

/// <summary>
/// A run of rows a session's append (or an answer's prompt) adds: text tokens, or embedding rows from the projector —
/// consecutive positions, or one M-RoPE grid. A grid's rows sit at (t, h, w) = (b + <see cref="Temporal"/>,
/// b + i / columns, b + i mod columns) from its base b, as llama.cpp's mtmd places an image (and Hugging Face's
/// <c>get_rope_index</c> a video's temporal patches); where the base comes from is <see cref="SequencePositions"/>'s
/// business. Embedding rows carry their video frame id (−1 for none) into the batch, and so into the KV store.
/// </summary>
internal sealed class RowRun
{
    RowRun(int[]? tokens, float[]? rows, int width)
    {
        Tokens = tokens;
        Rows = rows;
        Width = width;
    }

    /// <summary>Text tokens (position p, then p + 1, …), tagged <paramref name="frame"/> (<see cref="FrameIds"/>: a frame's own text, or none).</summary>
    public static RowRun Text(int[] tokens, int frame = FrameIds.None) => new(tokens, null, 0) { Frame = frame };

    /// <summary>Embedding rows at consecutive positions, each tagged with <paramref name="frame"/>.</summary>
    public static RowRun Embeddings(float[] rows, int width, int frame = -1) => new(null, rows, width) { Frame = frame };

    /// <summary>
    /// Embedding rows that form an M-RoPE grid of <paramref name="columns"/> per row; with <paramref name="fromVideoStart"/>
    /// the base is the open video's first position (<paramref name="opensVideo"/> makes the base that position) and
    /// <paramref name="temporal"/> the grid's t offset from it (Qwen-VL's temporal patch index or time).
    /// </summary>
    public static RowRun Grid(float[] rows, int width, int columns, int frame = -1, int temporal = 0, bool fromVideoStart = false, bool opensVideo = false) =>
        new(null, rows, width) { Columns = columns, Frame = frame, Temporal = temporal, FromVideoStart = fromVideoStart, OpensVideo = opensVideo };

    public int[]? Tokens { get; }
    public float[]? Rows { get; }
    /// <summary>Floats per embedding row.</summary>
    public int Width { get; }
    /// <summary>Grid columns (M-RoPE); 0 for rows at consecutive positions.</summary>
    public int Columns { get; private init; }
    /// <summary>The grid's t offset from its base.</summary>
    public int Temporal { get; private init; }
    /// <summary>Whether the grid's base is the open video's first position rather than the sequence's next one.</summary>
    public bool FromVideoStart { get; private init; }
    /// <summary>Whether the grid opens a video: the sequence's next position becomes the video's first.</summary>
    public bool OpensVideo { get; private init; }
    /// <summary>Frame id of the rows (<see cref="FrameIds"/>); −1 for none.</summary>
    public int Frame { get; private init; } = -1;
    /// <summary>Position of the run's first row (grids: the base), fixed when its first row goes into a batch.</summary>
    public int Base { get; set; }
    /// <summary>Whether <see cref="Base"/> is fixed (the run's first row went into a batch).</summary>
    public bool Begun { get; set; }

    public int Count => Tokens?.Length ?? Rows!.Length / Width;
    public int GridRows => Columns > 0 ? Count / Columns : 0;
}

/// <summary>One row a session sent to the model, as tests and tools see it: a token or an embedding, its position, its frame.</summary>
internal sealed record SessionRow(int Token, float[]? Embedding, int[] Position, int Frame);

/// <summary>
/// A sequence's next position, kept apart from its row count: the one place that decides where a row goes. Text and
/// plain embedding rows advance it by one each; an M-RoPE grid takes its base and moves it to
/// max(next, base + max(t + 1, rows, columns)) — for an image (t = 0) base + max(rows, columns) as llama.cpp's mtmd
/// (<c>n_pos</c>), for a video's temporal patches the maximum over the video's positions plus one as Hugging Face's
/// Qwen2-VL <c>get_rope_index</c> continues after a video. Without M-RoPE the position is the row's place in the
/// sequence and rows go in without one. A question's fork copies it (<see cref="Clone"/>) and goes on from there.
/// </summary>
internal sealed class SequencePositions(int components)
{
    int videoStart;

    /// <summary>The position the next text row takes.</summary>
    public int Next { get; private set; }
    /// <summary>Position components of the model (1, or M-RoPE's 4).</summary>
    public int Components => components;

    public SequencePositions Clone() => new(components) { Next = Next, videoStart = videoStart };

    /// <summary>Fixes <paramref name="run"/>'s base (before its first row) and moves the next position past it.</summary>
    public void Begin(RowRun run)
    {
        if (run.Columns == 0 || components == 1)
        {
            run.Base = Next;
            Next += run.Count;
            return;
        }
        if (run.OpensVideo) videoStart = Next;
        run.Base = run.FromVideoStart ? videoStart : Next;
        Next = Math.Max(Next, run.Base + Math.Max(run.Temporal + 1, Math.Max(run.GridRows, run.Columns)));
    }

    /// <summary>The position of row <paramref name="index"/> of <paramref name="run"/> (after <see cref="Begin"/>): t, h, w, e (or the one component).</summary>
    public void Position(RowRun run, int index, Span<int> at)
    {
        if (components == 1)
        {
            at[0] = run.Base + index;
            return;
        }
        at[..components].Clear();
        if (run.Columns == 0 || components < 3)
        {
            // A text row (and a plain embedding row): p in t, h and w, 0 in e (llama.cpp's llm_graph_input_pos).
            for (int c = 0; c < Math.Min(3, components); c++) at[c] = run.Base + index;
            return;
        }
        at[0] = run.Base + run.Temporal;
        at[1] = run.Base + index / run.Columns;
        at[2] = run.Base + index % run.Columns;
    }

    /// <summary>
    /// Adds row <paramref name="index"/> of <paramref name="run"/> to the batch as sequence <paramref name="sequence"/>;
    /// without M-RoPE the row goes in without a position (its place in the sequence is its position).
    /// </summary>
    public void Add(DecoderBatch batch, RowRun run, int index, int sequence, bool logits, List<SessionRow>? record = null)
    {
        Span<int> at = stackalloc int[DecoderBatch.MaxPositionComponents];
        Position(run, index, at);
        var position = components == 1 ? default : at[..components];
        if (run.Tokens != null) batch.AddToken(run.Tokens[index], sequence, logits, position, run.Frame);
        else batch.AddEmbedding(run.Rows.AsSpan(index * run.Width, run.Width), sequence, logits, position, run.Frame);
        record?.Add(new SessionRow(run.Tokens?[index] ?? -1, run.Tokens != null ? null : run.Rows.AsSpan(index * run.Width, run.Width).ToArray(),
            at[..components].ToArray(), run.Frame));
    }
}

/// <summary>
/// Rows going into one sequence run by run, a chunk per step: where the next row is, and positions fixed as each run
/// starts. An append of the session and an answer's prompt each walk their runs with one. Adding rows is repeatable
/// until <see cref="Advance"/> (the engine re-adds a step's rows when it splits a batch that did not fit).
/// </summary>
internal sealed class RowCursor(List<RowRun> runs)
{
    int run, row;

    public int Total { get; } = runs.Sum(r => r.Count);
    public int Done { get; private set; }
    public bool Finished => Done == Total;

    /// <summary>Adds up to <paramref name="most"/> rows from the first not yet run; the last row of all asks for logits when <paramref name="lastLogits"/>.</summary>
    public int AddRows(DecoderBatch batch, SequencePositions positions, int sequence, int most, bool lastLogits, List<SessionRow>? record)
    {
        int added = 0, r = run, k = row;
        while (added < most && Done + added < Total)
        {
            var current = runs[r];
            if (!current.Begun)
            {
                positions.Begin(current);
                current.Begun = true;
            }
            int n = Math.Min(most - added, current.Count - k);
            for (int i = 0; i < n; i++)
                positions.Add(batch, current, k + i, sequence, lastLogits && Done + added + i == Total - 1, record);
            added += n;
            k += n;
            if (k == current.Count)
            {
                r++;
                k = 0;
            }
        }
        return added;
    }

    /// <summary>The step ran <paramref name="rows"/> rows from the first not yet run.</summary>
    public void Advance(int rows)
    {
        Done += rows;
        row += rows;
        while (run < runs.Count && row >= runs[run].Count)
        {
            row -= runs[run].Count;
            run++;
        }
    }
}
