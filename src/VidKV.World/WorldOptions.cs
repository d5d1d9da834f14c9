using System.Globalization;

namespace VidKV.World;

/// <summary>
/// How eventful a generated world is. Each tick after the first has at most one event: outside a static stretch an
/// event happens with <see cref="EventProbability"/>; it is a scene cut with <see cref="CutProbability"/>, otherwise an
/// enter, leave, start, stop or colour change chosen uniformly among those possible. A tick without an event at which
/// nothing moves starts a static stretch with <see cref="StaticProbability"/>: <see cref="StaticMinTicks"/> to
/// <see cref="StaticMaxTicks"/> ticks of identical frames. <see cref="Clip"/> suits short training clips,
/// <see cref="Stream"/> long evaluation streams.
/// </summary>
public sealed record WorldOptions
{
    /// <summary>Short eventful clips (the defaults): an event on a third of the ticks, short static stretches.</summary>
    public static WorldOptions Clip { get; } = new();

    /// <summary>Long streams (100–5,000 ticks) with sparse events and long static stretches.</summary>
    public static WorldOptions Stream { get; } = new()
    {
        EventProbability = 0.05, CutProbability = 0.05, StaticProbability = 0.05, StaticMinTicks = 10, StaticMaxTicks = 60,
    };

    /// <summary>Fewest objects on screen (leaves stop there; a scene starts with at least one).</summary>
    public int MinObjects { get; init; } = 1;
    /// <summary>Most objects on screen, at most 6 (enters stop there; placement may give fewer when they do not fit).</summary>
    public int MaxObjects { get; init; } = 4;
    /// <summary>Probability that a tick outside a static stretch has an event.</summary>
    public double EventProbability { get; init; } = 0.35;
    /// <summary>Probability that an event is a scene cut (new background, all objects replaced).</summary>
    public double CutProbability { get; init; } = 0.06;
    /// <summary>Probability that an event-free tick at which nothing moves starts a static stretch.</summary>
    public double StaticProbability { get; init; } = 0.1;
    /// <summary>Shortest static stretch in ticks.</summary>
    public int StaticMinTicks { get; init; } = 2;
    /// <summary>Longest static stretch in ticks.</summary>
    public int StaticMaxTicks { get; init; } = 6;
    /// <summary>Probability that a scene's background is a pattern rather than one tone.</summary>
    public double TexturedProbability { get; init; } = 0.5;
    /// <summary>Slowest speed of a moving object, in fractions of the frame per tick.</summary>
    public double MinSpeed { get; init; } = 0.03;
    /// <summary>Fastest speed of a moving object, in fractions of the frame per tick (at most 0.2).</summary>
    public double MaxSpeed { get; init; } = 0.08;

    /// <summary>The most objects a scene may hold.</summary>
    public const int ObjectLimit = 6;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first option out of range.</summary>
    public void Validate()
    {
        if (MaxObjects < 1 || MaxObjects > ObjectLimit) throw new ArgumentException($"max objects must be in 1..{ObjectLimit}, got {MaxObjects}");
        if (MinObjects < 0 || MinObjects > MaxObjects) throw new ArgumentException($"min objects must be in 0..max objects ({MaxObjects}), got {MinObjects}");
        Probability("event probability", EventProbability);
        Probability("cut probability", CutProbability);
        Probability("static probability", StaticProbability);
        Probability("textured probability", TexturedProbability);
        if (StaticMinTicks < 1 || StaticMaxTicks < StaticMinTicks)
            throw new ArgumentException($"static stretches must last 1 ≤ min ≤ max ticks, got {StaticMinTicks}..{StaticMaxTicks}");
        if (!(MinSpeed > 0 && MinSpeed <= MaxSpeed && MaxSpeed <= 0.2))
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"speeds must be 0 < min ≤ max ≤ 0.2 per tick, got {MinSpeed}..{MaxSpeed}"));
    }

    static void Probability(string name, double value)
    {
        if (!(value >= 0 && value <= 1)) throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"{name} must be a probability in [0, 1], got {value}"));
    }
}
