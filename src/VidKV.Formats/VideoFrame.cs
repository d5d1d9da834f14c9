namespace VidKV.Formats;

/// <summary>
/// One decoded frame of a stream: its pixels, its timestamp in the stream (presentation time from the start, or the
/// time it was pushed), and its index among the frames the source delivered (after sampling).
/// </summary>
public sealed record VideoFrame(RgbImage Image, TimeSpan Timestamp, long Index)
{
    /// <summary>
    /// Where <see cref="Recycle"/> hands the pixels back: set by a source that reuses its frame buffers (see
    /// <c>FfmpegOptions.ReuseFrameBuffers</c>); null otherwise.
    /// </summary>
    public Action<byte[]>? Recycler { get; init; }

    /// <summary>
    /// Says the pixels are read and nothing holds the frame any more, so its source may decode a later frame into the
    /// same buffer (the engine calls it once it has resized a frame). Without a <see cref="Recycler"/>, nothing happens.
    /// </summary>
    public void Recycle() => Recycler?.Invoke(Image.Pixels);
}
