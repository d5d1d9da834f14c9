using System.Globalization;

namespace VidKV.Cache;

/// <summary>
/// A registered KV policy (listed in <see cref="KvPolicies.All"/>): the name a spec uses, its aliases, one line saying
/// what it does and which paper it follows, its typed options with their defaults, and the factory that builds the
/// policy from parsed option values. Spec parsing, <c>--help</c>, <c>vidkv kv policies</c> (the README's table) and the
/// tests' policy theories all read descriptors, so they cannot disagree.
/// </summary>
/// <param name="create">builds the policy from values already parsed and checked against <paramref name="options"/>;
/// an <see cref="ArgumentOutOfRangeException"/> it throws becomes a <see cref="KvConfigException"/> naming the policy</param>
internal sealed class KvPolicyDescriptor(string name, string doc, IReadOnlyList<KvPolicyOption> options, Func<KvPolicyArguments, KvPolicy> create)
{
    public string Name { get; } = name;
    /// <summary>Other names a spec may use for this policy.</summary>
    public IReadOnlyList<string> Aliases { get; init; } = [];
    /// <summary>
    /// Options of an example spec with every option that has a default set away from it (<c>sinks=3,window=61</c>; no
    /// required ones): shown with the policy, and the tests build the policy from it and parse its name back.
    /// </summary>
    public string Example { get; init; } = "";
    /// <summary>One line: what the policy does, and the paper (<c>StreamingLLM (Xiao et al., 2023): …</c>).</summary>
    public string Doc { get; } = doc;
    public IReadOnlyList<KvPolicyOption> Options { get; } = options;

    /// <summary>Whether <paramref name="name"/> (lower case) names this policy.</summary>
    public bool Matches(string name) => name == Name || Aliases.Contains(name);

    /// <summary>The options as help shows them: <c>budget, reuse=1, dense=0</c>, where a bare name defaults to --budget.</summary>
    public string Synopsis => string.Join(", ", Options.Select(o => o.Required ? $"{o.Name} (required)" : o.DefaultText == "--budget" ? o.Name : $"{o.Name}={o.DefaultText}"));

    /// <summary>Builds the policy from <c>option=value,…</c> text; <paramref name="budget"/> fills in budget defaults.</summary>
    public KvPolicy Create(string optionText, int? budget)
    {
        var arguments = new KvPolicyArguments(this, optionText, budget);
        try { return create(arguments); }
        catch (ArgumentOutOfRangeException e) { throw new KvConfigException($"policy '{Name}': {e.Message.Split(" (Parameter")[0]}"); }
    }
}

/// <summary>What an option's value is: an integer, a number, an on/off/auto switch, or text (a file name).</summary>
internal enum KvOptionKind { Int, Float, Switch, String }

/// <summary>
/// One option of a policy: its name, kind, what an absent option means (a constant, a value derived from the budget
/// or from another option, the policy's own rule, or nothing: required) and one line of doc.
/// </summary>
internal sealed class KvPolicyOption
{
    readonly Func<KvPolicyArguments, object?>? fallback;
    readonly bool mayBeAbsent;

    KvPolicyOption(string name, KvOptionKind kind, string defaultText, string doc, Func<KvPolicyArguments, object?>? fallback, bool mayBeAbsent, string? requiredHint)
    {
        Name = name;
        Kind = kind;
        DefaultText = defaultText;
        Doc = doc;
        this.fallback = fallback;
        this.mayBeAbsent = mayBeAbsent;
        RequiredHint = requiredHint;
    }

    public string Name { get; }
    public KvOptionKind Kind { get; }
    /// <summary>The default as docs show it: <c>4</c>, <c>budget/4</c>, <c>--budget</c> (the command line's budget), <c>auto</c>; empty when required.</summary>
    public string DefaultText { get; }
    /// <summary>Whether a spec must give the option (it has no default at all, not even the budget).</summary>
    public bool Required => fallback == null;
    /// <summary>What the missing-option error adds after "is required".</summary>
    public string? RequiredHint { get; }
    public string Doc { get; }

    /// <summary>An integer with a fixed default.</summary>
    public static KvPolicyOption Int(string name, int fallback, string doc) =>
        new(name, KvOptionKind.Int, fallback.ToString(CultureInfo.InvariantCulture), doc, _ => fallback, false, null);

    /// <summary>
    /// An integer whose default is computed from the budget or from other options (<c>budget − sinks</c>); the
    /// computation returns null when the budget it needs is missing, which makes the option required.
    /// </summary>
    public static KvPolicyOption Int(string name, string defaultText, Func<KvPolicyArguments, int?> fallback, string doc) =>
        new(name, KvOptionKind.Int, defaultText, doc, a => fallback(a), false, "(or give --budget)");

    /// <summary>The token budget: <c>--budget</c> (or the config's budget) when absent, else required.</summary>
    public static KvPolicyOption Budget(string doc) => Int("budget", "--budget", a => a.Budget, doc);

    /// <summary>An integer that, when absent, the policy's constructor works out itself (gets null); <paramref name="defaultText"/> says how.</summary>
    public static KvPolicyOption PolicyInt(string name, string defaultText, string doc) =>
        new(name, KvOptionKind.Int, defaultText, doc, _ => null, true, null);

    public static KvPolicyOption Float(string name, float fallback, string doc) =>
        new(name, KvOptionKind.Float, fallback.ToString(CultureInfo.InvariantCulture), doc, _ => fallback, false, null);

    /// <summary>On/off: <c>1</c>/<c>0</c>, <c>true</c>/<c>false</c>, <c>on</c>/<c>off</c>; absent or <c>auto</c> is null (the policy decides).</summary>
    public static KvPolicyOption Switch(string name, string doc) => new(name, KvOptionKind.Switch, "auto", doc, _ => null, true, null);

    /// <summary>Text that must be given; <paramref name="requiredHint"/> follows "is required" in the error (<c>(a head pattern file, …)</c>).</summary>
    public static KvPolicyOption RequiredString(string name, string requiredHint, string doc) =>
        new(name, KvOptionKind.String, "", doc, null, false, requiredHint);

    /// <summary>The option's value in <paramref name="arguments"/> when the spec does not give it; throws when it is required.</summary>
    internal object? Fallback(KvPolicyArguments arguments, string policy)
    {
        object? value = fallback?.Invoke(arguments);
        if (value == null && !mayBeAbsent)
            throw new KvConfigException($"policy '{policy}': option '{Name}' is required" + (RequiredHint is string hint ? " " + hint : ""));
        return value;
    }

    /// <summary>Parses a value the spec gave; the error names the policy, the option and the text.</summary>
    internal object? ParseValue(string text, string policy)
    {
        switch (Kind)
        {
            case KvOptionKind.Int:
                return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int integer) ? integer
                    : throw new KvConfigException($"policy '{policy}': option '{Name}': '{text}' is not an integer");
            case KvOptionKind.Float:
                return float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out float number) ? number
                    : throw new KvConfigException($"policy '{policy}': option '{Name}': '{text}' is not a number");
            case KvOptionKind.Switch:
                return text.ToLowerInvariant() switch
                {
                    "auto" => null,
                    "1" or "true" or "on" => true,
                    "0" or "false" or "off" => false,
                    _ => throw new KvConfigException($"policy '{policy}': option '{Name}': '{text}' is not 1, 0 or auto"),
                };
            default:
                return text;
        }
    }
}

/// <summary>
/// The option values a policy's factory gets: every option of its descriptor, given in the spec or defaulted. Unknown
/// options, values of the wrong kind and missing required options were reported before the factory runs.
/// </summary>
internal sealed class KvPolicyArguments
{
    readonly KvPolicyDescriptor descriptor;
    readonly Dictionary<string, object?> values = [];
    readonly HashSet<string> resolving = [];

    internal KvPolicyArguments(KvPolicyDescriptor descriptor, string text, int? budget)
    {
        this.descriptor = descriptor;
        Budget = budget;
        var given = new Dictionary<string, string>();
        foreach (var item in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = item.IndexOf('=');
            if (eq <= 0) throw new KvConfigException($"policy '{descriptor.Name}': option '{item}' is not name=value");
            given[item[..eq].Trim().ToLowerInvariant()] = item[(eq + 1)..].Trim();
        }
        // Unknown options first: a misspelt one is the likelier mistake than the missing option it leaves behind.
        foreach (var (name, value) in given)
            if (!descriptor.Options.Any(o => o.Name == name))
                throw new KvConfigException($"policy '{descriptor.Name}': unknown option '{name}' (value '{value}'); "
                    + (descriptor.Options.Count == 0 ? "it takes none" : $"its options: {string.Join(", ", descriptor.Options.Select(o => o.Name))}"));
        foreach (var option in descriptor.Options)
            if (given.TryGetValue(option.Name, out var value)) values[option.Name] = option.ParseValue(value, descriptor.Name);
        // Defaults may read other options (window = budget − sinks), so each is worked out when first needed.
        foreach (var option in descriptor.Options) Value(option.Name);
    }

    /// <summary>The budget from the command line or config (null when none was given).</summary>
    public int? Budget { get; }

    public int Int(string name) => (int)(Value(name, KvOptionKind.Int)
        ?? throw new InvalidOperationException($"option '{name}' of policy '{descriptor.Name}' has no value: read it with OptionalInt"));

    /// <summary>An integer option declared with <see cref="KvPolicyOption.PolicyInt"/>: null when absent.</summary>
    public int? OptionalInt(string name) => (int?)Value(name, KvOptionKind.Int);

    public float Float(string name) => (float)Value(name, KvOptionKind.Float)!;

    /// <summary>A switch: true, false, or null for auto.</summary>
    public bool? Switch(string name) => (bool?)Value(name, KvOptionKind.Switch);

    public string String(string name) => (string)Value(name, KvOptionKind.String)!;

    object? Value(string name, KvOptionKind kind)
    {
        var option = descriptor.Options.FirstOrDefault(o => o.Name == name);
        if (option?.Kind != kind)
            throw new InvalidOperationException($"policy '{descriptor.Name}' has no {kind} option '{name}'");
        return Value(name);
    }

    object? Value(string name)
    {
        if (values.TryGetValue(name, out var value)) return value;
        if (!resolving.Add(name)) throw new InvalidOperationException($"policy '{descriptor.Name}': the default of option '{name}' depends on itself");
        return values[name] = descriptor.Options.First(o => o.Name == name).Fallback(this, descriptor.Name);
    }
}
