using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using VidKV.Cache;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;
using VidKV.World;

namespace VidKV.Cli;

/// <summary>What <see cref="VideoEvaluation"/> runs; the defaults are <c>vidkv eval video</c>'s.</summary>
public sealed record VideoEvalOptions
{
    /// <summary>Longest stream, in frames (ticks, one per second).</summary>
    public const int MaxLength = 5000;

    /// <summary>
    /// The KV policies compared by default: the uncapped reference, every bounded policy and video reducer, FreeKV (the
    /// decode-time retriever that moves what it does not read to the cold tier) alone and on top of each video reducer
    /// whose memory would otherwise grow with the stream, and the README's other two compositions.
    /// </summary>
    public static IReadOnlyList<string> DefaultPolicies { get; } =
    [
        "full", "sinkwindow", "resv", "livevlm", "quickprefill", "videoscan", "infinipotv", "freekv",
        "quickprefill+freekv", "videoscan+freekv", "infinipotv+freekv", "quickprefill+resv", "infinipotv+livevlm",
    ];

    /// <summary>Stream lengths in frames, each 2..<see cref="MaxLength"/>.</summary>
    public IReadOnlyList<int> Lengths { get; init; } = [100, 500, 2000];
    /// <summary>
    /// Held-out streams of each length, seeds <see cref="WorldStream.HeldOutSeeds"/> + 0, 1, …: the same seeds at every
    /// length, so a shorter stream is the start of a longer one and only the length (and the needles' ticks) differ.
    /// </summary>
    public int Streams { get; init; } = 1;
    /// <summary>Ticks between a needle's evidence and the last frame; a distance that does not fit a length is left out there.</summary>
    public IReadOnlyList<int> Distances { get; init; } = [1, 10, 100, 1000];
    /// <summary>Questions per distance (fewer when the evidence tick has fewer).</summary>
    public int QuestionsPerDistance { get; init; } = 4;
    /// <summary>Side of the frames as drawn; the session resizes them for the tower, as it does a video's.</summary>
    public int FrameSize { get; init; } = 256;
    /// <summary>KV policy specs, one run each per length; <c>full</c> runs uncapped, every other under <see cref="HotCapBytes"/>.</summary>
    public IReadOnlyList<string> Policies { get; init; } = DefaultPolicies;
    /// <summary>Hot KV the bounded policies are sized for: their budget keeps hot KV (a question's fork included) below it.</summary>
    public long HotCapBytes { get; init; } = 64L << 20;
    /// <summary>Let the model comment on its own while it watches (as <c>watch --proactive</c>); off by default.</summary>
    public bool Proactive { get; init; }
    /// <summary>Folder for the capped runs' cold-tier files (pages FreeKV and ReSV move out of RAM); null: the system's temporary folder.</summary>
    public string? ColdDir { get; init; }
    /// <summary>
    /// The RoPE positions each capped policy runs with, a row per policy and mode (<see cref="KvPositions"/>):
    /// original (default), compact, or both to compare. <c>full</c> evicts nothing, so it runs once, at original positions.
    /// </summary>
    public IReadOnlyList<KvPositions> Positions { get; init; } = [KvPositions.Original];

    /// <summary>The modes of a <c>--positions</c> value: <c>original</c>, <c>compact</c> or both, comma-separated; a bad one is an error naming the option.</summary>
    public static KvPositions[] ParsePositions(string text)
    {
        var modes = new List<KvPositions>();
        foreach (string part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            try { modes.Add(KvCacheConfig.ParsePositions(part)); }
            catch (KvConfigException e) { throw new ArgumentException($"--{e.Message}"); }
        }
        return modes.Count > 0 ? [.. modes] : throw new ArgumentException("--positions: give original, compact or both");
    }

    /// <summary>The modes <paramref name="spec"/> runs with: <see cref="Positions"/>, or original alone for the uncapped full reference.</summary>
    public IEnumerable<KvPositions> PositionsOf(string spec) => IsUncapped(spec) ? [KvPositions.Original] : Positions;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first option (as <c>vidkv eval video</c> spells it) out of range.</summary>
    public void Validate()
    {
        if (Lengths.Count == 0) throw new ArgumentException("--lengths: give at least one length");
        foreach (int length in Lengths)
            if (length is < 2 or > MaxLength) throw new ArgumentException($"--lengths: {length} is not a stream length in 2..{MaxLength} frames");
        if (Lengths.Distinct().Count() != Lengths.Count) throw new ArgumentException("--lengths: a length is given twice");
        if (Streams < 1) throw new ArgumentException($"--streams must be at least 1, not {Streams}");
        if (Distances.Count == 0) throw new ArgumentException("--distances: give at least one distance");
        foreach (int distance in Distances)
            if (distance < 0) throw new ArgumentException($"--distances: {distance} is not a distance ≥ 0 ticks");
        if (Distances.Distinct().Count() != Distances.Count) throw new ArgumentException("--distances: a distance is given twice");
        if (!Lengths.Any(length => Distances.Any(distance => distance < length)))
            throw new ArgumentException($"--distances: none of {string.Join(",", Distances)} fits any of --lengths {string.Join(",", Lengths)} (a distance must be below the length)");
        if (QuestionsPerDistance < 1) throw new ArgumentException($"--questions must be at least 1, not {QuestionsPerDistance}");
        if (FrameSize is < 16 or > 4096) throw new ArgumentException($"--size must be in 16..4096 pixels, not {FrameSize}");
        if (Policies.Count == 0) throw new ArgumentException("--policies: give at least one policy");
        foreach (string spec in Policies)
        {
            try { new KvCacheConfig { Default = spec, Budget = 1024 }.ValidateSpecs(); }
            catch (KvConfigException e) { throw new ArgumentException($"--policies: '{spec}': {e.Message}"); }
        }
        if (Policies.Distinct(StringComparer.OrdinalIgnoreCase).Count() != Policies.Count) throw new ArgumentException("--policies: a policy is given twice");
        if (Policies.FirstOrDefault(SizesRatio) is { } share && !Policies.Any(IsUncapped))
            throw new ArgumentException($"--policies: '{share}' keeps a share of each frame's tokens (its ratio), which --hot-cap sizes from full's run of the same streams: add full, or give the ratio in the spec");
        if (HotCapBytes <= 0) throw new ArgumentException($"--hot-cap must be more than 0 MiB, not {HotCapBytes / 1048576.0:G4}");
        if (ColdDir != null && !Directory.Exists(ColdDir)) throw new ArgumentException($"--cold-dir '{ColdDir}': no such folder");
        if (Positions.Count == 0) throw new ArgumentException("--positions: give original, compact or both");
        if (Positions.Distinct().Count() != Positions.Count) throw new ArgumentException("--positions: a mode is given twice");
    }

    /// <summary>
    /// Policy specs from <c>--policies</c> values: each value is split at commas, and a piece that is an option
    /// (<c>name=value</c> without a <c>:</c>) goes back onto the spec before it, so <c>full,sinkwindow:sinks=3,window=61,resv</c>
    /// is three specs.
    /// </summary>
    public static string[] SplitSpecs(IEnumerable<string> values)
    {
        var specs = new List<string>();
        foreach (string value in values)
            foreach (string piece in value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                if (specs.Count > 0 && piece.Contains('=') && !piece.Contains(':') && !piece.StartsWith('+')) specs[^1] += "," + piece;
                else specs.Add(piece);
            }
        return [.. specs];
    }

    /// <summary>Whether <paramref name="spec"/> runs without the cap: the plain full policy, the reference the others are measured against.</summary>
    public static bool IsUncapped(string spec) => spec.Trim().Equals("full", StringComparison.OrdinalIgnoreCase);

    /// <summary>The video reducers that keep a share of each group of frames (their <c>ratio</c>), and the option that names a group's frames.</summary>
    static readonly Dictionary<string, string> FrameShares = new(StringComparer.OrdinalIgnoreCase) { ["quickprefill"] = "group", ["livevlm"] = "clip" };

    /// <summary>
    /// Whether the cap sizes <paramref name="spec"/>'s ratio rather than its budget: no part of it takes the budget, and
    /// a video reducer in it keeps a share of each group of frames (quickprefill, livevlm) with the ratio left out, so
    /// its memory grows with the stream at any fixed ratio.
    /// </summary>
    public static bool SizesRatio(string spec) => !IsUncapped(spec) && !KvPolicies.ReadsBudget(spec) && RatioParts(spec).Any();

    /// <summary>The parts of <paramref name="spec"/> whose ratio the cap sizes, with the frames of one of their groups.</summary>
    static IEnumerable<(int Index, int GroupFrames)> RatioParts(string spec)
    {
        var parts = spec.Split('+', StringSplitOptions.TrimEntries);
        for (int i = 0; i < parts.Length; i++)
        {
            int colon = parts[i].IndexOf(':');
            if (!FrameShares.TryGetValue(colon < 0 ? parts[i] : parts[i][..colon], out var groupOption)) continue;
            if (KvPolicies.WithDefaultOption(parts[i], "ratio", "1") == null) continue; // the spec gives its ratio
            yield return (i, int.TryParse(KvPolicies.OptionText(parts[i], groupOption), NumberStyles.None, CultureInfo.InvariantCulture, out int frames) ? frames : 1);
        }
    }

    /// <summary>
    /// <paramref name="spec"/> with the ratio that keeps <paramref name="textRows"/> text rows and a share of
    /// <paramref name="videoRows"/> video rows (<paramref name="frameRows"/> a frame) within <paramref name="budget"/>
    /// (<see cref="VideoEvaluation.SizeRatio"/>; the largest group's frames are the margin, as a group waits whole before
    /// it is reduced), and that ratio.
    /// </summary>
    public static (string Spec, double Ratio) WithSizedRatio(string spec, int budget, long textRows, long videoRows, int frameRows)
    {
        var sized = RatioParts(spec).ToList();
        double ratio = VideoEvaluation.SizeRatio(budget, textRows, videoRows, sized.Max(p => p.GroupFrames) * frameRows);
        var parts = spec.Split('+', StringSplitOptions.TrimEntries);
        foreach (var (index, _) in sized) parts[index] = KvPolicies.WithDefaultOption(parts[index], "ratio", ratio.ToString("0.####", CultureInfo.InvariantCulture))!;
        return (string.Join('+', parts), ratio);
    }
}

/// <summary>One needle question: the distance it was placed at (ticks from its evidence to the last frame) and the question.</summary>
public sealed record Needle(int Distance, WorldQuestion Question);

/// <summary>One question asked in a run, its answer and time to first token.</summary>
public sealed record VideoEvalAnswer(int Stream, int Distance, QuestionKind Kind, string Question, string Truth, string Answer, bool Right, double TtftMs);

/// <summary>One (policy, stream length) of <see cref="VideoEvaluation"/>: every question asked on its streams and what the runs cost.</summary>
public sealed class VideoEvalRow(string policy, int length, bool uncapped, int? budget, KvPositions positions = KvPositions.Original, double? ratio = null)
{
    /// <summary>The policy spec.</summary>
    public string Policy { get; } = policy;
    /// <summary>The RoPE positions the run kept its rows at (<see cref="VideoEvalOptions.Positions"/>).</summary>
    public KvPositions Positions { get; } = positions;
    /// <summary>The policy, with <c>@compact</c> after it for a compact-positions run (how tables and charts name the row).</summary>
    public string Label => Positions == KvPositions.Compact ? Policy + "@compact" : Policy;
    /// <summary>Frames of each stream.</summary>
    public int Length { get; } = length;
    /// <summary>Run without the hot cap (the full reference).</summary>
    public bool Uncapped { get; } = uncapped;
    /// <summary>Token budget per KV head the policy got; null when it takes none (or ran uncapped).</summary>
    public int? Budget { get; } = budget;
    /// <summary>The share of video rows the cap sized the policy's ratio to (<see cref="VideoEvaluation.SizeRatio"/>); null when it was not sized.</summary>
    public double? Ratio { get; } = ratio;
    /// <summary>Streams watched, frames and tokens ingested over all of them, proactive comments said.</summary>
    public int Streams { get; internal set; }
    public int Frames { get; internal set; }
    public long Tokens { get; internal set; }
    public int Comments { get; internal set; }
    /// <summary>Seconds spent ingesting (frames drawn, encoded and prefilled; questions not included).</summary>
    public double IngestSeconds { get; internal set; }
    /// <summary>KV bytes in RAM and in the cold file once the last frame was in, and the most in RAM at once during a run (questions' forks included); the largest over the streams.</summary>
    public long HotBytes { get; internal set; }
    public long ColdBytes { get; internal set; }
    public long PeakHotBytes { get; internal set; }
    /// <summary>Every question asked, in order.</summary>
    public List<VideoEvalAnswer> Answers { get; } = [];

    public int Questions => Answers.Count;
    public int Correct => Answers.Count(a => a.Right);
    /// <summary>Questions whose true answer was "nothing" (nothing happened at that tick).</summary>
    public int NothingAnswers => Answers.Count(a => a.Truth == VideoEvaluation.Nothing);
    public double Accuracy => Questions == 0 ? double.NaN : (double)Correct / Questions;
    public double FramesPerSecond => IngestSeconds > 0 ? Frames / IngestSeconds : double.NaN;
    /// <summary>Asked and right per distance, ascending.</summary>
    public IEnumerable<(int Distance, int Asked, int Right)> ByDistance =>
        Answers.GroupBy(a => a.Distance).OrderBy(g => g.Key).Select(g => (g.Key, g.Count(), g.Count(a => a.Right)));
    /// <summary>Asked and right per question kind.</summary>
    public IEnumerable<(QuestionKind Kind, int Asked, int Right)> ByKind =>
        Answers.GroupBy(a => a.Kind).OrderBy(g => g.Key).Select(g => (g.Key, g.Count(), g.Count(a => a.Right)));
    public double TtftMedianMs => VideoEvaluation.Percentile(Answers.Select(a => a.TtftMs), 0.5);
    public double TtftP90Ms => VideoEvaluation.Percentile(Answers.Select(a => a.TtftMs), 0.9);
}

/// <summary>What <see cref="VideoEvaluation.RunAsync"/> found, with the sizing of the hot cap.</summary>
public sealed class VideoEvalResult(VideoEvalOptions options)
{
    public VideoEvalOptions Options { get; } = options;
    /// <summary>Bytes one token's keys and values take over every layer and KV head of the model.</summary>
    public long KvBytesPerToken { get; internal set; }
    /// <summary>Tokens per KV head the cap holds in whole pages, the part of them kept free for a step's rows and a question's fork, and the budget: the rest.</summary>
    public int CapTokens { get; internal set; }
    public int ReserveTokens { get; internal set; }
    public int Budget { get; internal set; }
    /// <summary>Rows finished, by length then policy.</summary>
    public List<VideoEvalRow> Rows { get; } = [];
    /// <summary>False when the run was stopped (Ctrl-C) before every row was done.</summary>
    public bool Complete { get; internal set; }
}

/// <summary>
/// Needle accuracy against stream length and memory per KV policy (<c>vidkv eval video</c>): held-out generated
/// streams of sparse events and long static stretches (<see cref="WorldOptions.Stream"/>) are watched through VidKV's
/// engine as <c>vidkv watch</c> watches (each tick's frame with its timestamp), one fresh engine per policy and stream;
/// after the last frame the needle questions (<see cref="WorldQuestions.About"/>: what happened at mm:ss, what colour
/// was X at mm:ss, when did X enter or leave) whose evidence lies chosen distances back are asked on forks and scored
/// exactly as <see cref="WorldEvaluation"/> scores. Bounded policies get the token budget that keeps their hot KV
/// under a cap, with a cold tier for the pages a policy moves out of RAM; <c>full</c> runs uncapped for comparison.
/// </summary>
public static class VideoEvaluation
{
    /// <summary>The answer to "what happened at mm:ss?" when nothing did.</summary>
    public const string Nothing = "nothing";

    /// <summary>
    /// The needle questions of <paramref name="stream"/> asked after its last frame: for each distance d below its
    /// length, up to <paramref name="perDistance"/> of <see cref="WorldQuestions.About"/>(L − 1 − d, L − 1), in an order
    /// drawn from the stream's seed, those whose answer is not "nothing" first.
    /// </summary>
    public static List<Needle> Needles(WorldStream stream, IReadOnlyList<int> distances, int perDistance)
    {
        int ask = stream.TickCount - 1;
        var random = new WorldRandom(stream.Seed ^ 0x4E4545444C455321UL); // "NEEDLES!"
        var needles = new List<Needle>();
        foreach (int distance in distances.Where(d => d <= ask).Order())
        {
            var candidates = WorldQuestions.About(stream, ask - distance, ask).ToList();
            for (int i = candidates.Count - 1; i > 0; i--)
            {
                int j = random.Next(i + 1);
                (candidates[i], candidates[j]) = (candidates[j], candidates[i]);
            }
            needles.AddRange(candidates.OrderBy(q => q.Answer == Nothing).Take(perDistance).Select(q => new Needle(distance, q)));
        }
        return needles;
    }

    /// <summary>Bytes one token's keys and values take over every layer and KV head, stored as <paramref name="kv"/> says.</summary>
    public static long KvBytesPerToken(ModelConfig config, KvCacheConfig kv) =>
        (long)config.LayerCount * config.KvHeadCount * 2 * GgmlTypes.RowBytes(kv.Type, config.HeadDim);

    /// <summary>
    /// The token budget per KV head that keeps a bounded policy's hot KV under <paramref name="capBytes"/>: the whole
    /// pages per head the cap holds, less pages for what comes in before a policy acts on it — one step's appended rows
    /// (<paramref name="stepRows"/>), a fork's own rows (<paramref name="forkTokens"/>: a question and its answer, or a
    /// proactive comment) — and one partly filled page. Returns the cap's tokens per head, the reserve and the budget
    /// (≤ 0 when the cap is too small).
    /// </summary>
    public static (int CapTokens, int ReserveTokens, int Budget) SizeBudget(long capBytes, long bytesPerToken, int pageSize, int stepRows, int forkTokens)
    {
        long pagesPerHead = capBytes / (bytesPerToken * pageSize);
        int reservePages = Pages(stepRows) + Pages(forkTokens) + 1;
        int capTokens = (int)Math.Min(int.MaxValue / 2, pagesPerHead * pageSize);
        return (capTokens, reservePages * pageSize, capTokens - reservePages * pageSize);

        int Pages(int tokens) => (tokens + pageSize - 1) / pageSize;
    }

    /// <summary>
    /// The share of video rows a policy that keeps a share of each group of frames may keep so that a stream of
    /// <paramref name="textRows"/> text rows (every one kept) and <paramref name="videoRows"/> video rows fits
    /// <paramref name="budget"/> tokens per KV head: (budget − text − margin) / video, rounded down to 1/10,000 and held
    /// in 1/10,000..1; <paramref name="marginRows"/> covers the frames of a group not yet reduced. A stream whose text alone
    /// does not fit gets the least share, and its row shows it over the cap.
    /// </summary>
    public static double SizeRatio(int budget, long textRows, long videoRows, int marginRows)
    {
        if (videoRows <= 0) return 1;
        double share = Math.Floor((budget - textRows - marginRows) * 10000.0 / videoRows) / 10000;
        return Math.Clamp(share, 1e-4, 1);
    }

    /// <summary>
    /// Runs every (length, policy) over <see cref="VideoEvalOptions.Streams"/> held-out streams; <paramref name="log"/>
    /// hears of each stream as it goes. Cancelling stops at once: the rows finished come back with
    /// <see cref="VideoEvalResult.Complete"/> false.
    /// </summary>
    /// <exception cref="ArgumentException">an option is out of range, or the cap cannot hold a step and a question for this model</exception>
    public static async Task<VideoEvalResult> RunAsync(DecoderModel text, VisionModel vision, VideoEvalOptions options, TextWriter? log = null, CancellationToken cancellation = default)
    {
        options.Validate();
        var result = new VideoEvalResult(options);
        var engineDefaults = new EngineOptions();
        var baseKv = new KvCacheConfig();
        var worlds = options.Lengths.Select(length => (Length: length, Streams: Enumerable.Range(0, options.Streams).Select(i =>
        {
            var stream = WorldStream.Generate(WorldStream.HeldOutSeeds + (ulong)i, length, WorldOptions.Stream);
            return (Stream: stream, Needles: Needles(stream, options.Distances, options.QuestionsPerDistance));
        }).ToList())).ToList();
        int longestQuestion = worlds.SelectMany(w => w.Streams).SelectMany(s => s.Needles)
            .Select(n => text.Tokenizer.Encode(WorldEvaluation.Prompt(n.Question), addSpecial: false, parseSpecial: true).Count).DefaultIfEmpty(0).Max();
        result.KvBytesPerToken = KvBytesPerToken(text.Config, baseKv);
        int forkTokens = Math.Max(longestQuestion + WorldEvaluation.AnswerTokens, options.Proactive ? new ProactiveOptions().MaxTokens : 0);
        (result.CapTokens, result.ReserveTokens, result.Budget) = SizeBudget(options.HotCapBytes, result.KvBytesPerToken, baseKv.PageSize, engineDefaults.PrefillChunk, forkTokens);
        if (result.Budget < baseKv.PageSize && options.Policies.Any(p => !VideoEvalOptions.IsUncapped(p)))
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"--hot-cap {options.HotCapBytes / 1048576.0:G4} MiB holds {result.CapTokens} tokens per KV head of this model ({result.KvBytesPerToken} bytes a token over its layers and KV heads); a step's rows and a question's fork need {result.ReserveTokens} of them, which leaves less than a page for a budget: raise it to at least {(result.ReserveTokens + baseKv.PageSize) * result.KvBytesPerToken / 1048576.0:G4} MiB"));
        foreach (string spec in options.Policies.Where(p => !VideoEvalOptions.IsUncapped(p)))
        {
            try { (baseKv with { Default = spec, Budget = result.Budget }).BuildPolicies(text.Config.LayerCount, text.Config.KvHeadCount); }
            catch (KvConfigException e) { throw new ArgumentException($"--policies: '{spec}' with the budget of {result.Budget} tokens --hot-cap gives: {e.Message}"); }
        }

        string coldDir = Path.Combine(options.ColdDir ?? Path.GetTempPath(), $"vidkv-eval-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(coldDir);
        if (options.Positions.Contains(KvPositions.Compact) && text.KeyRotation == null && options.Policies.Any(p => !VideoEvalOptions.IsUncapped(p)))
            throw new ArgumentException($"--positions compact: not supported for M-RoPE models ({text.Path} turns keys by {text.PositionComponents} position components)");
        int rowsPerLength = options.Policies.Sum(p => options.PositionsOf(p).Count());
        // The full reference runs first: the policies whose ratio the cap sizes read its row counts.
        var policies = options.Policies.OrderBy(p => VideoEvalOptions.IsUncapped(p) ? 0 : 1).ToList();
        int frameRows = vision.VideoFrameTokens;
        int run = 0, runs = worlds.Count * rowsPerLength * options.Streams;
        try
        {
            foreach (var (length, streams) in worlds)
            {
                var skipped = options.Distances.Where(d => d >= length).ToList();
                if (skipped.Count > 0) log?.WriteLine($"  {length} frames: distances {string.Join(",", skipped)} do not fit, left out");
                long textRows = 0, videoRows = 0; // the most over full's streams of this length
                foreach (string spec in policies)
                    foreach (var positions in options.PositionsOf(spec))
                    {
                        bool uncapped = VideoEvalOptions.IsUncapped(spec);
                        string runSpec = spec;
                        double? ratio = null;
                        if (VideoEvalOptions.SizesRatio(spec))
                        {
                            (runSpec, double sized) = VideoEvalOptions.WithSizedRatio(spec, result.Budget, textRows, videoRows, frameRows);
                            ratio = sized;
                            log?.WriteLine(string.Create(CultureInfo.InvariantCulture,
                                $"  {spec}, {length} frames: ratio {ratio:0.####}, sized to keep full's {textRows} text rows and a share of its {videoRows} video rows within the budget of {result.Budget}"));
                        }
                        var row = new VideoEvalRow(spec, length, uncapped, !uncapped && KvPolicies.ReadsBudget(spec) ? result.Budget : null, positions, ratio);
                        var kv = uncapped ? baseKv with { Default = spec } : baseKv with { Default = runSpec, Budget = result.Budget, Positions = positions };
                        for (int i = 0; i < streams.Count; i++)
                        {
                            run++;
                            var runKv = uncapped ? kv : kv with { ColdPath = Path.Combine(coldDir, $"run-{run}.bin") };
                            var (rows, visual) = await RunStreamAsync(text, vision, runKv, streams[i].Stream, i, streams[i].Needles, options, row, log, $"[{run}/{runs}] {row.Label}, {length} frames, stream {i + 1}/{streams.Count}", cancellation).ConfigureAwait(false);
                            if (runKv.ColdPath != null) File.Delete(runKv.ColdPath);
                            if (uncapped)
                            {
                                textRows = Math.Max(textRows, rows - visual);
                                videoRows = Math.Max(videoRows, visual);
                            }
                        }
                        result.Rows.Add(row);
                    }
            }
            result.Complete = true;
        }
        catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
        {
            log?.WriteLine($"  stopped: {result.Rows.Count} of {worlds.Count * rowsPerLength} rows done");
        }
        finally
        {
            try { Directory.Delete(coldDir, recursive: true); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
        return result;
    }

    /// <summary>One stream through a fresh engine under <paramref name="kv"/>: watch it, ask its needles, add all to <paramref name="row"/>; returns the rows the stream put in the session and how many of them are video rows.</summary>
    static async Task<(long Rows, long VideoRows)> RunStreamAsync(DecoderModel text, VisionModel vision, KvCacheConfig kv, WorldStream stream, int streamIndex, List<Needle> needles,
        VideoEvalOptions options, VideoEvalRow row, TextWriter? log, string label, CancellationToken cancellation)
    {
        await using var engine = new InferenceEngine(text, new EngineOptions { Kv = kv }, vision);
        await using var session = engine.CreateSession();
        int every = Math.Max(100, stream.TickCount / 10), comments = 0;
        long start = Stopwatch.GetTimestamp();
        var frames = Tap(WorldEvaluation.Frames(stream, options.FrameSize, cancellation), tick =>
        {
            if ((tick + 1) % every == 0 && tick + 1 < stream.TickCount)
                log?.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {label}: frame {tick + 1}/{stream.TickCount}, {(tick + 1) / Stopwatch.GetElapsedTime(start).TotalSeconds:F1} frames/s, KV hot {engine.Memory.HotBytes / 1048576.0:F1} MiB"));
        });
        if (options.Proactive)
        {
            await foreach (var _ in session.WatchAsync(frames, new ProactiveOptions(), cancellation).ConfigureAwait(false)) comments++;
        }
        else await session.AppendVideoAsync(frames, null, cancellation).ConfigureAwait(false);
        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        var memory = engine.Memory;
        int right = 0;
        foreach (var needle in needles)
        {
            var answer = await WorldEvaluation.AskAsync(session, needle.Question, cancellation).ConfigureAwait(false);
            row.Answers.Add(new VideoEvalAnswer(streamIndex, needle.Distance, needle.Question.Kind, needle.Question.Question, needle.Question.Answer, answer.Text, answer.Right,
                answer.FirstPiece.TotalMilliseconds));
            if (answer.Right) right++;
        }
        row.Streams++;
        row.Frames += stream.TickCount;
        row.Tokens += session.Length;
        row.Comments += comments;
        row.IngestSeconds += seconds;
        row.HotBytes = Math.Max(row.HotBytes, memory.HotBytes);
        row.ColdBytes = Math.Max(row.ColdBytes, memory.ColdBytes);
        row.PeakHotBytes = Math.Max(row.PeakHotBytes, engine.Memory.PeakHotBytes);
        log?.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"  {label}: {stream.TickCount / seconds:F1} frames/s, questions {needles.Count}/{needles.Count} ({right} right), KV hot {memory.HotBytes / 1048576.0:F2} MiB (peak {row.PeakHotBytes / 1048576.0:F2}) cold {memory.ColdBytes / 1048576.0:F2} MiB"));
        return (session.Length, (long)session.FrameCount * vision.VideoFrameTokens);
    }

    static async IAsyncEnumerable<VideoFrame> Tap(IAsyncEnumerable<VideoFrame> frames, Action<long> seen, [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        await foreach (var frame in frames.WithCancellation(cancellation).ConfigureAwait(false))
        {
            yield return frame;
            seen(frame.Index);
        }
    }

    /// <summary>The <paramref name="fraction"/> percentile by nearest rank (NaN for none).</summary>
    public static double Percentile(IEnumerable<double> values, double fraction)
    {
        var sorted = values.Order().ToArray();
        if (sorted.Length == 0) return double.NaN;
        int rank = (int)Math.Ceiling(fraction * sorted.Length);
        return sorted[Math.Clamp(rank - 1, 0, sorted.Length - 1)];
    }
}
