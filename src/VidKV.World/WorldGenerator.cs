namespace VidKV.World;

/// <summary>
/// Builds a stream tick by tick from one <see cref="WorldRandom"/>: the event of the tick (if any) first, then every
/// moving object one step, bouncing off the borders and off other objects so that discs never overlap at a tick.
/// </summary>
sealed class WorldGenerator
{
    readonly WorldRandom random;
    readonly WorldOptions options;
    readonly List<WorldObject> objects = [];
    Background background;
    int scene, nextId, staticLeft;

    /// <summary>Attempts at finding a free place for a new object before giving up on it.</summary>
    const int PlacementTries = 40;

    public WorldGenerator(ulong seed, WorldOptions options)
    {
        random = new WorldRandom(seed);
        this.options = options;
    }

    public readonly List<WorldState> States = [];
    public readonly List<WorldEvent> Events = [];
    public readonly List<TickRange> StaticStretches = [];

    public void Run(int tickCount)
    {
        NewScene();
        Snapshot(0);
        for (int tick = 1; tick < tickCount; tick++)
        {
            var before = objects.ToArray();
            WorldEvent? happened = null;
            if (staticLeft > 0) staticLeft--;
            else if (random.Chance(options.EventProbability)) happened = TryEvent(tick, before);
            else if (!objects.Any(o => o.IsMoving) && random.Chance(options.StaticProbability))
            {
                int length = Math.Min(random.Next(options.StaticMinTicks, options.StaticMaxTicks), tickCount - tick);
                StaticStretches.Add(new TickRange(tick, length));
                staticLeft = length - 1;
            }
            Move();
            if (happened != null)
            {
                // Starting and stopping report the object as it is at the tick (after its first step or its stop).
                if (happened.Kind is WorldEventKind.StartMoving or WorldEventKind.Stop)
                    happened = happened with { Object = objects.First(o => o.Id == happened.Object!.Value.Id) };
                Events.Add(happened);
            }
            Snapshot(tick);
        }
    }

    void Snapshot(int tick) => States.Add(new WorldState(tick, scene, background, [.. objects]));

    WorldEvent? TryEvent(int tick, WorldObject[] before)
    {
        if (random.Chance(options.CutProbability))
        {
            scene++;
            NewScene();
            return new WorldEvent(tick, WorldEventKind.SceneCut, null, null, null, "the scene changed.");
        }
        var kinds = new List<WorldEventKind>(5);
        if (objects.Count < options.MaxObjects) kinds.Add(WorldEventKind.Enter);
        if (objects.Count > options.MinObjects) kinds.Add(WorldEventKind.Leave);
        if (objects.Any(o => !o.IsMoving)) kinds.Add(WorldEventKind.StartMoving);
        if (objects.Any(o => o.IsMoving)) kinds.Add(WorldEventKind.Stop);
        if (objects.Count > 0) kinds.Add(WorldEventKind.ChangeColour);
        if (kinds.Count == 0) return null;
        switch (random.Pick(kinds))
        {
            case WorldEventKind.Enter:
            {
                var edge = (Edge)random.Next(4);
                if (Place(edge) is not { } entered) return null;
                objects.Add(entered);
                return new WorldEvent(tick, WorldEventKind.Enter, entered, null, edge, $"a {entered.Description} entered.");
            }
            case WorldEventKind.Leave:
            {
                int index = random.Next(objects.Count);
                var left = objects[index];
                objects.RemoveAt(index);
                return new WorldEvent(tick, WorldEventKind.Leave, left, null, WorldGeometry.NearestEdge(left.X, left.Y), $"the {left.NameAmong(before)} left.");
            }
            case WorldEventKind.StartMoving:
            {
                int index = RandomIndex(o => !o.IsMoving);
                var still = objects[index];
                double speed = random.NextDouble(options.MinSpeed, options.MaxSpeed);
                // A direction uniform on the circle without trigonometry (whose last bits vary by platform): a point
                // of the unit disc by rejection, scaled; the square root is exact to the last bit everywhere.
                double dx, dy, length;
                do
                {
                    dx = random.NextDouble(-1, 1);
                    dy = random.NextDouble(-1, 1);
                    length = Math.Sqrt(dx * dx + dy * dy);
                } while (length > 1 || length < 0.1);
                objects[index] = still with { VelocityX = dx / length * speed, VelocityY = dy / length * speed };
                return new WorldEvent(tick, WorldEventKind.StartMoving, objects[index], null, null, $"the {still.NameAmong(before)} started moving.");
            }
            case WorldEventKind.Stop:
            {
                int index = RandomIndex(o => o.IsMoving);
                var moving = objects[index];
                objects[index] = moving with { VelocityX = 0, VelocityY = 0 };
                return new WorldEvent(tick, WorldEventKind.Stop, objects[index], null, null, $"the {moving.NameAmong(before)} stopped.");
            }
            default:
            {
                int index = random.Next(objects.Count);
                var o = objects[index];
                var free = Enum.GetValues<Colour>().Where(c => c != o.Colour && IsNew(o.Shape, c, o.Size, o.Id)).ToArray();
                if (free.Length == 0) return null;
                var colour = random.Pick(free);
                objects[index] = o with { Colour = colour };
                return new WorldEvent(tick, WorldEventKind.ChangeColour, o, colour, null, $"the {o.NameAmong(before)} changed to {WorldWords.Of(colour)}.");
            }
        }
    }

    int RandomIndex(Func<WorldObject, bool> which)
    {
        var indices = Enumerable.Range(0, objects.Count).Where(i => which(objects[i])).ToArray();
        return random.Pick(indices);
    }

    /// <summary>Whether no object on screen other than <paramref name="exceptId"/> has this shape, colour and size (so every description is unique).</summary>
    bool IsNew(Shape shape, Colour colour, Size size, int exceptId = -1) =>
        !objects.Any(o => o.Id != exceptId && o.Shape == shape && o.Colour == colour && o.Size == size);

    /// <summary>A new scene: another background and one to <see cref="WorldOptions.MaxObjects"/> new objects (as many as fit).</summary>
    void NewScene()
    {
        var previous = background;
        do
        {
            var tone = random.Pick(WorldPalette.BackgroundTones);
            background = random.Chance(options.TexturedProbability)
                ? new Background((BackgroundPattern)random.Next(1, 4), tone, WorldPalette.Lighter(tone), random.NextDouble(0.06, 0.16))
                : new Background(BackgroundPattern.Plain, tone, tone, 0);
        } while (scene > 0 && background.Pattern == previous.Pattern && background.Base == previous.Base);
        objects.Clear();
        int count = random.Next(Math.Max(1, options.MinObjects), options.MaxObjects);
        for (int i = 0; i < count; i++)
            if (Place(null) is { } placed) objects.Add(placed);
    }

    /// <summary>A new object at a free place: anywhere, or just inside <paramref name="edge"/> for one that enters there.</summary>
    WorldObject? Place(Edge? edge)
    {
        for (int attempt = 0; attempt < PlacementTries; attempt++)
        {
            var shape = (Shape)random.Next(WorldWords.Shapes.Count);
            var colour = (Colour)random.Next(WorldWords.Colours.Count);
            var size = (Size)random.Next(2);
            if (!IsNew(shape, colour, size)) continue;
            double radius = WorldGeometry.RadiusOf(size);
            var (low, high) = WorldGeometry.CentreRange(radius);
            double x = random.NextDouble(low, high), y = random.NextDouble(low, high), inside = low + random.NextDouble(0, 0.08);
            switch (edge)
            {
                case Edge.Left: x = inside; break;
                case Edge.Right: x = 1 - inside; break;
                case Edge.Top: y = inside; break;
                case Edge.Bottom: y = 1 - inside; break;
            }
            if (IsFree(x, y, radius, -1)) return new WorldObject(nextId++, shape, colour, size, x, y);
        }
        return null;
    }

    bool IsFree(double x, double y, double radius, int exceptId)
    {
        foreach (var o in objects)
            if (o.Id != exceptId && !WorldGeometry.Apart(x, y, radius, o.X, o.Y, o.Radius)) return false;
        return true;
    }

    /// <summary>
    /// One step of every moving object, in draw order, each against the others' latest places: off a border it
    /// reflects; into another object it turns back; if turning back is blocked too it waits where it is this tick.
    /// </summary>
    void Move()
    {
        for (int i = 0; i < objects.Count; i++)
        {
            var o = objects[i];
            if (!o.IsMoving) continue;
            var (x, y, vx, vy) = Step(o, o.VelocityX, o.VelocityY);
            if (!IsFree(x, y, o.Radius, o.Id))
            {
                (x, y, vx, vy) = Step(o, -o.VelocityX, -o.VelocityY);
                if (!IsFree(x, y, o.Radius, o.Id)) (x, y) = (o.X, o.Y);
            }
            objects[i] = o with { X = x, Y = y, VelocityX = vx, VelocityY = vy };
        }
    }

    static (double X, double Y, double VelocityX, double VelocityY) Step(WorldObject o, double vx, double vy)
    {
        var (low, high) = WorldGeometry.CentreRange(o.Radius);
        if (o.X + vx < low || o.X + vx > high) vx = -vx;
        if (o.Y + vy < low || o.Y + vy > high) vy = -vy;
        return (Math.Clamp(o.X + vx, low, high), Math.Clamp(o.Y + vy, low, high), vx, vy);
    }
}
