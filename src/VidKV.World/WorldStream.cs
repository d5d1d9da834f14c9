using VidKV.Formats;

namespace VidKV.World;

/// <summary>
/// A generated world: its state at every tick (one tick per second, from 0 to <see cref="TickCount"/> − 1), the events
/// between ticks with their narrations, and frames of any size at a tick or between ticks. The same seed and options
/// give the same stream on every platform. Immutable once generated, so any number of threads may render from it.
/// </summary>
public sealed class WorldStream
{
    readonly WorldState[] states;
    readonly WorldEvent?[] eventAt;

    WorldStream(ulong seed, WorldOptions options, WorldGenerator generator)
    {
        Seed = seed;
        Options = options;
        states = [.. generator.States];
        Events = [.. generator.Events];
        StaticStretches = [.. generator.StaticStretches];
        eventAt = new WorldEvent?[states.Length];
        foreach (var e in Events) eventAt[e.Tick] = e;
    }

    /// <summary>Generates <paramref name="tickCount"/> ticks from <paramref name="seed"/>.</summary>
    /// <param name="options">how eventful (default <see cref="WorldOptions.Clip"/>)</param>
    /// <exception cref="ArgumentException">a tick count below 1 or an option out of range</exception>
    public static WorldStream Generate(ulong seed, int tickCount, WorldOptions? options = null)
    {
        options ??= WorldOptions.Clip;
        options.Validate();
        if (tickCount < 1) throw new ArgumentException($"a world needs at least one tick, got {tickCount}");
        var generator = new WorldGenerator(seed, options);
        generator.Run(tickCount);
        return new WorldStream(seed, options, generator);
    }

    /// <summary>
    /// Held-out worlds (for evaluation) have seeds from here on; training never draws one (the trainer's seeds are
    /// run seed · 10⁹ + step).
    /// </summary>
    public const ulong HeldOutSeeds = 1UL << 62;

    /// <summary>The seed it was generated from.</summary>
    public ulong Seed { get; }
    /// <summary>The options it was generated with.</summary>
    public WorldOptions Options { get; }
    /// <summary>Ticks: the stream lasts this many seconds.</summary>
    public int TickCount => states.Length;
    /// <summary>Every event in tick order, at most one per tick, none at tick 0.</summary>
    public IReadOnlyList<WorldEvent> Events { get; }
    /// <summary>The static stretches: runs of ticks without events at which nothing moved (their frames equal the one before).</summary>
    public IReadOnlyList<TickRange> StaticStretches { get; }

    /// <summary>The world at <paramref name="tick"/>.</summary>
    public WorldState State(int tick) => states[CheckTick(tick)];

    /// <summary>The event that happened just before <paramref name="tick"/>'s frame, or null.</summary>
    public WorldEvent? EventAt(int tick) => eventAt[CheckTick(tick)];

    /// <summary>What a model says at <paramref name="tick"/> (its event's narration), or null for a tick without an event.</summary>
    public string? Narration(int tick) => EventAt(tick)?.Narration;

    /// <summary>Draws the frame of <paramref name="tick"/> into <paramref name="rgb"/> (<paramref name="width"/> · <paramref name="height"/> · 3 bytes, rows top to bottom); allocates nothing.</summary>
    public void Render(int tick, Span<byte> rgb, int width, int height)
    {
        var state = State(tick);
        WorldRenderer.Render(state.Background, state.ObjectSpan, rgb, width, height);
    }

    /// <summary>The frame of <paramref name="tick"/> as a new image.</summary>
    public RgbImage Render(int tick, int width, int height)
    {
        var image = new RgbImage(width, height);
        Render(tick, image.Pixels, width, height);
        return image;
    }

    /// <summary>
    /// Draws the world at <paramref name="time"/> seconds, between ticks too (for smooth videos): objects move linearly
    /// from one tick's place to the next, an entering object slides in from beyond its edge and a leaving one out beyond
    /// its edge, and a colour change or a scene cut shows from halfway. A whole number of seconds is that tick's frame;
    /// times past the last tick show the last tick. Allocates nothing.
    /// </summary>
    public void RenderAt(double time, Span<byte> rgb, int width, int height)
    {
        if (!(time >= 0)) throw new ArgumentOutOfRangeException(nameof(time), time, "time must be a non-negative number of seconds");
        int tick = (int)Math.Min(Math.Floor(time), TickCount - 1);
        double fraction = time - tick;
        if (tick == TickCount - 1 || fraction == 0)
        {
            Render(tick, rgb, width, height);
            return;
        }
        var from = states[tick];
        var to = states[tick + 1];
        var change = eventAt[tick + 1];
        if (change?.Kind == WorldEventKind.SceneCut)
        {
            var shown = fraction < 0.5 ? from : to;
            WorldRenderer.Render(shown.Background, shown.ObjectSpan, rgb, width, height);
            return;
        }
        // At most one object enters per tick, so the objects in between are those of the earlier tick plus one.
        Span<WorldObject> between = stackalloc WorldObject[from.Objects.Count + 1];
        int count = 0;
        foreach (var o in from.ObjectSpan)
        {
            if (to.Find(o.Id) is { } next)
                between[count++] = next with { X = o.X + (next.X - o.X) * fraction, Y = o.Y + (next.Y - o.Y) * fraction, Colour = fraction < 0.5 ? o.Colour : next.Colour };
            else
            {
                var (x, y) = WorldGeometry.Outside(change!.Edge!.Value, o.X, o.Y, o.Radius);
                between[count++] = o with { X = o.X + (x - o.X) * fraction, Y = o.Y + (y - o.Y) * fraction };
            }
        }
        if (change?.Kind == WorldEventKind.Enter)
        {
            var o = to.Find(change.Object!.Value.Id)!.Value;
            var (x, y) = WorldGeometry.Outside(change.Edge!.Value, o.X, o.Y, o.Radius);
            between[count++] = o with { X = x + (o.X - x) * fraction, Y = y + (o.Y - y) * fraction };
        }
        WorldRenderer.Render(to.Background, between[..count], rgb, width, height);
    }

    /// <summary>The world at <paramref name="time"/> seconds as a new image (see <see cref="RenderAt(double, Span{byte}, int, int)"/>).</summary>
    public RgbImage RenderAt(double time, int width, int height)
    {
        var image = new RgbImage(width, height);
        RenderAt(time, image.Pixels, width, height);
        return image;
    }

    int CheckTick(int tick) => (uint)tick < (uint)states.Length ? tick
        : throw new ArgumentOutOfRangeException(nameof(tick), tick, $"the stream has ticks 0..{states.Length - 1}");
}
