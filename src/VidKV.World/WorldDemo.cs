namespace VidKV.World;

/// <summary>
/// The built-in demo of <c>vidkv watch</c> with no arguments: one held-out world (a seed the trainer never uses) of
/// <see cref="Ticks"/> seconds at 256², written once as H.264 at 8 fps with its log beside it, and the questions asked
/// about it once it has been watched, with the answers the world says are right.
/// </summary>
public static class WorldDemo
{
    /// <summary>The demo world's seed: among the held-out seeds (<see cref="WorldStream.HeldOutSeeds"/>), apart from the first thousand the evaluations use.</summary>
    public const ulong Seed = WorldStream.HeldOutSeeds + 1_000_000;
    /// <summary>Seconds (ticks) of the demo.</summary>
    public const int Ticks = 24;
    /// <summary>Side of the demo video's frames.</summary>
    public const int Size = 256;
    /// <summary>Frames per second of the demo video (one tick per second, frames between ticks interpolated).</summary>
    public const double Fps = 8;
    /// <summary>Questions asked after the last frame.</summary>
    public const int QuestionCount = 4;

    static readonly SemaphoreSlim Writing = new(1, 1);

    /// <summary>The demo world.</summary>
    public static WorldStream Stream() => WorldStream.Generate(Seed, Ticks, WorldOptions.Clip);

    /// <summary>The questions asked about the demo after its last frame, with their answers.</summary>
    public static IReadOnlyList<WorldQuestion> Questions(WorldStream stream) => WorldQuestions.SampleDistinct(stream, stream.TickCount - 1, Seed, QuestionCount);

    /// <summary>Where the video is kept unless a caller names another path: the temporary folder, shared by every VidKV process.</summary>
    public static string DefaultPath { get; } = Path.Combine(Path.GetTempPath(), $"vidkv-world-demo-{Ticks}s.mp4");

    /// <summary>
    /// The demo video's path, written first (with its log, <c>.json</c> beside it) when it is not there yet: into a file
    /// of its own, then moved into place, so a reader never sees half of it.
    /// </summary>
    /// <exception cref="Video.VideoSourceException">ffmpeg is missing or fails</exception>
    public static async Task<string> EnsureAsync(string? path = null, TextWriter? log = null, CancellationToken cancellation = default)
    {
        path ??= DefaultPath;
        if (File.Exists(path)) return path;
        await Writing.WaitAsync(cancellation).ConfigureAwait(false);
        string partial = $"{path}.{Guid.NewGuid():N}.partial.mp4";
        try
        {
            if (File.Exists(path)) return path;
            log?.WriteLine($"making the demo video (a generated world, {Ticks} s) with ffmpeg: {path}");
            var stream = Stream();
            await WorldVideo.WriteAsync(stream, partial, Size, Size, Fps, cancellation: cancellation).ConfigureAwait(false);
            WorldVideo.WriteLog(WorldLog.Of(stream, Size, Size, Fps, Questions(stream)), Path.ChangeExtension(path, ".json"));
            File.Move(partial, path, overwrite: true);
            return path;
        }
        finally
        {
            File.Delete(partial);
            Writing.Release();
        }
    }
}
