using System.Diagnostics;
using System.Text.Json;
using VidKV.Cli;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

/// <summary><c>vidkv bench video decode|ingest</c> on a tiny generated clip and the tiny-idefics3 pair: the JSON's shape and counts, never times.</summary>
public class BenchVideoTests
{
    static string MakeVideo(TempDirectory dir)
    {
        string path = dir.File("clip.mp4");
        using var ffmpeg = Process.Start(new ProcessStartInfo("ffmpeg", ["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10:duration=3", "-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p", path]))!;
        ffmpeg.WaitForExit();
        Assert.Equal(0, ffmpeg.ExitCode);
        return path;
    }

    static JsonElement RunJson(string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.True(CliRunner.Run(CliApp.BuildRoot(), args, stderr, stdout) == 0, stderr.ToString());
        return JsonDocument.Parse(stdout.ToString()).RootElement;
    }

    [Fact]
    public void DecodeReportsThreeVariantsOfTheSameFrames()
    {
        using var dir = new TempDirectory();
        var json = RunJson(["bench", "video", "decode", MakeVideo(dir), "--fps", "2", "--workers", "2", "-r", "2", "-o", "json"]);
        var variants = json.GetProperty("variants").EnumerateArray().ToList();
        Assert.Equal(["sequential-1-thread", "ffmpeg-threads", "quick-decoder"], variants.Select(v => v.GetProperty("name").GetString()));
        foreach (var v in variants)
        {
            Assert.Equal(6, v.GetProperty("frames").GetInt32()); // 3 s at 2 fps
            Assert.Equal(2, v.GetProperty("samples_s").GetArrayLength());
        }
        Assert.True(json.GetProperty("quick_identical_to_sequential").GetBoolean());
        Assert.True(json.GetProperty("ffmpeg_threads_identical_to_sequential").GetBoolean());
        Assert.Equal(JsonValueKind.Number, json.GetProperty("ratio_quick_vs_sequential").ValueKind);
        Assert.Equal(JsonValueKind.Number, json.GetProperty("ratio_quick_vs_ffmpeg_threads").ValueKind);
    }

    /// <summary>Both ways of running the stages: one frame at a time (stages add up, prefill split out) and overlapped as watch runs them (questions while ingesting).</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void IngestReportsStagesRowsAndTtft(bool serial)
    {
        using var dir = new TempDirectory();
        var (text, projector) = RandomVisionModel.Write(dir.File("pair"), RandomVisionShape.TinyIdefics3, GgmlType.F32);
        string[] args = ["bench", "video", "ingest", MakeVideo(dir), "-m", text, "--mmproj", projector, "--fps", "4", "--max-frames", "10",
            "--every", "3", "--ask-at", "2", "--ask-at", "9", "-t", "2", "-o", "json"];
        var json = RunJson(serial ? [.. args, "--serial"] : args);
        Assert.Equal(serial ? "serial" : "overlapped", json.GetProperty("stages").GetString());
        Assert.Equal(10, json.GetProperty("frames").GetInt32());
        var rows = json.GetProperty("rows").EnumerateArray().ToList();
        Assert.Equal([3, 6, 9], rows.Select(r => r.GetProperty("frames").GetInt32()));
        Assert.All(rows, r => Assert.True(r.GetProperty("hot_kv_bytes").GetInt64() > 0));
        Assert.All(rows, r => Assert.True(r.GetProperty("rss_bytes").GetInt64() > 0));
        var ttft = json.GetProperty("ttft").EnumerateArray().ToList();
        Assert.Equal([2, 9], ttft.Select(t => t.GetProperty("frame").GetInt32()).Order());
        Assert.All(ttft, t => Assert.True(t.GetProperty("session_rows").GetInt32() > 0));
        var stages = json.GetProperty("ms_per_frame");
        foreach (string stage in new[] { "decode_wait", "preprocess", "encode", "total" })
            Assert.Equal(JsonValueKind.Number, stages.GetProperty(stage).ValueKind);
        Assert.Equal(serial ? JsonValueKind.Number : JsonValueKind.Null, stages.GetProperty("prefill").ValueKind);
        Assert.True(stages.GetProperty("encode").GetDouble() > 0);
        // Serial rows split prefill: the text model's phases and the KV cache's stages, the kernel and the products timed.
        foreach (var row in rows)
        {
            var split = row.GetProperty("window_prefill_ms_per_frame");
            Assert.Equal(serial ? JsonValueKind.Object : JsonValueKind.Null, split.ValueKind);
            if (!serial) continue;
            foreach (string phase in new[] { "qkv_projection", "attention", "ffn_down", "kv_select", "kv_recall", "kv_update" })
                Assert.True(split.GetProperty(phase).GetDouble() >= 0, phase);
            Assert.True(split.GetProperty("kv_kernel").GetDouble() > 0);
            Assert.True(split.GetProperty("ffn_gate_up").GetDouble() > 0);
            Assert.True(split.GetProperty("kv_kernel").GetDouble() <= split.GetProperty("attention").GetDouble() * 1.01 + 0.01, "the kernel is part of attention");
        }
    }
}
