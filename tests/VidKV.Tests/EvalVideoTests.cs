using System.Text.Json;
using System.Xml.Linq;
using VidKV.Cache;
using VidKV.Cli;
using VidKV.Models;
using VidKV.Tensors;
using VidKV.World;

namespace VidKV.Tests;

/// <summary>
/// <c>vidkv eval video</c>: every (policy, length) row with every needle accounted for and scored by a recount, the hot
/// cap's budget holding for bounded policies, the JSON and the SVG chart; the needle choice; bad options exit 2.
/// </summary>
public class EvalVideoTests
{
    static readonly string[] Policies = ["full", "sinkwindow", "infinipotv+freekv", "quickprefill:group=2"];
    static readonly int[] Lengths = [12, 40], Distances = [1, 10, 30];
    const double CapMib = 0.125;

    /// <summary>
    /// With a tiny random pair (answers are gibberish, so the bookkeeping and the memory are what can be checked): a row
    /// per policy and length; each row asked exactly the needles of its stream (recomputed here from the held-out seed)
    /// in order, with their true answers; its counts, per distance and per kind, are a recount of its answers; the
    /// bounded policies' peak hot KV stays under a cap small enough to bind, while full's (uncapped) passes it; the
    /// SVG chart is XML with one line per policy in each panel.
    /// </summary>
    [Fact]
    public void RowsCountEveryNeedleAndBoundedPoliciesStayUnderTheCap()
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        string plot = dir.File("chart.svg");
        int code = CliRunner.Run(CliApp.BuildRoot(), ["eval", "video", "-m", text, "--mmproj", projector, "--lengths", "12,40", "--distances", "1,10,30",
            "--questions", "2", "--size", "64", "--hot-cap", "0.125", "--policies", string.Join(",", Policies), "-t", "1", "-o", "json", "--plot", plot], stderr, stdout);
        Assert.True(code == 0, stderr.ToString());
        using var json = JsonDocument.Parse(stdout.ToString());
        var root = json.RootElement;
        Assert.True(root.GetProperty("complete").GetBoolean());
        Assert.False(string.IsNullOrWhiteSpace(root.GetProperty("cpu").GetString()));
        Assert.Equal(1, root.GetProperty("threads").GetInt32());
        Assert.Equal(Lengths, root.GetProperty("options").GetProperty("lengths").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal(Policies, root.GetProperty("options").GetProperty("policies").EnumerateArray().Select(x => x.GetString()));
        long cap = root.GetProperty("options").GetProperty("hot_cap_bytes").GetInt64();
        Assert.Equal((long)(CapMib * 1048576), cap);
        int budget = root.GetProperty("budget").GetInt32();
        Assert.Equal(256, root.GetProperty("kv_bytes_per_token").GetInt64()); // 2 layers × 2 KV heads × (key + value) × 16 f16
        Assert.True(budget > 0 && budget + root.GetProperty("reserve_tokens_per_head").GetInt32() == root.GetProperty("cap_tokens_per_head").GetInt32());

        var rows = root.GetProperty("rows").EnumerateArray().ToList();
        Assert.Equal(Policies.Length * Lengths.Length, rows.Count);
        int frameRows;
        using (var vision = VisionModel.Load(projector)) frameRows = vision.VideoFrameTokens;
        foreach (int length in Lengths)
        {
            var stream = WorldStream.Generate(WorldStream.HeldOutSeeds, length, WorldOptions.Stream);
            var needles = VideoEvaluation.Needles(stream, Distances, 2);
            Assert.NotEmpty(needles);
            foreach (string policy in Policies)
            {
                var row = Assert.Single(rows, r => r.GetProperty("policy").GetString() == policy && r.GetProperty("length").GetInt32() == length);
                Assert.Equal(length, row.GetProperty("frames").GetInt32());
                Assert.Equal(1, row.GetProperty("streams").GetInt32());
                Assert.True(row.GetProperty("tokens").GetInt64() > length); // each frame is several rows
                var answers = row.GetProperty("answers").EnumerateArray().ToList();
                Assert.Equal(needles.Count, row.GetProperty("questions").GetInt32());
                Assert.Equal(needles.Select(n => (n.Distance, n.Question.Kind.ToString(), n.Question.Question, n.Question.Answer)),
                    answers.Select(a => (a.GetProperty("distance").GetInt32(), a.GetProperty("kind").GetString()!, a.GetProperty("question").GetString()!, a.GetProperty("truth").GetString()!)));
                bool Right(JsonElement a) => a.GetProperty("answer").GetString() == a.GetProperty("truth").GetString();
                Assert.All(answers, a => Assert.Equal(Right(a), a.GetProperty("right").GetBoolean()));
                Assert.All(answers, a => Assert.True(a.GetProperty("ttft_ms").GetDouble() >= 0));
                int correct = answers.Count(Right);
                Assert.Equal(correct, row.GetProperty("correct").GetInt32());
                Assert.Equal((double)correct / answers.Count, row.GetProperty("accuracy").GetDouble(), 12);
                Assert.Equal(answers.Count(a => a.GetProperty("truth").GetString() == "nothing"), row.GetProperty("nothing_answers").GetInt32());
                foreach (var (group, key) in new[] { ("by_distance", "distance"), ("by_kind", "kind") })
                {
                    var tally = row.GetProperty(group).EnumerateObject().ToDictionary(p => p.Name, p => (p.Value.GetProperty("asked").GetInt32(), p.Value.GetProperty("right").GetInt32()));
                    var recount = answers.GroupBy(a => a.GetProperty(key).ToString()).ToDictionary(g => g.Key, g => (g.Count(), g.Count(Right)));
                    Assert.Equal(recount.OrderBy(x => x.Key), tally.OrderBy(x => x.Key));
                }
                Assert.Equal(Distances.Where(d => d < length).Select(d => d.ToString()), row.GetProperty("by_distance").EnumerateObject().Select(p => p.Name));

                long peak = row.GetProperty("peak_hot_kv_bytes").GetInt64();
                Assert.True(peak >= row.GetProperty("hot_kv_bytes").GetInt64());
                Assert.True(row.GetProperty("ttft_ms").GetProperty("p90").GetDouble() >= row.GetProperty("ttft_ms").GetProperty("median").GetDouble());
                switch (policy)
                {
                    case "full":
                        Assert.True(row.GetProperty("uncapped").GetBoolean());
                        Assert.Equal(JsonValueKind.Null, row.GetProperty("budget").ValueKind);
                        Assert.Equal(0, row.GetProperty("cold_kv_bytes").GetInt64());
                        if (length == 40) Assert.True(peak > cap, $"full's peak {peak} should pass the cap {cap} at {length} frames, or the cap does not bind");
                        break;
                    case "quickprefill:group=2": // takes no budget: the cap sizes its ratio from full's rows of the same stream (this tiny vocabulary's text alone passes it at 40 frames: RatioPoliciesAreSizedToTheCap binds it)
                        Assert.False(row.GetProperty("uncapped").GetBoolean());
                        Assert.Equal(JsonValueKind.Null, row.GetProperty("budget").ValueKind);
                        long fullRows = rows.Single(r => r.GetProperty("policy").GetString() == "full" && r.GetProperty("length").GetInt32() == length).GetProperty("tokens").GetInt64();
                        long videoRows = (long)length * frameRows;
                        Assert.Equal(VideoEvaluation.SizeRatio(budget, fullRows - videoRows, videoRows, 2 * frameRows), row.GetProperty("ratio").GetDouble()); // a group of 2 frames waits whole
                        Assert.Equal(peak <= cap, row.GetProperty("within_cap").GetBoolean());
                        break;
                    default: // bounded: sized by the cap, and under it
                        Assert.Equal(budget, row.GetProperty("budget").GetInt32());
                        Assert.True(peak <= cap, $"{policy} at {length} frames: peak hot KV {peak} bytes is over the cap {cap}");
                        Assert.True(row.GetProperty("within_cap").GetBoolean());
                        break;
                }
            }
        }
        // The cap binds: at 40 frames the sliding window evicted, so it holds less than full.
        long Peak(string policy) => rows.Single(r => r.GetProperty("policy").GetString() == policy && r.GetProperty("length").GetInt32() == 40).GetProperty("peak_hot_kv_bytes").GetInt64();
        Assert.True(Peak("sinkwindow") < Peak("full"));
        Assert.True(rows.Single(r => r.GetProperty("policy").GetString() == "infinipotv+freekv" && r.GetProperty("length").GetInt32() == 40).GetProperty("cold_kv_bytes").GetInt64() > 0);

        var svg = XDocument.Load(plot);
        XNamespace ns = "http://www.w3.org/2000/svg";
        var panels = svg.Descendants(ns + "g").Where(g => (string?)g.Attribute("class") == "panel").ToList();
        Assert.Equal(2, panels.Count);
        foreach (var panel in panels)
        {
            var lines = panel.Elements(ns + "polyline").Where(p => (string?)p.Attribute("class") == "series").ToList();
            Assert.Equal(["full (uncapped)", .. Policies[1..]], lines.Select(l => (string)l.Attribute("data-series")!));
            Assert.All(lines, l => Assert.Equal(Lengths.Length, ((string)l.Attribute("points")!).Split(' ').Length));
        }
        Assert.Contains(plot, stderr.ToString());
    }

    /// <summary>
    /// <c>--positions original,compact</c>: a row per capped policy and mode (full, which evicts nothing, once at original
    /// positions), each asked the same needles; the JSON and the tables name each row's mode.
    /// </summary>
    [Fact]
    public void BothPositionModesGiveARowPerPolicyAndMode()
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        string[] common = ["eval", "video", "-m", text, "--mmproj", projector, "--lengths", "30", "--distances", "1,20", "--questions", "1", "--size", "64",
            "--hot-cap", "0.125", "--policies", "full,sinkwindow", "--positions", "original,compact", "-t", "1"];
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.True(CliRunner.Run(CliApp.BuildRoot(), [.. common, "-o", "json"], stderr, stdout) == 0, stderr.ToString());
        using var json = JsonDocument.Parse(stdout.ToString());
        var root = json.RootElement;
        Assert.Equal(["original", "compact"], root.GetProperty("options").GetProperty("positions").EnumerateArray().Select(x => x.GetString()));
        var rows = root.GetProperty("rows").EnumerateArray().Select(r => (Policy: r.GetProperty("policy").GetString(), Positions: r.GetProperty("positions").GetString(), Row: r)).ToList();
        Assert.Equal([("full", "original"), ("sinkwindow", "original"), ("sinkwindow", "compact")], rows.Select(r => (r.Policy, r.Positions)));
        string Questions(JsonElement row) => string.Join("|", row.GetProperty("answers").EnumerateArray().Select(a => a.GetProperty("question").GetString()));
        Assert.Equal(Questions(rows[1].Row), Questions(rows[2].Row));
        Assert.Equal(rows[1].Row.GetProperty("budget").GetInt32(), rows[2].Row.GetProperty("budget").GetInt32());
        Assert.True(rows[2].Row.GetProperty("within_cap").GetBoolean());
    }

    /// <summary>
    /// Needles: for each distance that fits, questions of <see cref="WorldQuestions.About"/> at that distance, as many as
    /// asked for or as there are; one whose answer is "nothing" only once every other candidate was taken; the same
    /// draw every time.
    /// </summary>
    [Fact]
    public void NeedlesComeFromTheEvidenceTickAndPreferAnswersOtherThanNothing()
    {
        int[] distances = [0, 1, 5, 30, 200];
        int nothings = 0, others = 0;
        for (ulong seed = 0; seed < 12; seed++)
            foreach (int length in new[] { 3, 40, 150 })
            {
                var stream = WorldStream.Generate(WorldStream.HeldOutSeeds + seed, length, WorldOptions.Stream);
                var needles = VideoEvaluation.Needles(stream, distances, 3);
                Assert.Equal(needles.Select(Key), VideoEvaluation.Needles(stream, distances, 3).Select(Key));
                Assert.All(needles, n => Assert.True(n.Distance < length));
                foreach (int distance in distances.Where(d => d < length))
                {
                    var candidates = WorldQuestions.About(stream, length - 1 - distance, length - 1).Select(Text).ToList();
                    var asked = needles.Where(n => n.Distance == distance).Select(n => Text(n.Question)).ToList();
                    Assert.Equal(Math.Min(3, candidates.Count), asked.Count);
                    Assert.All(asked, q => Assert.Contains(q, candidates));
                    Assert.Equal(asked.Count, asked.Select(q => q.Question).Distinct().Count());
                    if (asked.Any(q => q.Answer == "nothing"))
                        Assert.All(candidates.Where(q => q.Answer != "nothing"), q => Assert.Contains(q, asked));
                    nothings += asked.Count(q => q.Answer == "nothing");
                    others += asked.Count(q => q.Answer != "nothing");
                }
            }
        Assert.True(nothings > 0 && others > 0); // both cases came up

        static (QuestionKind Kind, string Question, string Answer) Text(WorldQuestion q) => (q.Kind, q.Question, q.Answer);
        static (int, (QuestionKind, string, string)) Key(Needle n) => (n.Distance, Text(n.Question));
    }

    /// <summary>The budget: whole pages per head the cap holds, less a step's rows, a question with its answer and a partial page, each rounded up to pages.</summary>
    [Fact]
    public void BudgetLeavesRoomForAStepAndAQuestion()
    {
        using var dir = new TempDirectory();
        var (text, _) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        using var model = ModelLoader.Load(text);
        Assert.Equal(256, VideoEvaluation.KvBytesPerToken(model.Config, new KvCacheConfig()));
        Assert.Equal(512, VideoEvaluation.KvBytesPerToken(model.Config, new KvCacheConfig { Type = GgmlType.F32 }));
        // 128 KiB over 256 bytes a token is 512 tokens: 16 pages of 32 per head; a step of 128 rows takes 4, a fork of
        // 52 tokens (a 20-token question and its 32-token answer) 2, a partial page 1: 7 pages kept free, 9 pages of budget.
        Assert.Equal((512, 224, 288), VideoEvaluation.SizeBudget(128 << 10, 256, 32, 128, 52));
        Assert.Equal((512, 256, 256), VideoEvaluation.SizeBudget(128 << 10, 256, 32, 129, 52));
        Assert.Equal((480, 224, 256), VideoEvaluation.SizeBudget((128 << 10) - 1, 256, 32, 128, 52)); // 15 whole pages
        Assert.Equal((512, 208, 304), VideoEvaluation.SizeBudget(128 << 10, 256, 16, 128, 52)); // pages of 16: 8 + 4 + 1 kept free
        Assert.True(VideoEvaluation.SizeBudget(1 << 10, 256, 32, 128, 52).Budget < 0);
    }

    /// <summary>
    /// A cap between full's text rows and all its rows: full passes it, quickprefill (which takes no budget) gets a ratio
    /// below 1 that keeps its hot KV under it. The cap is set from a first run of full alone on the same stream.
    /// </summary>
    [Fact]
    public void RatioPoliciesAreSizedToTheCap()
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        int frameRows;
        using (var vision = VisionModel.Load(projector)) frameRows = vision.VideoFrameTokens;
        const int length = 120, page = 32; // long enough that full's video rows outgrow what the cap keeps free for a step and a question
        JsonElement Run(string policies, double capMib)
        {
            var stdout = new StringWriter();
            var stderr = new StringWriter();
            int code = CliRunner.Run(CliApp.BuildRoot(), ["eval", "video", "-m", text, "--mmproj", projector, "--lengths", $"{length}", "--distances", "1",
                "--questions", "1", "--size", "64", "--hot-cap", capMib.ToString(System.Globalization.CultureInfo.InvariantCulture), "--policies", policies, "-t", "1", "-o", "json"], stderr, stdout);
            Assert.True(code == 0, stderr.ToString());
            return JsonDocument.Parse(stdout.ToString()).RootElement.Clone();
        }
        var first = Run("full", 1);
        long rows = first.GetProperty("rows")[0].GetProperty("tokens").GetInt64(), video = (long)length * frameRows, textRows = rows - video;
        int reserve = first.GetProperty("reserve_tokens_per_head").GetInt32();
        long bytesPerToken = first.GetProperty("kv_bytes_per_token").GetInt64();
        // A budget between the text (with a group's margin) and every row less the reserve, in whole pages: full passes the cap, the text fits.
        long budget = (textRows + 2 * frameRows + (video - reserve) / 2) / page * page;
        Assert.True(budget > textRows + 2 * frameRows && budget + reserve < rows, $"text {textRows}, video {video}, reserve {reserve}: no page-sized budget between them");
        double capMib = (budget + reserve) * bytesPerToken / 1048576.0;
        var second = Run("full,quickprefill:group=2", capMib);
        Assert.Equal(budget, second.GetProperty("budget").GetInt32());
        long cap = second.GetProperty("options").GetProperty("hot_cap_bytes").GetInt64();
        var full = second.GetProperty("rows")[0];
        var shared = second.GetProperty("rows")[1];
        Assert.Equal("quickprefill:group=2", shared.GetProperty("policy").GetString());
        Assert.True(full.GetProperty("peak_hot_kv_bytes").GetInt64() > cap);
        double ratio = shared.GetProperty("ratio").GetDouble();
        Assert.Equal(VideoEvaluation.SizeRatio((int)budget, textRows, video, 2 * frameRows), ratio);
        Assert.InRange(ratio, 0.01, 0.99);
        Assert.True(shared.GetProperty("peak_hot_kv_bytes").GetInt64() <= cap, $"quickprefill at ratio {ratio}: peak {shared.GetProperty("peak_hot_kv_bytes").GetInt64()} over the cap {cap}");
        Assert.True(shared.GetProperty("within_cap").GetBoolean());
    }

    /// <summary>The share a ratio policy keeps: what the budget leaves after the text rows and a group's margin, over the video rows, rounded down and held in 1/10,000..1.</summary>
    [Fact]
    public void RatioKeepsTextAndAShareOfTheVideoWithinTheBudget()
    {
        Assert.Equal(0.2, VideoEvaluation.SizeRatio(1000, 300, 3000, 100));
        Assert.Equal(0.1333, VideoEvaluation.SizeRatio(1000, 500, 3000, 100)); // 400/3000, rounded down
        Assert.Equal(1, VideoEvaluation.SizeRatio(10000, 300, 3000, 100));
        Assert.Equal(1e-4, VideoEvaluation.SizeRatio(1000, 950, 3000, 100)); // text alone does not fit: the least share
        Assert.Equal(1, VideoEvaluation.SizeRatio(1000, 300, 0, 100));
        Assert.True(VideoEvalOptions.SizesRatio("quickprefill"));
        Assert.True(VideoEvalOptions.SizesRatio("quickprefill+resv"));
        Assert.True(VideoEvalOptions.SizesRatio("livevlm:clip=4"));
        Assert.False(VideoEvalOptions.SizesRatio("quickprefill:ratio=0.3")); // given: the spec's own
        Assert.False(VideoEvalOptions.SizesRatio("infinipotv+livevlm")); // infinipotv's budget holds the cap
        Assert.False(VideoEvalOptions.SizesRatio("resv"));
        Assert.False(VideoEvalOptions.SizesRatio("full"));
        Assert.Equal(("quickprefill:ratio=0.2+resv", 0.2), VideoEvalOptions.WithSizedRatio("quickprefill+resv", 996, 300, 3000, 6)); // margin: a group of 16 frames of 6 rows
        Assert.Equal(("livevlm:clip=4,ratio=0.2", 0.2), VideoEvalOptions.WithSizedRatio("livevlm:clip=4", 1000, 300, 3000, 25));
        Assert.Equal("4", KvPolicies.OptionText("livevlm:clip=4", "clip"));
        Assert.Equal("16", KvPolicies.OptionText("quickprefill", "group"));
        Assert.Null(KvPolicies.OptionText("quickprefill", "window"));
        Assert.Equal("quickprefill:ratio=0.2+resv", KvPolicies.WithDefaultOption("quickprefill+resv", "ratio", "0.2"));
        Assert.Equal("livevlm:clip=4,ratio=0.2", KvPolicies.WithDefaultOption("livevlm:clip=4", "ratio", "0.2"));
        Assert.Null(KvPolicies.WithDefaultOption("quickprefill:ratio=0.3", "ratio", "0.2"));
        Assert.Null(KvPolicies.WithDefaultOption("sinkwindow", "ratio", "0.2"));
        Assert.Null(KvPolicies.WithDefaultOption("nonsense", "ratio", "0.2"));
    }

    [Theory]
    [InlineData("full,sinkwindow:sinks=3,window=61,resv", new[] { "full", "sinkwindow:sinks=3,window=61", "resv" })]
    [InlineData("infinipotv+freekv:budget=100,sinks=10", new[] { "infinipotv+freekv:budget=100,sinks=10" })]
    [InlineData("quickprefill:ratio=0.25,group=4+freekv, videoscan", new[] { "quickprefill:ratio=0.25,group=4+freekv", "videoscan" })]
    public void PolicyListsSplitAtSpecsNotAtTheirOptions(string value, string[] specs) => Assert.Equal(specs, VideoEvalOptions.SplitSpecs([value]));

    /// <summary>Points that are not numbers are left out of a line; the rest land inside their panel, on a log axis too; one length sits mid-axis.</summary>
    [Fact]
    public void ChartPointsLandInsideTheirPanel()
    {
        var panels = new[]
        {
            new SvgChart.Panel("a", "y", [new SvgChart.Series("p<1>", [(100, 10), (2000, double.NaN), (5000, 90)]), new SvgChart.Series("q", [(100, 0), (5000, 100)])]) { YMax = 100 },
            new SvgChart.Panel("b", "MiB", [new SvgChart.Series("p<1>", [(100, 3.5), (5000, 70)])]) { Reference = (64, "cap") },
        };
        var svg = XDocument.Parse(SvgChart.Render("t & u", "frames", [100, 2000, 5000], panels));
        XNamespace ns = "http://www.w3.org/2000/svg";
        var groups = svg.Descendants(ns + "g").Where(g => (string?)g.Attribute("class") == "panel").ToList();
        Assert.Equal(2, groups.Count);
        for (int p = 0; p < 2; p++)
        {
            var lines = groups[p].Elements(ns + "polyline").Where(l => (string?)l.Attribute("class") == "series").ToList();
            Assert.Equal(panels[p].Series.Select(s => s.Name), lines.Select(l => (string)l.Attribute("data-series")!));
            for (int s = 0; s < lines.Count; s++)
            {
                var points = ((string)lines[s].Attribute("points")!).Split(' ').Select(q => q.Split(',').Select(v => double.Parse(v, System.Globalization.CultureInfo.InvariantCulture)).ToArray()).ToList();
                Assert.Equal(panels[p].Series[s].Points.Count(q => double.IsFinite(q.Y)), points.Count);
                Assert.All(points, q => Assert.InRange(q[0], p * 440 + 64, (p + 1) * 440 - 16));
                Assert.All(points, q => Assert.InRange(q[1], 56, 56 + 300 - 52));
            }
        }
        // A log axis puts 2000 nearer 5000 than the middle of 100..5000.
        var ticks = groups[0].Elements(ns + "text").Where(t => t.Value == "2000").Select(t => double.Parse((string)t.Attribute("x")!, System.Globalization.CultureInfo.InvariantCulture)).Single();
        Assert.True(ticks > 64 + (424 - 64) * 0.6);
        var single = XDocument.Parse(SvgChart.Render("one", "frames", [500], [new SvgChart.Panel("a", "y", [new SvgChart.Series("p", [(500, 1)])])]));
        var x = double.Parse(((string)single.Descendants(ns + "polyline").Single(l => (string?)l.Attribute("class") == "series").Attribute("points")!).Split(',')[0], System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal((64 + 424) / 2.0, x, 1);
    }

    [Theory]
    [InlineData("--lengths", "0", "--lengths")]
    [InlineData("--lengths", "6000", "--lengths")]
    [InlineData("--lengths", "10,x", "--lengths")]
    [InlineData("--distances", "50", "--distances")]
    [InlineData("--distances", "-1", "--distances")]
    [InlineData("--policies", "full,nonsense", "--policies")]
    [InlineData("--policies", "sinkwindow:sinks=oops", "--policies")]
    [InlineData("--hot-cap", "-1", "--hot-cap")]
    [InlineData("--hot-cap", "0.001", "--hot-cap")]
    [InlineData("--questions", "0", "--questions")]
    [InlineData("--streams", "0", "--streams")]
    [InlineData("--size", "8", "--size")]
    [InlineData("--plot", "/no/such/folder/chart.svg", "--plot")]
    [InlineData("--cold-dir", "/no/such/folder", "--cold-dir")]
    [InlineData("--policies", "sinkwindow,quickprefill", "'quickprefill' keeps a share of each frame's tokens (its ratio), which --hot-cap sizes from full's run")]
    [InlineData("--positions", "sideways", "--positions: 'sideways' is not original or compact")]
    [InlineData("--positions", "compact,compact", "--positions: a mode is given twice")]
    public void BadOptionsExit2NamingTheOption(string option, string value, string message)
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        var stderr = new StringWriter();
        var stdout = new StringWriter();
        var given = new Dictionary<string, string> { ["--lengths"] = "20", ["--size"] = "64", [option] = value };
        string[] args = ["eval", "video", "-m", text, "--mmproj", projector, .. given.SelectMany(x => new[] { x.Key, x.Value })];
        Assert.Equal(2, CliRunner.Run(CliApp.BuildRoot(), args, stderr, stdout));
        Assert.Contains(message, stderr.ToString());
        Assert.Equal("", stdout.ToString());
    }
}
