using System.Diagnostics;
using VidKV.Cli;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary><c>vidkv watch</c> end to end on a tiny random pair and a generated video; its bad input exits 2 with one line.</summary>
public class WatchCommandTests
{
    static string MakeVideo(TempDirectory dir)
    {
        string path = dir.File("clip.mp4");
        using var ffmpeg = Process.Start(new ProcessStartInfo("ffmpeg", ["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10:duration=3", "-c:v", "libx264", "-pix_fmt", "yuv420p", path]))!;
        ffmpeg.WaitForExit();
        Assert.Equal(0, ffmpeg.ExitCode);
        return path;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WatchesAVideoAndAnswers(bool proactive)
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        string[] args = ["watch", MakeVideo(dir), "-m", text, "--mmproj", projector, "--fps", "2", "--max-frames", "3", "--ask", "What moved?", "-n", "2", "-t", "2"];
        if (proactive) args = [.. args, "--proactive", "--brackets", "--threshold", "1"]; // threshold 1: it speaks after every frame
        var stderr = new StringWriter();
        var stdout = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), args, stderr, stdout));
        string[] lines = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        // Threshold 1 makes every frame's p(silence) fall below it: a comment after each of the 3 frames, with its time.
        var comments = lines.Where(l => l.StartsWith('[')).ToArray();
        Assert.Equal(proactive ? ["[00:00]", "[00:00]", "[00:01]"] : [], comments.Select(l => l[..7]));
        int question = Array.FindIndex(lines, l => l.TrimEnd('\r') == "Q: What moved?");
        Assert.True(question >= 0 && question + 1 < lines.Length, stdout.ToString());
        Assert.StartsWith("A: ", lines[question + 1]); // random weights: what follows is gibberish, but it is an answer
    }

    /// <summary>
    /// Compact positions under a window small enough to evict within the first frame: the session's rows turn at the
    /// kept rows' positions and the question is answered; a bad --positions value is exit 2 naming the option.
    /// </summary>
    [Fact]
    public void WatchesWithCompactPositionsAndRejectsABadValue()
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        string video = MakeVideo(dir);
        var stderr = new StringWriter();
        var stdout = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["watch", video, "-m", text, "--mmproj", projector, "--fps", "2", "--max-frames", "3",
            "--policy", "sinkwindow:sinks=2,window=12", "--positions", "compact", "--ask", "What moved?", "-n", "2", "-t", "2"], stderr, stdout));
        string[] lines = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        int question = Array.FindIndex(lines, l => l.TrimEnd('\r') == "Q: What moved?");
        Assert.True(question >= 0 && question + 1 < lines.Length, stdout.ToString() + stderr);
        Assert.StartsWith("A: ", lines[question + 1]);

        var bad = new StringWriter();
        Assert.Equal(2, CliRunner.Run(CliApp.BuildRoot(), ["watch", video, "-m", text, "--mmproj", projector, "--positions", "sideways"], bad));
        Assert.Contains("--positions: 'sideways' is not original or compact", bad.ToString());
    }

    public static TheoryData<string, string> BadSources => new()
    {
        { "missing.mp4", "no such file" },
        { "empty.mp4", "empty file" },
        { "camera:/dev/video99", "no such camera" },
    };

    [Theory]
    [MemberData(nameof(BadSources))]
    public void BadSourceIsOneLineAndExitCode2(string source, string problem)
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        if (source == "empty.mp4") File.WriteAllBytes(dir.File(source), []);
        string path = source.StartsWith("camera:", StringComparison.Ordinal) ? source : dir.File(source);
        var stderr = new StringWriter();
        Assert.Equal(2, CliRunner.Run(CliApp.BuildRoot(), ["watch", path, "-m", text, "--mmproj", projector], stderr));
        string[] errors = stderr.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("vidkv: error:", StringComparison.Ordinal)).ToArray();
        Assert.Single(errors);
        Assert.Contains(problem, errors[0]);
    }

    /// <summary>
    /// A still scene with <c>--unchanged-threshold</c>: every frame after the first reuses its tokens (said at the end);
    /// a threshold outside 0..255 is one line, exit 2.
    /// </summary>
    [Fact]
    public void StillFramesReuseTheirTokens()
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        string still = dir.File("still.mkv");
        GeneratedVideos.Ffmpeg($"-f lavfi -i color=c=0x3060a0:size=96x64:rate=10:duration=1 -c:v mjpeg -q:v 2 -pix_fmt yuvj420p -y {still}");
        var stderr = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["watch", still, "-m", text, "--mmproj", projector, "--fps", "5", "--unchanged-threshold", "1", "-t", "2"], stderr, new StringWriter()));
        Assert.Contains("watched 5 frames", stderr.ToString());
        Assert.Contains("(4 unchanged: tokens reused)", stderr.ToString());

        var bad = new StringWriter();
        Assert.Equal(2, CliRunner.Run(CliApp.BuildRoot(), ["watch", still, "-m", text, "--mmproj", projector, "--unchanged-threshold", "300"], bad));
        Assert.Single(bad.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("vidkv: error:", StringComparison.Ordinal) && l.Contains("--unchanged-threshold"));
    }

    /// <summary>A corrupt frame in the middle of a stream is reported on stderr with its time, and watching goes on to the end.</summary>
    [Fact]
    public void ACorruptFrameIsReportedAndWatchingGoesOn()
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        string clean = dir.File("clip.mkv"), corrupt = dir.File("corrupt.mkv");
        GeneratedVideos.Ffmpeg($"-f lavfi -i testsrc2=size=96x64:rate=10:duration=1 -c:v mjpeg -q:v 5 -pix_fmt yuvj420p -y {clean}");
        GeneratedVideos.CorruptFifthJpeg(clean, corrupt);
        var stderr = new StringWriter();
        var stdout = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["watch", corrupt, "-m", text, "--mmproj", projector, "--fps", "10", "-t", "2"], stderr, stdout));
        string log = stderr.ToString();
        var skipped = log.Split('\n').Where(l => l.Contains("skipped a frame", StringComparison.Ordinal)).ToArray();
        Assert.Single(skipped);
        Assert.Contains("(after 4 frames)", skipped[0]);
        Assert.Contains("watched 9 frames", log);
    }
}
