namespace VidKV.World;

/// <summary>
/// One object on screen at a tick. (<see cref="X"/>, <see cref="Y"/>) is its centre as fractions of the frame's width
/// and height, in [0, 1]; the velocity is in the same units per tick (zero when it stands still). Its drawn extent is a
/// disc of <see cref="Radius"/> times the frame's shorter side, so in fractions of either side it never reaches farther
/// than <see cref="Radius"/> from the centre: the world keeps these discs apart and inside the frame at every tick, so
/// any frame size shows every object whole and unoccluded.
/// </summary>
/// <param name="Id">unique in its stream, increasing in order of appearance (the draw order)</param>
public readonly record struct WorldObject(int Id, Shape Shape, Colour Colour, Size Size, double X, double Y, double VelocityX = 0, double VelocityY = 0)
{
    /// <summary>Radius as a fraction of the frame's shorter side.</summary>
    public double Radius => WorldGeometry.RadiusOf(Size);
    /// <summary>Whether it moves (a non-zero velocity).</summary>
    public bool IsMoving => VelocityX != 0 || VelocityY != 0;
    /// <summary>The 3×3 grid cell of its centre.</summary>
    public Region Region => WorldGeometry.RegionOf(X, Y);
    /// <summary>"big red circle": size, colour, shape (unique among the objects on screen at any tick).</summary>
    public string Description => $"{WorldWords.Of(Size)} {WorldWords.Of(Colour)} {WorldWords.Of(Shape)}";

    /// <summary>
    /// Its name among <paramref name="others"/> (which may include itself): "red circle", or the whole
    /// <see cref="Description"/> when another object there is a red circle too.
    /// </summary>
    public string NameAmong(ReadOnlySpan<WorldObject> others)
    {
        foreach (var other in others)
            if (other.Id != Id && other.Shape == Shape && other.Colour == Colour) return Description;
        return $"{WorldWords.Of(Colour)} {WorldWords.Of(Shape)}";
    }

    /// <summary>
    /// Its name by shape among <paramref name="others"/> (which may include itself), for asking its colour: "square",
    /// "big square" when another square there has the other size, or null when another has the same shape and size.
    /// </summary>
    public string? ShapeNameAmong(ReadOnlySpan<WorldObject> others)
    {
        bool sameShape = false;
        foreach (var other in others)
        {
            if (other.Id == Id || other.Shape != Shape) continue;
            if (other.Size == Size) return null;
            sameShape = true;
        }
        return sameShape ? $"{WorldWords.Of(Size)} {WorldWords.Of(Shape)}" : WorldWords.Of(Shape);
    }
}

/// <summary>An 8-bit RGB colour.</summary>
public readonly record struct Rgb(byte R, byte G, byte B);

/// <summary>How a background is drawn.</summary>
public enum BackgroundPattern
{
    /// <summary>One tone.</summary>
    Plain,
    /// <summary>A checkerboard of square cells.</summary>
    Checker,
    /// <summary>Horizontal stripes.</summary>
    HorizontalStripes,
    /// <summary>Vertical stripes.</summary>
    VerticalStripes,
    /// <summary>Stripes rising to the right.</summary>
    DiagonalStripes,
}

/// <summary>
/// A scene's background: one tone, or a low-contrast pattern of two dark tones (<paramref name="Base"/> and
/// <paramref name="Alternate"/>) whose cells or stripes are <paramref name="CellSize"/> of the frame's shorter side wide.
/// </summary>
public readonly record struct Background(BackgroundPattern Pattern, Rgb Base, Rgb Alternate, double CellSize);

/// <summary>The RGB values of the object colours and the background tones.</summary>
public static class WorldPalette
{
    static readonly Rgb[] colours =
    [
        new(220, 40, 40), new(40, 190, 60), new(50, 90, 235), new(240, 220, 40),
        new(150, 60, 205), new(245, 140, 30), new(245, 245, 245), new(40, 215, 215),
    ];

    /// <summary>
    /// Background tones: dark and muted (every channel ≤ 70, their pattern partners ≤ 90), so each object colour (some
    /// channel ≥ 190) stands out from every background.
    /// </summary>
    public static IReadOnlyList<Rgb> BackgroundTones { get; } =
        [new(22, 22, 26), new(52, 52, 58), new(46, 36, 28), new(22, 32, 52), new(30, 46, 32), new(50, 30, 46)];

    /// <summary>How much lighter a pattern's second tone is than its first, per channel.</summary>
    public const int PatternContrast = 20;

    /// <summary>The RGB of an object colour.</summary>
    public static Rgb Of(Colour colour) => colours[(int)colour];

    /// <summary>The second tone of a pattern on <paramref name="tone"/>.</summary>
    public static Rgb Lighter(Rgb tone) => new((byte)(tone.R + PatternContrast), (byte)(tone.G + PatternContrast), (byte)(tone.B + PatternContrast));
}

/// <summary>Sizes and spacing of the world, in fractions of the frame, and the 3×3 grid.</summary>
public static class WorldGeometry
{
    /// <summary>Radius of a small object (of the frame's shorter side): 7 pixels across at 32×32.</summary>
    public const double SmallRadius = 0.11;
    /// <summary>Radius of a big object.</summary>
    public const double BigRadius = 0.17;
    /// <summary>Least free space between two objects' discs at a tick.</summary>
    public const double Gap = 0.03;
    /// <summary>Least free space between an object's disc and the frame's border at a tick.</summary>
    public const double Margin = 0.02;

    /// <summary>The radius of a size.</summary>
    public static double RadiusOf(Size size) => size == Size.Small ? SmallRadius : BigRadius;

    /// <summary>The grid cell holding (<paramref name="x"/>, <paramref name="y"/>).</summary>
    public static Region RegionOf(double x, double y) => (Region)(3 * Third(y) + Third(x));

    static int Third(double coordinate) => coordinate < 1.0 / 3 ? 0 : coordinate < 2.0 / 3 ? 1 : 2;

    /// <summary>How far (<paramref name="x"/>, <paramref name="y"/>) is from the nearest line of the 3×3 grid.</summary>
    public static double GridLineDistance(double x, double y) =>
        Math.Min(Math.Min(Math.Abs(x - 1.0 / 3), Math.Abs(x - 2.0 / 3)), Math.Min(Math.Abs(y - 1.0 / 3), Math.Abs(y - 2.0 / 3)));

    /// <summary>Whether two objects' discs at these centres keep <see cref="Gap"/> between them.</summary>
    public static bool Apart(double x1, double y1, double radius1, double x2, double y2, double radius2)
    {
        double dx = x1 - x2, dy = y1 - y2, least = radius1 + radius2 + Gap;
        return dx * dx + dy * dy >= least * least;
    }

    /// <summary>The least and greatest centre coordinate that keeps a disc of <paramref name="radius"/> inside the frame with <see cref="Margin"/>.</summary>
    public static (double Low, double High) CentreRange(double radius) => (radius + Margin, 1 - radius - Margin);

    /// <summary>Where an object of <paramref name="radius"/> at (<paramref name="x"/>, <paramref name="y"/>) is just out of sight beyond <paramref name="edge"/>.</summary>
    public static (double X, double Y) Outside(Edge edge, double x, double y, double radius) => edge switch
    {
        Edge.Left => (-radius, y),
        Edge.Right => (1 + radius, y),
        Edge.Top => (x, -radius),
        _ => (x, 1 + radius),
    };

    /// <summary>The edge nearest to (<paramref name="x"/>, <paramref name="y"/>) (the way out of a leaving object).</summary>
    public static Edge NearestEdge(double x, double y)
    {
        double left = x, right = 1 - x, top = y, bottom = 1 - y;
        double least = Math.Min(Math.Min(left, right), Math.Min(top, bottom));
        return least == left ? Edge.Left : least == right ? Edge.Right : least == top ? Edge.Top : Edge.Bottom;
    }
}
