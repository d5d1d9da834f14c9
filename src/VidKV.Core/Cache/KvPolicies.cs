using System.Globalization;
using System.Text.Json;
using VidKV.Tensors;

namespace VidKV.Cache;

/// <summary>A policy spec or config that cannot be used; the message names the field and the value.</summary>
public sealed class KvConfigException(string message) : ArgumentException(message);

/// <summary>
/// The registry of policies, built from spec strings: <c>name[:option=value[,option=value…]]</c>, and
/// <c>reducer+retriever</c> to compose. A budget given on the command line fills in any policy's missing budget.
/// </summary>
public static class KvPolicies
{
    /// <summary>Policy names with their options and defaults.</summary>
    public static readonly (string Name, string Options, string Description)[] Known =
    [
        ("full", "", "read every token (the reference)"),
        ("sinkwindow", "sinks=4, window=budget−sinks", "StreamingLLM: sinks + recent window, evicting the rest"),
        ("quest", "budget, reuse=1, dense=0", "Quest: min/max key pages, top pages by upper bound"),
        ("lserve", "budget=4096, reuse=4, dense=0", "LServe: Quest on logical 16-token pages, selection reused 4 steps"),
        ("freekv", "budget, sinks=budget/4, recent=budget/4, tau=0.8, prefetch=auto|1|0", "FreeKV: centre±radius pages chosen with q(t−1), corrected below tau, next pages recalled in the background"),
        ("clusterkv", "budget, clusters=400, iterations=20, sinks=16, window=320, new=8", "ClusterKV: cosine k-means clusters of keys"),
        ("duo", "pattern, fraction=0.5, sinks=64, recent=256", "DuoAttention: top heads of a pattern file (vidkv kv calibrate) read everything, the rest keep sinks + recent"),
        ("snapkv", "budget, window=32, kernel=7, slack=window", "SnapKV: the last window of queries votes (max-pooled) for the tokens kept beside it, whenever a head passes budget + slack"),
        ("h2o", "budget, recent=budget/2", "H2O: evict the tokens with the least accumulated attention, keeping the recent ones"),
        ("keynorm", "ratio=0.5, group=2", "QuickPrefill: of each appended group keep the tokens with the smallest key norm (shared by the layer's heads)"),
    ];

    public static KvPolicy Parse(string spec, int? budget = null)
    {
        if (string.IsNullOrWhiteSpace(spec)) throw new KvConfigException("policy: empty spec");
        var parts = spec.Split('+', StringSplitOptions.TrimEntries);
        KvPolicy policy = ParseOne(parts[^1], budget);
        for (int i = parts.Length - 2; i >= 0; i--) policy = new ComposedPolicy(ParseOne(parts[i], budget), policy);
        return policy;
    }

    static KvPolicy ParseOne(string spec, int? budget)
    {
        int colon = spec.IndexOf(':');
        string name = (colon < 0 ? spec : spec[..colon]).Trim().ToLowerInvariant();
        var options = new Options(name, colon < 0 ? "" : spec[(colon + 1)..]);
        KvPolicy policy;
        try
        {
            policy = name switch
            {
                "full" => new FullPolicy(),
                "sinkwindow" or "streamingllm" => SinkWindow(options, budget),
                "quest" => new QuestPolicy(options.Int("budget", budget), options.Int("reuse", 1), options.Int("dense", 0)),
                "lserve" => new QuestPolicy(options.Int("budget", budget ?? 4096), options.Int("reuse", 4), options.Int("dense", 0), "lserve"),
                "freekv" => FreeKv(options, budget),
                "duo" or "duoattention" => Duo(options),
                "snapkv" => new SnapKvPolicy(options.Int("budget", budget), options.Int("window", 32), options.Int("kernel", 7), options.OptionalInt("slack")),
                "h2o" => new H2OPolicy(options.Int("budget", budget), options.OptionalInt("recent")),
                "keynorm" => new KeyNormPolicy(options.Float("ratio", 0.5f), options.Int("group", 2)),
                "clusterkv" => new ClusterKvPolicy(options.Int("budget", budget), options.Int("clusters", 400), options.Int("iterations", 20),
                    options.Int("sinks", 16), options.Int("window", 320), options.Int("new", 8)),
                _ => throw new KvConfigException($"policy '{name}': unknown policy (known: {string.Join(", ", Known.Select(k => k.Name))})"),
            };
        }
        catch (ArgumentOutOfRangeException e)
        {
            options.EnsureAllUsed();
            throw new KvConfigException($"policy '{name}': {e.Message.Split(" (Parameter")[0]}");
        }
        options.EnsureAllUsed();
        return policy;
    }

    static SinkWindowPolicy SinkWindow(Options options, int? budget)
    {
        int sinks = options.Int("sinks", 4);
        return new SinkWindowPolicy(sinks, options.Int("window", budget is int b ? b - sinks : null));
    }

    static DuoAttentionPolicy Duo(Options options)
    {
        string path = options.String("pattern")
            ?? throw new KvConfigException("policy 'duo': option 'pattern' is required (a head pattern file, e.g. from `vidkv kv calibrate`)");
        return new DuoAttentionPolicy(PatternFile.Read(path), options.Float("fraction", 0.5f), options.Int("sinks", 64), options.Int("recent", 256), path);
    }

    static FreeKvPolicy FreeKv(Options options, int? budget)
    {
        int b = options.Int("budget", budget);
        return new FreeKvPolicy(b, options.Int("sinks", b / 4), options.Int("recent", b / 4), options.Float("tau", 0.8f), options.Switch("prefetch"));
    }

    sealed class Options
    {
        readonly string policy;
        readonly Dictionary<string, string> values = [];
        readonly HashSet<string> used = [];
        string? missing;

        public Options(string policy, string text)
        {
            this.policy = policy;
            foreach (var item in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                int eq = item.IndexOf('=');
                if (eq <= 0) throw new KvConfigException($"policy '{policy}': option '{item}' is not name=value");
                values[item[..eq].Trim().ToLowerInvariant()] = item[(eq + 1)..].Trim();
            }
        }

        public int Int(string name, int? fallback)
        {
            used.Add(name);
            if (!values.TryGetValue(name, out var text))
            {
                if (fallback is int f) return f;
                missing ??= name; // reported after unknown options, which are the likelier mistake
                return 1;
            }
            return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) ? value
                : throw new KvConfigException($"policy '{policy}': option '{name}': '{text}' is not an integer");
        }

        /// <summary>An integer option whose absence means "the policy's own default" (null).</summary>
        public int? OptionalInt(string name) => values.ContainsKey(name) ? Int(name, null) : Used(name);

        int? Used(string name)
        {
            used.Add(name);
            return null;
        }

        /// <summary>An on/off option: 1/0, true/false, on/off, or auto (null) when absent or "auto".</summary>
        public bool? Switch(string name)
        {
            used.Add(name);
            if (!values.TryGetValue(name, out var text)) return null;
            return text.ToLowerInvariant() switch
            {
                "auto" => null,
                "1" or "true" or "on" => true,
                "0" or "false" or "off" => false,
                _ => throw new KvConfigException($"policy '{policy}': option '{name}': '{text}' is not 1, 0 or auto"),
            };
        }

        public string? String(string name)
        {
            used.Add(name);
            return values.TryGetValue(name, out var text) ? text : null;
        }

        public float Float(string name, float fallback)
        {
            used.Add(name);
            if (!values.TryGetValue(name, out var text)) return fallback;
            return float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out float value) ? value
                : throw new KvConfigException($"policy '{policy}': option '{name}': '{text}' is not a number");
        }

        public void EnsureAllUsed()
        {
            foreach (var name in values.Keys)
                if (!used.Contains(name)) throw new KvConfigException($"policy '{policy}': unknown option '{name}' (value '{values[name]}')");
            if (missing != null) throw new KvConfigException($"policy '{policy}': option '{missing}' is required (or give --budget)");
        }
    }
}

/// <summary>
/// A paged KV cache configuration, from code or a JSON file:
/// <code>
/// { "page_size": 32, "type": "f16", "budget": 2048, "default": "freekv",
///   "layers": { "0-1": "full" }, "heads": { "5.1": "sinkwindow:window=256" },
///   "max_hot_pages": 0, "cold_path": "/tmp/vidkv-cold.bin", "cold_mapped": true }
/// </code>
/// <c>layers</c> keys are a layer or an inclusive range; <c>heads</c> keys are layer.kvHead. Later entries win.
/// </summary>
public sealed record KvCacheConfig
{
    public int PageSize { get; init; } = 32;
    public GgmlType Type { get; init; } = GgmlType.F16;
    public int? Budget { get; init; }
    public string Default { get; init; } = "full";
    public IReadOnlyList<(int First, int Last, string Spec)> Layers { get; init; } = [];
    public IReadOnlyList<(int Layer, int Head, string Spec)> Heads { get; init; } = [];
    public int MaxHotPages { get; init; }
    public string? ColdPath { get; init; }
    /// <summary>Read cold pages in place through a read-only mapping (default) rather than copying them back; see <see cref="PagedKvOptions.MapColdTier"/>.</summary>
    public bool ColdMapped { get; init; } = true;

    /// <summary>Reads a JSON config; every error names the file, the field and the value.</summary>
    public static KvCacheConfig Load(string path)
    {
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new KvConfigException($"{path}: cannot read: {e.Message}"); }
        try { return Parse(text, path); }
        catch (JsonException e) { throw new KvConfigException($"{path}: not valid JSON: {e.Message}"); }
    }

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
                default: throw new KvConfigException($"{source}: unknown field '{field.Name}' (known: page_size, type, budget, default, layers, heads, max_hot_pages, cold_path, cold_mapped)");
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
    public PagedKvCache CreateCache(int layerCount, int kvHeadCount, int headDim, int contextLength = int.MaxValue)
    {
        var policies = BuildPolicies(layerCount, kvHeadCount);
        return new PagedKvCache(new PagedKvStore(StoreOptions(layerCount, kvHeadCount, headDim, policies.Metadata)), policies, contextLength);
    }

    /// <summary>
    /// A page pool for many sequences of a model of this shape (the KV manager's store), keeping the metadata this
    /// config's policies read; give each sequence a cache with <see cref="CreateCache(KvSequence, int)"/>.
    /// </summary>
    public PagedKvStore CreateStore(int layerCount, int kvHeadCount, int headDim) =>
        new(StoreOptions(layerCount, kvHeadCount, headDim, BuildPolicies(layerCount, kvHeadCount).Metadata));

    /// <summary>A cache over <paramref name="sequence"/> (of a store from <see cref="CreateStore"/>) with its own policies from this config.</summary>
    public PagedKvCache CreateCache(KvSequence sequence, int contextLength = int.MaxValue) =>
        new(sequence, BuildPolicies(sequence.Store.LayerCount, sequence.Store.KvHeadCount), contextLength);

    PagedKvOptions StoreOptions(int layerCount, int kvHeadCount, int headDim, KvMetadata metadata) => new()
    {
        LayerCount = layerCount, KvHeadCount = kvHeadCount, HeadDim = headDim, PageSize = PageSize, KeyType = Type, ValueType = Type,
        MaxHotPages = MaxHotPages, ColdPath = ColdPath, MapColdTier = ColdMapped, Metadata = metadata,
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
