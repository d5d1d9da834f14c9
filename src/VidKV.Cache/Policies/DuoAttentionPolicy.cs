using System.Globalization;

namespace VidKV.Cache;

/// <summary>
/// DuoAttention (Xiao et al., "DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming
/// Heads", 2024): each (layer, KV head) is either a retrieval head, which keeps and reads the full cache, or a
/// streaming head, which keeps only sink + recent tokens (64 + 256 for GQA models, the paper's setting) and evicts
/// the rest. Which heads retrieve comes from a pattern: one score per (layer, KV head), higher = more retrieval; the
/// top <see cref="Fraction"/> of heads (0.5, the paper's GQA deployment) retrieve. The paper learns the scores as
/// gates on synthetic passkey data; <c>vidkv kv calibrate</c> writes the training-free proxy instead (the output
/// error of streaming vs full attention on calibration text, see <see cref="PatternFile"/>).
/// </summary>
internal sealed class DuoAttentionPolicy : KvPolicy
{
    public static readonly KvPolicyDescriptor Descriptor = new("duo",
        "DuoAttention (Xiao et al., 2024): the top heads of a pattern file (vidkv kv calibrate) read everything, the rest keep sinks + recent",
        [
            KvPolicyOption.RequiredString("pattern", "(a head pattern file, e.g. from `vidkv kv calibrate`)", "head pattern file: one line per layer, one score per KV head"),
            KvPolicyOption.Float("fraction", 0.5f, "share of heads, highest scores first, that read everything"),
            KvPolicyOption.Int("sinks", 64, "first tokens a streaming head keeps"),
            KvPolicyOption.Int("recent", 256, "most recent tokens a streaming head keeps"),
        ],
        a => new DuoAttentionPolicy(PatternFile.Read(a.String("pattern")), a.Float("fraction"), a.Int("sinks"), a.Int("recent"), a.String("pattern")))
    {
        Aliases = ["duoattention"],
        Example = "fraction=0.3125001,sinks=8,recent=16",
    };

    readonly float[,] pattern;
    readonly SinkWindowPolicy streaming;
    bool[] retrieval = [];

    /// <param name="pattern">[layers, kvHeads] scores</param>
    /// <param name="source">where the pattern came from (a file name), for messages and <see cref="Name"/></param>
    public DuoAttentionPolicy(float[,] pattern, float fraction = 0.5f, int sinks = 64, int recent = 256, string source = "pattern")
    {
        if (fraction is < 0 or > 1) throw new ArgumentOutOfRangeException(nameof(fraction), $"fraction must be in [0, 1], not {fraction}");
        this.pattern = pattern;
        Fraction = fraction;
        Source = source;
        streaming = new SinkWindowPolicy(sinks, recent);
    }

    public float Fraction { get; }
    public string Source { get; }
    public int Sinks => streaming.Sinks;
    public int Recent => streaming.Window;
    public override string Name => $"duo:pattern={Source},fraction={Fraction.ToString(CultureInfo.InvariantCulture)},sinks={Sinks},recent={Recent}";
    public override bool ConcurrentSelect => true;

    /// <summary>Whether (layer, head) is a retrieval head (after <see cref="Attach"/>).</summary>
    public bool IsRetrieval(int layer, int head) => retrieval[HeadIndex(layer, head)];

    public override void Attach(KvSequence sequence)
    {
        base.Attach(sequence);
        var store = sequence.Store;
        streaming.Attach(sequence);
        if (pattern.GetLength(0) != store.LayerCount || pattern.GetLength(1) != store.KvHeadCount)
            throw new KvConfigException($"policy 'duo': pattern '{Source}' has {pattern.GetLength(0)} layers × {pattern.GetLength(1)} KV heads, the model {store.LayerCount} × {store.KvHeadCount}");
        int heads = store.HeadSlots, keep = (int)Math.Ceiling((double)Fraction * heads);
        var scores = new float[heads];
        for (int layer = 0; layer < store.LayerCount; layer++)
            for (int head = 0; head < store.KvHeadCount; head++) scores[HeadIndex(layer, head)] = pattern[layer, head];
        // The top `keep` scores retrieve; ties go to the earlier head.
        var order = Enumerable.Range(0, heads).OrderByDescending(i => scores[i]).ThenBy(i => i).ToArray();
        retrieval = new bool[heads];
        foreach (int i in order.AsSpan(0, keep)) retrieval[i] = true;
    }

    public override void OnAppended(in KvStep step)
    {
        if (!IsRetrieval(step.Layer, step.Head)) streaming.OnAppended(step);
    }

    public override void OnTruncated(int length) => streaming.OnTruncated(length);

    // Select: the default reads every page the head still has (all of them for a retrieval head, sinks + recent for a streaming one).
}

/// <summary>
/// Head patterns as text files: one line per layer, one tab-separated score per KV head (higher = more retrieval);
/// blank lines and lines starting with '#' are comments. The layout follows DuoAttention's published patterns.
/// </summary>
internal static class PatternFile
{
    public static float[,] Read(string path)
    {
        string[] lines;
        try { lines = File.ReadAllLines(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new KvConfigException($"pattern '{path}': cannot read: {e.Message}");
        }
        var rows = new List<float[]>();
        for (int n = 0; n < lines.Length; n++)
        {
            string line = lines[n].Trim();
            if (line.Length == 0 || line[0] == '#') continue;
            var fields = line.Split(['\t', ' '], StringSplitOptions.RemoveEmptyEntries);
            var row = new float[fields.Length];
            for (int h = 0; h < fields.Length; h++)
                if (!float.TryParse(fields[h], NumberStyles.Float, CultureInfo.InvariantCulture, out row[h]) || !float.IsFinite(row[h]))
                    throw new KvConfigException($"pattern '{path}': line {n + 1}, column {h + 1}: '{fields[h]}' is not a number");
            if (rows.Count > 0 && row.Length != rows[0].Length)
                throw new KvConfigException($"pattern '{path}': line {n + 1} has {row.Length} heads, earlier lines {rows[0].Length}");
            rows.Add(row);
        }
        if (rows.Count == 0) throw new KvConfigException($"pattern '{path}': no layers");
        var pattern = new float[rows.Count, rows[0].Length];
        for (int l = 0; l < rows.Count; l++)
            for (int h = 0; h < rows[l].Length; h++) pattern[l, h] = rows[l][h];
        return pattern;
    }

    public static void Write(string path, float[,] pattern, string comment)
    {
        using var writer = new StreamWriter(path);
        foreach (string line in comment.Split('\n')) writer.WriteLine("# " + line);
        for (int l = 0; l < pattern.GetLength(0); l++)
            writer.WriteLine(string.Join('\t', Enumerable.Range(0, pattern.GetLength(1)).Select(h => pattern[l, h].ToString("R", CultureInfo.InvariantCulture))));
    }
}
