namespace VidKV.Models;

/// <summary>
/// The activation buffers of one forward pass, [tokens, width] f32 each, grown to the largest batch seen and reused
/// (a forward pass allocates nothing once they are large enough). One per caller of a model: the engine loop has one.
/// </summary>
public sealed class Activations
{
    float[] frame = [], x = [], h = [], q = [], k = [], v = [], attention = [], gate = [], up = [], cos = [], sin = [];
    int[] places = [];

    /// <summary>The residual stream [tokens, embedding].</summary>
    public Span<float> X(int length) => Grow(ref x, length);
    /// <summary>A block's input or output beside the residual stream [tokens, embedding].</summary>
    public Span<float> H(int length) => Grow(ref h, length);
    /// <summary>Queries [tokens, heads, headDim].</summary>
    public Span<float> Q(int length) => Grow(ref q, length);
    /// <summary>Keys [tokens, kvHeads, headDim].</summary>
    public Span<float> K(int length) => Grow(ref k, length);
    /// <summary>Values [tokens, kvHeads, headDim].</summary>
    public Span<float> V(int length) => Grow(ref v, length);
    /// <summary>Attention output before the output projection [tokens, heads, headDim].</summary>
    public Span<float> Attention(int length) => Grow(ref attention, length);
    /// <summary>Feed-forward gate projection [tokens, feedForward].</summary>
    public Span<float> Gate(int length) => Grow(ref gate, length);
    /// <summary>Feed-forward up projection [tokens, feedForward].</summary>
    public Span<float> Up(int length) => Grow(ref up, length);
    /// <summary>Cosines of each token's RoPE angles [tokens, ropeDims / 2], shared by every head.</summary>
    public Span<float> RopeCos(int length) => Grow(ref cos, length);
    /// <summary>Sines of each token's RoPE angles [tokens, ropeDims / 2], shared by every head.</summary>
    public Span<float> RopeSin(int length) => Grow(ref sin, length);

    /// <summary>A vision encoder's rows of one frame before pooling [tokens, output width].</summary>
    public Span<float> Frame(int length) => Grow(ref frame, length);

    /// <summary>The batch's runs of rows per sequence (kept here, not in the model, so callers with their own buffers can decode at once).</summary>
    internal List<AttentionRun> Runs { get; } = [];

    /// <summary>Each row's place in its sequence [tokens].</summary>
    internal Span<int> Places(int length)
    {
        if (places.Length < length) places = new int[length];
        return places.AsSpan(0, length);
    }

    static Span<float> Grow(ref float[] buffer, int length)
    {
        if (buffer.Length < length) buffer = new float[length];
        return buffer.AsSpan(0, length);
    }
}
