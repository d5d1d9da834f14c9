namespace VidKV.Formats;

/// <summary>
/// One decoded frame of a stream: its pixels, its timestamp in the stream (presentation time from the start, or the
/// time it was pushed), and its index among the frames the source delivered (after sampling).
/// </summary>
public sealed record VideoFrame(RgbImage Image, TimeSpan Timestamp, long Index);
