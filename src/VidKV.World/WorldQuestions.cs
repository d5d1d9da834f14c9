using System.Globalization;

namespace VidKV.World;

/// <summary>The question templates.</summary>
public enum QuestionKind
{
    /// <summary>"what is on the screen?" → "a big red circle and a small blue square" (reading order; "nothing" when empty).</summary>
    Objects,
    /// <summary>"how many objects are there?" → "2".</summary>
    Count,
    /// <summary>"what colour is the square?" → "red" (the shape, with its size when needed, names one object on screen).</summary>
    Colour,
    /// <summary>"where is the red square?" → "top left" (asked only of objects clear of the grid's lines).</summary>
    Where,
    /// <summary>"what happened at 00:12?" → the event's narration without its period, or "nothing".</summary>
    Happened,
    /// <summary>"what colour was the square at 00:12?" → "red": the long-range needle.</summary>
    ColourAt,
    /// <summary>"when did the red square enter?" → "at 00:12".</summary>
    WhenEntered,
    /// <summary>"when did the red square leave?" → "at 00:12".</summary>
    WhenLeft,
    /// <summary>"which entered first, the red square or the blue star?" → "the red square" (or "which left first").</summary>
    WhichFirst,
}

/// <summary>
/// A question asked at <see cref="AskTick"/> (after that tick's frame) with its short exact answer, from the world's
/// vocabulary, digits and mm:ss. <see cref="EvidenceTicks"/> are the frames that decide the answer (an event's is the
/// frame before it and its own), so an evaluation can place questions at chosen distances from their evidence.
/// </summary>
public sealed record WorldQuestion(QuestionKind Kind, string Question, string Answer, int AskTick, IReadOnlyList<int> EvidenceTicks)
{
    /// <summary>
    /// The objects (<see cref="WorldObject.Id"/>) the answer is about: the one named, both of a "which first", every one on
    /// screen for "what is on the screen" (in the answer's order) and "how many"; none for "nothing happened" and a scene cut. Where in its
    /// evidence frames the answer is to be read (a trainer can point a model's attention there).
    /// </summary>
    public IReadOnlyList<int> Subjects { get; init; } = [];

    /// <summary>Ticks from the earliest evidence to the question.</summary>
    public int Distance => AskTick - EvidenceTicks.Min();
}

/// <summary>
/// Generates questions about a <see cref="WorldStream"/> up to a tick, each unambiguous: an object is named only when
/// the name fits one object (on screen for questions about a tick; among all that appeared or disappeared up to the
/// question for "when" and "which first"), with its size when colour and shape are not enough, else not asked.
/// </summary>
public static class WorldQuestions
{
    /// <summary>A "where" question needs the object's centre at least this far from a line of the 3×3 grid.</summary>
    public const double WhereMargin = 0.03;

    /// <summary>Questions about the frame at <paramref name="askTick"/>: objects, count, colours, places.</summary>
    public static IEnumerable<WorldQuestion> Now(WorldStream stream, int askTick)
    {
        var state = stream.State(askTick);
        int[] evidence = [askTick];
        var listed = state.Objects.OrderBy(o => (int)o.Region / 3).ThenBy(o => o.X).ToArray();
        var objects = listed.Select(o => $"a {o.Description}").ToArray();
        string list = objects.Length switch
        {
            0 => "nothing",
            1 => objects[0],
            _ => $"{string.Join(", ", objects[..^1])} and {objects[^1]}",
        };
        int[] all = [.. listed.Select(o => o.Id)];
        yield return new WorldQuestion(QuestionKind.Objects, "what is on the screen?", list, askTick, evidence) { Subjects = all };
        yield return new WorldQuestion(QuestionKind.Count, "how many objects are there?", state.Objects.Count.ToString(CultureInfo.InvariantCulture), askTick, evidence) { Subjects = all };
        foreach (var o in state.Objects)
            if (o.ShapeNameAmong(state.ObjectSpan) is { } name)
                yield return new WorldQuestion(QuestionKind.Colour, $"what colour is the {name}?", WorldWords.Of(o.Colour), askTick, evidence) { Subjects = [o.Id] };
        foreach (var o in state.Objects)
            if (WorldGeometry.GridLineDistance(o.X, o.Y) >= WhereMargin)
                yield return new WorldQuestion(QuestionKind.Where, $"where is the {o.NameAmong(state.ObjectSpan)}?", WorldWords.Of(o.Region), askTick, evidence) { Subjects = [o.Id] };
    }

    /// <summary>
    /// Questions whose latest evidence is <paramref name="evidenceTick"/>, asked at <paramref name="askTick"/> (the
    /// needles of a long stream): what happened then, the colour of each object nameable by shape then, and when the
    /// object of an enter or leave then did so.
    /// </summary>
    public static IEnumerable<WorldQuestion> About(WorldStream stream, int evidenceTick, int askTick)
    {
        Check(stream, evidenceTick, askTick);
        if (evidenceTick > 0) yield return Happened(stream, evidenceTick, askTick);
        foreach (var q in ColourAt(stream, evidenceTick, askTick)) yield return q;
        if (stream.EventAt(evidenceTick) is { Kind: WorldEventKind.Enter or WorldEventKind.Leave } e && new History(stream, askTick).Name(e) is { } name)
            yield return When(e, name, askTick);
    }

    /// <summary>"Which entered first" and "which left first" over every pair of nameable enters (or leaves) up to <paramref name="askTick"/>.</summary>
    public static IEnumerable<WorldQuestion> WhichFirst(WorldStream stream, int askTick)
    {
        Check(stream, askTick, askTick);
        var history = new History(stream, askTick);
        foreach (var kind in new[] { WorldEventKind.Enter, WorldEventKind.Leave })
        {
            var named = history.Named(kind);
            for (int i = 0; i < named.Length; i++)
                for (int j = i + 1; j < named.Length; j++)
                    yield return Which(named[i], named[j], askTick);
        }
    }

    /// <summary>Every question askable at <paramref name="askTick"/>: <see cref="Now"/>, <see cref="About"/> each tick up to it, <see cref="WhichFirst"/>.</summary>
    public static IEnumerable<WorldQuestion> All(WorldStream stream, int askTick) =>
        Enum.GetValues<QuestionKind>().SelectMany(kind => OfKind(stream, kind, askTick));

    /// <summary>Every question of one template askable at <paramref name="askTick"/>.</summary>
    public static IEnumerable<WorldQuestion> OfKind(WorldStream stream, QuestionKind kind, int askTick)
    {
        Check(stream, askTick, askTick);
        return kind switch
        {
            QuestionKind.Objects or QuestionKind.Count or QuestionKind.Colour or QuestionKind.Where => Now(stream, askTick).Where(q => q.Kind == kind),
            QuestionKind.Happened => Enumerable.Range(1, askTick).Select(tick => Happened(stream, tick, askTick)),
            QuestionKind.ColourAt => Enumerable.Range(0, askTick + 1).SelectMany(tick => ColourAt(stream, tick, askTick)),
            QuestionKind.WhenEntered or QuestionKind.WhenLeft => new History(stream, askTick).Named(EventOf(kind)).Select(x => When(x.Event, x.Name, askTick)),
            _ => WhichFirst(stream, askTick),
        };
    }

    /// <summary>
    /// One question at <paramref name="askTick"/>, cheap at any stream length: a template drawn uniformly among those
    /// that can be asked, then uniformly what it asks about — an object on screen, a tick (what happened, what colour
    /// was), a nameable enter or leave, a pair of them. Null only when nothing can be asked (never: "what is on the
    /// screen?" always can).
    /// </summary>
    public static WorldQuestion? Sample(WorldStream stream, int askTick, WorldRandom random)
    {
        Check(stream, askTick, askTick);
        History? history = null;
        var kinds = Enum.GetValues<QuestionKind>().ToList();
        while (kinds.Count > 0)
        {
            int index = random.Next(kinds.Count);
            var kind = kinds[index];
            var question = kind switch
            {
                QuestionKind.Objects or QuestionKind.Count or QuestionKind.Colour or QuestionKind.Where => Pick(Now(stream, askTick).Where(q => q.Kind == kind).ToArray()),
                QuestionKind.Happened => askTick > 0 ? Happened(stream, random.Next(1, askTick), askTick) : null,
                // A tick where no object is nameable by its shape alone leaves this template out of the draw.
                QuestionKind.ColourAt => Pick(ColourAt(stream, random.Next(0, askTick), askTick).ToArray()),
                QuestionKind.WhenEntered or QuestionKind.WhenLeft =>
                    Pick((history ??= new History(stream, askTick)).Named(EventOf(kind))) is ({ } e, { } name) ? When(e, name, askTick) : null,
                _ => SampleWhich(history ??= new History(stream, askTick)),
            };
            if (question != null) return question;
            kinds.RemoveAt(index);
        }
        return null;

        T? Pick<T>(T[] items) => items.Length == 0 ? default : items[random.Next(items.Length)];

        WorldQuestion? SampleWhich(History history)
        {
            var pairs = new[] { history.Named(WorldEventKind.Enter), history.Named(WorldEventKind.Leave) }.Where(named => named.Length >= 2).ToArray();
            if (pairs.Length == 0) return null;
            var named = Pick(pairs)!;
            int i = random.Next(named.Length), j = random.Next(named.Length - 1);
            if (j >= i) j++;
            return Which(named[Math.Min(i, j)], named[Math.Max(i, j)], askTick);
        }
    }

    static WorldEventKind EventOf(QuestionKind kind) => kind == QuestionKind.WhenEntered ? WorldEventKind.Enter : WorldEventKind.Leave;

    /// <summary>
    /// Up to <paramref name="count"/> distinct questions (by text) at <paramref name="askTick"/>, drawn by <see cref="Sample"/>
    /// from the question stream of <paramref name="seed"/> (its own sequence, apart from the world's); a short clip may
    /// have fewer, so the draws stop after 20 per question asked for.
    /// </summary>
    public static List<WorldQuestion> SampleDistinct(WorldStream stream, int askTick, ulong seed, int count)
    {
        var random = new WorldRandom(seed ^ 0x5155455354494F4EUL); // "QUESTION"
        var asked = new List<WorldQuestion>();
        for (int draw = 0; asked.Count < count && draw < 20 * count; draw++)
            if (Sample(stream, askTick, random) is { } question && !asked.Any(q => q.Question == question.Question)) asked.Add(question);
        return asked;
    }

    static WorldQuestion Happened(WorldStream stream, int tick, int askTick) =>
        new(QuestionKind.Happened, $"what happened at {WorldWords.Time(tick)}?", stream.Narration(tick)?.TrimEnd('.') ?? "nothing", askTick, [tick - 1, tick])
        {
            Subjects = stream.EventAt(tick)?.Object is { } o ? [o.Id] : [],
        };

    static IEnumerable<WorldQuestion> ColourAt(WorldStream stream, int tick, int askTick)
    {
        var state = stream.State(tick);
        foreach (var o in state.Objects)
            if (o.ShapeNameAmong(state.ObjectSpan) is { } name)
                yield return new WorldQuestion(QuestionKind.ColourAt, $"what colour was the {name} at {WorldWords.Time(tick)}?", WorldWords.Of(o.Colour), askTick, [tick]) { Subjects = [o.Id] };
    }

    static WorldQuestion When(WorldEvent e, string name, int askTick)
    {
        bool entered = e.Kind == WorldEventKind.Enter;
        return new WorldQuestion(entered ? QuestionKind.WhenEntered : QuestionKind.WhenLeft, $"when did the {name} {(entered ? "enter" : "leave")}?",
            $"at {e.Time}", askTick, [e.Tick - 1, e.Tick]) { Subjects = [e.Object!.Value.Id] };
    }

    /// <summary>Which of two enters (or leaves) came first; <paramref name="first"/> is the earlier.</summary>
    static WorldQuestion Which((WorldEvent Event, string Name) first, (WorldEvent Event, string Name) second, int askTick)
    {
        // Which is named first in the question alternates, so the answer is not always the first named.
        var (a, b) = (first.Event.Tick + second.Event.Tick) % 2 == 0 ? (first, second) : (second, first);
        string verb = first.Event.Kind == WorldEventKind.Enter ? "entered" : "left";
        return new WorldQuestion(QuestionKind.WhichFirst, $"which {verb} first, the {a.Name} or the {b.Name}?", $"the {first.Name}", askTick,
            [first.Event.Tick - 1, first.Event.Tick, second.Event.Tick - 1, second.Event.Tick]) { Subjects = [first.Event.Object!.Value.Id, second.Event.Object!.Value.Id] };
    }

    static void Check(WorldStream stream, int evidenceTick, int askTick)
    {
        if (askTick < 0 || askTick >= stream.TickCount) throw new ArgumentOutOfRangeException(nameof(askTick), askTick, $"the stream has ticks 0..{stream.TickCount - 1}");
        if (evidenceTick < 0 || evidenceTick > askTick) throw new ArgumentOutOfRangeException(nameof(evidenceTick), evidenceTick, $"evidence must come at or before the question (tick {askTick})");
    }

    /// <summary>
    /// Every object that appeared up to a tick (at a scene's start or by entering) and every one that disappeared (by
    /// leaving or in a cut), as it was then: an enter (a leave) is named only if its name fits one appearance (disappearance).
    /// </summary>
    sealed class History
    {
        readonly List<WorldObject> appeared = [], disappeared = [];
        readonly List<WorldEvent> events = [];

        public History(WorldStream stream, int askTick)
        {
            appeared.AddRange(stream.State(0).Objects);
            foreach (var e in stream.Events)
            {
                if (e.Tick > askTick) break;
                events.Add(e);
                switch (e.Kind)
                {
                    case WorldEventKind.Enter: appeared.Add(e.Object!.Value); break;
                    case WorldEventKind.Leave: disappeared.Add(e.Object!.Value); break;
                    case WorldEventKind.SceneCut:
                        disappeared.AddRange(stream.State(e.Tick - 1).Objects);
                        appeared.AddRange(stream.State(e.Tick).Objects);
                        break;
                }
            }
        }

        /// <summary>The enters (or leaves) up to the tick that have a name, in time order.</summary>
        public (WorldEvent Event, string Name)[] Named(WorldEventKind kind) =>
            [.. events.Where(e => e.Kind == kind).Select(e => (Event: e, Name: Name(e)!)).Where(x => x.Name != null)];

        public string? Name(WorldEvent e)
        {
            var o = e.Object!.Value;
            var among = e.Kind == WorldEventKind.Enter ? appeared : disappeared;
            if (among.Count(x => x.Colour == o.Colour && x.Shape == o.Shape) == 1) return $"{WorldWords.Of(o.Colour)} {WorldWords.Of(o.Shape)}";
            return among.Count(x => x.Colour == o.Colour && x.Shape == o.Shape && x.Size == o.Size) == 1 ? o.Description : null;
        }
    }
}
