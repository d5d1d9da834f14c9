namespace VidKV.Models;

/// <summary>
/// One batch for <see cref="DecoderModel.Decode"/>, like llama.cpp's <c>llama_batch</c>: each row is a token id or an
/// embedding vector (<see cref="EmbeddingLength"/> floats: image and video tokens from a projector), a position of
/// <see cref="PositionComponents"/> components (1 for plain RoPE; t, h, w (and e) for M-RoPE's sections), the index of
/// the sequence it belongs to, an optional frame id (kept in the KV store beside the row for the video
/// policies; <see cref="VidKV.Cache.FrameIds"/>: a frame's visual row, a frame's own text, −1 for none) and whether it needs logits. Rows without logits skip the output head, so ingesting a frame
/// computes none. A row's place in its sequence (what causal attention orders by) is the sequence's length before the
/// batch plus its rank among that sequence's rows; its position only rotates its query and key, so M-RoPE's repeated
/// temporal positions need nothing else. Rows of one sequence form one run of consecutive rows. Rows added without a
/// position get their place in the sequence in every component (text tokens). Reused across steps: <see cref="Clear"/>
/// keeps the buffers.
/// </summary>
public sealed class DecoderBatch
{
    /// <summary>Most position components a row can have (M-RoPE's t, h, w, e).</summary>
    public const int MaxPositionComponents = 4;

    int[] tokens = new int[16], sequences = new int[16], frames = new int[16], embeddingOf = new int[16];
    int[] positions = new int[16 * MaxPositionComponents];
    bool[] logits = new bool[16], positioned = new bool[16];
    float[] embeddings = [];
    int embeddingRows;

    /// <param name="embeddingLength">floats per embedding row (the model's n_embd)</param>
    /// <param name="positionComponents">components per position: 1, or the model's M-RoPE component count</param>
    public DecoderBatch(int embeddingLength, int positionComponents = 1)
    {
        if (positionComponents is < 1 or > MaxPositionComponents)
            throw new ArgumentOutOfRangeException(nameof(positionComponents), $"a position has 1 to {MaxPositionComponents} components, not {positionComponents}");
        EmbeddingLength = embeddingLength;
        PositionComponents = positionComponents;
    }

    /// <summary>Floats per embedding row (the model's embedding length).</summary>
    public int EmbeddingLength { get; }
    /// <summary>Components of every row's position: 1, or the model's M-RoPE component count.</summary>
    public int PositionComponents { get; }
    /// <summary>Rows in the batch.</summary>
    public int Count { get; private set; }
    /// <summary>Rows whose logits <see cref="DecoderModel.Decode"/> writes (in row order).</summary>
    public int LogitRows { get; private set; }

    /// <summary>Removes every row, keeping the buffers for the next step.</summary>
    public void Clear()
    {
        Count = LogitRows = embeddingRows = 0;
    }

    /// <summary>Adds a token row. With an empty <paramref name="position"/> the row's place in its sequence is its position.</summary>
    public void AddToken(int token, int sequence = 0, bool logits = false, ReadOnlySpan<int> position = default, int frame = -1)
    {
        int row = AddRow(sequence, logits, position, frame);
        tokens[row] = token;
        embeddingOf[row] = -1;
    }

    /// <summary>Adds the tokens as rows of one sequence; only the last needs logits when <paramref name="lastLogits"/>.</summary>
    public void AddTokens(ReadOnlySpan<int> ids, int sequence = 0, bool lastLogits = true, bool allLogits = false)
    {
        for (int i = 0; i < ids.Length; i++) AddToken(ids[i], sequence, allLogits || lastLogits && i == ids.Length - 1);
    }

    /// <summary>Adds an embedding row (<see cref="EmbeddingLength"/> floats, copied).</summary>
    public void AddEmbedding(ReadOnlySpan<float> embedding, int sequence = 0, bool logits = false, ReadOnlySpan<int> position = default, int frame = -1)
    {
        if (embedding.Length != EmbeddingLength)
            throw new ArgumentException($"an embedding row has {EmbeddingLength} floats (the model's embedding length), not {embedding.Length}", nameof(embedding));
        int row = AddRow(sequence, logits, position, frame);
        tokens[row] = -1;
        if (embeddings.Length < (embeddingRows + 1) * EmbeddingLength) Array.Resize(ref embeddings, Math.Max(EmbeddingLength * 16, 2 * embeddings.Length));
        embedding.CopyTo(embeddings.AsSpan(embeddingRows * EmbeddingLength));
        embeddingOf[row] = embeddingRows++;
    }

    int AddRow(int sequence, bool needsLogits, ReadOnlySpan<int> position, int frame)
    {
        if (sequence < 0) throw new ArgumentOutOfRangeException(nameof(sequence), $"sequence index {sequence} is negative");
        if (!position.IsEmpty && position.Length != PositionComponents)
            throw new ArgumentException($"this batch's positions have {PositionComponents} components, not {position.Length}", nameof(position));
        if (Count == tokens.Length)
        {
            int capacity = 2 * tokens.Length;
            Array.Resize(ref tokens, capacity);
            Array.Resize(ref sequences, capacity);
            Array.Resize(ref frames, capacity);
            Array.Resize(ref embeddingOf, capacity);
            Array.Resize(ref logits, capacity);
            Array.Resize(ref positioned, capacity);
            Array.Resize(ref positions, capacity * MaxPositionComponents);
        }
        int row = Count++;
        sequences[row] = sequence;
        frames[row] = frame;
        logits[row] = needsLogits;
        positioned[row] = !position.IsEmpty;
        if (!position.IsEmpty) position.CopyTo(positions.AsSpan(row * MaxPositionComponents));
        if (needsLogits) LogitRows++;
        return row;
    }

    /// <summary>The row's token id, or −1 for an embedding row.</summary>
    public int Token(int row) => tokens[row];
    /// <summary>The row's embedding (empty for a token row).</summary>
    public ReadOnlySpan<float> Embedding(int row) => embeddingOf[row] < 0 ? default : embeddings.AsSpan(embeddingOf[row] * EmbeddingLength, EmbeddingLength);
    /// <summary>Index of the sequence (its KV cache in <see cref="DecoderModel.Decode"/>'s list) the row belongs to.</summary>
    public int Sequence(int row) => sequences[row];
    /// <summary>The row's frame id (<see cref="VidKV.Cache.FrameIds"/>: a frame's visual row, a frame's text, −1 for none).</summary>
    public int Frame(int row) => frames[row];
    /// <summary>Whether the row's logits are computed.</summary>
    public bool NeedsLogits(int row) => logits[row];
    /// <summary>Whether the row was given a position (otherwise its place in the sequence is used).</summary>
    public bool HasPosition(int row) => positioned[row];
    /// <summary>The row's given position (<see cref="PositionComponents"/> components).</summary>
    public ReadOnlySpan<int> Position(int row) => positions.AsSpan(row * MaxPositionComponents, PositionComponents);
    /// <summary>The rows' frame ids, [Count].</summary>
    internal ReadOnlySpan<int> Frames => frames.AsSpan(0, Count);
}
