using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>Hyper-parameters of a decoder-only transformer, whatever file they came from.</summary>
public sealed record ModelConfig
{
    /// <summary>GGUF <c>general.architecture</c> or Hugging Face <c>model_type</c> (<c>llama</c>, <c>qwen2</c>, ...).</summary>
    public required string Architecture { get; init; }
    /// <summary>Decoder layers (blocks).</summary>
    public required int LayerCount { get; init; }
    /// <summary>Width of the residual stream (n_embd).</summary>
    public required int EmbeddingLength { get; init; }
    /// <summary>Width of the feed-forward hidden layer (n_ff).</summary>
    public required int FeedForwardLength { get; init; }
    /// <summary>Query heads per layer.</summary>
    public required int HeadCount { get; init; }
    /// <summary>Key/value heads per layer; fewer than <see cref="HeadCount"/> under grouped-query attention.</summary>
    public required int KvHeadCount { get; init; }
    /// <summary>Elements per head of queries, keys and values.</summary>
    public required int HeadDim { get; init; }
    /// <summary>Leading elements of each head that RoPE rotates (usually <see cref="HeadDim"/>).</summary>
    public required int RopeDims { get; init; }
    /// <summary>RoPE frequency base (theta): pair i turns by position · base^(−2i/ropeDims).</summary>
    public required float RopeFreqBase { get; init; }
    /// <summary>How RoPE pairs a head's elements.</summary>
    public required RopeMode RopeMode { get; init; }
    /// <summary>M-RoPE's pairs per position component (t, h, w[, e]); null for one-component RoPE.</summary>
    public int[]? RopeSections { get; init; }
    /// <summary>Epsilon added to the mean square in RMSNorm.</summary>
    public required float RmsNormEps { get; init; }
    /// <summary>Positions the model was trained for (2048 when the file does not say).</summary>
    public required int ContextLength { get; init; }
    /// <summary>Rows of the token embedding (at least the vocabulary's token count).</summary>
    public required int VocabSize { get; init; }

    /// <summary>Query heads sharing one KV head (grouped-query attention).</summary>
    public int GroupSize => HeadCount / KvHeadCount;
}
