namespace VidKV.Engine;

/// <summary>
/// Proactive commenting (VideoLLM-online, Chen et al. 2024, "VideoLLM-online: Online Video Large Language Model for
/// Streaming Video"): after each frame the model takes one step; while it gives the "stay silent" token a probability
/// of at least <see cref="Threshold"/> it stays quiet, else that token is zeroed and it speaks a greedy comment.
/// </summary>
public sealed record ProactiveOptions
{
    /// <summary>
    /// The token that means "no comment, go on" — LIVE's frame separator <c>,</c> in its <c>[ … ]</c> frame format
    /// (<see cref="VideoFormat.FrameBrackets"/>); a model trained otherwise names its own. Must be one token of the vocabulary.
    /// </summary>
    public string SilenceToken { get; init; } = ",";
    /// <summary>p(silence) below this speaks (0.725, LIVE's default).</summary>
    public float Threshold { get; init; } = 0.725f;
    /// <summary>Most tokens of one comment.</summary>
    public int MaxTokens { get; init; } = 100;
}

/// <summary>A comment the model made on its own: after which frame, at what stream time, what it said, and how sure it was of silence.</summary>
public sealed record ProactiveComment(int FrameId, TimeSpan Timestamp, string Text, float SilenceProbability);
