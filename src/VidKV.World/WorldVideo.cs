using System.Text.Json;
using System.Text.Json.Serialization;
using VidKV.Video;

namespace VidKV.World;

/// <summary>Writes a world as an H.264 video (ffmpeg) and its event log and questions as JSON beside it.</summary>
public static class WorldVideo
{
    /// <summary>
    /// Writes <paramref name="stream"/> to <paramref name="path"/>: <c>ceil(TickCount · fps)</c> frames, frame k showing
    /// time k / <paramref name="fps"/> (sub-tick frames interpolated, the last tick held to the end), so one frame per
    /// second sampled from the file is exactly the ticks' frames.
    /// </summary>
    /// <param name="width">frame width (even)</param>
    /// <param name="height">frame height (even)</param>
    /// <param name="crf">x264 quality, 0–51 (lower is better)</param>
    public static async Task WriteAsync(WorldStream stream, string path, int width, int height, double fps, int crf = 18, FfmpegOptions? ffmpeg = null,
        CancellationToken cancellation = default)
    {
        await using var writer = RawVideoWriter.Start(path, width, height, fps, crf, options: ffmpeg);
        long frames = FrameCount(stream, fps);
        var frame = new byte[3 * width * height];
        for (long k = 0; k < frames; k++)
        {
            stream.RenderAt(k / fps, frame, width, height);
            await writer.WriteFrameAsync(frame, cancellation).ConfigureAwait(false);
        }
        await writer.CompleteAsync(cancellation).ConfigureAwait(false);
    }

    /// <summary>Frames of a video of <paramref name="stream"/> at <paramref name="fps"/>: one per 1/fps over its <see cref="WorldStream.TickCount"/> seconds.</summary>
    public static long FrameCount(WorldStream stream, double fps) => (long)Math.Ceiling(stream.TickCount * fps - 1e-9);

    /// <summary>Writes <paramref name="log"/> as indented JSON (snake_case names).</summary>
    public static void WriteLog(WorldLog log, string path) => File.WriteAllBytes(path, JsonSerializer.SerializeToUtf8Bytes(log, WorldJson.Default.WorldLog));

    /// <summary>Reads a log written by <see cref="WriteLog"/>.</summary>
    /// <exception cref="JsonException">not such a log</exception>
    public static WorldLog ReadLog(string path) =>
        JsonSerializer.Deserialize(File.ReadAllBytes(path), WorldJson.Default.WorldLog) ?? throw new JsonException($"{path}: not a world log");
}

/// <summary>
/// A world video's log: how it was made (seed, ticks, options, frame size and rate) and what happened in it, with
/// sample questions — enough for a reader without this library to know what each second shows.
/// </summary>
public sealed record WorldLog(ulong Seed, int Ticks, int Width, int Height, double Fps, WorldOptions Options, IReadOnlyList<WorldLogEvent> Events,
    IReadOnlyList<WorldLogQuestion> Questions)
{
    /// <summary>The log of <paramref name="stream"/> as a <paramref name="width"/> × <paramref name="height"/> video at <paramref name="fps"/>.</summary>
    public static WorldLog Of(WorldStream stream, int width, int height, double fps, IEnumerable<WorldQuestion> questions) => new(
        stream.Seed, stream.TickCount, width, height, fps, stream.Options,
        [.. stream.Events.Select(e => new WorldLogEvent(e.Tick, e.Time, KindName(e.Kind), e.Narration, e.Object?.Id, e.Object?.Description,
            e.NewColour is { } c ? WorldWords.Of(c) : null, e.Edge is { } edge ? edge.ToString().ToLowerInvariant() : null))],
        [.. questions.Select(q => new WorldLogQuestion(KindName(q.Kind), q.Question, q.Answer, q.AskTick, WorldWords.Time(q.AskTick), [.. q.EvidenceTicks]))]);

    /// <summary>An enum name in snake_case ("ChangeColour" → "change_colour").</summary>
    static string KindName<T>(T kind) where T : struct, Enum => JsonNamingPolicy.SnakeCaseLower.ConvertName(kind.ToString());
}

/// <summary>One event of a <see cref="WorldLog"/>; the object as "big red circle" (as it was for a leave or a colour change).</summary>
public sealed record WorldLogEvent(int Tick, string Time, string Kind, string Narration, int? ObjectId, string? Object, string? NewColour, string? Edge);

/// <summary>One question of a <see cref="WorldLog"/>.</summary>
public sealed record WorldLogQuestion(string Kind, string Question, string Answer, int AskTick, string AskTime, int[] EvidenceTicks);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    WriteIndented = true)]
[JsonSerializable(typeof(WorldLog))]
partial class WorldJson : JsonSerializerContext;
