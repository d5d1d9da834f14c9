namespace VidKV.Models;

/// <summary>
/// The activation buffers of one forward pass, [tokens, width] f32 each, grown to the largest batch seen and reused
/// (a forward pass allocates nothing once they are large enough). One per caller of a model: the engine loop has one.
/// </summary>
public sealed class Activations
{
    float[] x = [], h = [], q = [], k = [], v = [], attention = [], gate = [], up = [], cos = [], sin = [];
    int[] places = [];

    /// <summary>The residual stream [tokens, embedding].</summary>
    public Span<float> X(int length) => Grow(ref x, length);
    /// <summary>A block's input or output beside the residual stream [tokens, embedding].</summary>
    public Span<float> H(int length) => Grow(ref h, length);
    public Span<float> Q(int length) => Grow(ref q, length);
    public Span<float> K(int length) => Grow(ref k, length);
    public Span<float> V(int length) => Grow(ref v, length);
    public Span<float> Attention(int length) => Grow(ref attention, length);
    public Span<float> Gate(int length) => Grow(ref gate, length);
    public Span<float> Up(int length) => Grow(ref up, length);
    public Span<float> RopeCos(int length) => Grow(ref cos, length);
    public Span<float> RopeSin(int length) => Grow(ref sin, length);

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
