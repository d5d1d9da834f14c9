using System.Globalization;

namespace VidKV.Video;

/// <summary>
/// Which frames of a stream a source delivers, and at most how large. Frames are chosen by their stream timestamps:
/// those in [<see cref="Start"/>, <see cref="End"/>); with <see cref="Fps"/> only the first frame of each interval
/// [Start + k/Fps, Start + (k+1)/Fps) — a real frame with its own timestamp, never a duplicate or a blend, so a
/// variable-frame-rate stream keeps its times; then the first <see cref="MaxFrames"/> of them. Frames keep their size
/// unless <see cref="MaxWidth"/> or <see cref="MaxHeight"/> asks to shrink them (the model's preprocessor does the
/// rest); they are never enlarged.
/// </summary>
public sealed record FrameSampling
{
    /// <summary>Every frame at its own size.</summary>
    public static FrameSampling All { get; } = new();

    /// <summary>Target frames per second (at most one frame per 1/Fps interval); null keeps every frame.</summary>
    public double? Fps { get; init; }
    /// <summary>Stop after this many frames; null for no limit.</summary>
    public int? MaxFrames { get; init; }
    /// <summary>First stream time kept (inclusive); null from the start.</summary>
    public TimeSpan? Start { get; init; }
    /// <summary>Stream time where the kept range ends (exclusive); null to the end of the stream.</summary>
    public TimeSpan? End { get; init; }
    /// <summary>Frames wider than this are scaled down, keeping their aspect ratio; null keeps the width.</summary>
    public int? MaxWidth { get; init; }
    /// <summary>Frames taller than this are scaled down, keeping their aspect ratio; null keeps the height.</summary>
    public int? MaxHeight { get; init; }

    /// <summary>Whether frames may need scaling.</summary>
    internal bool LimitsSize => MaxWidth != null || MaxHeight != null;

    /// <summary>Throws <see cref="ArgumentException"/> for an option out of range, naming it.</summary>
    public void Validate()
    {
        if (Fps is { } fps && (!double.IsFinite(fps) || fps <= 0 || fps > 1000))
            throw new ArgumentException($"sampling fps must be in (0, 1000], got {fps.ToString(CultureInfo.InvariantCulture)}");
        if (MaxFrames is <= 0) throw new ArgumentException($"max frames must be positive, got {MaxFrames}");
        if (Start is { } start && start < TimeSpan.Zero) throw new ArgumentException($"start time {start} is negative");
        if (End is { } end && end <= (Start ?? TimeSpan.Zero)) throw new ArgumentException($"end time {end} is not after the start {Start ?? TimeSpan.Zero}");
        if (MaxWidth is <= 0) throw new ArgumentException($"max width must be positive, got {MaxWidth}");
        if (MaxHeight is <= 0) throw new ArgumentException($"max height must be positive, got {MaxHeight}");
    }

    /// <summary>
    /// <see cref="Fps"/> as an exact fraction p/q (six decimals kept), so that the interval of a timestamp is integer
    /// arithmetic for ffmpeg's select filter and for this library alike.
    /// </summary>
    internal (long Numerator, long Denominator) FpsFraction()
    {
        long numerator = (long)Math.Round(Fps!.Value * 1_000_000), denominator = 1_000_000;
        if (numerator == 0) numerator = 1;
        long divisor = (long)System.Numerics.BigInteger.GreatestCommonDivisor(numerator, denominator);
        return (numerator / divisor, denominator / divisor);
    }

    /// <summary>The size a <paramref name="width"/> × <paramref name="height"/> frame is scaled to: the largest that fits
    /// the limits with the same aspect ratio (ffmpeg's <c>force_original_aspect_ratio=decrease</c>), never larger.</summary>
    internal (int Width, int Height) FitSize(int width, int height)
    {
        double scale = 1;
        if (MaxWidth is { } maxWidth && width > maxWidth) scale = Math.Min(scale, (double)maxWidth / width);
        if (MaxHeight is { } maxHeight && height > maxHeight) scale = Math.Min(scale, (double)maxHeight / height);
        if (scale >= 1) return (width, height);
        return (Math.Max(1, (int)Math.Round(width * scale)), Math.Max(1, (int)Math.Round(height * scale)));
    }
}

/// <summary>
/// The interval rule of <see cref="FrameSampling.Fps"/> in a stream's time base: interval(pts) =
/// floor((pts − anchor) · K / D) with K = timeBaseNumerator · fpsNumerator and D = timeBaseDenominator · fpsDenominator.
/// A frame is kept when its interval is above the last kept frame's. <see cref="Interval"/> evaluates exactly the
/// double operations ffmpeg's expression evaluator performs for <see cref="SelectExpression"/>, so the frames this
/// library plans (QuickDecoder) are the frames ffmpeg's select filter picks in one sequential pass.
/// </summary>
internal readonly record struct SamplingGrid(long Anchor, long K, long D)
{
    public static SamplingGrid Create(FrameSampling sampling, long timeBaseNumerator, long timeBaseDenominator, long anchor)
    {
        var (fpsNumerator, fpsDenominator) = sampling.FpsFraction();
        return new SamplingGrid(anchor, checked(timeBaseNumerator * fpsNumerator), checked(timeBaseDenominator * fpsDenominator));
    }

    public double Interval(long pts) => Math.Floor((double)(pts - Anchor) * K / D);

    /// <summary>The select filter's expression: keep a frame whose interval is above the last kept one's, or, before any
    /// frame was kept in this run, above <paramref name="previousInterval"/> (−1 at the start of the stream; a worker that
    /// starts mid-stream passes the interval of the last frame kept before its chunk).</summary>
    public string SelectExpression(double previousInterval)
    {
        string current = IntervalOf("pts"), previous = IntervalOf("prev_selected_pts");
        return string.Create(CultureInfo.InvariantCulture, $"gt({current},if(isnan(prev_selected_pts),{previousInterval},{previous}))");
    }

    string IntervalOf(string variable) => string.Create(CultureInfo.InvariantCulture, $"floor(({variable}-({Anchor}))*{K}/{D})");
}

/// <summary>
/// Applies a <see cref="FrameSampling"/>'s range, interval rule and frame limit to frames that arrive with timestamps
/// (image folders, pushed frames): the same rule as ffmpeg's select filter gets, in 100 ns ticks.
/// </summary>
internal sealed class TimestampSampler(FrameSampling sampling)
{
    readonly SamplingGrid? grid = sampling.Fps != null ? SamplingGrid.Create(sampling, 1, TimeSpan.TicksPerSecond, (sampling.Start ?? TimeSpan.Zero).Ticks) : null;
    double lastInterval = -1;
    long kept;

    /// <summary>Whether no later frame can be kept (the frame limit is reached).</summary>
    public bool Done => sampling.MaxFrames is { } max && kept >= max;

    /// <summary>Whether no frame at or after <paramref name="timestamp"/> can be kept (past the end of the range).</summary>
    public bool PastEnd(TimeSpan timestamp) => sampling.End is { } end && timestamp >= end;

    /// <summary>Whether to keep a frame at <paramref name="timestamp"/> (timestamps must not decrease); counts it if so.</summary>
    public bool Keep(TimeSpan timestamp)
    {
        if (Done || PastEnd(timestamp) || timestamp < (sampling.Start ?? TimeSpan.Zero)) return false;
        if (grid is { } g)
        {
            double interval = g.Interval(timestamp.Ticks);
            if (interval <= lastInterval) return false;
            lastInterval = interval;
        }
        kept++;
        return true;
    }
}
