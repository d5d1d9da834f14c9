namespace VidKV.World;

/// <summary>The shapes of the world's objects, visually distinct at 32×32 (<see cref="WorldRenderer"/> draws them).</summary>
public enum Shape
{
    /// <summary>A circle.</summary>
    Circle,
    /// <summary>A square.</summary>
    Square,
    /// <summary>A triangle (pointing up).</summary>
    Triangle,
    /// <summary>A star (five points).</summary>
    Star,
    /// <summary>A cross (a plus sign).</summary>
    Cross,
    /// <summary>A ring.</summary>
    Ring,
}

/// <summary>The colours of the world's objects, distinct in RGB and from every background (<see cref="WorldPalette"/>).</summary>
public enum Colour
{
    /// <summary>"red".</summary>
    Red,
    /// <summary>"green".</summary>
    Green,
    /// <summary>"blue".</summary>
    Blue,
    /// <summary>"yellow".</summary>
    Yellow,
    /// <summary>"purple".</summary>
    Purple,
    /// <summary>"orange".</summary>
    Orange,
    /// <summary>"white".</summary>
    White,
    /// <summary>"cyan".</summary>
    Cyan,
}

/// <summary>The two sizes of objects (radii in <see cref="WorldGeometry"/>).</summary>
public enum Size
{
    /// <summary>"small": radius 0.11 of the shorter side.</summary>
    Small,
    /// <summary>"big": radius 0.17 of the shorter side.</summary>
    Big,
}

/// <summary>The cells of a 3×3 grid over the frame, in reading order: where an object is, as words.</summary>
public enum Region
{
    /// <summary>"top left".</summary>
    TopLeft,
    /// <summary>"top".</summary>
    Top,
    /// <summary>"top right".</summary>
    TopRight,
    /// <summary>"left".</summary>
    Left,
    /// <summary>"center".</summary>
    Center,
    /// <summary>"right".</summary>
    Right,
    /// <summary>"bottom left".</summary>
    BottomLeft,
    /// <summary>"bottom".</summary>
    Bottom,
    /// <summary>"bottom right".</summary>
    BottomRight,
}

/// <summary>A side of the frame: where an object enters from or leaves to.</summary>
public enum Edge
{
    /// <summary>The left side.</summary>
    Left,
    /// <summary>The right side.</summary>
    Right,
    /// <summary>The top side.</summary>
    Top,
    /// <summary>The bottom side.</summary>
    Bottom,
}

/// <summary>
/// Every word the world says, in one place: the names of shapes, colours, sizes and grid cells, the words of narrations,
/// questions and answers, and the symbols (digits, <c>:</c> of mm:ss, punctuation). A model's vocabulary is built from
/// <see cref="Vocabulary"/>; a test checks that every narration, question and answer splits into it.
/// </summary>
public static class WorldWords
{
    /// <summary>Shape names, indexed by <see cref="World.Shape"/>.</summary>
    public static IReadOnlyList<string> Shapes { get; } = ["circle", "square", "triangle", "star", "cross", "ring"];
    /// <summary>Colour names, indexed by <see cref="World.Colour"/>.</summary>
    public static IReadOnlyList<string> Colours { get; } = ["red", "green", "blue", "yellow", "purple", "orange", "white", "cyan"];
    /// <summary>Size names, indexed by <see cref="World.Size"/>.</summary>
    public static IReadOnlyList<string> Sizes { get; } = ["small", "big"];
    /// <summary>Grid cell names (one or two words), indexed by <see cref="World.Region"/>.</summary>
    public static IReadOnlyList<string> Regions { get; } = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"];

    /// <summary>The other words of narrations ("a small red circle entered."), questions and answers.</summary>
    public static IReadOnlyList<string> TemplateWords { get; } =
    [
        "a", "the", "and", "or", "at", "to", "entered", "left", "started", "moving", "stopped", "changed", "scene",
        "what", "which", "where", "when", "how", "many", "is", "are", "was", "did", "there", "on", "screen", "colour",
        "objects", "happened", "enter", "leave", "first", "nothing",
    ];

    /// <summary>Digits (counts, mm:ss) and punctuation, each its own token.</summary>
    public static IReadOnlyList<string> Symbols { get; } = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", ":", ".", ",", "?"];

    /// <summary>Every word and symbol once: shapes, colours, sizes, grid words, template words, symbols, in that order.</summary>
    public static IReadOnlyList<string> Vocabulary { get; } = [.. Shapes.Concat(Colours).Concat(Sizes)
        .Concat(Regions.SelectMany(r => r.Split(' '))).Concat(TemplateWords).Concat(Symbols).Distinct()];

    /// <summary>The name of a shape.</summary>
    public static string Of(Shape shape) => Shapes[(int)shape];
    /// <summary>The name of a colour.</summary>
    public static string Of(Colour colour) => Colours[(int)colour];
    /// <summary>The name of a size.</summary>
    public static string Of(Size size) => Sizes[(int)size];
    /// <summary>The name of a grid cell.</summary>
    public static string Of(Region region) => Regions[(int)region];

    /// <summary>A tick as stream time "mm:ss" (one tick is one second; minutes grow past two digits after 99:59).</summary>
    public static string Time(int tick)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tick);
        return $"{tick / 60:00}:{tick % 60:00}";
    }

    /// <summary>
    /// <paramref name="text"/> as vocabulary tokens: words split at spaces, each digit and punctuation mark on its own
    /// ("at 01:05." → at, 0, 1, :, 0, 5, .). A piece outside <see cref="Vocabulary"/> comes out as it is, for the caller to reject.
    /// </summary>
    public static IEnumerable<string> Split(string text)
    {
        int start = -1;
        for (int i = 0; i <= text.Length; i++)
        {
            char c = i < text.Length ? text[i] : ' ';
            bool symbol = char.IsAsciiDigit(c) || c is ':' or '.' or ',' or '?';
            if (c == ' ' || symbol)
            {
                if (start >= 0) yield return text[start..i];
                start = -1;
                if (symbol) yield return c.ToString();
            }
            else if (start < 0) start = i;
        }
    }
}
