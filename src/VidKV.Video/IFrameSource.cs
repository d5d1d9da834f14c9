using VidKV.Formats;

namespace VidKV.Video;

/// <summary>
/// Where frames come from: a file or URL through ffmpeg, a camera, an image folder, or frames an application pushes.
/// Frames arrive in stream order with their timestamps; a source knows nothing of models.
/// </summary>
public interface IFrameSource : IAsyncDisposable
{
    /// <summary>What the source reads, for messages ("clip.mp4", "camera /dev/video0", "pushed frames").</summary>
    string Name { get; }

    /// <summary>The frames, in order; ends when the stream ends; cancellation stops it and ends the decoding work.</summary>
    IAsyncEnumerable<VideoFrame> ReadAsync(CancellationToken cancellation = default);

    /// <summary>Raised for each frame left out because it could not be decoded (a corrupt frame mid-stream); the stream goes on.</summary>
    event Action<SkippedFrame>? FrameSkipped;
}
