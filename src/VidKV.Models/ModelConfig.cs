using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>Hyper-parameters of a decoder-only transformer, whatever file they came from.</summary>
public sealed record ModelConfig
{
    public required string Architecture { get; init; }
    public required int LayerCount { get; init; }
    public required int EmbeddingLength { get; init; }
    public required int FeedForwardLength { get; init; }
    public required int HeadCount { get; init; }
    public required int KvHeadCount { get; init; }
    public required int HeadDim { get; init; }
    public required int RopeDims { get; init; }
    public required float RopeFreqBase { get; init; }
    public required RopeMode RopeMode { get; init; }
    /// <summary>M-RoPE's pairs per position component (t, h, w[, e]); null for one-component RoPE.</summary>
    public int[]? RopeSections { get; init; }
    public required float RmsNormEps { get; init; }
    public required int ContextLength { get; init; }
    public required int VocabSize { get; init; }

    /// <summary>Query heads sharing one KV head (grouped-query attention).</summary>
    public int GroupSize => HeadCount / KvHeadCount;
}
