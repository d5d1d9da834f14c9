using System.Text.Json;
using VidKV.Cli;
using VidKV.Models;
using VidKV.Tensors;
using VidKV.World;

namespace VidKV.Tests;

/// <summary><c>vidkv world eval</c>: held-out worlds watched through the engine, every frame and question accounted for; bad options exit 2.</summary>
public class WorldEvalTests
{
    /// <summary>
    /// With a tiny random pair (answers are gibberish, so only the bookkeeping can be checked): every frame of every clip
    /// is an event frame or an event-free one as the world says, comments are counted once each, every question asked is
    /// scored and its kind tallied, and the JSON says the same.
    /// </summary>
    [Fact]
    public void ScoresEveryFrameAndQuestion()
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        var stdout = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["world", "eval", "-m", text, "--mmproj", projector, "--clips", "2", "--ticks", "5", "--size", "64",
            "--questions", "3", "-t", "2", "--json"], new StringWriter(), stdout));
        using var json = JsonDocument.Parse(stdout.ToString());
        var root = json.RootElement;
        int events = 0;
        for (ulong clip = 0; clip < 2; clip++)
        {
            var stream = WorldStream.Generate(WorldStream.HeldOutSeeds + clip, 5);
            events += Enumerable.Range(0, 5).Count(t => stream.Narration(t) != null);
        }
        Assert.Equal(2, root.GetProperty("clips").GetInt32());
        Assert.Equal(events, root.GetProperty("event_frames").GetInt32());
        Assert.Equal(10 - events, root.GetProperty("quiet_frames").GetInt32());
        Assert.InRange(root.GetProperty("comments").GetInt32(), 0, 10);
        Assert.InRange(root.GetProperty("quiet_silent").GetInt32(), 0, 10 - events);
        Assert.InRange(root.GetProperty("hits").GetInt32(), 0, events);
        int questions = root.GetProperty("questions").GetInt32();
        Assert.Equal(6, questions); // 3 distinct questions about each clip's last tick
        Assert.Equal(questions, root.GetProperty("by_kind").EnumerateObject().Sum(k => k.Value.GetProperty("asked").GetInt32()));
        Assert.Equal(root.GetProperty("correct").GetInt32(), root.GetProperty("by_kind").EnumerateObject().Sum(k => k.Value.GetProperty("right").GetInt32()));
        Assert.Equal(questions - root.GetProperty("correct").GetInt32(), root.GetProperty("misses").GetArrayLength());
    }

    [Theory]
    [InlineData("--clips", "0", "--clips must be at least 1")]
    [InlineData("--ticks", "-3", "--ticks must be at least 1")]
    [InlineData("--policy", "nonsense", "nonsense")]
    [InlineData("--positions", "sideways", "--positions: 'sideways' is not original or compact")]
    public void BadOptionsExit2(string option, string value, string message)
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        var stderr = new StringWriter();
        Assert.Equal(2, CliRunner.Run(CliApp.BuildRoot(), ["world", "eval", "-m", text, "--mmproj", projector, option, value], stderr, new StringWriter()));
        Assert.Contains(message, stderr.ToString());
    }
}
