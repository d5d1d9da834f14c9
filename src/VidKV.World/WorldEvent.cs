namespace VidKV.World;

/// <summary>What changed between two ticks.</summary>
public enum WorldEventKind
{
    /// <summary>An object came in from an edge.</summary>
    Enter,
    /// <summary>An object went out at its nearest edge.</summary>
    Leave,
    /// <summary>A still object began to move.</summary>
    StartMoving,
    /// <summary>A moving object stopped.</summary>
    Stop,
    /// <summary>An object took another colour.</summary>
    ChangeColour,
    /// <summary>A new background and all objects replaced.</summary>
    SceneCut,
}

/// <summary>
/// The one event of a tick: it happens between tick <see cref="Tick"/> − 1 and <see cref="Tick"/>, so the frame at
/// <see cref="Tick"/> is the first to show it. <see cref="Narration"/> is the sentence a model says about it
/// ("a small red circle entered."); objects are named by colour and shape, with the size when that alone is not unique.
/// </summary>
/// <param name="Object">the object it concerns (none for a scene cut): as it is at <see cref="Tick"/> for an enter, a
/// start or a stop, as it was at the tick before for a leave or a colour change</param>
/// <param name="NewColour">the colour an object changed to</param>
/// <param name="Edge">the side an object entered from or left to</param>
public sealed record WorldEvent(int Tick, WorldEventKind Kind, WorldObject? Object, Colour? NewColour, Edge? Edge, string Narration)
{
    /// <summary>The tick as stream time, "mm:ss".</summary>
    public string Time => WorldWords.Time(Tick);
}

/// <summary>A run of ticks: <paramref name="First"/> and the <paramref name="Count"/> − 1 after it.</summary>
public readonly record struct TickRange(int First, int Count)
{
    /// <summary>The tick after the range.</summary>
    public int End => First + Count;
    /// <summary>Whether <paramref name="tick"/> is in the range.</summary>
    public bool Contains(int tick) => tick >= First && tick < End;
}

/// <summary>
/// The world at one tick: the scene's background and the objects on screen, in draw order (increasing
/// <see cref="WorldObject.Id"/>). An object that left is no longer listed.
/// </summary>
public sealed class WorldState
{
    readonly WorldObject[] objects;

    internal WorldState(int tick, int scene, Background background, WorldObject[] objects)
    {
        Tick = tick;
        Scene = scene;
        Background = background;
        this.objects = objects;
    }

    /// <summary>The tick (seconds from the start).</summary>
    public int Tick { get; }
    /// <summary>How many scene cuts came before this tick.</summary>
    public int Scene { get; }
    /// <summary>The scene's background.</summary>
    public Background Background { get; }
    /// <summary>The objects on screen, in draw order.</summary>
    public IReadOnlyList<WorldObject> Objects => objects;
    /// <summary>The objects on screen, in draw order, without a copy (what the renderer takes).</summary>
    public ReadOnlySpan<WorldObject> ObjectSpan => objects;

    /// <summary>The object with <paramref name="id"/>, or null when it is not on screen.</summary>
    public WorldObject? Find(int id)
    {
        foreach (var o in objects) if (o.Id == id) return o;
        return null;
    }
}
