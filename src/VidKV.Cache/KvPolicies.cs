using System.Text.Json;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>A policy spec or config that cannot be used; the message names the field and the value.</summary>
public sealed class KvConfigException(string message) : ArgumentException(message);

/// <summary>
/// Policies built from spec strings: <c>name[:option=value[,option=value…]]</c>, and <c>reducer+retriever</c> to
/// compose. The names, options and defaults are the registry's (<see cref="All"/>, in KvPolicyRegistry.cs). A budget
/// given on the command line or in a config fills in any policy's missing budget.
/// </summary>
internal static partial class KvPolicies
{
    /// <summary>The registered policy <paramref name="name"/> (or one of its aliases; case-insensitive), or null.</summary>
    public static KvPolicyDescriptor? Find(string name)
    {
        name = name.Trim().ToLowerInvariant();
        return All.FirstOrDefault(d => d.Matches(name));
    }

    public static KvPolicy Parse(string spec, int? budget = null)
    {
        if (string.IsNullOrWhiteSpace(spec)) throw new KvConfigException("policy: empty spec");
        var parts = spec.Split('+', StringSplitOptions.TrimEntries);
        KvPolicy policy = ParseOne(parts[^1], budget);
        for (int i = parts.Length - 2; i >= 0; i--) policy = new ComposedPolicy(ParseOne(parts[i], budget), policy);
        return policy;
    }

    /// <summary>
    /// Whether the policies of <paramref name="spec"/> take a budget given apart from the spec (<c>--budget</c>, a
    /// config's <c>budget</c>): some option whose default comes from it is left out. A spec it cannot parse is false.
    /// </summary>
    public static bool ReadsBudget(string spec)
    {
        foreach (string part in spec.Split('+', StringSplitOptions.TrimEntries))
        {
            if (Describe(part) is not var (descriptor, given)) return false;
            if (descriptor.Options.Any(o => o.DefaultText.StartsWith("--budget", StringComparison.Ordinal) && !given.Contains(o.Name))) return true;
        }
        return false;
    }

    /// <summary>
    /// <paramref name="spec"/> with <paramref name="option"/>=<paramref name="value"/> added to each of its policies that
    /// has that option and leaves it out (a value the spec gives stays); null when none does, or the spec cannot be parsed.
    /// </summary>
    public static string? WithDefaultOption(string spec, string option, string value)
    {
        var parts = spec.Split('+', StringSplitOptions.TrimEntries);
        bool changed = false;
        for (int i = 0; i < parts.Length; i++)
        {
            if (Describe(parts[i]) is not var (descriptor, given)) return null;
            if (!descriptor.Options.Any(o => o.Name == option) || given.Contains(option)) continue;
            parts[i] += (parts[i].Contains(':') ? "," : ":") + option + "=" + value;
            changed = true;
        }
        return changed ? string.Join('+', parts) : null;
    }

    /// <summary>
    /// The value of <paramref name="option"/> in one spec part (no <c>+</c>): the one it gives, else the registry's default
    /// text; null when the policy is unknown or has no such option.
    /// </summary>
    public static string? OptionText(string part, string option)
    {
        if (Describe(part) is not var (descriptor, given) || descriptor.Options.FirstOrDefault(o => o.Name == option) is not { } known) return null;
        if (!given.Contains(option)) return known.DefaultText;
        return part[(part.IndexOf(':') + 1)..].Split(',', StringSplitOptions.TrimEntries)
            .Select(item => item.Split('=', 2)).First(kv => kv[0].Trim().Equals(option, StringComparison.OrdinalIgnoreCase))[^1].Trim();
    }

    /// <summary>The registered policy of one spec part and the options it gives (lower case); null when the name is unknown.</summary>
    static (KvPolicyDescriptor Descriptor, HashSet<string> Given)? Describe(string part)
    {
        int colon = part.IndexOf(':');
        if (Find(colon < 0 ? part : part[..colon]) is not { } descriptor) return null;
        var given = colon < 0 ? [] : part[(colon + 1)..].Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(item => item.Split('=')[0].Trim().ToLowerInvariant()).ToHashSet();
        return (descriptor, given);
    }

    static KvPolicy ParseOne(string spec, int? budget)
    {
        int colon = spec.IndexOf(':');
        string name = (colon < 0 ? spec : spec[..colon]).Trim().ToLowerInvariant();
        var descriptor = Find(name)
            ?? throw new KvConfigException($"policy '{name}': unknown policy (known: {string.Join(", ", All.Select(d => d.Name))})");
        return descriptor.Create(colon < 0 ? "" : spec[(colon + 1)..], budget);
    }
}

/// <summary>
/// A paged KV cache configuration, from code or a JSON file:
/// <code>
/// { "page_size": 32, "type": "f16", "budget": 2048, "default": "freekv",
///   "layers": { "0-1": "full" }, "heads": { "5.1": "sinkwindow:window=256" },
///   "max_hot_pages": 0, "cold_path": "/tmp/vidkv-cold.bin", "max_cold_bytes": 0, "cold_mapped": true,
///   "positions": "original" }
/// </code>
/// <c>layers</c> keys are a layer or an inclusive range; <c>heads</c> keys are layer.kvHead. Later entries win.
/// </summary>
public sealed record KvCacheConfig
{
    /// <summary>Tokens per page: 16, 32 or 64 (<see cref="PagedKvOptions.PageSize"/>).</summary>
    public int PageSize { get; init; } = 32;
    /// <summary>Element type of stored keys and values: f16, f32 or q8_0.</summary>
    public GgmlType Type { get; init; } = GgmlType.F16;
    /// <summary>Tokens per head for any policy whose spec gives no budget; null leaves each policy its own default.</summary>
    public int? Budget { get; init; }
    /// <summary>Policy spec for every (layer, KV head) not overridden (<c>name[:option=value,…]</c>, <c>a+b</c> to compose).</summary>
    public string Default { get; init; } = "full";
    /// <summary>Per-layer overrides: layers <c>First..Last</c> (inclusive) run <c>Spec</c>.</summary>
    public IReadOnlyList<(int First, int Last, string Spec)> Layers { get; init; } = [];
    /// <summary>Per-head overrides: KV head <c>Head</c> of layer <c>Layer</c> runs <c>Spec</c>; applied after <see cref="Layers"/>.</summary>
    public IReadOnlyList<(int Layer, int Head, string Spec)> Heads { get; init; } = [];
    /// <summary>Most pages (of one layer and KV head each, not tokens) in RAM at once; 0 for no limit.</summary>
    public int MaxHotPages { get; init; }
    /// <summary>File of the cold tier that pages moved out of RAM go to; null keeps every page in RAM.</summary>
    public string? ColdPath { get; init; }
    /// <summary>Most bytes the cold file holds; 0 for no limit (oldest pages dropped first, see <see cref="PagedKvOptions.MaxColdBytes"/>).</summary>
    public long MaxColdBytes { get; init; }
    /// <summary>Read cold pages in place through a read-only mapping (default) rather than copying them back; see <see cref="PagedKvOptions.MapColdTier"/>.</summary>
    public bool ColdMapped { get; init; } = true;
    /// <summary>
    /// Whether the rows a policy keeps stay at their original RoPE positions (default) or take compact ones after
    /// evictions, StreamingLLM-style (<see cref="KvPositions.Compact"/>; one-component RoPE models only). Caches get
    /// the model's key rotation from <see cref="CreateCache(KvSequence, int, KeyRotation?)"/>.
    /// </summary>
    public KvPositions Positions { get; init; } = KvPositions.Original;

    /// <summary>Parses a <c>--positions</c> or config value: <c>original</c> or <c>compact</c> (case-insensitive); the error names the value.</summary>
    public static KvPositions ParsePositions(string value) => value.Trim().ToLowerInvariant() switch
    {
        "original" => KvPositions.Original,
        "compact" => KvPositions.Compact,
        _ => throw new KvConfigException($"positions: '{value}' is not original or compact"),
    };

    /// <summary>The <c>--positions</c> and config name of <paramref name="positions"/>: <c>original</c> or <c>compact</c>.</summary>
    public static string PositionsName(KvPositions positions) => positions == KvPositions.Compact ? "compact" : "original";

    /// <summary>Reads a JSON config; every error names the file, the field and the value.</summary>
    public static KvCacheConfig Load(string path)
    {
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new KvConfigException($"{path}: cannot read: {e.Message}"); }
        try { return Parse(text, path); }
        catch (JsonException e) { throw new KvConfigException($"{path}: not valid JSON: {e.Message}"); }
    }

    /// <summary>Reads a JSON config from text; <paramref name="source"/> names it in error messages.</summary>
    public static KvCacheConfig Parse(string json, string source = "config")
    {
        using var document = JsonDocument.Parse(json);
        var root = document.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new KvConfigException($"{source}: the top level must be an object");
        var config = new KvCacheConfig();
        var layers = new List<(int, int, string)>();
        var heads = new List<(int, int, string)>();
        foreach (var field in root.EnumerateObject())
        {
            string where = $"{source}: field '{field.Name}'";
            switch (field.Name)
            {
                case "page_size": config = config with { PageSize = Integer(field.Value, where) }; break;
                case "type":
                    config = config with
                    {
                        Type = String(field.Value, where) switch
                        {
                            "f16" => GgmlType.F16, "f32" => GgmlType.F32, "q8_0" => GgmlType.Q8_0,
                            var other => throw new KvConfigException($"{where}: '{other}' is not a KV type (f16, f32, q8_0)"),
                        },
                    };
                    break;
                case "budget": config = config with { Budget = Integer(field.Value, where) }; break;
                case "default": config = config with { Default = String(field.Value, where) }; break;
                case "max_hot_pages": config = config with { MaxHotPages = Integer(field.Value, where) }; break;
                case "cold_path": config = config with { ColdPath = String(field.Value, where) }; break;
                case "max_cold_bytes":
                    config = config with { MaxColdBytes = field.Value.ValueKind == JsonValueKind.Number && field.Value.TryGetInt64(out long bytes) && bytes >= 0 ? bytes : throw new KvConfigException($"{where}: {field.Value.GetRawText()} is not a byte count ≥ 0") };
                    break;
                case "cold_mapped":
                    config = config with
                    {
                        ColdMapped = field.Value.ValueKind switch
                        {
                            JsonValueKind.True => true, JsonValueKind.False => false,
                            _ => throw new KvConfigException($"{where}: {field.Value.GetRawText()} is not true or false"),
                        },
                    };
                    break;
                case "positions":
                    try { config = config with { Positions = ParsePositions(String(field.Value, where)) }; }
                    catch (KvConfigException e) { throw new KvConfigException($"{where}: {e.Message}"); }
                    break;
                case "layers":
                    foreach (var entry in Object(field.Value, where))
                    {
                        var parts = entry.Name.Split('-');
                        if (parts.Length > 2 || !int.TryParse(parts[0], out int first) || !int.TryParse(parts[^1], out int last) || first > last || first < 0)
                            throw new KvConfigException($"{where}: key '{entry.Name}' is not a layer or a layer range like 0-3");
                        layers.Add((first, last, String(entry.Value, $"{where}.{entry.Name}")));
                    }
                    break;
                case "heads":
                    foreach (var entry in Object(field.Value, where))
                    {
                        var parts = entry.Name.Split('.');
                        if (parts.Length != 2 || !int.TryParse(parts[0], out int layer) || !int.TryParse(parts[1], out int head) || layer < 0 || head < 0)
                            throw new KvConfigException($"{where}: key '{entry.Name}' is not layer.head like 3.1");
                        heads.Add((layer, head, String(entry.Value, $"{where}.{entry.Name}")));
                    }
                    break;
                default: throw new KvConfigException($"{source}: unknown field '{field.Name}' (known: page_size, type, budget, default, layers, heads, max_hot_pages, cold_path, max_cold_bytes, cold_mapped, positions)");
            }
        }
        if (config.PageSize is not (16 or 32 or 64)) throw new KvConfigException($"{source}: field 'page_size': {config.PageSize} is not 16, 32 or 64");
        return config with { Layers = layers, Heads = heads };
    }

    static int Integer(JsonElement value, string where) =>
        value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out int n) ? n : throw new KvConfigException($"{where}: {value.GetRawText()} is not an integer");

    static string String(JsonElement value, string where) =>
        value.ValueKind == JsonValueKind.String ? value.GetString()! : throw new KvConfigException($"{where}: {value.GetRawText()} is not a string");

    static JsonElement.ObjectEnumerator Object(JsonElement value, string where) =>
        value.ValueKind == JsonValueKind.Object ? value.EnumerateObject() : throw new KvConfigException($"{where}: {value.GetRawText()} is not an object");

    /// <summary>The policy map for a model of this shape; specs are parsed here, so a bad one fails before any work.</summary>
    public KvPolicyMap BuildPolicies(int layerCount, int kvHeadCount)
    {
        var map = new KvPolicyMap(layerCount, kvHeadCount, KvPolicies.Parse(Default, Budget));
        foreach (var (first, last, spec) in Layers)
        {
            if (last >= layerCount) throw new KvConfigException($"field 'layers': layer {last} is past the model's {layerCount} layers");
            var policy = KvPolicies.Parse(spec, Budget);
            for (int l = first; l <= last; l++) for (int h = 0; h < kvHeadCount; h++) map[l, h] = policy;
        }
        foreach (var (layer, head, spec) in Heads)
        {
            if (layer >= layerCount || head >= kvHeadCount)
                throw new KvConfigException($"field 'heads': {layer}.{head} is past the model's {layerCount} layers × {kvHeadCount} KV heads");
            map[layer, head] = KvPolicies.Parse(spec, Budget);
        }
        return map;
    }

    /// <summary>A cache for a model of this shape, over a store of its own (disposed with the cache).</summary>
    /// <param name="rotation">the model's key rotation, which <see cref="KvPositions.Compact"/> positions need (null for an M-RoPE model)</param>
    public PagedKvCache CreateCache(int layerCount, int kvHeadCount, int headDim, int contextLength = int.MaxValue, KeyRotation? rotation = null)
    {
        var policies = BuildPolicies(layerCount, kvHeadCount);
        var compact = CompactRotation(rotation);
        return new PagedKvCache(new PagedKvStore(StoreOptions(layerCount, kvHeadCount, headDim, policies.Metadata)), policies, contextLength, compact);
    }

    /// <summary>The rotation a cache compacts positions with: null under <see cref="KvPositions.Original"/>; an error when compact positions have no rotation to use.</summary>
    KeyRotation? CompactRotation(KeyRotation? rotation) => Positions != KvPositions.Compact ? null
        : rotation ?? throw new KvConfigException("positions 'compact': the model's key rotation is needed (compact positions are not supported for M-RoPE models, whose keys turn by several position components)");

    /// <summary>
    /// A page pool for many sequences of a model of this shape (the KV manager's store), keeping the metadata this
    /// config's policies read; give each sequence a cache with <see cref="CreateCache(KvSequence, int, KeyRotation?)"/>.
    /// </summary>
    /// <param name="extraMetadata">page metadata to keep beyond what this config's policies read, so sequences may run
    /// other policies that read it (<see cref="PagedKvCache(KvSequence, KvPolicyMap, int, KeyRotation?)"/>)</param>
    public PagedKvStore CreateStore(int layerCount, int kvHeadCount, int headDim, KvMetadata extraMetadata = KvMetadata.None) =>
        new(StoreOptions(layerCount, kvHeadCount, headDim, BuildPolicies(layerCount, kvHeadCount).Metadata | extraMetadata));

    /// <summary>A cache over <paramref name="sequence"/> (of a store from <see cref="CreateStore"/>) with its own policies from this config.</summary>
    /// <param name="rotation">the model's key rotation, which <see cref="KvPositions.Compact"/> positions need (null for an M-RoPE model)</param>
    public PagedKvCache CreateCache(KvSequence sequence, int contextLength = int.MaxValue, KeyRotation? rotation = null)
    {
        var compact = CompactRotation(rotation);
        return new(sequence, BuildPolicies(sequence.Store.LayerCount, sequence.Store.KvHeadCount), contextLength, compact);
    }

    PagedKvOptions StoreOptions(int layerCount, int kvHeadCount, int headDim, KvMetadata metadata) => new()
    {
        LayerCount = layerCount, KvHeadCount = kvHeadCount, HeadDim = headDim, PageSize = PageSize, KeyType = Type, ValueType = Type,
        MaxHotPages = MaxHotPages, ColdPath = ColdPath, MaxColdBytes = MaxColdBytes, MapColdTier = ColdMapped, Metadata = metadata,
    };

    /// <summary>
    /// Parses every policy spec (the default, each layer range's and each head's) without a model's shape, so a bad spec
    /// fails before any model loads; whether the layers and heads exist is <see cref="BuildPolicies"/>'s check.
    /// </summary>
    public void ValidateSpecs()
    {
        KvPolicies.Parse(Default, Budget);
        foreach (var (_, _, spec) in Layers) KvPolicies.Parse(spec, Budget);
        foreach (var (_, _, spec) in Heads) KvPolicies.Parse(spec, Budget);
    }
}
