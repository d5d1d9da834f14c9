using VidKV.Cli;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary>
/// <c>vidkv bench --kv-config</c> through the command line: specs are checked before a model loads, layers and heads
/// against the loaded model's shape (tiny-qwen2-random: 2 layers, 2 KV heads).
/// </summary>
public class BenchCommandTests
{
    static (int Code, string Error) Bench(string configJson, string? model = null)
    {
        using var dir = new TempDirectory();
        string config = dir.File("kv.json");
        File.WriteAllText(config, configJson);
        var stderr = new StringWriter();
        int code = CliRunner.Run(CliApp.BuildRoot(),
        [
            "bench", "-m", model ?? TestData.Model("tiny-qwen2-random"), "-p", "4", "-n", "2", "-r", "1",
            "-t", WorkerPool.Shared.ThreadCount.ToString(System.Globalization.CultureInfo.InvariantCulture), "--kv-config", config,
        ], stderr);
        return (code, stderr.ToString());
    }

    /// <summary>Per-layer and per-head overrides inside the model's shape run (they were once checked against a 1×1 shape).</summary>
    [Fact]
    public void KvConfigWithLayerAndHeadOverridesRuns()
    {
        var (code, error) = Bench("{\"page_size\": 16, \"budget\": 16, \"default\": \"full\", \"layers\": {\"0-1\": \"sinkwindow\"}, \"heads\": {\"1.1\": \"quest\"}}");
        Assert.True(code == 0, $"exit {code}: {error}");
        Assert.Equal("", error);
    }

    [Theory]
    [InlineData("{\"layers\": {\"1-2\": \"full\"}}", "field 'layers': layer 2 is past the model's 2 layers")]
    [InlineData("{\"heads\": {\"0.2\": \"full\"}}", "field 'heads': 0.2 is past the model's 2 layers × 2 KV heads")]
    public void KvConfigPastTheModelIsOneClearErrorAndExitCode2(string configJson, string expected)
    {
        var (code, error) = Bench(configJson);
        Assert.Equal(CliRunner.BadInput, code);
        string[] lines = error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Equal($"vidkv: error: {expected}", lines[0].TrimEnd('\r'));
    }

    /// <summary>A bad spec in a layer or head override is reported before the model is opened (here it does not even exist).</summary>
    [Theory]
    [InlineData("{\"layers\": {\"0-1\": \"qest\"}}", "policy 'qest': unknown policy")]
    [InlineData("{\"heads\": {\"3.1\": \"quest:bugdet=8\"}}", "policy 'quest': unknown option 'bugdet'")]
    public void BadOverrideSpecFailsBeforeTheModelLoads(string configJson, string expected)
    {
        using var dir = new TempDirectory();
        var (code, error) = Bench(configJson, model: dir.File("missing.gguf"));
        Assert.Equal(CliRunner.BadInput, code);
        Assert.Contains(expected, error);
        Assert.DoesNotContain("missing.gguf", error);
    }
}
