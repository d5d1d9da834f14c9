namespace VidKV.Video;

/// <summary>
/// A frame that a source left out because it could not be decoded (a corrupt packet, a frame the decoder marked as
/// damaged, an unreadable image in a folder). Decoding goes on after it.
/// </summary>
/// <param name="Index">the index the frame would have had: the number of frames delivered before it</param>
/// <param name="Timestamp">its stream timestamp when known</param>
/// <param name="Reason">one line from the decoder</param>
public sealed record SkippedFrame(long Index, TimeSpan? Timestamp, string Reason);
