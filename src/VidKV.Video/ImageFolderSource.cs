using System.Runtime.CompilerServices;
using VidKV.Formats;

namespace VidKV.Video;

/// <summary>
/// Frames from the image files of a folder (PNG, JPEG, BMP, PPM/PGM, read by <see cref="ImageReader"/>), in natural
/// name order ("frame2" before "frame10"); image i is at time i / <c>fps</c>. An image that cannot be decoded is skipped
/// and reported like a corrupt frame.
/// </summary>
public sealed class ImageFolderSource : IFrameSource
{
    static readonly string[] Extensions = [".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm"];
    readonly string folder;
    readonly double fps;
    readonly FrameSampling sampling;

    /// <param name="folder">the folder; its image files are the frames</param>
    /// <param name="fps">the rate the images were taken at, which gives their timestamps</param>
    /// <param name="sampling">which frames to deliver (default every image at its size)</param>
    public ImageFolderSource(string folder, double fps = 1, FrameSampling? sampling = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        if (!double.IsFinite(fps) || fps <= 0) throw new ArgumentException($"image folder fps must be positive, got {fps}");
        this.folder = folder;
        this.fps = fps;
        this.sampling = sampling ?? FrameSampling.All;
        this.sampling.Validate();
    }

    /// <inheritdoc/>
    public string Name => folder;

    /// <summary>Raised for each image left out because it could not be decoded.</summary>
    public event Action<SkippedFrame>? FrameSkipped;

    /// <summary>The image files, in the order they become frames.</summary>
    /// <exception cref="VideoSourceException">the folder is missing or holds no image files</exception>
    public IReadOnlyList<string> Files()
    {
        if (!Directory.Exists(folder)) throw new VideoSourceException(folder, "no such folder");
        var files = Directory.EnumerateFiles(folder).Where(f => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
            .Order(NaturalOrder.Instance).ToList();
        if (files.Count == 0) throw new VideoSourceException(folder, "no image files (png, jpg, bmp, ppm) in the folder");
        return files;
    }

    /// <inheritdoc/>
    public async IAsyncEnumerable<VideoFrame> ReadAsync([EnumeratorCancellation] CancellationToken cancellation = default)
    {
        var files = Files();
        var sampler = new TimestampSampler(sampling);
        long index = 0;
        for (int i = 0; i < files.Count && !sampler.Done; i++)
        {
            cancellation.ThrowIfCancellationRequested();
            var timestamp = TimeSpan.FromTicks((long)Math.Round(i * TimeSpan.TicksPerSecond / fps));
            if (sampler.PastEnd(timestamp)) break;
            if (!sampler.Keep(timestamp)) continue;
            RgbImage image;
            try
            {
                image = await Task.Run(() => ImageReader.Read(files[i]), cancellation).ConfigureAwait(false);
            }
            catch (ImageFormatException e)
            {
                FrameSkipped?.Invoke(new SkippedFrame(index, timestamp, e.Message));
                continue;
            }
            yield return new VideoFrame(FrameScaler.FitWithin(image, sampling), timestamp, index++);
        }
    }

    /// <inheritdoc/>
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    /// <summary>Compares names with runs of digits as numbers, the rest ordinally.</summary>
    sealed class NaturalOrder : IComparer<string>
    {
        public static readonly NaturalOrder Instance = new();

        public int Compare(string? a, string? b)
        {
            if (a is null || b is null) return string.CompareOrdinal(a, b);
            int i = 0, j = 0;
            while (i < a.Length && j < b.Length)
            {
                if (char.IsAsciiDigit(a[i]) && char.IsAsciiDigit(b[j]))
                {
                    int startA = i, startB = j;
                    while (i < a.Length && char.IsAsciiDigit(a[i])) i++;
                    while (j < b.Length && char.IsAsciiDigit(b[j])) j++;
                    var digitsA = a.AsSpan(startA, i - startA).TrimStart('0');
                    var digitsB = b.AsSpan(startB, j - startB).TrimStart('0');
                    int order = digitsA.Length != digitsB.Length ? digitsA.Length.CompareTo(digitsB.Length) : digitsA.SequenceCompareTo(digitsB);
                    if (order != 0) return order;
                }
                else
                {
                    if (a[i] != b[j]) return a[i].CompareTo(b[j]);
                    i++;
                    j++;
                }
            }
            int rest = (a.Length - i).CompareTo(b.Length - j);
            return rest != 0 ? rest : string.CompareOrdinal(a, b);
        }
    }
}
