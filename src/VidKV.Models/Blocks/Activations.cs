using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// The activation buffers of one forward pass, [tokens, width] f32 each, grown to the largest batch seen and reused
/// (a forward pass allocates nothing once they are large enough). One per caller of a model: the engine loop has one.
/// Each starts on a cache line (<see cref="AlignedBuffer{T}"/>), so rows of a width that is a multiple of 16 do too and
/// no vector load of a row straddles two lines.
/// </summary>
public sealed class Activations
{
    readonly AlignedBuffer<float> frame = new(), x = new(), h = new(), q = new(), k = new(), v = new(), attention = new(), gate = new(), up = new(), cos = new(), sin = new();
    int[] places = [];

    /// <summary>The residual stream [tokens, embedding].</summary>
    public Span<float> X(int length) => Grow(x, length);
    /// <summary>A block's input or output beside the residual stream [tokens, embedding].</summary>
    public Span<float> H(int length) => Grow(h, length);
    /// <summary>Queries [tokens, heads, headDim].</summary>
    public Span<float> Q(int length) => Grow(q, length);
    /// <summary>Keys [tokens, kvHeads, headDim].</summary>
    public Span<float> K(int length) => Grow(k, length);
    /// <summary>Values [tokens, kvHeads, headDim].</summary>
    public Span<float> V(int length) => Grow(v, length);
    /// <summary>Attention output before the output projection [tokens, heads, headDim].</summary>
    public Span<float> Attention(int length) => Grow(attention, length);
    /// <summary>Feed-forward gate projection [tokens, feedForward].</summary>
    public Span<float> Gate(int length) => Grow(gate, length);
    /// <summary>Feed-forward up projection [tokens, feedForward].</summary>
    public Span<float> Up(int length) => Grow(up, length);
    /// <summary>Cosines of each token's RoPE angles [tokens, ropeDims / 2], shared by every head.</summary>
    public Span<float> RopeCos(int length) => Grow(cos, length);
    /// <summary>Sines of each token's RoPE angles [tokens, ropeDims / 2], shared by every head.</summary>
    public Span<float> RopeSin(int length) => Grow(sin, length);

    /// <summary>A vision encoder's rows of one frame before pooling [tokens, output width].</summary>
    public Span<float> Frame(int length) => Grow(frame, length);

    /// <summary>The batch's runs of rows per sequence (kept here, not in the model, so callers with their own buffers can decode at once).</summary>
    internal List<AttentionRun> Runs { get; } = [];

    /// <summary>Each row's place in its sequence [tokens].</summary>
    internal Span<int> Places(int length)
    {
        if (places.Length < length) places = new int[length];
        return places.AsSpan(0, length);
    }

    static Span<float> Grow(AlignedBuffer<float> buffer, int length) => buffer.Span(length);
}
