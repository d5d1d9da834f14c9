using VidKV.Tensors;

namespace VidKV.Models;

/// <summary>
/// Rotary position embedding of one model: the pairing (<see cref="RopeMode"/>), how many dimensions of a head turn,
/// the frequency base, and for M-RoPE the sections (pairs per position component t, h, w, e). <see cref="Angles"/>
/// computes each row's cos and sin once per forward pass; the attention blocks rotate their heads with them.
/// </summary>
internal sealed class Rope(RopeMode mode, int dimensions, float freqBase, int[]? sections = null)
{
    public RopeMode Mode { get; } = sections == null ? mode : RopeMode.NeoX;
    public int Dimensions { get; } = dimensions;
    public float FreqBase { get; } = freqBase;
    /// <summary>M-RoPE's pairs per position component; null for one-component RoPE.</summary>
    public int[]? Sections { get; } = sections;
    /// <summary>Position components a row needs: 1, or the number of M-RoPE sections.</summary>
    public int Components => Sections?.Length ?? 1;
    /// <summary>Angles per row: Dimensions / 2.</summary>
    public int Pairs => Dimensions / 2;

    /// <summary>
    /// cos and sin, [rows, Pairs], of each row of <paramref name="batch"/>: its given position, or its place in its
    /// sequence (<paramref name="places"/>[row]) in every component.
    /// </summary>
    public void Angles(DecoderBatch batch, ReadOnlySpan<int> places, Span<float> cos, Span<float> sin)
    {
        int half = Pairs;
        Span<int> position = stackalloc int[DecoderBatch.MaxPositionComponents];
        for (int row = 0; row < batch.Count; row++)
        {
            var c = cos.Slice(row * half, half);
            var s = sin.Slice(row * half, half);
            if (Sections == null)
                Kernels.RopeAngles(batch.HasPosition(row) ? batch.Position(row)[0] : places[row], Dimensions, FreqBase, c, s);
            else
            {
                if (batch.HasPosition(row)) batch.Position(row).CopyTo(position);
                else position.Fill(places[row]);
                Kernels.RopeAngles(position[..Sections.Length], Sections, Dimensions, FreqBase, c, s);
            }
        }
    }
}
