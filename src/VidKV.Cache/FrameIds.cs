namespace VidKV.Cache;

/// <summary>
/// The frame id the KV store keeps beside each row, and what it says: ≥ 0, a visual row of that video frame; −1, text
/// of no frame (prompt, questions, answers); ≤ −2, text a frame brings with it (its timestamp and delimiters, e.g.
/// SmolVLM2's <c>"\nFrame from 00:07:&lt;fake_token_around_image&gt;&lt;global-img&gt;"</c>), stored as
/// −2 − frame. Reducers score and evict visual rows; a bounded one also drops a frame's text once it drops the frame,
/// so per-frame text cannot grow without bound. Everything that tests "is it video" keeps testing id ≥ 0.
/// </summary>
public static class FrameIds
{
    /// <summary>Text of no frame.</summary>
    public const int None = -1;

    /// <summary>The id of text that belongs to <paramref name="frame"/>.</summary>
    public static int TextOf(int frame) =>
        frame >= 0 ? -2 - frame : throw new ArgumentOutOfRangeException(nameof(frame), $"frame id must be ≥ 0, not {frame}");

    /// <summary>The frame a row belongs to, visual or text (−1: none).</summary>
    public static int Owner(int id) => id >= 0 ? id : id == None ? None : -2 - id;

    /// <summary>Whether the row is text that belongs to a frame.</summary>
    public static bool IsFrameText(int id) => id <= -2;
}
